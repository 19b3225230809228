#!/usr/bin/env python3
"""Make docs/screenshot.png and docs/screenshot-dark.png: the real client3.py window in a real
chat, in the light and in the dark theme.

Run:   python3 docs/make_screenshot.py [--out-dir docs]
Needs: Xvfb (Debian: apt install xvfb); without it, $DISPLAY if there is one. The window is read
       from the X server with Xlib's XGetImage (through ctypes) and written as a PNG with zlib:
       nothing else to install.

It starts a Panda Chat server on a free port of 127.0.0.1, two panda bots on plain sockets, and
the client's window joining as a third panda on its own Xvfb screen; the three talk, one asks for
a @bamboo fact, a fourth joins, and the window is captured. Everything stops when it is done.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
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
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client3 import ChatWindow, Connection, Settings, open_chat  # noqa: E402
from protocol import LineBuffer, encode_line  # noqa: E402
from server3 import ChatServer  # noqa: E402

WAIT_S = 10.0  # every step waits at most this long
SCREEN = "1280x800x24"


@contextmanager
def xvfb_display() -> Iterator[str]:
    """A fresh Xvfb screen (the display number chosen by Xvfb itself), or $DISPLAY."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        display = os.environ.get("DISPLAY")
        if not display:
            sys.exit("make_screenshot.py: needs Xvfb (apt install xvfb) or a $DISPLAY")
        yield display
        return
    read_fd, write_fd = os.pipe()
    server = subprocess.Popen([xvfb, "-displayfd", str(write_fd), "-screen", "0", SCREEN,
                               "-nolisten", "tcp"], pass_fds=(write_fd,),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        # Up to the newline: Xvfb writes it apart, and dies if the pipe is closed by then.
        data = b""
        deadline = time.monotonic() + WAIT_S
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(read_fd, 64) if ready else b""
            if not chunk:
                sys.exit("make_screenshot.py: Xvfb did not start")
            data += chunk
        yield f":{data.decode().strip()}"
    finally:
        os.close(read_fd)
        server.terminate()
        server.wait(WAIT_S)


class Bot:
    """A panda on a plain socket, that talks and ignores what it hears."""

    def __init__(self, address: tuple[str, int], name: str) -> None:
        self.sock = socket.create_connection(address, timeout=WAIT_S)
        self.framer = LineBuffer()
        self.sock.sendall(encode_line(name))
        self.wait_for(f"* welcome: Welcome to the grove, {name}!")

    def wait_for(self, start: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            for line in self.framer.feed(self.sock.recv(65536)):
                if isinstance(line, str) and line.startswith(start):
                    return
        raise TimeoutError(f"no {start!r}")

    def say(self, text: str) -> None:
        self.sock.sendall(encode_line(text))

    def leave(self) -> None:
        self.sock.sendall(encode_line("@leaves"))
        self.sock.close()


def pump(root: tk.Tk, done: Callable[[], bool], what: str) -> None:
    """Run Tk's loop until done() holds."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the window never showed {what}")
        root.update()
        time.sleep(0.01)  # pacing the loop, not synchronising: done() is the condition


def shows(window: ChatWindow, text: str) -> Callable[[], bool]:
    return lambda: text in window.chat_view.text.get("1.0", "end")


class _XImage(ctypes.Structure):
    """The start of Xlib's XImage: as far as the pixel layout."""

    _fields_ = [("width", ctypes.c_int), ("height", ctypes.c_int), ("xoffset", ctypes.c_int),
                ("format", ctypes.c_int), ("data", ctypes.POINTER(ctypes.c_ubyte)),
                ("byte_order", ctypes.c_int), ("bitmap_unit", ctypes.c_int),
                ("bitmap_bit_order", ctypes.c_int), ("bitmap_pad", ctypes.c_int),
                ("depth", ctypes.c_int), ("bytes_per_line", ctypes.c_int),
                ("bits_per_pixel", ctypes.c_int), ("red_mask", ctypes.c_ulong),
                ("green_mask", ctypes.c_ulong), ("blue_mask", ctypes.c_ulong)]


def capture_png(left: int, top: int, width: int, height: int) -> bytes:
    """A rectangle of the screen, read from the X server, as a PNG (24-bit TrueColor screens)."""
    name = ctypes.util.find_library("X11")
    if name is None:
        sys.exit("make_screenshot.py: needs libX11")
    x11 = ctypes.CDLL(name)
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XGetImage.restype = ctypes.POINTER(_XImage)
    x11.XGetImage.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int,
                              ctypes.c_uint, ctypes.c_uint, ctypes.c_ulong, ctypes.c_int]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    display = x11.XOpenDisplay(None)
    try:
        all_planes, z_pixmap = 0xFFFFFFFF, 2
        x11.XDefaultRootWindow.restype = ctypes.c_ulong
        x11.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
        screen = x11.XDefaultRootWindow(display)
        image = x11.XGetImage(display, screen, left, top, width, height, all_planes, z_pixmap)
        if not image:
            sys.exit("make_screenshot.py: XGetImage failed")
        pixels = image.contents
        if pixels.bits_per_pixel != 32 or pixels.byte_order != 0:  # LSBFirst: B, G, R, x
            sys.exit("make_screenshot.py: needs a 24-bit TrueColor screen")
        raw = ctypes.string_at(pixels.data, pixels.bytes_per_line * height)
        rows = []
        for y in range(height):
            row = raw[y * pixels.bytes_per_line:y * pixels.bytes_per_line + width * 4]
            rgb = bytearray(width * 3)
            rgb[0::3], rgb[1::3], rgb[2::3] = row[2::4], row[1::4], row[0::4]
            rows.append(b"\x00" + bytes(rgb))  # filter type 0 for each row
    finally:
        x11.XCloseDisplay(display)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    header = (width.to_bytes(4, "big") + height.to_bytes(4, "big")
              + bytes([8, 2, 0, 0, 0]))  # 8 bits, RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b""))


def make_screenshot(out: Path, theme: str, settings_file: Path) -> None:
    server = ChatServer("127.0.0.1", 0, history=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bots: list[Bot] = []
    root = tk.Tk(className="PandaChat")
    connection: Connection | None = None
    try:
        mei = Bot(server.address, "Mei")
        bao = Bot(server.address, "BaoBao")
        bots += [mei, bao]
        settings = Settings(settings_file)  # a file of its own: the theme asked for, no other
        settings.theme = theme
        window, connection = open_chat(root, *server.address, settings=settings,
                                       prefers_dark=lambda: False)
        root.geometry("900x600+0+0")
        pump(root, lambda: window.session.phase == "naming", "the name form")
        window.name_form.entry.insert(0, "Lulu")
        window.session.submit_name(window.name_form.entry.get())
        pump(root, lambda: window.session.phase == "chatting", "the welcome")

        mei.say("Hi Lulu! Welcome to the grove.")
        pump(root, shows(window, "Welcome to the grove."), "Mei's greeting")
        for text in ("Hello Mei, hello BaoBao!", "Is there any bamboo left?"):
            window.input.entry.insert(0, text)
            window.input.submit()
        bao.say("Only the crunchy shoots. I ate the rest this morning :)")
        pump(root, shows(window, "crunchy shoots"), "Bao's line")
        window.send_command("@bamboo")
        pump(root, shows(window, "Bamboo fact:"), "the fact")
        mei.say("Ha! That explains a lot about Bao.")
        pump(root, shows(window, "explains a lot"), "Mei's reply")
        xiang = Bot(server.address, "Xiang")
        bots.append(xiang)
        pump(root, shows(window, "Xiang joined"), "Xiang's join")
        window.input.entry.insert(0, "Xiang! Come and have some bamboo")
        window.input.entry.focus_force()
        pump(root, lambda: root.focus_get() is window.input.entry, "the focused entry")
        root.update()
        out.parent.mkdir(parents=True, exist_ok=True)
        root.update_idletasks()
        # The window and, above it, its menu bar (no window manager: the window is at 0, 0).
        out.write_bytes(capture_png(0, 0, root.winfo_width(),
                                    root.winfo_rooty() + root.winfo_height()))
        window.close()
    finally:
        for bot in bots:
            bot.leave()
        if connection is not None:
            connection.close()
        root.destroy()
        gc.collect()  # free this window's Tk objects on this thread, not in a later one's
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    with xvfb_display() as display, tempfile.TemporaryDirectory() as tmp:
        os.environ["DISPLAY"] = display
        for theme, name in (("light", "screenshot.png"), ("dark", "screenshot-dark.png")):
            make_screenshot(args.out_dir / name, theme, Path(tmp) / f"{theme}.json")
            print(f"wrote {args.out_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
