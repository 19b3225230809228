"""Connections that survive, server side: resuming after a drop, and TLS.

A real ChatServer in a thread and real sockets on 127.0.0.1 (chat_helpers);
TLS certificates are made per test module with trustme. sync() waits until
the server has acted on everything a client sent, by asking @bamboo and
reading up to its fact (a client's lines are handled in order).
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chat_helpers import WAIT_S, Certificates, LineClient, pandas, running_server, sync

import server3
from server3 import ChatServer

ROOT = Path(__file__).resolve().parent.parent
# Long enough never to expire during a test.
RESUME_WINDOW_S = 30.0
# For the test of expiry: short, so that the test is quick.
SHORT_WINDOW_S = 0.5
RESUME = re.compile(r"^\* resume: (\S+) ")
MISSED_LINES = 50
CHUNK = 5  # the missed lines come in chunks of 5, from Alice and Carol in turn
# What a refused TLS client may take to hear so, on a loaded machine.
QUICK_S = 2.0


# --- helpers -----------------------------------------------------------------




def code_of(line: str | None) -> str:
    match = RESUME.match(line or "")
    assert match, f"not a resume line: {line!r}"
    return match.group(1)


def join_with_code(server: ChatServer, name: str) -> tuple[LineClient, str]:
    """A client joined as name, and the resume code on the line right after its
    welcome; its join is over (announced) when this returns."""
    client = LineClient(server.address, name)
    code = code_of(client.next_line())
    sync(client)
    return client, code


def at_prompt(server: ChatServer) -> LineClient:
    client = LineClient(server.address)
    client.expect(r"^\* name: ")
    return client


def try_resume(server: ChatServer, code: str) -> LineClient:
    """A new connection that sends @resume code at the name prompt."""
    client = at_prompt(server)
    client.send(f"@resume {code}")
    return client


def bob_comes_back(server: ChatServer, code: str, watcher: LineClient) -> LineClient:
    """Bob resumes with code: he is welcomed back and watcher sees him back."""
    back = try_resume(server, code)
    back.expect(r"^\* welcome: Welcome back")
    watcher.expect(r"^\* back: Bob is back\.$")
    return back


def expect_refused(client: LineClient) -> None:
    """The resume was refused: one error, then the name prompt again."""
    error = client.next_line() or ""
    assert error.startswith("* error: "), client.seen
    assert (client.next_line() or "").startswith("* name: "), client.seen


def drop(client: LineClient, how: str) -> None:
    if how == "reset":
        client.abort()
    else:
        client.close()


def bob_away(server: ChatServer, how: str = "reset") -> tuple[str, LineClient]:
    """Bob joins, then Alice; Bob's connection drops (how: reset or close).
    Bob's resume code, and Alice, who has seen him lost."""
    bob, code = join_with_code(server, "Bob")
    (alice,) = pandas(server, "Alice")
    drop(bob, how)
    alice.expect(r"^\* lost: Bob ")
    return code, alice


def no_word_of(name: str, kinds: tuple[str, ...], *watchers: LineClient) -> None:
    for watcher in watchers:
        bad = [line for line in watcher.seen
               if any(line.startswith(f"* {kind}: {name} ") for kind in kinds)]
        assert not bad, bad


