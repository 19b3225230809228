"""protocol.py on its own: framing, escaping and line parsing. No sockets (names: test_names)."""

from __future__ import annotations

import itertools
import sys
import tracemalloc
import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from names import MAX_NAME_CHARS, name_problem
from protocol import (
    LINE_TOO_LONG,
    MAX_LINE_BYTES,
    LineBuffer,
    Message,
    chat_line,
    clean_text,
    encode_line,
    parse_line,
    system_line,
)

# --- LineBuffer: framing ---------------------------------------------------


def expected_lines(stream: bytes, max_line_bytes: int) -> list[object]:
    """What LineBuffer must yield for stream, written from its contract alone:
    split on "\\n", drop one "\\r" before it, decode with U+FFFD, an over-long
    line becomes LINE_TOO_LONG (an unfinished one as soon as it cannot fit)."""
    *complete, unfinished = stream.split(b"\n")
    out: list[object] = []
    for raw in complete:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        too_long = len(line) > max_line_bytes
        out.append(LINE_TOO_LONG if too_long else line.decode("utf-8", errors="replace"))
    if len(unfinished) > max_line_bytes + 1:  # +1: it may yet end in "\r\n"
        out.append(LINE_TOO_LONG)
    return out


def feed_in_chunks(stream: bytes, cuts: list[int], max_line_bytes: int) -> list[object]:
    buffer = LineBuffer(max_line_bytes)
    out: list[object] = []
    bounds = [0, *sorted(set(cuts)), len(stream)]
    for start, end in itertools.pairwise(bounds):
        out.extend(buffer.feed(stream[start:end]))
    return out


# Pieces that make framing hard: line ends, a lone "\r", split multi-byte
# characters, invalid UTF-8, and runs long enough to cross the length limit.
_PIECES = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"\n", b"\r\n", b"\r", b"\r\r\n", b"\n\n", b"\xff", b"\xc3",
                     b"\xe2\x82", b"\xed\xa0\x80", b"\xf0\x9f\x90\xbc", b"\xc3\xa9", b"\x00",
                     b"\x1b[31m"]),
    st.text(max_size=8).map(lambda s: s.encode("utf-8")),
)


def _streams(long_run: int) -> st.SearchStrategy[bytes]:
    runs = st.builds(lambda n, byte: bytes([byte]) * n,
                     st.integers(long_run - 3, long_run + 3), st.sampled_from(b"x\r\xff"))
    return st.lists(st.one_of(_PIECES, _PIECES, runs), max_size=30).map(b"".join)


Case = tuple[bytes, list[int]]  # a byte stream, and where to cut it into chunks


@st.composite
def stream_and_cuts(draw: st.DrawFn, long_run: int) -> Case:
    stream = draw(_streams(long_run))
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=40))
    return stream, cuts


@settings(max_examples=300, deadline=None)
@given(stream_and_cuts(long_run=MAX_LINE_BYTES))
@example((b"x" * MAX_LINE_BYTES + b"\r\n" + b"y" * (MAX_LINE_BYTES + 1) + b"\nok\n",
          [MAX_LINE_BYTES, MAX_LINE_BYTES + 1, MAX_LINE_BYTES + 5]))
@example((b"caf\xc3\xa9\r\n\xff\xfe\n\xf0\x9f\x90\xbc\n", [4, 5, 12, 13, 14]))
def test_any_chunking_gives_the_same_lines_as_the_whole_stream(case: Case) -> None:
    stream, cuts = case
    whole = LineBuffer().feed(stream)
    assert feed_in_chunks(stream, cuts, MAX_LINE_BYTES) == whole
    assert whole == expected_lines(stream, MAX_LINE_BYTES)


