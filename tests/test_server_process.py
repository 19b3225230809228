"""server3.py as people run it: a subprocess started from the command line.

Covers what only a process shows: its options, signals, exit codes, what it
prints, and its memory. Every wait has a timeout; the server is killed at the
end of each test whatever happened.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from chat_helpers import WAIT_S, LineClient, flooding

from server3 import PR_FUTEX_HASH

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "server3.py"
START_S = 10.0  # a cold interpreter on a loaded CI machine
STOP_S = 2.0  # the README's promise for Ctrl+C and SIGTERM


def joined(address: tuple[str, int], name: str) -> LineClient:
    """A client joined as name, once the server counts it in (a fact answered after
    the welcome shows that the server has moved past the join)."""
    client = LineClient(address, name)
    client.send("@bamboo")
    client.expect(r"^\* fact: ")
    return client


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """python3 server3.py ARGS, with its stderr read into lines by a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), *args], cwd=ROOT, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
        self.stdout = ""
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [threading.Thread(target=self._read_stderr, daemon=True),
                         threading.Thread(target=self._read_stdout, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.stderr.append(line.rstrip("\n"))
                self._changed.notify_all()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()

    def wait_for_stderr(self, pattern: str, timeout: float = START_S) -> str:
        """The first stderr line matching pattern; fails on timeout or exit."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.stderr:
                    if re.search(pattern, line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._readers[0]
                                      .is_alive()):
                    raise AssertionError(f"no stderr line matching {pattern!r}; "
                                         f"exit code {self.proc.poll()}; stderr: {self.stderr}")
                self._changed.wait(min(remaining, 0.2))

    def wait(self, timeout: float) -> int:
        """The exit code; fails unless the process ends within timeout."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s; "
                                 f"stderr: {self.stderr}") from None
        for reader in self._readers:
            reader.join(WAIT_S)
        return code

    def rss_kib(self, field: str = "VmRSS") -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
        assert match, status
        return int(match.group(1))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT_S)
        for reader in self._readers:
            reader.join(WAIT_S)


StartServer = Callable[..., tuple[ServerProcess, tuple[str, int]]]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """start_server(*args, host=...) -> (process, address), once it says it listens."""
    started: list[ServerProcess] = []

    def start(*args: str, host: str = "127.0.0.1") -> tuple[ServerProcess, tuple[str, int]]:
        port = free_port(host)
        server = ServerProcess("--host", host, "--port", str(port), *args)
        started.append(server)
        server.wait_for_stderr(rf"listening on .*\b{port}\b")
        return server, (host, port)

    yield start
    for server in started:
        server.kill()


def test_help_lists_the_options() -> None:
    done = subprocess.run([sys.executable, str(SERVER), "--help"], cwd=ROOT, text=True,
                          capture_output=True, timeout=START_S, check=False)
    assert done.returncode == 0, done.stderr
    for option in ["--host", "--port", "--max-clients", "--name-timeout", "--log-level"]:
        assert option in done.stdout, done.stdout
    assert "Traceback" not in done.stderr


def test_the_command_line_options_reach_the_server(start_server: StartServer) -> None:
    _, address = start_server("--max-clients", "1", "--name-timeout", "0.5")
    waiting = LineClient(address)
    waiting.expect(r"^\* name: ")
    extra = LineClient(address)
    assert any(line.startswith("* full: ") for line in extra.read_until_eof())
    rest = waiting.read_until_eof(timeout=3.0)
    assert rest and rest[-1].startswith("* bye: "), rest


def test_a_port_in_use_is_one_clear_line_and_exit_code_1() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = ServerProcess("--port", str(port))
        try:
            code = server.wait(START_S)
        finally:
            server.kill()
    assert code == 1
    said = [line for line in server.stderr if line.strip()]
    assert len(said) == 1, said
    assert str(port) in said[0] and re.search(r"in use|already", said[0], re.IGNORECASE), said


def test_ipv6_loopback(start_server: StartServer) -> None:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            pass
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    _, address = start_server(host="::1")
    alice = joined(address, "Alice")
    bob = joined(address, "Bob")
    alice.expect(r"^\* join: Bob joined")
    bob.send("hello over IPv6")
    alice.expect(r"^Bob: hello over IPv6$")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_says_shutdown_to_everybody_and_exits_0(start_server: StartServer,
                                                         signum: signal.Signals) -> None:
    server, address = start_server()
    alice = joined(address, "Alice")
    bob = joined(address, "Bob")
    waiting = LineClient(address)
    waiting.expect(r"^\* name: ")
    typing = LineClient(address)
    typing.expect(r"^\* name: ")
    typing.send_raw(b"Car")
    flooder = LineClient(address, "Flood")
    clients = [alice, bob, waiting, typing, flooder]
    with (flooding(flooder, (b"flood " + b"f" * 200 + b"\n") * 20),
          ThreadPoolExecutor(max_workers=len(clients)) as pool):
        alice.expect(r"^Flood: flood ")  # the flood is on
        readers = [pool.submit(client.read_until_eof, START_S) for client in clients]
        signalled = time.monotonic()
        server.proc.send_signal(signum)
        code = server.wait(STOP_S)
        took = time.monotonic() - signalled
        endings = [reader.result(timeout=START_S) for reader in readers]
    assert code == 0, server.stderr
    assert took <= STOP_S
    for name, rest in zip(["Alice", "Bob", "waiting", "typing", "Flood"], endings, strict=True):
        assert rest and rest[-1].startswith("* shutdown: "), f"{name} got {rest[-3:]}"
    assert not any("Traceback" in line for line in server.stderr), server.stderr
    assert re.search(r"stop|bye", server.stderr[-1], re.IGNORECASE), server.stderr[-3:]


