"""client3.py without a window: the --no-gui line client, and what happens with no display.

client3.py runs as its own process, against a real server in this process; no display needed.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from chat_helpers import WAIT_S, Certificates, LineClient, running_server

import server3

CLIENT = Path(__file__).resolve().parent.parent / "client3.py"


class Process:
    """client3.py as a process; its stdout read line by line in a thread, with timeouts."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen([sys.executable, str(CLIENT), *args], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, encoding="utf-8")
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def write(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def expect(self, pattern: str) -> str:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no stdout line matching {pattern!r}; saw {self.seen[-10:]}")
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def finish(self) -> tuple[int, str]:
        """End stdin; the exit code and stderr once the process ends."""
        assert self.popen.stdin is not None and self.popen.stderr is not None
        self.popen.stdin.close()
        code = self.popen.wait(WAIT_S)
        return code, self.popen.stderr.read()


@contextmanager
def client(*args: str, env: dict[str, str] | None = None) -> Iterator[Process]:
    process = Process(*args, env=env)
    try:
        yield process
    finally:
        if process.popen.poll() is None:
            process.popen.kill()
        process.popen.wait(WAIT_S)
        for stream in (process.popen.stdin, process.popen.stderr):
            if stream is not None:
                stream.close()


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CLIENT), *args], env=env, capture_output=True,
                          text=True, timeout=WAIT_S, stdin=subprocess.DEVNULL, check=False)


def test_no_gui_chats_between_stdin_stdout_and_the_server() -> None:
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        with client("--no-gui", "--port", str(server.address[1]), "--name", "Dora") as dora:
            dora.expect(r"^\* welcome: Welcome to the grove, Dora!")
            bob.expect(r"^\* join: Dora joined the grove\.$")
            bob.send("hi Dora \U0001F43C")
            dora.expect("^Bob: hi Dora \U0001F43C$")  # a terminal shows emoji as they are
            dora.write("hello Bob")
            bob.expect(r"^Dora: hello Bob$")
            dora.write("@grove")
            code, err = dora.finish()  # the end of stdin: Dora is done
            dora.expect(r"^\* grove: 2 pandas here: Bob Dora$")  # nothing in flight is lost
            assert (code, err) == (0, "")
            bob.expect(r"^\* leave: Dora left the grove")


def test_no_gui_takes_the_name_from_the_first_line_like_nc() -> None:
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        with client("--no-gui", "--port", str(server.address[1])) as dora:
            dora.expect(r"^\* name: What is your panda name\?")
            dora.write("bob")
            dora.expect(r"^\* error: The name Bob is taken")
            dora.write("Dora")
            dora.expect(r"^\* welcome: ")
            dora.write("@leaves")
            dora.expect(r"^\* bye: Goodbye, Dora!")
            assert dora.popen.wait(WAIT_S) == 0, "the client did not end when the server closed"
            bob.expect(r"^\* leave: Dora left the grove \(said goodbye\)\.$")


def test_no_gui_without_a_server_says_so_in_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens on it
    result = run("--no-gui", "--port", str(port), env=dict(os.environ))
    assert result.returncode == 1
    assert result.stderr == (f"client3.py: cannot reach the server at 127.0.0.1:{port}: "
                             "connection refused (is the server running?)\n")


def test_without_a_display_the_window_points_to_no_gui() -> None:
    env = {key: value for key, value in os.environ.items() if key != "DISPLAY"}
    result = run("--port", "1", env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == ("client3.py: no display ($DISPLAY is not set); for the terminal "
                             "client run: python3 client3.py --no-gui\n")


# --- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A test CA's certificate, and a server certificate and key from it, for 127.0.0.1."""
    made = Certificates.make(tmp_path_factory.mktemp("tls"))
    return made.ca, made.cert, made.key


@contextmanager
def tls_server(certificates: tuple[Path, Path, Path]) -> Iterator[server3.ChatServer]:
    _, cert_file, key_file = certificates
    with running_server(tls=server3.tls_context(str(cert_file), str(key_file))) as server:
        yield server


def test_no_gui_chats_over_tls(certificates: tuple[Path, Path, Path]) -> None:
    with tls_server(certificates) as server:
        port = str(server.address[1])
        with client("--no-gui", "--port", port, "--cafile", str(certificates[0]),
                    "--name", "Dora") as dora:
            dora.expect(r"^\* welcome: Welcome to the grove, Dora!")
            with client("--no-gui", "--port", port, "--tls", "--cafile", str(certificates[0]),
                        "--name", "Eve") as eve:
                dora.expect(r"^\* join: Eve joined the grove\.$")
                eve.write("hello over TLS")
                dora.expect(r"^Eve: hello over TLS$")
                dora.write("hello back")
                eve.expect(r"^Dora: hello back$")
                assert eve.finish() == (0, "")
            dora.expect(r"^\* leave: Eve left the grove")


def test_no_gui_refuses_a_certificate_it_cannot_check(
        certificates: tuple[Path, Path, Path]) -> None:
    with tls_server(certificates) as server:
        result = run("--no-gui", "--port", str(server.address[1]), "--tls",
                     env=dict(os.environ))  # the system's authorities know no test CA
    assert result.returncode == 1
    assert re.fullmatch(r"client3\.py: cannot reach the server at 127\.0\.0\.1:\d+: its TLS "
                        r"certificate was not accepted \(.*\)\n", result.stderr), result.stderr


def test_insecure_connects_without_checking_but_warns_loudly(
        certificates: tuple[Path, Path, Path]) -> None:
    with tls_server(certificates) as server, client(  # a CA --insecure is not told of
            "--no-gui", "--port", str(server.address[1]), "--insecure", "--name", "Risky") as risky:
        risky.expect(r"^\* welcome: Welcome to the grove, Risky!")
        code, errors = risky.finish()
    assert code == 0
    assert errors.startswith("WARNING: --insecure: the server's certificate is NOT checked"), errors


def test_tls_to_a_plain_server_fails_clearly() -> None:
    with running_server() as server:
        result = run("--no-gui", "--port", str(server.address[1]), "--tls",
                     env=dict(os.environ))
    assert result.returncode == 1
    assert "does the server speak TLS?" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
