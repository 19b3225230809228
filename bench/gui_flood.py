"""Flood the real chat window and measure how long Tk's thread is ever kept from its loop.

    python3 bench/gui_flood.py                     # 5,000 lines of 4,000 characters
    python3 bench/gui_flood.py --lines 2000 --chars 1000

A real server (server3.ChatServer, flood control off) runs in a thread on 127.0.0.1; the real
client3 window joins it on an Xvfb screen of its own (or $DISPLAY when there is no Xvfb); a
second panda sends the flood as fast as TCP takes it. The window runs its own mainloop, as it
does for a person. Reported: the longest time between two poll ticks in CPU time of Tk's thread
(the work the loop did in one go, which other processes on the machine do not inflate) and by
the clock, and how many gaps were over 50 ms. Target: no tick over 50 ms of Tk's time.

Not a test: the figure depends on the machine. README's "The window under a flood" has one run.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tkinter as tk
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client3 import ChatWindow, Settings, open_chat  # noqa: E402
from protocol import encode_line  # noqa: E402
from server3 import ChatServer  # noqa: E402

WAIT_S = 10.0
TARGET_MS = 50.0


@contextmanager
def display() -> Iterator[str]:
    """An Xvfb screen of its own (Xvfb picks the number), or $DISPLAY without Xvfb."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        if not os.environ.get("DISPLAY"):
            sys.exit("gui_flood.py: needs Xvfb (apt install xvfb) or a $DISPLAY")
        yield os.environ["DISPLAY"]
        return
    read_fd, write_fd = os.pipe()
    process = subprocess.Popen([xvfb, "-displayfd", str(write_fd), "-screen", "0", "1280x800x24",
                                "-nolisten", "tcp"], pass_fds=(write_fd,),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        data = b""
        while not data.endswith(b"\n"):  # the number, then a newline written apart
            ready, _, _ = select.select([read_fd], [], [], WAIT_S)
            chunk = os.read(read_fd, 64) if ready else b""
            if not chunk:
                sys.exit("gui_flood.py: Xvfb did not start")
            data += chunk
        yield f":{data.decode().strip()}"
    finally:
        os.close(read_fd)
        process.terminate()
        process.wait(WAIT_S)


class Watch:
    """Every gap between two poll ticks of window, while the flood is shown."""

    def __init__(self, window: ChatWindow) -> None:
        self.window = window
        self.gaps: list[tuple[float, float]] = []  # (clock, Tk thread's CPU) seconds
        self.last: tuple[float, float] | None = None
        poll = window.poll

        def timed_poll() -> None:
            now = (time.monotonic(), time.thread_time())
            if self.last is not None:
                self.gaps.append((now[0] - self.last[0], now[1] - self.last[1]))
            self.last = now
            poll()

        window.poll = timed_poll  # type: ignore[method-assign]


def flood(address: tuple[str, int], lines: int, chars: int) -> threading.Thread:
    def send() -> None:
        with socket.create_connection(address, timeout=WAIT_S) as sock:
            sock.sendall(encode_line("Flood"))
            body = "x" * (chars - 12)
            sock.settimeout(None)
            sock.sendall(b"".join(encode_line(f"{n:>10} {body}") for n in range(lines)))
            sock.sendall(encode_line("@leaves"))
            while sock.recv(65536):  # until the server's goodbye closes it
                pass

    thread = threading.Thread(target=send, name="flooder", daemon=True)
    thread.start()
    return thread


def run(lines: int, chars: int) -> int:
    server = ChatServer("127.0.0.1", 0, history=0)
    threading.Thread(target=server.serve_forever, name="server", daemon=True).start()
    root = tk.Tk(className="PandaChat")
    with tempfile.TemporaryDirectory() as tmp:
        window, connection = open_chat(root, *server.address, "Watcher",
                                       settings=Settings(Path(tmp) / "settings.json"))
        watch = Watch(window)
        started: list[float] = []
        shown_at_start: list[int] = []

        def check() -> None:
            if window.session.phase == "chatting" and not started:
                started.append(time.monotonic())
                shown_at_start.append(window.lines_shown)
                watch.gaps.clear()
                flood(server.address, lines, chars)
            if started and window.lines_shown - shown_at_start[0] >= lines + 1:  # + the join
                root.after(200, root.quit)  # a few more ticks: the last gap ends
                return
            if time.monotonic() - (started[0] if started else 0) > 600:
                root.quit()
                return
            root.after(100, check)

        root.after(100, check)
        root.mainloop()
        took = time.monotonic() - started[0] if started else 0.0
        window.close()
        connection.close()
        connection.join_closers()
        root.destroy()
    server.close()
    if not watch.gaps:
        print("gui_flood.py: the flood was never shown", file=sys.stderr)
        return 1
    worst_cpu = max(cpu for _, cpu in watch.gaps) * 1000
    worst_clock = max(clock for clock, _ in watch.gaps) * 1000
    over = sum(1 for _, cpu in watch.gaps if cpu * 1000 > TARGET_MS)
    print(f"{lines} lines of {chars} characters shown in {took:.1f} s, {len(watch.gaps)} ticks")
    print(f"longest gap between two ticks: {worst_cpu:.1f} ms of Tk's thread's CPU time, "
          f"{worst_clock:.1f} ms by the clock")
    print(f"ticks over {TARGET_MS:g} ms of CPU time: {over}")
    return 0 if worst_cpu <= TARGET_MS else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--chars", type=int, default=4000)
    args = parser.parse_args()
    with display() as name:
        os.environ["DISPLAY"] = name
        return run(args.lines, args.chars)


if __name__ == "__main__":
    sys.exit(main())