def test_an_endless_line_keeps_server_memory_bounded(start_server: StartServer) -> None:
    # Flood control off: this is about what the framer holds, read as fast as it comes.
    server, address = start_server("--rate-limit", "0")
    alice = joined(address, "Alice")
    bob = joined(address, "Bob")
    alice.expect(r"^\* join: Bob joined")
    bob.send("warm up")
    alice.expect(r"^Bob: warm up$")
    try:  # make VmHWM the current RSS, so that it shows the peak of this test alone
        Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")
    except OSError:
        pass  # then VmHWM may include start-up, which only makes the check stricter
    before = server.rss_kib()

    chunk = b"m" * 65536
    for _ in range(160):  # 10 MiB, no newline
        alice.send_raw(chunk)
    alice.send_raw(b"\nafter the long line\n")
    bob.expect(r"^Alice: after the long line$", timeout=30)

    grown_kib = max(server.rss_kib(), server.rss_kib("VmHWM")) - before
    assert grown_kib < 5 * 1024, f"the server grew by {grown_kib} KiB for one endless line"
    bob.send("still talking")
    heard = alice.lines_until(r"^Bob: still talking$")
    errors = [line for line in heard if line.startswith("* error: ")]
    assert len(errors) == 1, f"one error for the one long line, not {heard}"


def flooders(address: tuple[str, int], count: int, name: str | None) -> list[LineClient]:
    """count connections from as many loopback addresses as the per-address limit needs
    (127.0.1.x, 4 each), joined as name + a number, or at the name prompt when name is None."""
    clients = []
    for number in range(count):
        client = LineClient(address, source=f"127.0.1.{number // 4 + 1}")
        client.expect(r"^\* name: ")
        if name is not None:
            client.join(f"{name}{number}")
        clients.append(client)
    return clients


FLOODS = {  # what each flooder sends, again and again; None: they all reset at once
    "empty lines": ("Empty", b"\n" * 4096),
    "name prompt": (None, (b"*" * 30 + b"\n") * 200),
    "bytes without newline": ("Bytes", b"x" * 65536),
    "mass disconnect": ("Gone", None),
}


@pytest.mark.parametrize("flood", FLOODS, ids=list(FLOODS))
def test_sigint_under_every_flood_exits_0_within_2_s(start_server: StartServer,
                                                     flood: str) -> None:
    name, data = FLOODS[flood]
    server, address = start_server()
    alice = joined(address, "Alice")
    bob = joined(address, "Bob")
    crowd = flooders(address, 200 if data is None else 40, name)
    with contextlib.ExitStack() as floods:
        if data is None:
            for client in crowd:
                client.abort()
        else:
            for client in crowd:
                floods.enter_context(flooding(client, data))
        alice.send("still quick?")
        bob.expect(r"^Alice: still quick\?$")
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        code = server.wait(STOP_S + 1)
        took = time.monotonic() - signalled
    assert code == 0, server.stderr[-5:]
    assert took <= STOP_S, f"{took:.2f} s"
    assert alice.expect(r"^\* shutdown: ")
    assert not any("Traceback" in line for line in server.stderr), server.stderr


PR_FUTEX_HASH_GET_SLOTS = 2


def kernel_futex_hash_slots() -> int | None:
    """This process's private futex hash size (PR_FUTEX_HASH_GET_SLOTS), None
    where the kernel has no such thing (before Linux 6.17, or not Linux)."""
    if sys.platform != "linux":
        return None
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    slots: int = libc.prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_GET_SLOTS, 0, 0, 0)
    return None if slots < 0 else slots


def test_the_server_asks_for_a_futex_hash_bucket_per_thread(
        start_server: StartServer) -> None:
    server, _ = start_server("--max-clients", "3000")
    line = server.wait_for_stderr(r"listening on ")
    if sys.platform != "linux":
        assert "futex" not in line, line
    elif kernel_futex_hash_slots() is None:
        assert "futex hash left to the kernel (" in line, line
    else:  # 3,000 connections and the helper threads: the next power of two
        assert "futex hash of 4096 buckets" in line, line
    probe = ("import ctypes, server3\n"
             "said = server3.size_futex_hash(10_000)\n"
             "print(said, ctypes.CDLL(None).prctl(server3.PR_FUTEX_HASH, "
             f"{PR_FUTEX_HASH_GET_SLOTS}, 0, 0, 0))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=START_S, check=True)
    if kernel_futex_hash_slots() is not None:  # the kernel holds what was asked for
        assert done.stdout.split() == ["futex", "hash", "of", "16384", "buckets", "16384"]