# --- resume ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["reset", "close"])
def test_a_dropped_panda_comes_back_with_exactly_what_it_missed(how: str) -> None:
    with running_server(resume_window=RESUME_WINDOW_S) as server:
        bob, code = join_with_code(server, "Bob")
        alice, carol, dave = pandas(server, "Alice", "Carol", "Dave")
        sync(bob)
        drop(bob, how)
        for watcher in (alice, carol, dave):
            lost = watcher.expect(r"^\* (lost|leave): Bob ")
            assert re.match(r"^\* lost: Bob lost connection \(.+\)\.$", lost), lost

        expected: list[str] = []
        for chunk in range(MISSED_LINES // CHUNK):
            sender, name = (alice, "Alice") if chunk % 2 == 0 else (carol, "Carol")
            texts = [f"line {chunk * CHUNK + n:02d}" for n in range(1, CHUNK + 1)]
            # With @bamboo in the same write: once its fact is back, the chunk
            # has been relayed to everybody, before the other one speaks.
            sender.send_raw("".join(f"{text}\n" for text in [*texts, "@bamboo"]).encode())
            sender.expect(r"^\* fact: ")
            expected += [f"{name}: {text}" for text in texts]
        dave.expect(rf"^{re.escape(expected[-1])}$")
        assert [line for line in dave.seen if line.startswith(("Alice: ", "Carol: "))] \
            == expected

        back = try_resume(server, code)
        for watcher in (alice, carol, dave):
            watcher.expect(r"^\* back: Bob is back\.$")
        alice.send("live again")
        lines = back.lines_until(r"^Alice: live again$")
        # The grove listing may come anywhere after the resume line; all else is fixed.
        listing = [line for line in lines if line.startswith("* grove: ")]
        assert len(listing) == 1 and "Bob" in listing[0].split(), lines
        assert lines.index(listing[0]) >= 2, lines
        lines.remove(listing[0])
        new_code = code_of(lines[1])
        assert new_code != code
        assert lines == [
            "* welcome: Welcome back to the grove, Bob! Here is what you missed.",
            lines[1],
            *[f"* missed: {line}" for line in expected],
            "Alice: live again",
        ]
        back.send("thanks for waiting")
        for watcher in (alice, carol, dave):
            watcher.expect(r"^Bob: thanks for waiting$")
        no_word_of("Bob", ("leave", "join"), alice, carol, dave)
        assert not any(line.startswith("* missed: ") for line in sync(back)), back.seen


def test_the_name_of_a_panda_away_stays_taken() -> None:
    with running_server(resume_window=RESUME_WINDOW_S) as server:
        code, alice = bob_away(server)
        for spelled in ("Bob", "bOB"):
            newcomer = at_prompt(server)
            newcomer.send(spelled)
            error = newcomer.next_line() or ""
            assert error.startswith("* error: ") and "taken" in error, newcomer.seen
            assert (newcomer.next_line() or "").startswith("* name: "), newcomer.seen
            newcomer.close()
        bob_comes_back(server, code, alice)


def test_after_the_window_the_panda_has_left_and_its_code_is_refused() -> None:
    with running_server(resume_window=SHORT_WINDOW_S) as server:
        bob, code = join_with_code(server, "Bob")
        (alice,) = pandas(server, "Alice")
        sync(bob)
        dropped = time.monotonic()
        bob.abort()
        alice.expect(r"^\* lost: Bob ")
        gone = alice.expect(r"^\* (leave|back|join): Bob ")
        waited = time.monotonic() - dropped
        assert gone == "* leave: Bob left the grove (did not come back).", alice.seen
        assert waited >= SHORT_WINDOW_S * 0.9, f"left after {waited:.2f} s"

        late = try_resume(server, code)
        expect_refused(late)
        # The prompt goes on, and the name is free again.
        assert "Bob" in late.join("Bob")
        alice.expect(r"^\* join: Bob joined the grove\.$")


def test_a_resume_code_works_once() -> None:
    with running_server(resume_window=RESUME_WINDOW_S) as server:
        code, alice = bob_away(server, "close")
        back = bob_comes_back(server, code, alice)

        again = try_resume(server, code)
        expect_refused(again)
        # The panda that came back is untouched by the failed attempt.
        alice.send("still here?")
        back.expect(r"^Alice: still here\?$")
        back.send("still here")
        alice.expect(r"^Bob: still here$")
        assert not back.eof


def test_a_made_up_resume_code_is_refused_and_the_real_one_still_works() -> None:
    with running_server(resume_window=RESUME_WINDOW_S) as server:
        code, alice = bob_away(server)
        near_miss = code[:-1] + ("A" if code[-1] != "A" else "B")
        for guess in ("A" * len(code), near_miss, code.lower() if code != code.lower()
                      else code.upper(), code[:-1], f"{code}x", ""):
            attempt = try_resume(server, guess)
            expect_refused(attempt)
            attempt.close()
        sync(alice)
        no_word_of("Bob", ("back", "leave"), alice)
        bob_comes_back(server, code, alice)


def test_leaves_is_a_goodbye_with_no_resume() -> None:
    with running_server(resume_window=RESUME_WINDOW_S) as server:
        bob, code = join_with_code(server, "Bob")
        (alice,) = pandas(server, "Alice")
        sync(bob)
        bob.send("@leaves")
        assert any(line.startswith("* bye: ") for line in bob.read_until_eof())
        gone = alice.expect(r"^\* (leave|lost): Bob ")
        assert gone == "* leave: Bob left the grove (said goodbye).", alice.seen
        attempt = try_resume(server, code)
        expect_refused(attempt)
        assert "Bob" in attempt.join("Bob")  # the name is free


def test_resume_state_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # The caps are constants; smaller ones make them reachable in a test.
    monkeypatch.setattr(server3, "MAX_AWAY", 2)
    monkeypatch.setattr(server3, "MISSED_LIMIT_BYTES", 1000)
    with running_server(resume_window=RESUME_WINDOW_S) as server:
        (alice,) = pandas(server, "Alice")
        gone = [join_with_code(server, name) for name in ("Bob", "Cat", "Dan")]
        sync(alice)
        for client, _ in gone:
            client.abort()
        notices = sorted(alice.expect(r"^\* (lost|leave): (Bob|Cat|Dan) ") for _ in gone)
        kinds = sorted(line.split(":")[0] for line in notices)
        assert kinds == ["* leave", "* lost", "* lost"], notices  # the third is over the cap
        away = next(code for (_, code), name in zip(gone, ("Bob", "Cat", "Dan"), strict=True)
                    if any(line.startswith(f"* lost: {name} ") for line in notices))
        for i in range(100):  # 100 lines of about 25 bytes: more than an away panda keeps
            alice.send(f"line {i:03d} 0123456")
        sync(alice)
        back = try_resume(server, away)
        back.expect(r"^\* welcome: Welcome back")
        missed = back.lines_until(r"^\* grove: ")[:-1]
        said = [line for line in missed if line.startswith("* missed: Alice: ")]
        assert 0 < len(said) < 100 and said[-1] == "* missed: Alice: line 099 0123456", back.seen
        assert len("".join(said)) < 2000  # bounded, and the newest kept


def test_away_pandas_do_not_count_towards_the_quiet_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server3, "ANNOUNCE_LIMIT", 2)
    with running_server(resume_window=RESUME_WINDOW_S) as server:
        (alice,) = pandas(server, "Alice")
        bob, _ = join_with_code(server, "Bob")
        bob.abort()
        alice.expect(r"^\* lost: Bob ")
        carl = LineClient(server.address, "Carl")  # 2 here, Bob away: not quiet
        assert not any(line.startswith("* quiet: ") for line in carl.lines_until(r"^\* grove: "))
        alice.expect(r"^\* join: Carl joined")


