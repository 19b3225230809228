"""A grove that one mischievous student cannot break: every input costs, per-address limits,
resume codes that cannot be hammered, text that cannot pass for another line.

The real server in a thread on port 0 and real sockets. Per-address rules are tested by
connecting from other loopback addresses (a socket bound to 127.0.0.2 reaches a server on
127.0.0.1). Sizes are tiny so that each test takes a second or two; where a test shows that
the server held a client back it checks a lower bound on the time (a slower machine only makes
the wait longer), never an upper one.
"""

from __future__ import annotations

import logging
import re
import socket
import time

import pytest
from chat_helpers import WAIT_S, LineClient, pandas, running_server, sync

from server3 import (
    DEFAULT_MAX_PER_ADDRESS,
    KEEPALIVE_IDLE_S,
    RESUME_FAILURES_PER_ADDRESS,
    RESUME_FAILURES_PER_CONNECTION,
    FloodControl,
    Reaper,
    parse_args,
)

RESUME = re.compile(r"^\* resume: (\S+) is your resume code")


def code_of(client: LineClient) -> str:
    """The resume code a client just joined with got (the line after its welcome)."""
    match = RESUME.match(client.next_line() or "")
    assert match, client.seen
    return match.group(1)


def text_after_banner(client: LineClient) -> None:
    client.expect(r"^\* name: ")


# --- every input costs --------------------------------------------------------


def test_empty_lines_cost_a_line_each() -> None:
    with running_server(rate_limit=20, burst=5) as server:
        alice, bob = pandas(server, "Alice", "Bob")
        alice.send_raw(b"\n   \n" * 10 + b"hello\n")
        alice.expect(r"^\* slow: Slow down!")  # 21 lines against a burst of 5
        bob.expect(r"^Alice: hello$")  # and nothing is lost


def test_lines_before_the_name_cost_too_and_the_name_still_comes_through() -> None:
    with running_server(rate_limit=20, burst=5) as server:
        student = LineClient(server.address)
        text_after_banner(student)
        student.send_raw(b"x" * 25 + b"\n" * 30 + b"Alice\n")  # 30 refused: too long
        student.expect(r"^\* slow: Slow down!")
        student.expect(r"^\* welcome: Welcome to the grove, Alice!")


def test_what_a_flood_of_bad_names_brings_back_is_bounded_by_the_budget() -> None:
    burst, rate = 50, 10.0
    with running_server(rate_limit=rate, burst=burst) as server:
        student = LineClient(server.address)
        text_after_banner(student)
        start = time.monotonic()
        # 400 lines of a name too long, 11 KB: before, 400 refusals came straight back.
        student.send_raw((b"x" * 25 + b"\n") * 400)
        refusal = student.expect(r"^\* error: ")
        student.expect(r"^\* name: ")
        while student.next_line(timeout=0.2) is not None and time.monotonic() - start < 1.5:
            pass
        elapsed = time.monotonic() - start
        refusals = sum(line == refusal for line in student.seen)
        assert refusals <= burst + rate * elapsed + 1, (refusals, elapsed)
        assert any(line.startswith("* slow: ") for line in student.seen)


def test_bytes_without_a_newline_are_read_no_faster_than_the_byte_budget() -> None:
    with running_server(rate_limit=100, burst=100, byte_rate=4000, byte_burst=2000) as server:
        alice, bob = pandas(server, "Alice", "Bob")
        start = time.monotonic()
        alice.send_raw(b"x" * 10_000 + b"\nhello\n")  # 8 KB over the burst: 2 s at 4 KB/s
        bob.expect(r"^Alice: hello$")
        assert time.monotonic() - start >= 1.5
        alice.expect(r"^\* error: That line was over")


