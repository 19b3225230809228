"""names.py on its own: which names a panda may pick, and which names look alike. No sockets."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import names_data
from names import MAX_NAME_CHARS, lookalike_key, lookalike_problem, name_key, name_problem

# --- Names that are fine ------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "Bob", "b", "7", "Panda_1", "Zoë-the.panda", "x" * MAX_NAME_CHARS,
    "Zoë", "José", "Zoe\u0308",                 # Latin, ë precomposed and as e + U+0308
    "Маша", "Νίκος",                            # Cyrillic, Greek
    "小明", "熊猫",                              # Chinese
    "さくら", "田中さん", "カタカナー", "ｶﾀｶﾅ",  # Japanese; ー is Common with Hiragana+Katakana
    "지민", "金지민",                            # Korean, with Han
    "ㄅㄆ", "王ㄅ",                              # Bopomofo, with Han
    "علي", "سارا۲",                             # Arabic, with its own digit
    "अनन्या", "प्रिया२",                          # Hindi: vowel signs and a virama on letters
    "สมศักดิ์", "דוד", "Ｂｏｂ",                   # Thai with its marks, Hebrew, full-width
])
def test_ordinary_names_in_many_scripts_are_fine(name: str) -> None:
    assert name_problem(name) is None


# --- Names that are refused, and why ------------------------------------------------------


@pytest.mark.parametrize(("name", "reason"), [
    ("", "at least one character"),
    ("x" * (MAX_NAME_CHARS + 1), f"at most {MAX_NAME_CHARS}"),
    ("@bamboo", "cannot start with @"),
    ("Big Bob", "spaces"),
    ("tab\tbed", "spaces"),
    ("no\u00a0break", "spaces"),
    ("ideographic\u3000space", "spaces"),
    ("esc\x1b", "control"),
    ("nul\x00", "control"),
    ("zero\u200bwidth", "invisible"),
    ("\u202eevil", "invisible"),
    ("Alice\u034f", "invisible"),           # COMBINING GRAPHEME JOINER
    ("Alice\ufe0f", "invisible"),           # VARIATION SELECTOR-16
    ("\u3164", "invisible"),                # HANGUL FILLER, a letter that shows nothing
    ("A\u115fB", "invisible"),              # HANGUL CHOSEONG FILLER
    ("Alice\u00ad", "invisible"),           # SOFT HYPHEN
    ("\u2800", "only have letters and digits"),      # BRAILLE PATTERN BLANK
    ("*", "* is not one"),
    ("Alice:", ": is not one"),
    ("*\u2800join", "* is not one"),
    ("🐼", "only have letters and digits"),
    ("bob@grove", "@ is not one"),
    ("Ⅻ", "only have letters and digits"),  # a number, but not a decimal digit
    ("-bob", "between letters or digits"),
    ("bob.", "between letters or digits"),
    ("_", "between letters or digits"),
    ("\u0301bob", "on a letter"),           # a combining acute with no letter under it
    ("7\u0301", "on a letter"),
    ("a-\u0301b", "on a letter"),
    ("𝐀lice", "from an alphabet"),         # MATHEMATICAL BOLD CAPITAL A: script Common
    ("Aliceː", "from an alphabet"),         # MODIFIER LETTER TRIANGULAR COLON looks like :
    ("Аlice", "mixes Cyrillic and Latin"),  # Cyrillic А
    ("pаypal", "mixes Latin and Cyrillic"),
    ("Αlice", "mixes Greek and Latin"),
    ("Ken田中", "mixes Latin and Han"),     # TR39 allows Latin with Japanese; Panda Chat not
    ("जॉन1", None),                           # 0-9 go with any script: fine
    ("a١", "mixes Latin and Arabic"),       # Arabic-Indic digit one
    ("a1١", "mixes"),
    ("١1", "different ways of writing numbers"),
    ("x１1", "different ways of writing numbers"),  # full-width and ASCII digits
])
def test_bad_names_say_why(name: str, reason: str | None) -> None:
    problem = name_problem(name)
    if reason is None:
        assert problem is None
    else:
        assert problem is not None
        assert reason in problem


def test_length_counts_characters_after_nfc() -> None:
    composed_by_nfc = "e\u0301" * MAX_NAME_CHARS  # 2 * MAX code points, MAX characters in NFC
    assert name_problem(composed_by_nfc) is None


_DEFAULT_IGNORABLE = [
    code for item in names_data.DEFAULT_IGNORABLE.split()
    for code in range(int(item.split("-")[0], 16), int(item.split("-")[-1], 16) + 1)]

_IGNORABLE_SET = frozenset(_DEFAULT_IGNORABLE)


def test_every_default_ignorable_character_is_refused_inside_a_name() -> None:
    assert len(_DEFAULT_IGNORABLE) > 4000  # the whole set, not a few samples
    for code in _DEFAULT_IGNORABLE:
        assert name_problem(f"Alice{chr(code)}") is not None, f"U+{code:04X}"
        assert name_problem(f"A{chr(code)}lice") is not None, f"U+{code:04X}"


# --- Properties ---------------------------------------------------------------------------

# Letters and digits of many scripts plus the punctuation a name may hold, so that a good share
# of the generated names pass name_problem and the properties have something to say.
_NAME_ALPHABET = st.one_of(
    st.characters(categories=("Lu", "Ll", "Lo", "Mn", "Mc", "Nd")),
    st.sampled_from("aAbBiIlL1oO0rnmМаΑαİıſßΣσς-_.\u034f\ufe0f\u3164\u200d"),
)
_NAME_LIKE = st.text(_NAME_ALPHABET, min_size=1, max_size=MAX_NAME_CHARS)


@given(_NAME_LIKE)
@example("Alice\u034f")
@example("\u3164")
def test_no_name_that_passes_holds_a_default_ignorable_character(name: str) -> None:
    if name_problem(name) is None:
        assert not any(ord(ch) in _IGNORABLE_SET for ch in unicodedata.normalize("NFC", name))


@given(_NAME_LIKE)
@example("İstanbul")
@example("ıI")
@example("ſtraße")
@example("ΣΊΣΥΦΟΣ")
def test_lookalike_key_is_the_same_in_every_case(name: str) -> None:
    key = lookalike_key(name)
    assert lookalike_key(name.upper()) == key
    assert lookalike_key(name.lower()) == key
    assert lookalike_key(name.casefold()) == key


@given(_NAME_LIKE)
def test_lookalike_key_is_idempotent(name: str) -> None:
    key = lookalike_key(name)
    assert lookalike_key(key) == key


@given(_NAME_LIKE)
def test_names_that_are_the_same_name_look_alike(name: str) -> None:
    assert lookalike_key(name) == lookalike_key(unicodedata.normalize("NFKC", name).casefold())


# --- Look-alikes --------------------------------------------------------------------------


@pytest.mark.parametrize("impostor", [
    "Аlice",   # Cyrillic А
    "Αlice",   # Greek Α
    "AIice",   # capital I for small l
    "A1ice",   # digit one for small l
    "alice", "ALICE", "aLiCe",
    "Ａｌｉｃｅ",  # full-width
    "Alice\u034f", "Alice\ufe0f",  # refused anyway: invisible characters change nothing here
])
def test_names_that_look_like_alice(impostor: str) -> None:
    assert lookalike_key(impostor) == lookalike_key("Alice")


@pytest.mark.parametrize(("name", "impostor"), [
    ("Bob", "B0b"),            # zero for O
    ("Bob", "BOB"),
    ("Mary", "rnary"),         # r n for m
    ("Tim", "Tirn"),
    ("Clara", "CIara"),
    ("Paul", "PauI"),
    ("pop", "рор"),            # all Cyrillic: р and о
    ("Olga", "0lga"),
    ("Nico", "Nісо"),          # Cyrillic і, с and о
    ("Sam", "Ѕаm"),            # Cyrillic Ѕ and а
    ("paypal", "pаypаl"),
    ("Anna", "Аnna"),
    ("ab", "ａｂ"),
])
def test_more_look_alikes(name: str, impostor: str) -> None:
    assert lookalike_key(impostor) == lookalike_key(name)


@pytest.mark.parametrize(("name", "other"), [
    ("Alice", "Bob"),
    ("Alice", "Alicia"),
    ("Bob", "Rob"),
    ("Hana", "Nana"),
    ("Tom", "Tim"),
    ("Mary", "Mark"),
    ("Zoë", "Zoe"),            # the diaeresis shows
    ("小明", "小红"),
    ("さくら", "サクラ"),       # Hiragana and Katakana differ in shape
])
def test_different_names_do_not_look_alike(name: str, other: str) -> None:
    assert lookalike_key(name) != lookalike_key(other)


def test_the_lookalike_reason_names_the_other_panda() -> None:
    assert "looks too much like Alice" in lookalike_problem("Alice")


def test_a_look_alike_costs_ali_all() -> None:
    """The price of comparing in any case (see lookalike_key): i and l are one letter."""
    assert lookalike_key("Ali") == lookalike_key("All")


def test_name_key_ignores_case_and_width() -> None:
    assert name_key("Bob") == name_key("BOB") == name_key("bob") == name_key("Ｂｏｂ")
    assert name_key("Straße") == name_key("STRASSE")
    assert name_key("Bob") != name_key("Bob2")


def test_the_data_names_its_versions() -> None:
    assert names_data.UNICODE_VERSION == "15.0.0"
    assert names_data.CONFUSABLES_VERSION == "18.0.0"
