"""Benchmark baseline, NOT Panda Chat: the textbook threaded chat server.

The shape most tutorials teach: one thread per client; a dict of sockets under
one lock; a chat line is relayed by the sender's own thread, which calls
sendall() on every other socket while it holds the lock. Nothing is tuned: no
TCP_NODELAY, listen(100), default thread stacks. It is here so that Panda Chat's
figures have something to be compared with (the "textbook threaded" column of
MEASURED.md); it is written as a careful textbook would, not made slow on purpose.

It speaks the part of Panda Chat's protocol that bench/ uses: a name prompt; the
name line, answered by "* welcome: ..."; chat relayed to the others as
"NAME: text"; "* join:" and "* leave:" notices while the grove has at most 200
pandas (Panda Chat's rule: announcing every join to everybody costs N squared).

Run:   python3 bench/baseline_textbook.py --host 127.0.0.1 --port 12346
Stop:  SIGTERM or Ctrl+C (exit code 0).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from collections.abc import Iterable
from types import FrameType

LISTEN_BACKLOG = 100  # what textbooks write
# Joins and leaves are announced only while the grove has at most this many
# pandas, as Panda Chat does, so that both speak the same protocol.
ANNOUNCE_LIMIT = 200
PROMPT = b"* name: What is your panda name?\n"


class Room:
    """The registry: each client's socket and name, under one lock.

    broadcast() holds the lock while it sends to everybody, so that lines keep
    their order and nobody joins or leaves halfway through a line.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.members: dict[socket.socket, str] = {}
        self.names: set[str] = set()

    def join(self, sock: socket.socket, name: str) -> int | None:
        """Welcome sock as name; the number of pandas now here, or None if name is taken."""
        with self.lock:
            if name.casefold() in self.names:
                return None
            self.names.add(name.casefold())
            sock.sendall(f"* welcome: Welcome to the grove, {name}!\n".encode())
            self.members[sock] = name
            return len(self.members)

    def leave(self, sock: socket.socket) -> int:
        """Take sock out; the number of pandas left."""
        with self.lock:
            name = self.members.pop(sock)
            self.names.discard(name.casefold())
            return len(self.members)

    def broadcast(self, text: str, exclude: socket.socket | None = None) -> None:
        data = (text + "\n").encode("utf-8", errors="replace")
        with self.lock:
            for sock in self.members:
                if sock is not exclude:
                    try:
                        sock.sendall(data)
                    except OSError:
                        pass  # gone: its own thread sees that and cleans up


def ask_name(sock: socket.socket, lines: Iterable[bytes], room: Room) -> str | None:
    """Read lines until a free name comes; None at EOF."""
    for raw in lines:
        name = raw.decode("utf-8", errors="replace").strip()
        if not name:
            continue
        count = room.join(sock, name)
        if count is None:
            sock.sendall(f"* error: The name {name} is taken.\n".encode() + PROMPT)
            continue
        if count <= ANNOUNCE_LIMIT:
            room.broadcast(f"* join: {name} joined the grove.", exclude=sock)
        return name
    return None


def handle(sock: socket.socket, room: Room) -> None:
    """One client's thread: name, then relay every line it sends."""
    name = None
    try:
        lines = sock.makefile("rb")
        sock.sendall(PROMPT)
        name = ask_name(sock, lines, room)
        if name is None:
            return
        for raw in lines:
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if text.strip():
                room.broadcast(f"{name}: {text}", exclude=sock)
    except OSError:
        pass  # the client went away
    finally:
        if name is not None:
            left = room.leave(sock)
            if left < ANNOUNCE_LIMIT:
                room.broadcast(f"* leave: {name} left the grove.")
        sock.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Textbook threaded chat server "
                                                 "(a benchmark baseline, not Panda Chat).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12346)
    return parser.parse_args(argv)


def stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # out of accept(), in the main thread


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    family = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0][0]
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(LISTEN_BACKLOG)
    signal.signal(signal.SIGTERM, stop)
    room = Room()
    print(f"textbook baseline listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        while True:
            sock, _ = listener.accept()
            threading.Thread(target=handle, args=(sock, room), daemon=True).start()
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
    print("textbook baseline stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