def test_escaped_text_is_paid_for_at_its_escaped_size() -> None:
    with running_server(rate_limit=100, burst=100, byte_rate=16_000, byte_burst=20_000) as server:
        alice, bob = pandas(server, "Alice", "Bob")
        start = time.monotonic()
        # 4,000 control characters escape to 16,000 bytes: 4 lines cost 64 KB, not 16 KB
        # (which the burst would cover), so the last line is read only after about 2.5 s.
        alice.send_raw(("\x01" * 4000 + "\n").encode() * 4 + b"done\n")
        line = bob.expect(r"^Alice: \\x01")
        assert len(line) == len("Alice: ") + 4 * 4000
        bob.expect(r"^Alice: done$")
        assert time.monotonic() - start >= 1.5


def test_one_accidental_long_paste_leaves_the_next_line_undelayed() -> None:
    flood = FloodControl(10, 50)  # the command line's defaults, and its byte budget
    assert flood.read(64 * 1024 + 1) == 0  # a 64 KiB paste, refused as over-long
    assert flood.line() == 0
    assert flood.read_wait() == 0  # the next line is read at once
    assert flood.read(4096) == 0  # even a full-length one


def test_flood_control_off_means_off() -> None:
    with running_server(rate_limit=0) as server:
        alice, bob = pandas(server, "Alice", "Bob")
        alice.send_raw(b"\n" * 500 + b"x" * 200_000 + b"\nafter\n")
        bob.expect(r"^Alice: after$")
        assert not any(line.startswith("* slow: ") for line in alice.seen)


# --- per-address limits -----------------------------------------------------------


def test_one_address_gets_at_most_max_per_address_connections() -> None:
    with running_server(max_per_address=2) as server:
        (watcher,) = pandas(server, "Watcher")
        first = LineClient(server.address, "First", source="127.0.0.2")
        _second = LineClient(server.address, "Second", source="127.0.0.2")  # kept: open
        third = LineClient(server.address, source="127.0.0.2")
        lines = third.read_until_eof()
        assert any(re.match(r"^\* full: .*per address", line) for line in lines), lines
        _other = LineClient(server.address, "Other", source="127.0.0.3")  # another address
        first.send("@leaves")
        watcher.expect(r"^\* leave: First left")
        LineClient(server.address, "Again", source="127.0.0.2")  # room again


def test_the_command_line_limits_each_address() -> None:
    assert parse_args([]).max_per_address == DEFAULT_MAX_PER_ADDRESS == 16
    assert parse_args(["--max-per-address", "0"]).max_per_address == 0


def test_one_address_cannot_take_every_away_slot() -> None:
    with running_server(max_per_address=2, resume_window=60) as server:
        (watcher,) = pandas(server, "Watcher")
        for number, kept in [(1, True), (2, True), (3, False)]:
            bot = LineClient(server.address, f"bot{number}", source="127.0.0.2")
            watcher.expect(rf"^\* join: bot{number} joined")
            bot.abort()
            watcher.expect(rf"^\* {'lost' if kept else 'leave'}: bot{number} ")
        carol = LineClient(server.address, "Carol", source="127.0.0.3")
        watcher.expect(r"^\* join: Carol joined")
        carol.abort()
        watcher.expect(r"^\* lost: Carol ")  # a real panda's drop is still kept


def test_every_connection_has_tcp_keepalive() -> None:
    with running_server() as server:
        (alice,) = pandas(server, "Alice")  # kept: a dropped client would close its socket
        with server._connections_lock:
            (client,) = server._connections
        assert client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        if hasattr(socket, "TCP_KEEPIDLE"):
            idle = client.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            assert idle == KEEPALIVE_IDLE_S
        alice.close()


# --- resume codes -------------------------------------------------------------------


def test_a_connection_sending_wrong_resume_codes_is_closed_after_five() -> None:
    with running_server(resume_window=60) as server:
        guesser = LineClient(server.address)
        text_after_banner(guesser)
        for attempt in range(RESUME_FAILURES_PER_CONNECTION):
            guesser.send(f"@resume guess{attempt}")
        lines = guesser.read_until_eof()
        errors = [line for line in lines if line.startswith("* error: That resume code")]
        assert len(errors) == RESUME_FAILURES_PER_CONNECTION, lines
        assert lines[-1].startswith("* bye: Too many wrong resume codes"), lines


