"""The chat server end to end: a real ChatServer in a thread, real sockets on 127.0.0.1.

Each test states one rule of README's protocol and fails when the server breaks it.
"Nothing else arrived" is proven with a marker: the watcher's lines up to a later
marker line must not hold the forbidden line. sync() waits until the server has
acted on everything a client sent, by asking @bamboo and reading up to its fact.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from chat_helpers import WAIT_S, LineClient, flooding, pandas, running_server, sync

from panda_facts import FACTS
from protocol import MAX_LINE_BYTES, parse_line
from server3 import DEFAULT_BURST, DEFAULT_RATE_LIMIT, ChatServer, Client

COMMAND_WORDS = {"@bamboo", "@grove", "@help", "@leaves"}
GROVE = re.compile(r"^\* grove: (\d+) pandas? here: (.*)$")


# --- helpers -------------------------------------------------------------------




def prompt_client(server: ChatServer) -> LineClient:
    """A connection sitting at the name prompt."""
    client = LineClient(server.address)
    client.expect(r"^\* name: ")
    return client


def lines_before_marker(watcher: LineClient, sender: LineClient, sender_name: str) -> list[str]:
    """Have sender say a unique marker; every line watcher got before it."""
    marker = f"marker-{time.monotonic_ns()}"
    sender.send(marker)
    return watcher.lines_until(f"^{re.escape(sender_name)}: {marker}$")[:-1]


def grove_names(client: LineClient) -> tuple[int, list[str]]:
    """Ask @grove; the count and every name of the listing (grove + more lines)."""
    sync(client)
    client.send("@grove")
    lines = sync(client)
    listing = [line for line in lines if line.startswith(("* grove: ", "* more: "))]
    assert listing, lines
    start = lines.index(listing[0])
    assert lines[start:start + len(listing)] == listing, f"listing not in one piece: {lines}"
    match = GROVE.match(listing[0])
    assert match, listing
    assert all(line.startswith("* more: ") for line in listing[1:]), listing
    names = match.group(2).split()
    for line in listing[1:]:
        names += line.removeprefix("* more: ").split()
    return int(match.group(1)), names


def help_words(client: LineClient) -> list[str]:
    sync(client)
    client.send("@help")
    lines = sync(client)
    assert lines and all(re.match(r"^\* help: @\w+ - \S", line) for line in lines), lines
    return [line.split()[2] for line in lines]


def collect_chat(client: LineClient, counts: dict[str, int],
                 timeout: float = 30.0) -> dict[str, list[str]]:
    """Read until client has counts[name] chat lines from each name; fail on timeout."""
    got: dict[str, list[str]] = {name: [] for name in counts}
    deadline = time.monotonic() + timeout
    while any(len(got[name]) < counts[name] for name in counts):
        line = client.next_line(max(0.0, deadline - time.monotonic()))
        if line is None:
            progress = {name: len(texts) for name, texts in got.items()}
            why = "EOF" if client.eof else "timeout"
            raise AssertionError(f"{progress} of {counts} before {why}; "
                                 f"last lines: {[line[:80] for line in client.seen[-5:]]!r}")
        message = parse_line(line)
        if message.kind == "chat" and message.sender in got:
            got[message.sender].append(message.text)
    return got


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with running_server(name_timeout=10) as chat_server:
        yield chat_server


# --- connecting and naming --------------------------------------------------------


def test_a_new_connection_gets_the_banner_then_the_name_prompt(server: ChatServer) -> None:
    client = LineClient(server.address)
    lines = client.lines_until(r"^\* name: ")
    kinds = [parse_line(line).kind for line in lines]
    assert kinds[-1] == "name"
    assert "art" in kinds and "info" in kinds, lines
    assert set(kinds[:-1]) == {"art", "info"}, lines
    assert kinds.index("info") > kinds.index("art"), "the greeting follows the art"


def test_welcome_then_grove_to_the_newcomer_and_a_join_notice_to_the_others(
        server: ChatServer) -> None:
    alice = LineClient(server.address)
    assert "Alice" in alice.join("Alice")
    assert re.match(r"^\* grove: 1 panda here: Alice$", alice.next_line() or ""), alice.seen

    bob = LineClient(server.address)
    assert "Bob" in bob.join("Bob")
    first = bob.next_line() or ""
    match = GROVE.match(first)
    assert match, f"the line after welcome is {first!r}"
    assert match.group(1) == "2" and sorted(match.group(2).split()) == ["Alice", "Bob"]
    alice.expect(r"^\* join: Bob joined the grove\.$")
    assert not any("Bob joined" in line for line in lines_before_marker(bob, alice, "Alice"))


@pytest.mark.parametrize(("bad_name", "reason"), [
    ("Big Bob", "space"),
    ("x" * 21, "at most 20"),
    ("@bamboo", "@"),
    ("esc\x1b[2J", "control"),
    ("zero\u200bwidth", "invisible"),
])
def test_a_bad_name_is_refused_with_its_reason_and_asked_again(server: ChatServer,
                                                               bad_name: str, reason: str) -> None:
    client = prompt_client(server)
    client.send(bad_name)
    error = client.next_line() or ""
    assert error.startswith("* error: ") and reason in error, error
    assert "\x1b" not in error
    assert (client.next_line() or "").startswith("* name: "), client.seen
    client.join("Good")


def test_names_of_1_and_20_characters_and_any_script_are_fine(server: ChatServer) -> None:
    names = ["b", "x" * 20, "熊猫", "Zoë_the.panda"]
    clients = pandas(server, *names)
    count, listed = grove_names(clients[0])
    assert (count, sorted(listed)) == (4, sorted(names))


@pytest.mark.parametrize("same_name", ["Alice", "alice", "ALICE", "Ａｌｉｃｅ"])
def test_a_taken_name_is_refused_ignoring_case(server: ChatServer, same_name: str) -> None:
    (alice,) = pandas(server, "Alice")
    client = prompt_client(server)
    client.send(same_name)
    error = client.next_line() or ""
    assert error.startswith("* error: ") and "taken" in error, error
    assert (client.next_line() or "").startswith("* name: "), client.seen
    client.join("Alice2")
    count, names = grove_names(alice)
    assert (count, sorted(names)) == (2, ["Alice", "Alice2"])


def test_a_refused_name_is_neither_announced_nor_listed(server: ChatServer) -> None:
    (alice,) = pandas(server, "Alice")
    client = prompt_client(server)
    client.send("Big Bob")
    client.expect(r"^\* name: ")
    assert grove_names(alice) == (1, ["Alice"])
    assert not any(line.startswith("* join: ") for line in alice.seen), alice.seen


def test_blank_lines_at_the_prompt_are_not_a_name(server: ChatServer) -> None:
    client = prompt_client(server)
    client.send_raw(b"\n\r\n   \n\t\n")
    client.join("Bob")
    assert not any(line.startswith("* error:") for line in client.seen), client.seen


def test_a_name_line_may_end_in_crlf(server: ChatServer) -> None:
    (alice,) = pandas(server, "Alice")
    client = prompt_client(server)
    client.send_raw(b"Bob\r\n")
    assert "Bob" in client.expect(r"^\* welcome: ")
    alice.expect(r"^\* join: Bob joined the grove\.$")


def test_an_over_long_line_at_the_prompt_is_refused_and_the_prompt_goes_on(
        server: ChatServer) -> None:
    client = prompt_client(server)
    client.send("n" * (MAX_LINE_BYTES + 100))
    assert (client.next_line() or "").startswith("* error: "), client.seen
    assert (client.next_line() or "").startswith("* name: "), client.seen
    client.join("Bob")


# --- chat -------------------------------------------------------------------------


def test_a_broadcast_reaches_every_other_client_and_not_the_sender(server: ChatServer) -> None:
    names = ["Alice", "Bob", "Carol"]
    clients = dict(zip(names, pandas(server, *names), strict=True))
    for sender in names:
        clients[sender].send(f"hello from {sender}")
        for name in names:
            if name != sender:
                clients[name].expect(f"^{sender}: hello from {sender}$")
    for name in names:  # nobody got their own line back
        other = next(n for n in names if n != name)
        before = lines_before_marker(clients[name], clients[other], other)
        assert not any(line.startswith(f"{name}: ") for line in before), before


def test_a_line_with_an_at_sign_inside_is_chat(server: ChatServer) -> None:
    alice, bob = pandas(server, "Alice", "Bob")
    alice.send("mail me @bamboo please")
    assert bob.next_line() == "Alice: mail me @bamboo please", bob.seen


def test_each_senders_order_holds_over_thousands_of_lines_and_nothing_is_lost(
        server: ChatServer) -> None:
    # Three senders at once, so that their lines are sent on together: each
    # receiver must still get every line, in each sender's order, and no
    # sender its own lines back.
    per_sender = 2000
    senders = ["S0", "S1", "S2"]
    names = [*senders, "R0", "R1"]
    clients = dict(zip(names, pandas(server, *names), strict=True))
    expected = {name: [f"line {i} from {name}" for i in range(per_sender)] for name in senders}

    def send_all(name: str) -> None:
        for text in expected[name]:
            clients[name].send(text)

    with ThreadPoolExecutor(max_workers=len(clients) + len(senders)) as pool:
        reads = {name: pool.submit(collect_chat, client,
                                   {sender: 0 if sender == name else per_sender
                                    for sender in senders})
                 for name, client in clients.items()}
        for sending in [pool.submit(send_all, name) for name in senders]:
            sending.result(timeout=30)
        for name, reading in reads.items():
            for sender, texts in reading.result(timeout=30).items():
                if sender == name:
                    assert texts == [], f"{name} got {len(texts)} of its own lines back"
                else:
                    assert texts == expected[sender], f"{name} got {sender}'s lines out of order"


@pytest.mark.parametrize("blank", [b"\n", b"\r\n", b"   \n", b"\t\n", b" \t \r\n"])
def test_empty_and_whitespace_only_lines_are_never_broadcast(server: ChatServer,
                                                             blank: bytes) -> None:
    alice, bob = pandas(server, "Alice", "Bob")
    alice.send_raw(blank * 3)
    before = lines_before_marker(bob, alice, "Alice")
    assert before == [], before
    assert sync(alice) == [], "the sender is not answered for blank lines either"


@pytest.mark.parametrize(("sent", "shown"), [
    ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),
    ("nul\x00byte", "nul\\x00byte"),
    ("bell\x07", "bell\\x07"),
    ("over\rwrite", "over\\x0dwrite"),
    ("\u202eevil", "\\u202eevil"),
    ("tab\there", "tab here"),
])
def test_control_characters_reach_the_others_escaped(server: ChatServer, sent: str,
                                                     shown: str) -> None:
    alice, bob = pandas(server, "Alice", "Bob")
    alice.send(sent)
    assert bob.next_line() == f"Alice: {shown}", bob.seen


def test_invalid_utf8_and_nul_bytes_arrive_replaced_and_the_server_survives(
        server: ChatServer) -> None:
    alice, bob = pandas(server, "Alice", "Bob")
    alice.send_raw(b"caf\xc3 \xff\xfe ok\n\x00\x00\n\xed\xa0\x80x\n")
    assert bob.next_line() == "Alice: caf\ufffd \ufffd\ufffd ok", bob.seen
    assert bob.next_line() == "Alice: \\x00\\x00", bob.seen
    assert bob.next_line() == "Alice: \ufffd\ufffd\ufffdx", bob.seen
    alice.send("still here")
    assert bob.next_line() == "Alice: still here", bob.seen
    carol = LineClient(server.address, "Carol")
    carol.send("and new pandas can join")
    bob.expect(r"^Carol: and new pandas can join$")


def test_a_chat_line_may_end_in_crlf(server: ChatServer) -> None:
    alice, bob = pandas(server, "Alice", "Bob")
    alice.send_raw(b"windows line\r\n")
    assert bob.next_line() == "Alice: windows line", bob.seen


def test_a_line_of_exactly_the_limit_is_delivered_and_one_byte_more_is_refused(
        server: ChatServer) -> None:
    alice, bob = pandas(server, "Alice", "Bob")
    longest = "é" * (MAX_LINE_BYTES // 2)  # 4096 bytes of two-byte characters
    alice.send(longest)
    assert bob.next_line() == f"Alice: {longest}"
    alice.send("x" + longest)
    error = alice.next_line() or ""
    assert error.startswith("* error: "), alice.seen
    assert lines_before_marker(bob, alice, "Alice") == []


def test_an_over_long_line_gets_one_error_and_the_connection_lives_on(server: ChatServer) -> None:
    alice, bob = pandas(server, "Alice", "Bob")
    alice.send("y" * 100_000)
    error = alice.next_line() or ""
    assert error.startswith("* error: ") and str(MAX_LINE_BYTES) in error, error
    alice.send("after the long one")
    assert bob.next_line() == "Alice: after the long one", bob.seen
    bob.send("can you hear me")
    assert alice.next_line() == "Bob: can you hear me", alice.seen
    assert sync(alice) == []  # one error for one line, however long


def test_a_line_sent_one_byte_per_send_arrives_whole(server: ChatServer) -> None:
    alice, bob = pandas(server, "Alice", "Bob")
    alice.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in "slow panda 🐼 é\r\n".encode():
        alice.send_raw(bytes([byte]))
    assert bob.next_line() == "Alice: slow panda 🐼 é", bob.seen


def test_many_lines_and_commands_in_one_send(server: ChatServer) -> None:
    alice, bob = pandas(server, "Alice", "Bob")
    batch = [f"batch line {i}" for i in range(500)]
    alice.send_raw("".join(f"{text}\n" for text in batch[:250]).encode()
                   + b"@grove\n"
                   + "".join(f"{text}\n" for text in batch[250:]).encode())
    assert bob.lines_until(r"^Alice: batch line 499$") == [f"Alice: {text}" for text in batch]
    assert [parse_line(line).kind for line in sync(alice)] == ["grove"]


# --- commands -----------------------------------------------------------------------


def test_bamboo_gives_a_fact_to_the_asker_alone(server: ChatServer) -> None:
    alice, bob = pandas(server, "Alice", "Bob")
    facts = set()
    for _ in range(20):
        alice.send("@bamboo")
        fact = alice.next_line() or ""
        assert fact.startswith("* fact: "), alice.seen
        facts.add(fact.removeprefix("* fact: "))
    assert facts <= set(FACTS), facts - set(FACTS)
    assert len(facts) > 1, "twenty @bamboo gave one and the same fact"
    assert lines_before_marker(bob, alice, "Alice") == []


def test_grove_lists_everybody_here(server: ChatServer) -> None:
    alice, *_ = pandas(server, "Alice", "bob", "Carol")
    waiting = prompt_client(server)  # not in the grove until named
    count, names = grove_names(alice)
    assert (count, sorted(names)) == (3, ["Alice", "Carol", "bob"])
    waiting.close()


def test_help_has_one_line_per_command(server: ChatServer) -> None:
    (alice,) = pandas(server, "Alice")
    words = help_words(alice)
    assert set(words) >= COMMAND_WORDS, words
    assert len(words) == len(set(words)), words


def test_leaves_says_bye_closes_and_tells_the_others(server: ChatServer) -> None:
    alice, bob = pandas(server, "Alice", "Bob")
    alice.send("@leaves")
    rest = alice.read_until_eof()
    assert rest and rest[-1].startswith("* bye: "), rest
    assert bob.next_line() == "* leave: Alice left the grove (said goodbye).", bob.seen
    assert grove_names(bob) == (1, ["Bob"])
    LineClient(server.address, "alice")  # the name is free again


@pytest.mark.parametrize(("word", "hint"), [
    ("@ww", None),
    ("@bambo", "@bamboo"),
    ("@grov", "@grove"),
    ("@leave", "@leaves"),
])
def test_an_unknown_command_names_the_valid_ones(server: ChatServer, word: str,
                                                 hint: str | None) -> None:
    alice, bob = pandas(server, "Alice", "Bob")
    alice.send(word)
    error = alice.next_line() or ""
    assert error.startswith("* error: "), alice.seen
    assert all(command in error for command in help_words(alice)), error
    if hint is None:
        assert "did you mean" not in error.lower(), error
    else:
        assert f"Did you mean {hint}?" in error, error
    assert lines_before_marker(bob, alice, "Alice") == []  # not broadcast


def test_an_unknown_command_is_echoed_escaped(server: ChatServer) -> None:
    (alice,) = pandas(server, "Alice")
    alice.send("@\x1b[2Jboom")
    error = alice.next_line() or ""
    assert error.startswith("* error: ") and "\x1b" not in error and "\\x1b" in error, error


# --- leaving ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "reset"])
def test_an_abrupt_close_is_a_leave_and_the_server_keeps_serving(server: ChatServer,
                                                                 how: str) -> None:
    alice, bob = pandas(server, "Alice", "Bob")
    alice.send("about to vanish")
    assert bob.next_line() == "Alice: about to vanish"
    alice.close() if how == "close" else alice.abort()
    leave = bob.next_line() or ""
    assert re.match(r"^\* leave: Alice left the grove \((?!said goodbye).+\)\.?$", leave), leave
    carol, _alice = pandas(server, "Carol", "Alice")  # the name was freed
    carol.send("still serving")
    bob.expect(r"^Carol: still serving$")
    assert sorted(grove_names(bob)[1]) == ["Alice", "Bob", "Carol"]


def test_leaving_before_choosing_a_name_is_not_announced(server: ChatServer) -> None:
    (bob,) = pandas(server, "Bob")
    prompt_client(server).abort()
    nameless = prompt_client(server)
    nameless.send_raw(b"Half")
    nameless.close()
    carol = LineClient(server.address, "Carol")
    assert bob.next_line() == "* join: Carol joined the grove.", bob.seen
    carol.close()


def test_a_client_that_never_reads_is_dropped_and_the_others_lose_nothing(
        server: ChatServer) -> None:
    alice, bob = pandas(server, "Alice", "Bob")
    stuck = LineClient(server.address, "Stuck", rcvbuf=4096)  # never reads again
    talkers = {"Alice": alice, "Bob": bob}
    for client in talkers.values():
        client.expect(r"^\* join: Stuck joined")
    # 6 MB to the stuck one: past its kernel buffers (on Linux loopback the
    # server's send buffer autotunes to about 4 MB) and any sane backlog.
    per_sender, pad = 3000, "p" * 1000
    expected = {name: [f"{i} {pad}" for i in range(per_sender)] for name in talkers}

    def send_all(name: str) -> None:
        for text in expected[name]:
            talkers[name].send(text)

    with ThreadPoolExecutor(max_workers=4) as pool:
        reads = {name: pool.submit(collect_chat, talkers[name], {other: per_sender})
                 for name, other in [("Alice", "Bob"), ("Bob", "Alice")]}
        for sending in [pool.submit(send_all, name) for name in talkers]:
            sending.result(timeout=30)
        for name, other in [("Alice", "Bob"), ("Bob", "Alice")]:
            assert reads[name].result(timeout=30)[other] == expected[other]
    for client in talkers.values():
        if not any(line.startswith("* leave: Stuck ") for line in client.seen):
            client.expect(r"^\* leave: Stuck left the grove \(")
    assert sorted(grove_names(alice)[1]) == ["Alice", "Bob"]
    stuck.close()


def live_state() -> tuple[int, int, int]:
    """Client objects alive, threads, open descriptors: in this process, which
    runs both the server and the test's clients."""
    gc.collect()
    clients = sum(isinstance(thing, Client) for thing in gc.get_objects())
    return clients, threading.active_count(), len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_pandas_that_come_and_go_in_every_way_leave_nothing_behind() -> None:
    # One object kept per connection would never show in a short run's memory
    # figures; counted here, it fails at once.
    with running_server(name_timeout=10, resume_window=0.2) as server:
        (steady,) = pandas(server, "Steady")
        before = live_state()
        for number in range(3):
            LineClient(server.address, f"Fin{number}").close()
            LineClient(server.address, f"Rst{number}").abort()
            half = LineClient(server.address, f"Half{number}")
            half.send_raw(b"half a li")
            half.abort()
            prompt_client(server).abort()
            leaver = LineClient(server.address, f"Leaver{number}")
            leaver.send("@leaves")
            leaver.read_until_eof()
            leaver.close()
        for _ in range(3 * 4):  # every named one leaves, at once or when it expires
            steady.expect(r"^\* leave: ")
        deadline = time.monotonic() + WAIT_S
        while live_state() != before and time.monotonic() < deadline:
            time.sleep(0.05)  # the last threads end just after the last notice
        assert live_state() == before
        steady.send("@grove")
        steady.expect(r"^\* grove: 1 panda here: Steady$")


