"""protocol.py's payload formats: each format function and its parse function round-trip.

Pure code, no sockets, except the last test: it checks, against the real server, that the
format functions write byte for byte what server3.py sends, so nothing on the wire changes
when the server calls them.
"""

from __future__ import annotations

from chat_helpers import LineClient, running_server, sync
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    Member,
    format_grove_listing,
    format_history,
    format_lost,
    format_mute,
    format_nick,
    format_resume,
    format_slowmode,
    parse_grove_line,
    parse_history,
    parse_line,
    parse_lost,
    parse_mute,
    parse_nick,
    parse_resume,
    parse_slowmode,
    system_line,
)

# What a panda name can be (protocol.name_problem): no whitespace, no "@" first, 1 to 20 chars.
names = st.text(st.characters(blacklist_categories=["Z", "C"]), min_size=1, max_size=20).filter(
    lambda n: not n.startswith("@") and not any(ch.isspace() for ch in n))
clocks = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))
one_line = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=["Cs"]))


def test_the_texts_are_the_ones_on_the_wire() -> None:
    assert format_history("12:03", "Bob: hi") == "[12:03] Bob: hi"
    assert format_lost("Bob", "connection reset") == "Bob lost connection (connection reset)."
    assert format_resume("Ab_9", 30.0) == (
        'Ab_9 is your resume code: if your connection drops, send "@resume Ab_9" instead of a '
        "name within 30 s to come back without missing a line.")
    assert format_grove_listing(["Alice", "Bob"], 400) == [("grove", "2 pandas here: Alice Bob")]
    assert format_grove_listing(["Alice"], 400) == [("grove", "1 panda here: Alice")]
    assert format_grove_listing(["Alice", "Bob", "Carol"], 10) == [
        ("grove", "3 pandas here: Alice Bob"), ("more", "Carol")]


@given(clocks, one_line)
def test_history_round_trips(clock: str, line: str) -> None:
    assert parse_history(format_history(clock, line)) == (clock, line)
    # ... through the system line it travels in, too.
    msg = parse_line(system_line("history", format_history(clock, line)))
    assert msg.kind == "history" and parse_history(msg.text) == (clock, line)


def test_history_that_is_not_stamped_is_none() -> None:
    for text in ("Bob: hi", "[1203] Bob: hi", "[12:03]Bob: hi", ""):
        assert parse_history(text) is None, text


# A line holds at least one marked name: 20 characters and the keeper's "@".
@given(st.lists(names, unique=True, max_size=60), st.data(), st.integers(21, 400))
def test_the_grove_listing_round_trips_with_keepers(listed: list[str], data: st.DataObject,
                                                    line_chars: int) -> None:
    keepers = set(data.draw(st.lists(st.sampled_from(listed), unique=True)) if listed else [])
    lines = format_grove_listing(listed, line_chars, keepers)
    assert lines[0][0] == "grove" and all(kind == "more" for kind, _ in lines[1:])
    parsed = [member for kind, text in lines for member in parse_grove_line(kind, text)]
    assert parsed == [Member(name, name in keepers) for name in listed]
    for _, text in lines[1:]:
        assert len(text) <= line_chars, "a more line is longer than asked"


def test_a_keeper_is_marked_with_an_at() -> None:
    assert parse_grove_line("grove", "3 pandas here: @Teacher Alice Bob") == [
        Member("Teacher", keeper=True), Member("Alice"), Member("Bob")]
    assert parse_grove_line("grove", "0 pandas here:") == []
    assert parse_grove_line("grove", "something else") == []


@given(st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_"),
               min_size=1, max_size=40), st.floats(0.1, 1e6))
def test_the_resume_code_round_trips(code: str, window_s: float) -> None:
    assert parse_resume(format_resume(code, window_s)) == code


def test_a_resume_text_without_a_code_is_none() -> None:
    assert parse_resume("is your resume code") is None
    assert parse_resume("hello there") is None


@given(names, one_line)
def test_the_lost_notice_round_trips(name: str, reason: str) -> None:
    assert parse_lost(format_lost(name, reason)) == (name, reason)


def test_a_lost_notice_of_another_shape_is_none() -> None:
    for text in ("Bob went away", "two words lost connection (x).", "Bob lost connection (x"):
        assert parse_lost(text) is None, text


# --- What the real server sends ----------------------------------------------------------


def test_the_real_server_sends_exactly_what_the_format_functions_write() -> None:
    """server3.py writes these payloads itself today; the format functions must match it byte
    for byte (and, once it calls them, go on matching)."""
    with running_server(history=5, resume_window=30) as server:
        bob = LineClient(server.address, "Bob")
        bob.send("said before")
        sync(bob)
        carol = LineClient(server.address)
        carol.send("Carol")
        lines = carol.lines_until(r"^\* grove: ")
        resume = next(line for line in lines if line.startswith("* resume: "))
        code = parse_resume(parse_line(resume).text)
        assert code is not None
        assert resume == system_line("resume", format_resume(code, 30))
        history = next(line for line in lines if line.startswith("* history: "))
        said = parse_history(parse_line(history).text)
        assert said is not None and said[1] == "Bob: said before"
        assert history == system_line("history", format_history(said[0], "Bob: said before"))
        assert [lines[-1]] == [system_line(kind, text) for kind, text
                               in format_grove_listing(["Bob", "Carol"], 400)]
        carol.abort()
        lost = bob.expect(r"^\* lost: ")
        who = parse_lost(parse_line(lost).text)
        assert who is not None and who[0] == "Carol"
        assert lost == system_line("lost", format_lost("Carol", who[1]))


@given(names, names, st.floats(0.01, 10080, allow_nan=False))
def test_a_mute_round_trips(name: str, keeper: str, minutes: float) -> None:
    said = parse_mute(format_mute(name, keeper, minutes))
    assert said is not None and said[0] == name
    assert f"{said[1]:g}" == f"{minutes:g}"


@given(names, st.floats(0.01, 3600, allow_nan=False))
def test_slow_mode_round_trips_started_ended_and_told(keeper: str, seconds: float) -> None:
    for text in (format_slowmode(seconds, keeper), format_slowmode(seconds)):
        said = parse_slowmode(text)
        assert said is not None and f"{said:g}" == f"{seconds:g}"
    assert parse_slowmode(format_slowmode(0, keeper)) == 0.0
    assert parse_slowmode("something else") is None


@given(names, names)
def test_a_nick_round_trips(old: str, new: str) -> None:
    assert parse_nick(format_nick(old, new)) == (old, new)