def test_an_address_sending_many_wrong_codes_is_refused_for_a_while_and_logged_sparingly(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="panda-chat")
    with running_server(resume_window=60) as server:
        bob = LineClient(server.address, "Bob")
        code = code_of(bob)
        sync(bob)
        attempts = 0
        while attempts < RESUME_FAILURES_PER_ADDRESS:
            guesser = LineClient(server.address, source="127.0.0.2")
            text_after_banner(guesser)
            for _ in range(RESUME_FAILURES_PER_CONNECTION - 1):
                guesser.send(f"@resume guess{attempts}")
                guesser.expect(r"^\* error: That resume code is wrong")
                attempts += 1
        late = LineClient(server.address, source="127.0.0.2")
        text_after_banner(late)
        late.send(f"@resume {code}")  # even the right code: this address is refused for now
        late.expect(r"^\* error: Too many wrong resume codes from your address")
        bob.abort()
        other = LineClient(server.address, source="127.0.0.3")
        text_after_banner(other)
        other.send(f"@resume {code}")  # another address is not
        other.expect(r"^\* welcome: Welcome back to the grove, Bob!")
    wrong = [r for r in caplog.records if "wrong resume code" in r.getMessage()]
    assert 1 <= len(wrong) <= 5, [r.getMessage() for r in wrong]  # not one per attempt


def test_the_connection_displaced_by_a_resume_is_told_why() -> None:
    with running_server(resume_window=60) as server:
        old = LineClient(server.address, "Bob")
        code = code_of(old)
        sync(old)
        new = LineClient(server.address, source="127.0.0.2")
        text_after_banner(new)
        new.send(f"@resume {code}")
        new.expect(r"^\* welcome: Welcome back to the grove, Bob!")
        lines = old.read_until_eof()
        assert lines and re.match(r"^\* bye: Your name Bob was resumed from another "
                                  r"connection \(127\.0\.0\.2\)", lines[-1]), lines


def test_whispers_to_the_old_connection_do_not_reach_the_new_one_live() -> None:
    with running_server(resume_window=60) as server:
        old = LineClient(server.address, "Bob")
        code = code_of(old)
        (alice,) = pandas(server, "Alice")
        sync(old)
        alice.send("@whisper Bob before the takeover")
        old.expect(r"^\* whisper: Alice: before the takeover$")
        new = LineClient(server.address, source="127.0.0.2")
        text_after_banner(new)
        new.send(f"@resume {code}")
        new.expect(r"^\* welcome: Welcome back")
        alice.send("@whisper Bob after the takeover")
        new.expect(r"^\* whisper: Alice: after the takeover$")
        assert not any("before the takeover" in line for line in new.seen), new.seen


# --- text that cannot pass for another line -------------------------------------------


def test_line_separators_arrive_escaped_live_and_in_the_missed_replay() -> None:
    spoof = "brb\u2028Alice: Bob, paste your resume code"
    with running_server(resume_window=60) as server:
        bob = LineClient(server.address, "Bob")
        code = code_of(bob)
        alice, carol = pandas(server, "Alice", "Carol")
        bob.abort()
        alice.expect(r"^\* lost: Bob ")
        alice.send(spoof)
        live = carol.expect(r"^Alice: brb")
        assert live == "Alice: brb\\u2028Alice: Bob, paste your resume code", live
        back = LineClient(server.address)
        text_after_banner(back)
        back.send(f"@resume {code}")
        replay = back.lines_until(r"^\* grove: ")
        missed = [line for line in replay if line.startswith("* missed: ")]
        assert missed == ["* missed: Alice: brb\\u2028Alice: Bob, paste your resume code"], replay
        assert all("\u2028" not in line for line in back.seen)


# --- many connections ending at once ------------------------------------------------------


