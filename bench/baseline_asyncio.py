"""Benchmark baseline, NOT Panda Chat: a plain asyncio streams chat server.

What the asyncio documentation's examples lead to: asyncio.start_server, one
coroutine per client reading lines with readline(), and a chat line relayed
with writer.write() to every other client, without waiting for drain() (so
one slow reader does not hold up the others, and what waits for it is not
bounded). Defaults everywhere: backlog 100, asyncio's own TCP_NODELAY. It is
here so that Panda Chat's figures have something to be compared with (the
"asyncio streams" column of MEASURED.md); it is not made slow on purpose.

It speaks the part of Panda Chat's protocol that bench/ uses: a name prompt; the
name line, answered by "* welcome: ..."; chat relayed to the others as
"NAME: text"; "* join:" and "* leave:" notices while the grove has at most 200
pandas (Panda Chat's rule: announcing every join to everybody costs N squared).

Run:   python3 bench/baseline_asyncio.py --host 127.0.0.1 --port 12347
Stop:  SIGTERM or Ctrl+C (exit code 0).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

# Joins and leaves are announced only while the grove has at most this many
# pandas, as Panda Chat does, so that both speak the same protocol.
ANNOUNCE_LIMIT = 200
PROMPT = b"* name: What is your panda name?\n"


class Room:
    """Every named client's writer and name; one event loop, so no lock."""

    def __init__(self) -> None:
        self.members: dict[asyncio.StreamWriter, str] = {}
        self.names: set[str] = set()
        self.connections: set[asyncio.StreamWriter] = set()  # named or not, to close on stop

    def broadcast(self, text: str, exclude: asyncio.StreamWriter | None = None) -> None:
        data = (text + "\n").encode("utf-8", errors="replace")
        for writer in self.members:
            if writer is not exclude:
                writer.write(data)


async def ask_name(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   room: Room) -> str | None:
    """Read lines until a free name comes; None at EOF."""
    while line := await reader.readline():
        name = line.decode("utf-8", errors="replace").strip()
        if not name:
            continue
        if name.casefold() in room.names:
            writer.write(f"* error: The name {name} is taken.\n".encode() + PROMPT)
            continue
        room.names.add(name.casefold())
        writer.write(f"* welcome: Welcome to the grove, {name}!\n".encode())
        room.members[writer] = name
        if len(room.members) <= ANNOUNCE_LIMIT:
            room.broadcast(f"* join: {name} joined the grove.", exclude=writer)
        return name
    return None


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, room: Room) -> None:
    """One client: name, then relay every line it sends."""
    room.connections.add(writer)
    name = None
    try:
        writer.write(PROMPT)
        name = await ask_name(reader, writer, room)
        if name is None:
            return
        while line := await reader.readline():
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            if text.strip():
                room.broadcast(f"{name}: {text}", exclude=writer)
    except (OSError, ValueError):
        pass  # the client went away, or sent a line over the stream limit
    finally:
        room.connections.discard(writer)
        if name is not None:
            del room.members[writer]
            room.names.discard(name.casefold())
            if len(room.members) < ANNOUNCE_LIMIT:
                room.broadcast(f"* leave: {name} left the grove.")
        writer.close()


async def serve(host: str, port: int) -> None:
    room = Room()
    server = await asyncio.start_server(lambda r, w: handle(r, w, room), host, port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    print(f"asyncio baseline listening on {host}:{port}", file=sys.stderr, flush=True)
    await stopping.wait()
    server.close()
    for writer in list(room.connections):
        writer.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Plain asyncio streams chat server "
                                                 "(a benchmark baseline, not Panda Chat).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12347)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    print("asyncio baseline stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