def test_resuming_over_a_half_open_connection_closes_the_old_one() -> None:
    with running_server(resume_window=RESUME_WINDOW_S) as server:
        old, code = join_with_code(server, "Bob")
        (alice,) = pandas(server, "Alice")
        sync(old)
        new = try_resume(server, code)  # the old connection is still open
        new.expect(r"^\* welcome: Welcome back to the grove, Bob!")
        assert code_of(new.next_line()) != code
        old.read_until_eof()  # the server has closed the old connection
        alice.expect(r"^\* back: Bob is back\.$")
        alice.send("which Bob?")
        new.expect(r"^Alice: which Bob\?$")
        new.send("the new one")
        alice.expect(r"^Bob: the new one$")
        assert not any(line == "Alice: which Bob?" for line in old.seen), old.seen


def test_resume_is_off_by_default_in_the_class() -> None:
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        after_welcome = bob.next_line() or ""
        assert after_welcome.startswith("* grove: "), bob.seen
        (alice,) = pandas(server, "Alice")
        bob.abort()
        gone = alice.expect(r"^\* (leave|lost): Bob ")
        assert gone.startswith("* leave: Bob left the grove ("), alice.seen


def test_the_command_line_turns_resume_on() -> None:
    assert server3.parse_args([]).resume_window > 0
    assert server3.parse_args(["--resume-window", "5"]).resume_window == 5.0


# --- TLS -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates.make(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(certs: Certificates) -> Iterator[ChatServer]:
    with running_server(tls=certs.server_context()) as server:
        yield server


def tls_client(server: ChatServer, context: ssl.SSLContext, name: str | None = None,
               hostname: str = "127.0.0.1") -> LineClient:
    """A LineClient whose socket does TLS (the handshake happens here)."""
    client = LineClient(server.address)
    client.sock = context.wrap_socket(client.sock, server_hostname=hostname)
    if name is not None:
        client.join(name)
    return client


def test_two_tls_clients_chat_both_ways(tls_server: ChatServer, certs: Certificates) -> None:
    alice = tls_client(tls_server, certs.client_context(), "Alice")
    bob = tls_client(tls_server, certs.client_context(), "Bob")
    alice.expect(r"^\* join: Bob joined the grove\.$")
    alice.send("hello over TLS")
    bob.expect(r"^Alice: hello over TLS$")
    bob.send("héllo back, 🐼")
    alice.expect(r"^Bob: héllo back, 🐼$")
    for client in (alice, bob):
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3"), client.sock.version()