# --- limits ---------------------------------------------------------------------------


def test_no_name_in_time_gets_bye_and_a_close() -> None:
    with running_server(name_timeout=0.5) as server:
        (alice,) = pandas(server, "Alice")  # named in time: stays
        started = time.monotonic()
        idle = prompt_client(server)
        typing = prompt_client(server)
        typing.send_raw(b"Half a na")  # typing without Enter does not reset the clock
        for client in (idle, typing):
            rest = client.read_until_eof(timeout=3.0)
            assert rest and rest[-1].startswith("* bye: "), rest
        assert time.monotonic() - started >= 0.45, "the name timeout came early"
        assert sync(alice) == [], "a connection that never joined is not announced"


def test_a_client_that_keeps_sending_but_never_names_itself_is_timed_out() -> None:
    with running_server(name_timeout=0.5) as server:
        flooder = prompt_client(server)
        with flooding(flooder, b"z" * 65536):  # one never-ending line: no newline, ever
            flooder.expect(r"^\* bye: ", timeout=3.0)


def test_over_max_clients_the_extra_connection_gets_full_then_eof() -> None:
    with running_server(max_clients=2) as server:
        (alice,) = pandas(server, "Alice")
        waiting = prompt_client(server)  # a connection at the prompt counts too
        extra = LineClient(server.address)
        lines = extra.read_until_eof()
        assert any(line.startswith("* full: ") for line in lines), lines
        assert not any(line.startswith("* name: ") for line in lines), lines
        assert sync(alice) == []

        alice.send("@leaves")
        alice.read_until_eof()
        deadline = time.monotonic() + WAIT_S
        while True:  # the place is free as soon as the server has let Alice go
            newcomer = LineClient(server.address)
            first = newcomer.next_line() or ""
            if not first.startswith("* full: "):
                break
            newcomer.close()
            assert time.monotonic() < deadline, "the place Alice left was never freed"
        newcomer.expect(r"^\* name: ")
        newcomer.join("Dave")
        waiting.close()