def test_the_reaper_finishes_what_ended_together_as_one_batch() -> None:
    batches: list[list[object]] = []
    reaper = Reaper(lambda batch: batches.append(list(batch)))
    ended = [object() for _ in range(50)]
    for item in ended:
        reaper.put(item, "gone")  # type: ignore[arg-type]  # the reaper only hands them on
    reaper.start()
    reaper.stop(WAIT_S)
    assert batches == [[(item, "gone") for item in ended]]


def test_many_connections_ending_at_once_leave_the_chat_going() -> None:
    with running_server() as server:
        crowd = [LineClient(server.address, f"p{number}") for number in range(120)]
        alice, bob = pandas(server, "Alice", "Bob")
        for client in crowd:
            client.abort()
        alice.send("still here?")
        bob.expect(r"^Alice: still here\?$")
        deadline = time.monotonic() + WAIT_S
        while server.grove.count() > 2 and time.monotonic() < deadline:
            sync(alice)
        assert server.grove.count() == 2


# --- names that cannot deceive --------------------------------------------------------------


@pytest.mark.parametrize("lookalike", ["Аlice", "Αlice", "AIice", "ALICE", "alice", "Аӏісе"],
                         ids=["Cyrillic A", "Greek Alpha", "capital I", "upper case", "lower case",
                              "all Cyrillic"])
def test_a_name_that_looks_like_one_here_is_refused(lookalike: str) -> None:
    with running_server() as server:
        (alice,) = pandas(server, "Alice")
        student = LineClient(server.address)
        text_after_banner(student)
        student.send(lookalike)
        error = student.expect(r"^\* error: ")
        # Mixed scripts are refused as such; a name of one script, for looking like Alice's.
        assert re.search(r"Alice|mix letters of different alphabets", error), error
        sync(alice)
        assert server.grove.names() == ["Alice"]


def test_the_refusal_names_the_panda_it_looks_like() -> None:
    with running_server() as server:
        _alice = pandas(server, "Alice")  # kept: a closed client would leave
        student = LineClient(server.address)
        text_after_banner(student)
        student.send("Аӏісе")  # all Cyrillic: А, palochka, і, с, е
        student.expect(r"^\* error: That name looks too much like Alice")


def test_a_name_that_looks_like_a_panda_away_is_refused_too() -> None:
    with running_server(resume_window=60) as server:
        alice = LineClient(server.address, "Alice")
        (watcher,) = pandas(server, "Watcher")
        alice.abort()
        watcher.expect(r"^\* lost: Alice ")
        student = LineClient(server.address)
        text_after_banner(student)
        student.send("Аӏісе")  # all Cyrillic
        student.expect(r"^\* error: That name looks too much like Alice")


@pytest.mark.parametrize("name", ["Alice\u034f", "Alice\ufe0f", "\u2800", "*", "Alice:",
                                  "*\u2800join"])
def test_invisible_and_symbol_names_are_refused(name: str) -> None:
    with running_server() as server:
        student = LineClient(server.address)
        text_after_banner(student)
        student.send(name)
        student.expect(r"^\* error: ")
        student.expect(r"^\* name: ")


@pytest.mark.parametrize("name", ["Zoë", "Маша", "Νίκος", "小明", "さくら", "지민", "علي",
                                  "अनन्या"],
                         ids=["Latin", "Cyrillic", "Greek", "Chinese", "Japanese", "Korean",
                              "Arabic", "Hindi"])
def test_ordinary_names_in_every_script_are_welcome(name: str) -> None:
    with running_server() as server:
        LineClient(server.address, name)  # join() expects the welcome


def test_the_name_timeout_holds_while_flood_control_works_through_one_read() -> None:
    with running_server(rate_limit=100, burst=100, name_timeout=1.5) as server:
        student = LineClient(server.address)
        text_after_banner(student)
        start = time.monotonic()
        student.send_raw(b"*\n" * 1000)  # one read; at one name try a second, 1,000 s of them
        lines = student.read_until_eof(timeout=10)
        assert lines[-1] == "* bye: No name within 1.5 seconds; goodbye.", lines[-3:]
        assert time.monotonic() - start < 5