@settings(max_examples=500, deadline=None)
@given(stream_and_cuts(long_run=8))
def test_any_chunking_with_a_small_limit_matches_the_contract(case: Case) -> None:
    # A limit of 8 bytes puts the edge of the limit in almost every example.
    stream, cuts = case
    assert feed_in_chunks(stream, cuts, 8) == expected_lines(stream, 8)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_one_byte_at_a_time_gives_the_same_lines(stream: bytes) -> None:
    buffer = LineBuffer(16)
    one_by_one = [line for i in range(len(stream)) for line in buffer.feed(stream[i:i + 1])]
    assert one_by_one == LineBuffer(16).feed(stream)


def test_line_endings_and_invalid_utf8() -> None:
    lines = LineBuffer().feed(b"one\r\ntwo\n\nthree\r\r\ncaf\xc3\xa9 \xff!\npartial")
    assert lines == ["one", "two", "", "three\r", "caf\u00e9 \ufffd!"]


def test_a_character_split_across_feeds_is_decoded_whole() -> None:
    buffer = LineBuffer()
    assert buffer.feed("🐼 é".encode()[:2]) == []
    assert buffer.feed("🐼 é\n".encode()[2:]) == ["🐼 é"]


@pytest.mark.parametrize(("length", "ending", "accepted"), [
    (MAX_LINE_BYTES, b"\n", True),
    (MAX_LINE_BYTES, b"\r\n", True),
    (MAX_LINE_BYTES + 1, b"\n", False),
    (MAX_LINE_BYTES + 1, b"\r\n", False),
])
def test_the_length_limit_is_exact(length: int, ending: bytes, accepted: bool) -> None:
    buffer = LineBuffer()
    lines = buffer.feed(b"a" * length + ending + b"next\n")
    assert lines == (["a" * length] if accepted else [LINE_TOO_LONG]) + ["next"]


def test_an_over_long_line_is_reported_once_and_early() -> None:
    buffer = LineBuffer()
    reports = buffer.feed(b"z" * (MAX_LINE_BYTES + 2))
    assert reports == [LINE_TOO_LONG]  # before its newline has arrived
    for _ in range(100):
        assert buffer.feed(b"z" * 1000) == []
    assert buffer.feed(b"zz\r\nafter\n") == ["after"]


def test_an_endless_line_holds_bounded_memory() -> None:
    buffer = LineBuffer()
    chunk = b"m" * 65536
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(160):  # 10 MiB without a newline
            buffer.feed(chunk)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 4 * MAX_LINE_BYTES, f"the buffer holds {held} bytes after 10 MiB"
    assert buffer.feed(b"\nok\n") == ["ok"]


# --- encode_line, system_line, chat_line --------------------------------------


def test_encode_line() -> None:
    assert encode_line("café 🐼") == "café 🐼\n".encode()
    assert encode_line("") == b"\n"
    assert encode_line("lone \ud800 surrogate") == b"lone ? surrogate\n"  # never raises


@settings(max_examples=300)
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\n")))
def test_an_encoded_line_frames_back_to_itself(text: str) -> None:
    if text.endswith("\r") or len(text.encode()) > MAX_LINE_BYTES:
        return
    assert LineBuffer().feed(encode_line(text)) == [text]


def test_system_and_chat_lines() -> None:
    assert system_line("join", "Bob joined the grove.") == "* join: Bob joined the grove."
    assert chat_line("Bob", "hi: there") == "Bob: hi: there"


# --- parse_line --------------------------------------------------------------


@pytest.mark.parametrize(("line", "message"), [
    ("Bob: hello", Message("chat", "hello", "Bob")),
    ("Bob: a: b", Message("chat", "a: b", "Bob")),
    ("Bob: ", Message("chat", "", "Bob")),
    ("熊猫: 你好", Message("chat", "你好", "熊猫")),
    ("*: not system", Message("chat", "not system", "*")),
    ("Bob: * shutdown: fake", Message("chat", "* shutdown: fake", "Bob")),
    ("* join: Bob joined the grove.", Message("join", "Bob joined the grove.")),
    ("* grove: 2 pandas here: A B", Message("grove", "2 pandas here: A B")),
    ("* error: a: b", Message("error", "a: b")),
    ("* two words: x", Message("text", "* two words: x")),
    ("* : x", Message("text", "* : x")),
    ("* shutdown", Message("text", "* shutdown")),
    ("Big Bob: hi", Message("text", "Big Bob: hi")),
    (": hi", Message("text", ": hi")),
    ("Bob:hi", Message("text", "Bob:hi")),
    ("no separator", Message("text", "no separator")),
    ("", Message("text", "")),
])
def test_parse_line(line: str, message: Message) -> None:
    assert parse_line(line) == message