def test_a_big_grove_is_listed_in_lines_a_client_can_frame_and_goes_quiet() -> None:
    count = 210
    names = [f"panda{i:03d}".ljust(20, "x") for i in range(count)]
    with running_server() as server:
        clients = pandas(server, *names)
        first = clients[0]
        total, listed = grove_names(first)
        assert total == count and sorted(listed) == sorted(names)
        listing = [line for line in first.seen if line.startswith(("* grove: ", "* more: "))]
        too_long = [len(line.encode()) for line in listing if len(line.encode()) > MAX_LINE_BYTES]
        assert not too_long, f"listing lines of {too_long} bytes: a client drops them"
        kinds = [parse_line(line).kind for line in first.seen]
        assert "quiet" in kinds, "over 200 pandas, joins are no longer announced"
        assert "join" not in kinds[kinds.index("quiet"):]
        for client in clients:
            client.close()


# --- stopping -------------------------------------------------------------------------


def test_close_says_shutdown_to_every_connection_then_closes() -> None:
    with running_server() as server:
        alice, bob = pandas(server, "Alice", "Bob")
        waiting = prompt_client(server)
        typing = prompt_client(server)
        typing.send_raw(b"Car")
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 2.0
        for client in (alice, bob, waiting, typing):
            rest = client.read_until_eof()
            assert rest and rest[-1].startswith("* shutdown: "), rest
        server.close()  # idempotent
        with pytest.raises(OSError):
            socket.create_connection(server.address, timeout=WAIT_S).close()


