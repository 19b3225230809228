"""Grove life, server side: whispers, history for newcomers, flood control.

A real ChatServer in a thread and real sockets on 127.0.0.1 (chat_helpers).
"Nothing else arrived" is proven with a marker line said afterwards; sync()
waits until the server has acted on everything a client sent, by asking
@bamboo and reading up to its fact (a client's lines are handled in order).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from chat_helpers import WAIT_S, LineClient, chat_from, pandas, running_server, sync

import server3
from server3 import ChatServer

ROOT = Path(__file__).resolve().parent.parent
HISTORY = re.compile(r"^\* history: \[(\d\d:\d\d)\] (.*)$")

# Flood control: a burst of 50 and 400 lines a second make 2,000 flooded lines
# take (2000 - 50) / 400 = 4.9 s, long enough to chat meanwhile, short enough
# for the suite.
RATE = 400.0
BURST = 50
FLOOD_LINES = 2000
FLOOD_S = (FLOOD_LINES - BURST) / RATE
# The others' chat must not wait behind the flood: a round trip on loopback
# takes a millisecond; half a second is generous for a loaded machine.
ROUND_TRIP_S = 0.5
ROUND_TRIPS = 20
# Between round trips the flood advances this many lines, so that the round
# trips are spread over the throttled part of the flood (20 x 50 = 1,000 lines).
FLOOD_STEP = 50

# History while chat goes on: Alice says CHAT_CHUNK lines at a time with a short
# pause, so that her 3,000 lines are relayed over the time NEWCOMERS joins take.
CHAT_CHUNK = 5
CHAT_PAUSE_S = 0.0005
NEWCOMERS = 50


# --- helpers -----------------------------------------------------------------




def lines_before_marker(sender: LineClient, sender_name: str,
                        *watchers: LineClient) -> list[list[str]]:
    """Have sender say a unique marker; for each watcher, every line it got before it."""
    marker = f"marker-{time.monotonic_ns()}"
    sender.send(marker)
    return [watcher.lines_until(f"^{re.escape(sender_name)}: {marker}$")[:-1]
            for watcher in watchers]


def welcome_to_grove(client: LineClient) -> list[str]:
    """For a client that has just joined: the lines after its welcome, up to the
    grove listing (not included)."""
    return client.lines_until(r"^\* grove: ")[:-1]


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with running_server(name_timeout=10) as chat_server:
        yield chat_server


# --- @whisper ---------------------------------------------------------------------


@pytest.mark.parametrize("spelled", ["Bob", "bob", "BOB"])
def test_a_whisper_reaches_its_target_alone(server: ChatServer, spelled: str) -> None:
    alice, bob, carol = pandas(server, "Alice", "Bob", "Carol")
    alice.send(f"@whisper {spelled} the bamboo is behind the rock")
    assert bob.next_line() == "* whisper: Alice: the bamboo is behind the rock", bob.seen
    assert alice.next_line() == "* whispered: to Bob: the bamboo is behind the rock", alice.seen
    # Nothing else of it anywhere: not to Carol, not again to Bob as chat.
    assert lines_before_marker(alice, "Alice", carol, bob) == [[], []]
    assert not any("behind the rock" in line for line in carol.seen), carol.seen


def test_a_whisper_keeps_its_spaces_and_escapes_control_characters(server: ChatServer) -> None:
    alice, bob = pandas(server, "Alice", "Bob")
    alice.send("@whisper Bob two  spaces and \x1b[2J")
    assert bob.next_line() == "* whisper: Alice: two  spaces and \\x1b[2J", bob.seen


@pytest.mark.parametrize(("command", "reason"), [
    ("@whisper Nobody hello there", "no panda called Nobody"),
    ("@whisper Bob", "@whisper NAME"),
    ("@whisper Bob    ", "@whisper NAME"),
    ("@whisper", "@whisper NAME"),
    ("@whisper Alice talking to myself", "yourself"),
    ("@whisper aLiCe talking to myself", "yourself"),
])
def test_a_whisper_that_cannot_be_delivered_is_an_error_to_the_sender_alone(
        server: ChatServer, command: str, reason: str) -> None:
    alice, bob, carol = pandas(server, "Alice", "Bob", "Carol")
    alice.send(command)
    error = alice.next_line() or ""
    assert error.startswith("* error: ") and reason in error, alice.seen
    assert lines_before_marker(alice, "Alice", bob, carol) == [[], []]
    # And nothing more to Alice either (one error, no whisper, no echo).
    assert sync(alice) == [], alice.seen


def test_a_whisper_never_overtakes_what_its_sender_said_before(server: ChatServer) -> None:
    # Others flood meanwhile, so that chat waits its turn to be sent on: a
    # whisper taking a shorter way would reach Bob before Alice's last lines.
    alice, bob, *flooders = pandas(server, "Alice", "Bob", "F1", "F2", "F3")
    for number, flooder in enumerate(flooders):
        flooder.send_raw(b"".join(b"flood %d %d\n" % (number, i) for i in range(2000)))
    said = [f"line {i}" for i in range(300)]
    alice.send_raw("".join(f"{text}\n" for text in [*said, "@whisper Bob psst"]).encode())
    before = bob.lines_until(r"^\* whisper: Alice: psst$")
    assert chat_from(before, "Alice") == said, before[-5:]


def test_help_lists_whisper(server: ChatServer) -> None:
    (alice,) = pandas(server, "Alice")
    alice.send("@help")
    lines = sync(alice)
    assert any(re.match(r"^\* help: @whisper - \S", line) for line in lines), lines


# --- history for newcomers ----------------------------------------------------------


def test_a_newcomer_gets_the_last_lines_after_the_welcome_in_order_then_live_lines() -> None:
    with running_server(history=5) as server:
        alice, bob = pandas(server, "Alice", "Bob")
        before = time.strftime("%H:%M")
        for number in range(1, 5):
            alice.send(f"line {number}")
        sync(alice)  # relayed, and so in the history
        for number in range(5, 7):
            bob.send(f"line {number}")
        bob.send("@whisper Alice a secret for Alice alone")
        bob.send("@bamboo")
        for number in range(7, 9):
            bob.send(f"line {number}")
        bob.expect(r"^\* fact: ")  # the @bamboo above: sync()'s own fact comes after it
        sync(bob)
        alice_seen_before = len(alice.seen)

        carol = LineClient(server.address)
        welcome = carol.join("Carol")
        before_welcome = carol.seen[:carol.seen.index(welcome)]
        assert not any(HISTORY.match(line) for line in before_welcome), before_welcome
        history = welcome_to_grove(carol)
        after = time.strftime("%H:%M")

        matches = [HISTORY.match(line) for line in history]
        assert all(matches), f"after {welcome!r}: {history}"
        assert [m.group(2) for m in matches if m] == [
            "Alice: line 4", "Bob: line 5", "Bob: line 6", "Bob: line 7", "Bob: line 8"]
        assert all(m.group(1) in (before, after) for m in matches if m), history

        alice.send("live now")
        assert carol.lines_until(r"^Alice: live now$") == ["Alice: live now"], carol.seen
        # The others are not sent the history again.
        lines_before_marker(bob, "Bob", alice)
        assert not any(line.startswith("* history: ") for line in alice.seen[alice_seen_before:])


def test_whispers_and_commands_never_enter_the_history() -> None:
    with running_server(history=10) as server:
        alice, bob = pandas(server, "Alice", "Bob")
        alice.send("@whisper Bob psst")
        alice.send("@grove")
        alice.send("@nonsense")
        alice.send("said aloud")
        sync(alice)
        assert bob.lines_until(r"^Alice: said aloud$") == [
            "* whisper: Alice: psst", "Alice: said aloud"], bob.seen  # the whisper went out
        carol = LineClient(server.address, "Carol")
        history = welcome_to_grove(carol)
        assert len(history) == 1, history
        match = HISTORY.match(history[0])
        assert match and match.group(2) == "Alice: said aloud", history


def test_history_zero_sends_none() -> None:
    with running_server(history=0) as server:
        alice, _ = pandas(server, "Alice", "Bob")
        for number in range(3):
            alice.send(f"line {number}")
        sync(alice)
        carol = LineClient(server.address, "Carol")
        assert welcome_to_grove(carol) == [], carol.seen
        alice.send("live")
        carol.expect(r"^Alice: live$")
        assert not any(line.startswith("* history: ") for line in carol.seen), carol.seen


def test_history_and_live_lines_join_without_a_gap_or_a_repeat_while_chat_goes_on() -> None:
    """Newcomers join while Alice chats without pause: each must see Alice's
    lines 1, 2, 3, ... exactly once, first as history, then live."""
    total = 3000
    with running_server(history=total) as server:
        alice, watcher = pandas(server, "Alice", "Watcher")

        def chatter() -> None:
            for start in range(1, total + 1, CHAT_CHUNK):
                alice.send_raw("".join(f"n {k}\n" for k in range(start, start + CHAT_CHUNK))
                               .encode())
                time.sleep(CHAT_PAUSE_S)  # pacing the load, not a synchronisation

        thread = threading.Thread(target=chatter, daemon=True)
        thread.start()
        watcher.expect(r"^Alice: n 100$")  # the chat is flowing
        newcomers = [LineClient(server.address, f"New{index}") for index in range(NEWCOMERS)]
        thread.join(WAIT_S)
        for newcomer in [watcher, *newcomers]:
            newcomer.expect(rf"^Alice: n {total}$")
        for index, newcomer in enumerate(newcomers):
            numbers: list[int] = []
            kinds: list[str] = []
            for line in newcomer.seen:
                match = HISTORY.match(line)
                text = match.group(2) if match else line
                if text.startswith("Alice: n "):
                    numbers.append(int(text.split()[-1]))
                    kinds.append("history" if match else "live")
            assert "history" in kinds and "live" in kinds, "joined outside the chat: unfair"
            first_live = kinds.index("live")
            assert "history" not in kinds[first_live:], (
                f"New{index}: a history line after the live line {numbers[first_live]}")
            lost = sorted(set(range(1, total + 1)) - set(numbers))
            repeated = sorted(n for n, times in Counter(numbers).items() if times > 1)
            assert numbers == list(range(1, total + 1)), (
                f"New{index}: history ended with line {numbers[first_live - 1]}, live began "
                f"with line {numbers[first_live]}; lost {lost[:20]}, repeated {repeated[:20]}")


# --- flood control ---------------------------------------------------------------


def flood_texts(label: str, count: int) -> list[str]:
    return [f"{label} {number:04d}" for number in range(count)]


def flooded(client: LineClient, label: str) -> list[str]:
    """The texts of the flood lines (label) client got from Flooder, in order."""
    prefix = f"Flooder: {label} "
    return [line.removeprefix("Flooder: ") for line in client.seen if line.startswith(prefix)]


def test_a_flood_is_throttled_with_one_notice_while_the_others_chat_freely() -> None:
    with running_server(rate_limit=RATE, burst=BURST) as server:
        flooder, alice, bob = pandas(server, "Flooder", "Alice", "Bob")
        flood = flood_texts("flood", FLOOD_LINES)
        started = time.monotonic()
        flooder.send_raw("".join(f"{text}\n" for text in flood).encode())
        flooder.expect(r"^\* slow: ")  # the flood is being held back now

        round_trips: list[float] = []
        for trip in range(ROUND_TRIPS):
            alice.expect(rf"^Flooder: flood {BURST + trip * FLOOD_STEP:04d}$")
            sent = time.monotonic()
            alice.send(f"ping {trip}")
            bob.expect(rf"^Alice: ping {trip}$")
            bob.send(f"pong {trip}")
            alice.expect(rf"^Bob: pong {trip}$")
            round_trips.append(time.monotonic() - sent)
        assert flood[-1] not in flooded(alice, "flood"), "the flood was over: not a fair test"
        assert max(round_trips) < ROUND_TRIP_S, [f"{trip:.3f}" for trip in round_trips]

        for client in (alice, bob):
            client.expect(rf"^Flooder: {flood[-1]}$", timeout=FLOOD_S + 10)
        took = time.monotonic() - started
        assert took >= FLOOD_S * 0.8, f"{FLOOD_LINES} lines in {took:.2f} s: not throttled"
        assert took <= FLOOD_S * 2, f"{FLOOD_LINES} lines took {took:.2f} s: over-throttled"
        for client in (alice, bob):
            assert flooded(client, "flood") == flood  # every line, in order, once
        assert [line for line in bob.seen if line.startswith("Alice: ping")] == [
            f"Alice: ping {trip}" for trip in range(ROUND_TRIPS)]
        assert [line for line in alice.seen if line.startswith("Bob: pong")] == [
            f"Bob: pong {trip}" for trip in range(ROUND_TRIPS)]

        sync(flooder)
        slow = [line for line in flooder.seen if line.startswith("* slow: ")]
        assert len(slow) == 1, slow

        # The bucket refills in BURST / RATE seconds; waiting is the rule's
        # condition here, not a synchronisation.
        time.sleep(3 * BURST / RATE)
        again = flood_texts("again", 4 * BURST)
        flooder.send_raw("".join(f"{text}\n" for text in again).encode())
        for client in (alice, bob):
            client.expect(rf"^Flooder: {again[-1]}$")
            assert flooded(client, "again") == again
        sync(flooder)
        slow = [line for line in flooder.seen if line.startswith("* slow: ")]
        assert len(slow) == 2, slow


def test_lines_within_the_burst_get_no_notice_and_no_delay() -> None:
    with running_server(rate_limit=RATE, burst=BURST) as server:
        flooder, alice = pandas(server, "Flooder", "Alice")
        # Every line costs a token, commands too: pandas() spent 2 and the
        # sync() below takes 1, so this stays clear of the burst's end.
        burst = flood_texts("burst", BURST - 10)
        started = time.monotonic()
        flooder.send_raw("".join(f"{text}\n" for text in burst).encode())
        alice.expect(rf"^Flooder: {burst[-1]}$")
        assert time.monotonic() - started < ROUND_TRIP_S
        assert flooded(alice, "burst") == burst
        assert not any(line.startswith("* slow: ") for line in sync(flooder)), flooder.seen


def test_flood_control_is_off_by_default_in_the_class() -> None:
    with running_server() as server:
        flooder, alice = pandas(server, "Flooder", "Alice")
        # Over the command line's burst, and at its rate this would take 45 s.
        flood = flood_texts("flood", 500)
        flooder.send_raw("".join(f"{text}\n" for text in flood).encode())
        alice.expect(rf"^Flooder: {flood[-1]}$", timeout=WAIT_S)
        assert flooded(alice, "flood") == flood
        assert not any(line.startswith("* slow: ") for line in sync(flooder)), flooder.seen


def test_the_command_line_turns_flood_control_and_history_on() -> None:
    defaults = server3.parse_args([])
    assert defaults.rate_limit > 0 and defaults.burst > 0 and defaults.history > 0
    chosen = server3.parse_args(["--rate-limit", "400", "--burst", "50", "--history", "7"])
    assert (chosen.rate_limit, chosen.burst, chosen.history) == (400.0, 50, 7)
    off = server3.parse_args(["--rate-limit", "0", "--history", "0"])
    assert (off.rate_limit, off.history) == (0.0, 0)


def test_help_lists_the_grove_life_options() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "server3.py"), "--help"], cwd=ROOT,
                          text=True, capture_output=True, timeout=10, check=False)
    assert done.returncode == 0, done.stderr
    for option in ["--rate-limit", "--burst", "--history"]:
        assert option in done.stdout, done.stdout