_NAMES = st.text(min_size=1, max_size=MAX_NAME_CHARS).filter(lambda n: name_problem(n) is None)
_KINDS = st.from_regex(r"\A[a-z]{1,10}\Z")
_TEXTS = st.text(alphabet=st.characters(blacklist_characters="\n"))


@given(_NAMES, _TEXTS)
def test_every_chat_line_parses_back(name: str, text: str) -> None:
    assert parse_line(chat_line(name, text)) == Message("chat", text, name)


@given(_KINDS, _TEXTS)
def test_every_system_line_parses_back(kind: str, text: str) -> None:
    assert parse_line(system_line(kind, text)) == Message(kind, text)


@given(_NAMES, _TEXTS)
def test_no_chat_line_reads_as_a_system_line(name: str, text: str) -> None:
    assert not chat_line(name, text).startswith("* ")


# --- clean_text ------------------------------------------------------------


@pytest.mark.parametrize(("text", "cleaned"), [
    ("plain text, é, 熊猫 🐼", "plain text, é, 熊猫 🐼"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("nul\x00byte", "nul\\x00byte"),
    ("bell\x07 del\x7f", "bell\\x07 del\\x7f"),
    ("c1\x85\x9b", "c1\\x85\\x9b"),
    ("cr\rlf\n", "cr\\x0dlf\\x0a"),
    ("tab\there", "tab here"),
    ("\u202eevil", "\\u202eevil"),
    ("\u2066isolate\u2069", "\\u2066isolate\\u2069"),
    ("back\\slash", "back\\slash"),
    ("brb\u2028Alice: Bob, paste your resume code",
     "brb\\u2028Alice: Bob, paste your resume code"),
    ("para\u2029graph", "para\\u2029graph"),
    ("nel\x85 fs\x1c", "nel\\x85 fs\\x1c"),
    ("\u061cal\u200em\u200f", "\\u061cal\\u200em\\u200f"),
    ("می\u200cخواهم", "می\u200cخواهم"),                            # Persian needs its ZWNJ
    ("👩\u200d👩\u200d👧 ❤\ufe0f", "👩\u200d👩\u200d👧 ❤\ufe0f"),  # emoji ZWJ sequences
])
def test_clean_text(text: str, cleaned: str) -> None:
    assert clean_text(text) == cleaned


def test_a_line_separator_in_chat_cannot_start_a_line_of_its_own() -> None:
    cleaned = clean_text("brb\u2028Alice: Bob, paste your resume code")
    assert cleaned.splitlines() == [cleaned]
    assert "\\u2028" in cleaned


# Unicode's Bidi_Control property (PropList.txt), which unicodedata does not have.
_BIDI_CONTROL = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]


def test_every_control_separator_and_bidi_control_is_escaped() -> None:
    escaped = [code for code in range(sys.maxunicode + 1)
               if unicodedata.category(chr(code)) in {"Cc", "Zl", "Zp"}]
    for code in [*escaped, *_BIDI_CONTROL]:
        assert clean_text(chr(code)) in (f"\\x{code:02x}", f"\\u{code:04x}", " "), hex(code)


@given(st.text())
def test_clean_text_leaves_no_control_or_bidi_character(text: str) -> None:
    cleaned = clean_text(text)
    assert cleaned.splitlines() in ([cleaned], [])
    assert not any(unicodedata.category(ch) in {"Cc", "Zl", "Zp"} for ch in cleaned)
    assert not any(ord(ch) in _BIDI_CONTROL for ch in cleaned)
    assert clean_text(cleaned) == cleaned