def test_close_says_shutdown_even_to_a_client_that_is_flooding() -> None:
    # Flood control as the command line sets it: without it a reader of the flood
    # falls megabytes behind in kernel buffers, and no goodbye gets through those
    # within the 2 s a shutdown may take.
    with running_server(rate_limit=DEFAULT_RATE_LIMIT, burst=DEFAULT_BURST) as server:
        flooder, alice = pandas(server, "Flood", "Alice")
        with flooding(flooder, b"flood\n" * 1000), ThreadPoolExecutor(max_workers=2) as pool:
            alice.expect(r"^Flood: flood$")  # the flood is on
            endings = {name: pool.submit(client.read_until_eof)
                       for name, client in [("Flood", flooder), ("Alice", alice)]}
            server.close()
            for name, ending in endings.items():
                rest = ending.result(timeout=WAIT_S * 2)
                assert rest and rest[-1].startswith("* shutdown: "), f"{name}: {rest[-3:]}"


def test_shutdown_from_another_thread_ends_serve_forever() -> None:
    server = ChatServer("127.0.0.1", 0)
    assert server.address[0] == "127.0.0.1" and server.address[1] != 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        pandas(server, "Alice")
        server.shutdown()
        thread.join(WAIT_S)
        assert not thread.is_alive()
    finally:
        server.close()


def test_the_server_is_a_context_manager() -> None:
    with ChatServer("127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        (alice,) = pandas(server, "Alice")
    rest = alice.read_until_eof()
    assert rest and rest[-1].startswith("* shutdown: "), rest
    thread.join(WAIT_S)
    assert not thread.is_alive()


def test_close_without_serving_returns() -> None:
    server = ChatServer("127.0.0.1", 0)
    closer = threading.Thread(target=server.close, daemon=True)
    closer.start()
    closer.join(WAIT_S)
    assert not closer.is_alive(), "close() hangs when serve_forever() never ran"


def test_text_from_users_is_never_logged_raw(server: ChatServer,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    alice, bob = pandas(server, "Alice", "Bob")
    nameless = prompt_client(server)
    nameless.send("bad\x1bname")
    nameless.expect(r"^\* name: ")
    alice.send("\x1b[2J chat")
    alice.send("@\x1b[2J")
    alice.send("@whisper Bob \x1b[2J")
    sync(alice)
    nameless.abort()
    alice.abort()
    bob.expect(r"^\* leave: Alice ")
    assert "\x1b" not in caplog.text
