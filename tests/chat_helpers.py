"""Helpers the tests share: a real server in a thread, a line client, and a cable to cut.

    with running_server(name_timeout=2) as server:
        alice = LineClient(server.address, "Alice")
        alice.send("hello")
        bob.expect(r"^Alice: hello$")

Every wait has a timeout; a failed expect() says which lines it saw.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from protocol import LINE_TOO_LONG, LineBuffer, encode_line, parse_line
from server3 import ChatServer, tls_context

WAIT_S = 5.0  # long enough for a loaded CI machine, short enough to fail fast


@contextmanager
def running_server(port: int = 0, **options: Any) -> Iterator[ChatServer]:
    """A real ChatServer on 127.0.0.1 (port 0: a free one), serving in a thread."""
    server = ChatServer("127.0.0.1", port, **options)
    thread = threading.Thread(target=server.serve_forever, name="test-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close()
        thread.join(WAIT_S)
        assert not thread.is_alive(), "serve_forever() did not return after close()"


class LineClient:
    """A plain socket client that speaks lines, like a person with nc."""

    def __init__(self, address: tuple[Any, ...], name: str | None = None,
                 rcvbuf: int | None = None, source: str | None = None) -> None:
        """source: the loopback address to connect from (127.0.0.2 reaches a
        server on 127.0.0.1), for per-address rules."""
        self.sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(WAIT_S)
        self.sock.connect(address[:2])
        self._framer = LineBuffer(max_line_bytes=1 << 20)
        self._lines: deque[str] = deque()
        self.seen: list[str] = []  # every line received, for failure messages
        self.eof = False
        if name is not None:
            self.join(name)

    def join(self, name: str) -> str:
        self.send(name)
        return self.expect(r"^\* welcome: ")

    def send(self, text: str) -> None:
        self.sock.sendall(encode_line(text))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read once; False on EOF or when the deadline has passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.eof:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        for line in self._framer.feed(data):
            assert line is not LINE_TOO_LONG
            assert isinstance(line, str)
            self._lines.append(line)
            self.seen.append(line)
        return True

    def next_line(self, timeout: float = WAIT_S) -> str | None:
        """The next line, or None on EOF or timeout."""
        deadline = time.monotonic() + timeout
        while not self._lines:
            if not self._fill(deadline):
                return None
        return self._lines.popleft()

    def expect(self, pattern: str, timeout: float = WAIT_S) -> str:
        """Skip lines until one matches pattern (re.search); fail on timeout or EOF."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                why = "EOF" if self.eof else f"{timeout} s"
                raise AssertionError(f"no line matching {pattern!r} before {why}; "
                                     f"last lines seen: {self.seen[-15:]!r}")
            if re.search(pattern, line):
                return line

    def lines_until(self, pattern: str, timeout: float = WAIT_S) -> list[str]:
        """Every line up to and including the first that matches pattern."""
        start = len(self.seen) - len(self._lines)
        self.expect(pattern, timeout)
        return self.seen[start:len(self.seen) - len(self._lines)]

    def read_until_eof(self, timeout: float = WAIT_S) -> list[str]:
        """All remaining lines; fails unless the server closes within timeout."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while True:
            line = self.next_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                assert self.eof, f"no EOF within {timeout} s; got {lines[-10:]!r}"
                return lines
            lines.append(line)

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """Close with a TCP reset (RST) instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class Cable:
    """A TCP forwarder between a client and the server, on 127.0.0.1: cut() drops every
    connection through it, as a Wi-Fi drop does, while the server stays up. unplug() cuts and
    then hangs up every new connection at once (the client connects, and is dropped) until
    plug(); accepted counts the connections made to it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.plugged = True
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            try:
                if not self.plugged:
                    raise ConnectionRefusedError("unplugged")
                far = socket.create_connection(self.upstream, timeout=WAIT_S)
            except OSError:  # unplugged, or no server there: the client sees a drop
                near.close()
                continue
            far.settimeout(None)
            self.pairs.append((near, far))
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=self._forward, args=(source, sink), daemon=True).start()

    @staticmethod
    def _forward(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass  # cut
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        for near, far in self.pairs:
            for sock in (near, far):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def unplug(self) -> None:
        self.plugged = False
        self.cut()

    def plug(self) -> None:
        self.plugged = True

    def close(self) -> None:
        self.cut()
        self.listener.close()
        for near, far in self.pairs:
            near.close()
            far.close()


@contextmanager
def flooding(client: LineClient, data: bytes) -> Iterator[None]:
    """client sends data again and again, from a thread of its own, until the
    block ends or the server hangs up."""
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            try:
                client.sock.sendall(data)
            except OSError:
                return

    thread = threading.Thread(target=flood, name="flood", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(WAIT_S)


def chat_from(lines: list[str], name: str) -> list[str]:
    """The texts of the chat lines from name."""
    return [m.text for m in map(parse_line, lines) if m.kind == "chat" and m.sender == name]


def sync(client: LineClient) -> list[str]:
    """Every line client gets before the answer to a fresh @bamboo (consumed too);
    once it returns, the server has acted on everything client sent before."""
    client.send("@bamboo")
    return client.lines_until(r"^\* fact: ")[:-1]


def pandas(server: ChatServer, *names: str) -> list[LineClient]:
    """Clients joined under names, with every join notice delivered and read."""
    clients = [LineClient(server.address, name) for name in names]
    for _ in range(2):  # the second round collects the joins of later clients
        for client in clients:
            sync(client)
    return clients


@dataclass(frozen=True)
class Certificates:
    """A test CA's certificate, and a server certificate and key from it for 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, folder: Path) -> Certificates:
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1", "localhost")
        made = cls(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
        ca.cert_pem.write_to_path(str(made.ca))
        for blob in issued.cert_chain_pems:
            blob.write_to_path(str(made.cert), append=True)
        issued.private_key_pem.write_to_path(str(made.key))
        return made

    def server_context(self) -> ssl.SSLContext:
        context = tls_context(str(self.cert), str(self.key))
        assert context is not None
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))