def test_the_server_context_refuses_tls_below_1_2(certs: Certificates) -> None:
    assert certs.server_context().minimum_version >= ssl.TLSVersion.TLSv1_2


def test_a_plain_client_on_the_tls_port_is_told_and_closed(tls_server: ChatServer,
                                                           certs: Certificates) -> None:
    plain = LineClient(tls_server.address)
    plain.send("Bob")
    lines = plain.read_until_eof(timeout=WAIT_S)
    assert len(lines) == 1 and lines[0].startswith("* error: This grove speaks TLS"), lines
    # The TLS port goes on serving.
    tls_client(tls_server, certs.client_context(), "Alice")


def test_a_tls_client_on_the_plain_port_fails_fast_and_the_server_serves_on(
        certs: Certificates) -> None:
    with running_server() as server:
        (alice,) = pandas(server, "Alice")
        raw = socket.create_connection(server.address, timeout=WAIT_S)
        started = time.monotonic()
        with pytest.raises(ssl.SSLError):
            certs.client_context().wrap_socket(raw, server_hostname="127.0.0.1")
        assert time.monotonic() - started < QUICK_S
        raw.close()
        bob = LineClient(server.address, "Bob")
        alice.expect(r"^\* join: Bob joined the grove\.$")  # Bob hears chat from now on
        alice.send("still serving")
        bob.expect(r"^Alice: still serving$")
        bob.send("yes")
        alice.expect(r"^Bob: yes$")


@pytest.mark.parametrize("problem", ["unknown CA", "wrong host name"])
def test_a_certificate_that_does_not_verify_is_refused(tls_server: ChatServer,
                                                       certs: Certificates,
                                                       problem: str) -> None:
    if problem == "unknown CA":
        context, hostname = ssl.create_default_context(), "127.0.0.1"
    else:
        context, hostname = certs.client_context(), "panda.example"
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_client(tls_server, context, hostname=hostname)
    tls_client(tls_server, certs.client_context(), "Alice")  # the server serves on


def test_a_client_that_never_handshakes_is_closed(monkeypatch: pytest.MonkeyPatch,
                                                  certs: Certificates) -> None:
    monkeypatch.setattr(server3, "TLS_HANDSHAKE_TIMEOUT_S", 0.5)
    with running_server(tls=certs.server_context()) as server:
        silent = LineClient(server.address)  # plain TCP, and not a byte said
        started = time.monotonic()
        assert silent.read_until_eof(timeout=WAIT_S) == []
        waited = time.monotonic() - started
        assert waited >= 0.4, f"closed after {waited:.2f} s, before the handshake timeout"
        tls_client(server, certs.client_context(), "Alice")


def test_closing_the_server_during_a_tls_handshake_is_clean(certs: Certificates) -> None:
    with running_server(tls=certs.server_context()) as server:
        silent = LineClient(server.address)  # plain TCP, the handshake never starts
        # Connections are accepted in order, so silent has its thread by Alice's welcome.
        alice = tls_client(server, certs.client_context(), "Alice")
        server.close()  # what running_server() does on the way out, checked here
        assert alice.read_until_eof()[-1:] == [
            "* shutdown: The server is shutting down. Goodbye!"], alice.seen
        assert silent.read_until_eof() == []


@pytest.mark.parametrize("args", [["--tls-cert", "cert.pem"], ["--tls-key", "key.pem"]])
def test_half_a_tls_configuration_is_one_clear_line_and_exit_code_1(args: list[str]) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "server3.py"), "--port", "0", *args],
                          cwd=ROOT, text=True, capture_output=True, timeout=10, check=False)
    assert done.returncode == 1, (done.returncode, done.stderr)
    said = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(said) == 1, said
    assert "Traceback" not in done.stderr
    assert "--tls-cert" in said[0] and "--tls-key" in said[0], said


def test_an_unreadable_certificate_is_one_clear_line_and_exit_code_1(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    done = subprocess.run([sys.executable, str(ROOT / "server3.py"), "--port", "0",
                           "--tls-cert", str(missing), "--tls-key", str(missing)],
                          cwd=ROOT, text=True, capture_output=True, timeout=10, check=False)
    assert done.returncode == 1, (done.returncode, done.stderr)
    said = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(said) == 1 and "Traceback" not in done.stderr, said
