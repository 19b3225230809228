#!/usr/bin/env python3
"""Panda Chat's desktop client: a Tk window to chat with everybody on a Panda Chat server.

Run:   python3 client3.py [--host 127.0.0.1] [--port 12345] [--name NAME] [--quiet]
                                           --quiet: no bell when somebody mentions your name
       python3 client3.py --no-gui [...]   a plain line client for terminals and scripts:
                                           stdin lines go to the server, server lines to stdout
Stop:  close the window (it says goodbye with @leaves first), or Ctrl+C in its terminal.
       In --no-gui mode, end stdin (Ctrl+D) or press Ctrl+C.

The shape: a Connection owns the socket. Its receiver thread reads lines, parses them with
protocol.parse_line and only puts the results into a queue.Queue. ChatWindow lives on Tk's thread:
poll() drains that queue with after(), a bounded batch per tick, and no other thread ever touches a
widget. Only Connection.send() writes to the socket.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import queue
import re
import signal
import socket
import ssl
import sys
import threading
import time
import tkinter as tk
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from tkinter import font as tkfont
from tkinter import ttk
from types import FrameType
from typing import Final, Literal, TextIO

from protocol import (
    LINE_TOO_LONG,
    MAX_SERVER_LINE_BYTES,
    LineBuffer,
    Message,
    TlsSession,
    clean_text,
    encode_line,
    name_key,
    parse_line,
)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 12345

# Connecting to a LAN or loopback server takes milliseconds; 5 s covers a slow Wi-Fi without
# leaving the person staring at "connecting" for the minutes an OS default can take.
CONNECT_TIMEOUT_S: Final = 5.0
# On close, how long to wait for the server's goodbye before the socket is closed anyway: long
# enough for a loaded server to answer @leaves, short enough that closing never feels stuck.
LINGER_S: Final = 1.0
# One recv() of a whole burst of lines; a flood arrives in few system calls.
RECV_BYTES: Final = 65536

# 20 ticks a second: a line shows within 50 ms (below what a person notices in a chat), while an
# idle window wakes up rarely.
POLL_MS: Final = 50
# Lines handled per tick. 200 lines take a few milliseconds to render, so a flood of thousands is
# shown in many short ticks, with Tk handling keys, clicks and redraws in between, instead of one
# long freeze. While more lines wait, the next tick comes after 1 ms rather than POLL_MS.
POLL_BATCH: Final = 200
BACKLOG_POLL_MS: Final = 1
# Scrollback: 2,000 lines is a few hours of a busy classroom chat (several screens more than anybody
# scrolls back through), while keeping the Text widget small: a Tk Text slows down (inserts, wraps,
# memory, tags) as it grows, and a chat that runs for days would otherwise grow without end.
MAX_SCROLLBACK_LINES: Final = 2000
# Sent lines that Up and Down walk through: far more than anyone walks back, and a few KiB at most.
HISTORY_LIMIT: Final = 200
# After a lost connection the window tries again by itself, waiting this long before each attempt:
# 1 s gets over a Wi-Fi blip at once; doubling spares a server that is restarting; the last wait
# repeats until it works or the person presses Cancel, so a server back after minutes is found
# within 15 s, at the cost of one failed connect every 15 s meanwhile.
RETRY_DELAYS_S: Final = (1.0, 2.0, 4.0, 8.0, 15.0)

# What Tab completes after "@": the server's commands (@help lists them).
COMMANDS: Final = ("@bamboo", "@grove", "@help", "@leaves", "@whisper")
COMMAND_BUTTONS: Final = (("@bamboo", "Bamboo fact"), ("@grove", "Who's here"),
                          ("@help", "Help"), ("@leaves", "Leave"))

# Colours. A chat name keeps its colour: the colour is picked by a stable hash of the name (not
# Python's hash(), which changes from run to run), from colours that read well on white.
NAME_COLOURS: Final = ("#c62828", "#1565c0", "#2e7d32", "#7b1fa2", "#e65100", "#00838f",
                       "#ad1457", "#5d4037", "#303f9f", "#827717")
GREEN: Final = "#2e7d32"        # bamboo: the header, the accent
GREEN_DARK: Final = "#1b5e20"
PAPER: Final = "#ffffff"        # the chat view
PANEL: Final = "#f1f5ef"        # the side panel and the input area
INK: Final = "#1f2933"
MUTED: Final = "#6b7280"
OWN_BG: Final = "#eaf4e4"       # a faint green behind one's own lines
ERROR_FG: Final = "#b91c1c"
ALERT_FG: Final = "#9a3412"
FACT_FG: Final = "#14532d"
FACT_BG: Final = "#f0fdf4"
HELP_FG: Final = "#1e3a8a"
WHISPER_FG: Final = "#6d28d9"
MENTION_BG: Final = "#fff1b8"   # a line that names you: a marker-pen yellow
OFFLINE_BG: Final = "#fdecea"
STATUS_DOTS: Final = {"connecting": "#d97706", "naming": "#d97706",
                      "chatting": "#16a34a", "offline": "#dc2626"}

Phase = Literal["connecting", "naming", "chatting", "offline"]


# --- Text for Tk ----------------------------------------------------------

_ASTRAL: Final = re.compile("[\U00010000-\U0010ffff]")


def _astral_name(match: re.Match[str]) -> str:
    ch = match.group()
    name = unicodedata.name(ch, "")
    return f"[{name.lower()}]" if name else f"[U+{ord(ch):04X}]"


def tk_safe(text: str) -> str:
    """text with every character above U+FFFF, which Tk 8.6 cannot hold or draw reliably (emoji
    can crash it), replaced by its name in brackets: "\\U0001F43C" -> "[giant panda]".

    Everything that reaches a widget goes through here: chat text, names, status, errors."""
    if text.isascii():
        return text
    return _ASTRAL.sub(_astral_name, text)


def name_colour(name: str) -> str:
    """The colour of a name: the same for that name (ignoring case) in every line and every run."""
    return NAME_COLOURS[zlib.crc32(name_key(name).encode("utf-8")) % len(NAME_COLOURS)]


def _name_tag(name: str) -> str:
    """The chat view's tag for a name's colour (one tag per colour, not per name)."""
    return f"name{NAME_COLOURS.index(name_colour(name))}"


# A line said before one joined, as the server replays it: "[12:03] Bob: hi".
_HISTORY_LINE: Final = re.compile(r"^\[(\d{1,2}:\d{2})\] (.*)$")


def mention_pattern(name: str) -> re.Pattern[str]:
    """What finds name in a line: as a whole word, in any case. "bob!" and "@Bob" name Bob;
    "Bobby" and "bob_x" do not (a letter, digit or _ next to it makes it another word)."""
    return re.compile(rf"(?<!\w){re.escape(name)}(?!\w)", re.IGNORECASE)


def first_word(text: str) -> str:
    words = text.split(maxsplit=1)
    return words[0] if words else ""


def grove_names(text: str) -> list[str]:
    """The names of "3 pandas here: Alice Bob Carol"."""
    _, sep, names = text.partition(": ")
    return names.split() if sep else []


def wire_line(msg: Message) -> str:
    """A parsed line back as it came over the wire."""
    if msg.kind == "chat":
        return f"{msg.sender}: {msg.text}"
    if msg.kind == "text":
        return msg.text
    return f"* {msg.kind}: {msg.text}"


# --- The connection -------------------------------------------------------

@dataclass(frozen=True)
class ConnectionEvent:
    """What happened to the connection, for the window: "connected", "failed" (could not
    connect; detail says why) or "lost" (it was connected and is gone; detail says why)."""

    state: Literal["connected", "failed", "lost"]
    detail: str = ""


InboxItem = Message | ConnectionEvent


def describe_error(exc: OSError) -> str:
    """A socket error in words a person understands."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its TLS certificate was not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc}); does the server speak TLS?"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, ConnectionResetError):
        return "the connection was reset"
    return exc.strerror or str(exc) or type(exc).__name__


class Connection:
    """The socket to one server, and the receiver thread that reads it. With tls (an
    ssl.SSLContext) the bytes go through a protocol.TlsSession.

    open()        (re)connects in a new receiver thread. Into inbox it puts
                  ConnectionEvent("connected") or ("failed", why), then one parsed Message per
                  line received, then ConnectionEvent("lost", why) when the connection ends.
    send(text)    writes one line; the only writer. False when there is no connection.
    finish()      sends an end of file (a half-close) and keeps receiving to the server's close.
    close(linger) closes; from then on nothing of this socket reaches inbox. linger > 0 first
                  waits that long for the server to close its side, so that it reads everything
                  sent (@leaves) and the close is an orderly one.
    """

    def __init__(self, host: str, port: int, inbox: queue.Queue[InboxItem],
                 tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self.inbox = inbox
        self.tls = tls
        self._lock = threading.Lock()  # guards _sock, _session, _generation; never held over I/O
        # One writer at a time: the Tk thread's lines, and what TLS itself has to answer from
        # the receiver thread, must not interleave; it also guards the TLS session's state.
        self._write_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._session: TlsSession | None = None
        self._thread: threading.Thread | None = None
        self._generation = 0  # which open() the receiver thread belongs to

    def open(self) -> None:
        self.close()
        with self._lock:
            self._generation += 1
            generation = self._generation
        self._thread = threading.Thread(target=self._receive, args=(generation,),
                                        name="panda-receiver", daemon=True)
        self._thread.start()

    def _put(self, generation: int, item: InboxItem) -> None:
        with self._lock:
            if generation == self._generation:  # else: closed or reopened since
                self.inbox.put(item)

    def _receive(self, generation: int) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            self._put(generation, ConnectionEvent("failed", describe_error(exc)))
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # chat lines are tiny
        session, data = None, b""
        if self.tls is not None:
            try:  # still within CONNECT_TIMEOUT_S per step
                session, data = self._handshake(sock, self.tls)
            except OSError as exc:
                sock.close()
                self._put(generation, ConnectionEvent("failed", describe_error(exc)))
                return
        sock.settimeout(None)
        with self._lock:
            if generation != self._generation:
                sock.close()
                return
            self._sock, self._session = sock, session
            self.inbox.put(ConnectionEvent("connected"))
        framer = LineBuffer(MAX_SERVER_LINE_BYTES)  # escaping makes lines from the server longer
        why = "the server closed the connection"
        try:
            ended = False
            while True:
                for line in framer.feed(data):
                    if isinstance(line, str):
                        self._put(generation, parse_line(line))
                    else:
                        assert line is LINE_TOO_LONG
                        self._put(generation, Message("error", "(an over-long line from the "
                                                               "server was dropped)"))
                if ended:
                    break
                data = sock.recv(RECV_BYTES)
                ended = not data
                if session is not None:
                    with self._write_lock:
                        plain = session.feed(data)
                        if answer := session.outgoing():  # TLS's own messages, rarely
                            sock.sendall(answer)
                    ended = ended or plain is None  # None: the server closed TLS
                    data = plain or b""
        except OSError as exc:
            why = describe_error(exc)
        self._put(generation, ConnectionEvent("lost", why))

    def _handshake(self, sock: socket.socket, context: ssl.SSLContext
                   ) -> tuple[TlsSession, bytes]:
        """The TLS handshake as the client; the session and the first plaintext received."""
        session = TlsSession(context, server_side=False, server_hostname=self.host)
        while not session.handshake():
            sock.sendall(session.outgoing())
            raw = sock.recv(RECV_BYTES)
            if not raw:
                raise ConnectionError(0, "the server closed the connection during the TLS "
                                         "handshake; does it speak TLS?")
            session.receive(raw)
        sock.sendall(session.outgoing())
        return session, session.read() or b""

    def send(self, text: str) -> bool:
        with self._lock:
            sock, session = self._sock, self._session
        if sock is None:
            return False
        data = encode_line(text)
        try:
            with self._write_lock:
                sock.sendall(session.encrypt(data) if session is not None else data)
        except (OSError, ValueError):  # ValueError: the session was closed meanwhile
            return False  # the receiver thread reports the loss
        return True

    def finish(self) -> None:
        with self._lock:
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

    def close(self, linger: float = 0.0) -> None:
        with self._lock:
            self._generation += 1
            sock, self._sock, self._session = self._sock, None, None
        thread, self._thread = self._thread, None
        if sock is None:
            return  # never connected, or still connecting: that thread closes its own socket
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        if thread is not None and linger > 0:
            thread.join(linger)  # the receiver reads on until the server closes
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes a receiver still waiting in recv()
        sock.close()
        if thread is not None:
            thread.join(LINGER_S)


# --- The window -----------------------------------------------------------

@dataclass
class _Completion:
    """Where Tab completion is: repeated Tabs cycle through matches."""

    start: int            # where the completed word starts in the entry
    tail: str             # the text after the cursor
    matches: list[str]
    index: int
    result: str = ""      # the entry text after the last completion
    cursor: int = 0


def _nothing() -> None:
    pass


def _not_sent(text: str) -> bool:
    return False


class ChatWindow:
    """The chat window, on Tk's thread.

    ChatWindow(root, inbox, send=..., connect=..., disconnect=..., address=..., name=...)
      inbox         the queue the Connection's receiver thread fills; poll() drains it
      send(text)    writes a line to the server; returns False when it could not
      connect()     (re)opens the connection; what happens next arrives in inbox
      disconnect()  closes the connection (after @leaves, when closing, on Cancel)
      address       (host, port), for the status bar
      name          join with this name at once instead of asking for one
      secure        the connection uses TLS (shown in the header)
      bell          ring root.bell() for each mention while the window has no focus
                    (False: --quiet; the title still counts them)
      retry_delays  the waits before each automatic reconnection, the last one repeating
                    (RETRY_DELAYS_S; empty: never by itself)
    Tests drive the methods directly: poll(), submit_name(), on_send(), send_command(),
    history_up(), history_down(), complete(), show_line(), note(), set_users(), whisper_to(),
    reconnect(), cancel_retry(), close(). Tk's main loop calls them in the real thing.
    has_focus() says whether the person is looking; a test may override it.

    phase is "connecting", "naming" (connected, no name accepted yet), "chatting" or "offline".
    A connection lost while chatting (not after @leaves) is tried again by itself, resuming
    with the server's resume code when there is one; retry_attempt counts the attempts.
    """

    def __init__(self, root: tk.Tk, inbox: queue.Queue[InboxItem],
                 send: Callable[[str], bool] = _not_sent, *,
                 connect: Callable[[], None] = _nothing,
                 disconnect: Callable[[], None] = _nothing,
                 address: tuple[str, int] = (DEFAULT_HOST, DEFAULT_PORT),
                 name: str | None = None, secure: bool = False, bell: bool = True,
                 retry_delays: Sequence[float] = RETRY_DELAYS_S) -> None:
        self.root = root
        self.inbox = inbox
        self.send = send
        self.connect = connect
        self.disconnect = disconnect
        self.address = f"{address[0]}:{address[1]}"
        self.secure = secure  # TLS: shown in the header
        self.bell = bell
        self.retry_delays = tuple(retry_delays)
        self.phase: Phase = "connecting"
        self.name: str | None = None          # the accepted name, while chatting
        self.wanted_name = name               # the name to join with on (re)connect
        self.pending_name: str | None = None  # sent, waiting for welcome or error
        self.resume_code: str | None = None   # from the server, to come back after a drop
        self.resuming = False                 # sent @resume, waiting for welcome or error
        self.asking_name = name is None       # the name form is shown
        self.ever_connected = False
        self.leaving = False                  # we said @leaves; the close is expected
        self.server_farewell: str | None = None  # the shutdown / full / bye line
        self.users: dict[str, str] = {}       # name_key -> name
        self.away: set[str] = set()           # name_keys whose connection dropped
        self.quiet = False
        self.history: list[str] = []
        self.history_pos: int | None = None
        self.draft = ""
        self._completion: _Completion | None = None
        self.follow = True                    # autoscroll: the view is at the bottom
        self._in_batch = False
        self._last_line_tags: tuple[str, ...] = ()
        self.closed = False
        self.lines_shown = 0                  # lines received and shown, all time
        self._mention: re.Pattern[str] | None = None  # finds our name, once we have one
        self.unread_mentions = 0              # mentions since the window last had the focus
        self.retry_attempt = 0                # the automatic attempt under way or next; 0: none
        self.retry_id: str | None = None      # the countdown's after-id, while waiting
        self._retry_at = 0.0                  # when the next attempt starts (monotonic)
        self._listed: list[str] = []          # the user list's names, row by row
        # How responsive the loop is (the flood test reads these): the longest time between two
        # poll ticks, by the clock and in CPU time of Tk's thread (which leaves out the time the
        # machine gave to other processes).
        self.ticks = 0
        self.last_tick: tuple[float, float] | None = None  # (monotonic, thread_time)
        self.max_tick_gap = 0.0
        self.max_tick_cpu = 0.0
        self.create_widgets()
        self.root.protocol("WM_DELETE_WINDOW", self.on_close)
        # Every widget's events pass through its toplevel's bindings: this sees the window (or
        # anything in it) get the focus.
        self.root.bind("<FocusIn>", self._on_focus_in, add="+")
        self._update_view()
        if self.asking_name:
            self.name_entry.focus_set()  # the name can be typed while connecting
        self.poll_id: str | None = self.root.after(POLL_MS, self.poll)
        self.reconnect()

    # --- Widgets ---

    def create_widgets(self) -> None:
        root = self.root
        root.title("Panda Chat")
        root.geometry("860x560")
        root.minsize(560, 360)
        root.configure(background=PANEL)
        base = tkfont.nametofont("TkDefaultFont")
        family = base.actual("family")
        mono = tkfont.nametofont("TkFixedFont").actual("family")
        self.font_body = tkfont.Font(root, family=family, size=11)
        self.font_bold = tkfont.Font(root, family=family, size=11, weight="bold")
        self.font_italic = tkfont.Font(root, family=family, size=10, slant="italic")
        self.font_small = tkfont.Font(root, family=family, size=9)
        self.font_title = tkfont.Font(root, family=family, size=15, weight="bold")
        self.font_mono = tkfont.Font(root, family=mono, size=10)

        style = ttk.Style(root)
        if "clam" in style.theme_names():
            style.theme_use("clam")
        style.configure("TButton", padding=(10, 4), font=self.font_body)
        style.configure("Accent.TButton", background=GREEN, foreground="white",
                        bordercolor=GREEN_DARK, font=self.font_bold)
        style.map("Accent.TButton", background=[("disabled", "#9cbf9e"), ("active", GREEN_DARK)])
        style.configure("TEntry", padding=(6, 5))
        style.configure("Side.TButton", padding=(8, 3), font=self.font_body, anchor="w")

        root.columnconfigure(0, weight=1)
        root.rowconfigure(1, weight=1)

        # The header: a little panda face, the title, where we are connected.
        header = tk.Frame(root, background=GREEN, padx=12, pady=8)
        header.grid(row=0, column=0, sticky="ew")
        face = tk.Canvas(header, width=34, height=30, background=GREEN, highlightthickness=0)
        face.create_oval(2, 2, 12, 12, fill="black", outline="")      # ears
        face.create_oval(22, 2, 32, 12, fill="black", outline="")
        face.create_oval(4, 5, 30, 29, fill="white", outline="")      # face
        face.create_oval(9, 12, 16, 20, fill="black", outline="")     # eye patches
        face.create_oval(18, 12, 25, 20, fill="black", outline="")
        face.create_oval(15, 21, 19, 24, fill="black", outline="")    # nose
        face.pack(side="left")
        tk.Label(header, text="Panda Chat", font=self.font_title, background=GREEN,
                 foreground="white").pack(side="left", padx=(8, 0))
        where = f"{self.address} \u00b7 TLS" if self.secure else self.address
        self.header_info = tk.Label(header, text=tk_safe(where), font=self.font_body,
                                    background=GREEN, foreground="#dcedc8")
        self.header_info.pack(side="right")

        body = tk.Frame(root, background=PANEL)
        body.grid(row=1, column=0, sticky="nsew")
        body.columnconfigure(0, weight=1)
        body.rowconfigure(0, weight=1)

        # The chat view.
        chat_box = tk.Frame(body, background="#d5dbd2", padx=1, pady=1)
        chat_box.grid(row=0, column=0, sticky="nsew", padx=(10, 6), pady=(10, 6))
        chat_box.columnconfigure(0, weight=1)
        chat_box.rowconfigure(0, weight=1)
        self.chat = tk.Text(chat_box, wrap="word", state="disabled", font=self.font_body,
                            background=PAPER, foreground=INK, relief="flat", borderwidth=0,
                            highlightthickness=0, padx=10, pady=8, spacing1=2, spacing3=2,
                            cursor="arrow", takefocus=False)
        self.chat.grid(row=0, column=0, sticky="nsew")
        scrollbar = ttk.Scrollbar(chat_box, orient="vertical", command=self.chat.yview)
        scrollbar.grid(row=0, column=1, sticky="ns")
        self.scrollbar = scrollbar
        self.chat.configure(yscrollcommand=self._on_chat_scrolled)
        self._configure_tags()
        self.more_below = tk.Button(chat_box, text="New messages \u2193", font=self.font_small,
                                    background=GREEN, foreground="white", relief="flat",
                                    activebackground=GREEN_DARK, activeforeground="white",
                                    command=self.scroll_to_end, cursor="hand2")

        # The side panel: who is here, and the command buttons.
        side = tk.Frame(body, background=PANEL, width=200)
        side.grid(row=0, column=1, sticky="ns", padx=(0, 10), pady=(10, 6))
        side.rowconfigure(1, weight=1)
        self.user_header = tk.Label(side, text="In the grove", font=self.font_bold,
                                    background=PANEL, foreground=INK, anchor="w")
        self.user_header.grid(row=0, column=0, sticky="ew", pady=(0, 4))
        list_border = tk.Frame(side, background="#d5dbd2", padx=1, pady=1)
        list_border.grid(row=1, column=0, sticky="nsew")
        list_border.rowconfigure(0, weight=1)
        list_box = tk.Frame(list_border, background=PAPER, padx=6, pady=6)
        list_box.grid(row=0, column=0, sticky="nsew")
        list_box.rowconfigure(0, weight=1)
        self.user_list = tk.Listbox(list_box, width=20, font=self.font_body, activestyle="none",
                                    relief="flat", borderwidth=0, highlightthickness=0,
                                    background=PAPER, selectbackground=OWN_BG,
                                    selectforeground=INK, takefocus=False)
        self.user_list.grid(row=0, column=0, sticky="nsew")
        self.user_list.bind("<Double-Button-1>", self._on_user_double_click)
        self.quiet_label = tk.Label(side, text="", font=self.font_small, background=PANEL,
                                    foreground=MUTED, wraplength=180, justify="left", anchor="w")
        self.quiet_label.grid(row=2, column=0, sticky="ew", pady=(4, 0))
        buttons = tk.Frame(side, background=PANEL)
        buttons.grid(row=3, column=0, sticky="ew", pady=(8, 0))
        buttons.columnconfigure(0, weight=1)
        self.command_buttons: dict[str, ttk.Button] = {}
        for row, (command, label) in enumerate(COMMAND_BUTTONS):
            button = ttk.Button(buttons, text=f"{label}  ({command})", style="Side.TButton",
                                command=functools.partial(self.send_command, command))
            button.grid(row=row, column=0, sticky="ew", pady=2)
            self.command_buttons[command] = button

        # The offline banner: why we are not connected, and Retry / Reconnect.
        self.offline_frame = tk.Frame(root, background=OFFLINE_BG, padx=12, pady=6)
        self.offline_label = tk.Label(self.offline_frame, text="", font=self.font_body,
                                      background=OFFLINE_BG, foreground=ERROR_FG, anchor="w",
                                      justify="left", wraplength=640)
        self.offline_label.pack(side="left", fill="x", expand=True)
        self.retry_button = ttk.Button(self.offline_frame, text="Retry", style="Accent.TButton",
                                       command=self.reconnect)
        self.retry_button.pack(side="right")

        # The name form, in the window: asked until the server welcomes a name.
        self.name_frame = tk.Frame(root, background=PANEL, padx=12, pady=8)
        self.name_prompt = tk.Label(self.name_frame, text="What is your panda name?",
                                    font=self.font_bold, background=PANEL, foreground=INK,
                                    anchor="w")
        self.name_prompt.grid(row=0, column=0, columnspan=2, sticky="w", pady=(0, 4))
        self.name_entry = ttk.Entry(self.name_frame, width=28, font=self.font_body)
        self.name_entry.grid(row=1, column=0, sticky="w")
        self.join_button = ttk.Button(self.name_frame, text="Join the grove",
                                      style="Accent.TButton", command=self.submit_name)
        self.join_button.grid(row=1, column=1, sticky="w", padx=(8, 0))
        self.name_error = tk.Label(self.name_frame, text="", font=self.font_body, anchor="w",
                                   background=PANEL, foreground=ERROR_FG, justify="left",
                                   wraplength=760)
        self.name_error.grid(row=2, column=0, columnspan=2, sticky="w", pady=(4, 0))
        self.name_entry.bind("<Return>", self.submit_name)

        # The input line.
        self.input_frame = tk.Frame(root, background=PANEL, padx=10, pady=8)
        self.input_frame.columnconfigure(0, weight=1)
        self.entry = ttk.Entry(self.input_frame, font=self.font_body)
        self.entry.grid(row=0, column=0, sticky="ew")
        self.send_button = ttk.Button(self.input_frame, text="Send", style="Accent.TButton",
                                      command=self.on_send)
        self.send_button.grid(row=0, column=1, padx=(8, 0))
        self.entry.bind("<Return>", self.on_send)
        self.entry.bind("<KP_Enter>", self.on_send)
        self.entry.bind("<Up>", self.history_up)
        self.entry.bind("<Down>", self.history_down)
        self.entry.bind("<Tab>", self.complete)
        self.entry.bind("<Prior>", lambda _e: self._scroll_pages(-1))
        self.entry.bind("<Next>", lambda _e: self._scroll_pages(1))

        # The status bar.
        status = tk.Frame(root, background="#e3e9e0", padx=10, pady=3)
        status.grid(row=5, column=0, sticky="ew")
        self.status_dot = tk.Label(status, text="\u25cf", font=self.font_small,
                                   background="#e3e9e0", foreground=STATUS_DOTS["connecting"])
        self.status_dot.pack(side="left")
        self.status = tk.Label(status, text="", font=self.font_small, background="#e3e9e0",
                               foreground=INK, anchor="w")
        self.status.pack(side="left", fill="x", expand=True)
        # While reconnecting by itself: when the next attempt comes, and Cancel. Packed (on the
        # right, before the status text takes the rest) only then.
        style.configure("Status.TButton", padding=(6, 0), font=self.font_small)
        self.retry_label = tk.Label(status, text="", font=self.font_small, background="#e3e9e0",
                                    foreground=ALERT_FG)
        self.cancel_button = ttk.Button(status, text="Cancel", style="Status.TButton",
                                        command=self.cancel_retry)

    def _configure_tags(self) -> None:
        chat = self.chat
        chat.tag_configure("time", foreground="#9aa5b1", font=self.font_small)
        chat.tag_configure("line", lmargin2=54)  # wrapped lines align after the time
        chat.tag_configure("own", background=OWN_BG)
        chat.tag_configure("you", foreground=MUTED, font=self.font_small)
        chat.tag_configure("body", foreground=INK)
        chat.tag_configure("system", foreground=MUTED, font=self.font_italic)
        chat.tag_configure("welcome", foreground=GREEN, font=self.font_bold)
        chat.tag_configure("info", foreground=GREEN, font=self.font_bold)
        chat.tag_configure("error", foreground=ERROR_FG)
        chat.tag_configure("alert", foreground=ALERT_FG, font=self.font_bold)
        chat.tag_configure("fact", foreground=FACT_FG, background=FACT_BG)
        chat.tag_configure("fact_label", foreground=FACT_FG, background=FACT_BG,
                           font=self.font_bold)
        chat.tag_configure("help", foreground=HELP_FG)
        chat.tag_configure("command", foreground=MUTED, font=self.font_small)
        chat.tag_configure("art", foreground="#374151", font=self.font_mono, spacing1=0,
                           spacing3=0, lmargin1=54)
        chat.tag_configure("note", foreground=ALERT_FG, font=self.font_italic)
        chat.tag_configure("earlier", foreground=MUTED)
        chat.tag_configure("whisper", foreground=WHISPER_FG, font=self.font_italic)
        chat.tag_configure("whisper_label", foreground=WHISPER_FG, font=self.font_small)
        chat.tag_configure("missed_label", foreground=ALERT_FG)
        for index, colour in enumerate(NAME_COLOURS):
            chat.tag_configure(f"name{index}", foreground=colour, font=self.font_bold)
        # Whole-line marks, set on every piece of the line (and its newline): "history" (said
        # before we came) and "missed" (said while our connection was down) are shown muted by
        # "earlier"; "mention" (the line names us) is highlighted, over any other background.
        chat.tag_configure("mention", background=MENTION_BG)

    def _update_view(self) -> None:
        """Show and enable the parts of the window that fit the phase."""
        rows = ((self.offline_frame, 2, self.phase == "offline"),
                (self.name_frame, 3, self.asking_name),
                (self.input_frame, 4, not self.asking_name))
        for frame, row, shown in rows:
            if shown:
                frame.grid(row=row, column=0, sticky="ew")
            else:
                frame.grid_remove()
        chatting = self.phase == "chatting"
        for widget in (self.entry, self.send_button, *self.command_buttons.values()):
            widget.state(["!disabled"] if chatting else ["disabled"])
        waiting = self.pending_name is not None
        self.join_button.state(["disabled"] if waiting else ["!disabled"])
        self.retry_button.configure(text="Reconnect" if self.ever_connected else "Retry")
        self.status_dot.configure(foreground=STATUS_DOTS[self.phase])
        self._update_title()

    def _update_title(self) -> None:
        """"Panda Chat — Alice", with "(2) " before it for mentions not yet seen."""
        title = f"Panda Chat \u2014 {self.name}" if self.name else "Panda Chat"
        if self.unread_mentions:
            title = f"({self.unread_mentions}) {title}"
        self.root.title(tk_safe(title))

    def set_status(self, text: str) -> None:
        self.status.configure(text=tk_safe(text))

    # --- The poll: the only way received lines reach the widgets ---

    def poll(self) -> None:
        """Handle up to POLL_BATCH items from inbox, then come back: soon while more wait."""
        now = (time.monotonic(), time.thread_time())
        if self.last_tick is not None:
            self.max_tick_gap = max(self.max_tick_gap, now[0] - self.last_tick[0])
            self.max_tick_cpu = max(self.max_tick_cpu, now[1] - self.last_tick[1])
        self.last_tick = now
        self.ticks += 1
        handled = 0
        self._in_batch = True
        try:
            while handled < POLL_BATCH:
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    break
                handled += 1
                self.handle(item)
        finally:
            self._in_batch = False
            self._after_append()
            if not self.closed:
                delay = BACKLOG_POLL_MS if handled == POLL_BATCH else POLL_MS
                self.poll_id = self.root.after(delay, self.poll)

    def handle(self, item: InboxItem) -> None:
        if isinstance(item, ConnectionEvent):
            self.on_connection_event(item)
        else:
            self.on_message(item)

    def on_connection_event(self, event: ConnectionEvent) -> None:
        if event.state == "connected":
            self.phase = "naming"
            self.ever_connected = True
            self.set_status(f"Connected to {self.address}; choose a panda name")
            if self.wanted_name is not None and self.resume_code is not None:
                # Come back as the same panda without missing a line; on an error, the name.
                self.resuming = self.send(f"@resume {self.resume_code}")
                self.pending_name = self.wanted_name
                self.set_status(f"Connected to {self.address}; coming back as {self.wanted_name}")
            elif self.wanted_name is not None:
                self._send_name(self.wanted_name)
            else:
                self.asking_name = True
                self.name_entry.focus_set()
        elif event.state == "failed":
            self.phase = "offline"
            self.pending_name = None
            why = f"Cannot reach the server at {self.address}: {event.detail}."
            if self.retry_attempt:  # trying again by itself: the status bar counts, not the chat
                self._schedule_retry()
            else:
                self.note(why)
                self.offline_label.configure(text=tk_safe(why + " Press Retry to try again."))
            self.set_status(f"Not connected: cannot reach {self.address}")
        else:
            self.on_lost(event.detail)
        self._update_view()

    def on_lost(self, detail: str) -> None:
        was_chatting = self.phase == "chatting"
        retrying = self.retry_attempt > 0  # an automatic attempt connected, then lost it
        self.phase = "offline"
        self.pending_name = None
        if self.name is not None:
            self.wanted_name = self.name  # Reconnect joins with the same name
        self.name = None
        self.set_users([])  # who is there is unknown until the next listing
        if self.leaving:
            why = "You left the grove."
            self.offline_label.configure(text="You left the grove. Press Reconnect to come back.")
        else:
            reason = self.server_farewell or f"Connection lost: {detail}."
            why = f"Disconnected from {self.address}: {reason}"
            if self.server_farewell is None and not retrying:  # else said already
                self.note(why)
            if not retrying:
                self.offline_label.configure(
                    text=tk_safe(why + (" Press Reconnect to join again as "
                                        f"{self.wanted_name}." if was_chatting and self.wanted_name
                                        else " Press Reconnect to try again.")))
            if (was_chatting or retrying) and self.wanted_name is not None:
                # Even after a shutdown: the server may be back in a moment.
                self._schedule_retry()
        self.set_status(why)

    def on_message(self, msg: Message) -> None:
        kind = msg.kind
        if kind == "welcome":
            self.on_welcome(msg)
        elif kind == "error" and self.resuming:
            # The code is wrong or has expired (say, the server restarted): join afresh.
            self.resuming = False
            self.resume_code = None
            if self.pending_name is not None:
                self._send_name(self.pending_name)
            return
        elif kind == "error" and self.pending_name is not None:
            self.name_refused(msg.text)
            return
        elif kind == "resume":
            # "CODE is your resume code: ...": Reconnect sends it; the person need not see it.
            self.resume_code = first_word(msg.text) or None
            return
        elif kind == "name":
            self.name_prompt.configure(text=tk_safe(msg.text))
            return  # the form asks; the prompt is not chat
        elif kind == "grove":
            self.set_users(grove_names(msg.text))
        elif kind == "more":
            self.add_users(msg.text.split())
        elif kind == "join":
            self.add_users([first_word(msg.text)])
        elif kind == "leave":
            self.remove_user(first_word(msg.text))
        elif kind == "lost":  # "Bob lost connection (...)": still here, may come back
            self.away.add(name_key(first_word(msg.text)))
            self._refresh_users()
        elif kind == "back":
            self.away.discard(name_key(first_word(msg.text)))
            self._refresh_users()
        elif kind == "quiet":
            self.quiet = True
            self._refresh_users()
        elif kind in ("shutdown", "full", "bye"):
            self.server_farewell = msg.text
            self.resume_code = None  # nothing to come back to
            if kind == "bye":
                self.leaving = True
        if self.show_line(msg) and kind != "history":  # history: said before we came
            self._mentioned()

    def on_welcome(self, msg: Message) -> None:
        self._stop_retrying()
        self.resuming = False
        self.name = self.pending_name or self.wanted_name
        self._mention = mention_pattern(self.name) if self.name else None
        self.wanted_name = self.name
        self.pending_name = None
        self.phase = "chatting"
        self.asking_name = False
        self.name_error.configure(text="")
        self.set_status(f"Connected to {self.address} as {self.name}")
        self._update_view()
        self.entry.focus_set()

    # --- The name ---

    def submit_name(self, event: object = None) -> str:
        """The name form's Enter and Join button."""
        name = self.name_entry.get().strip()
        if not name:
            self.name_error.configure(text="Type a name first.")
        elif self.pending_name is None:
            self.wanted_name = name
            if self.phase == "naming":
                self._send_name(name)
            elif self.phase == "offline":
                self.name_error.configure(
                    text="Not connected. Press Retry; you will join with this name.")
            else:
                self.name_error.configure(text="Connecting; you will join with this name.")
            self._update_view()
        return "break"

    def _send_name(self, name: str) -> None:
        if self.send(name):
            self.pending_name = name
            self.name_error.configure(text="")
            self.set_status(f"Connected to {self.address}; joining as {name}")
        else:
            self.name_error.configure(text="Not sent: the connection is gone.")

    def name_refused(self, reason: str) -> None:
        """The server said no to the name: show why, and ask again."""
        self._stop_retrying()  # the connection is up: the person chooses a name now
        refused = self.pending_name or ""
        self.pending_name = None
        self.wanted_name = None
        self.asking_name = True
        self.name_error.configure(text=tk_safe(reason))
        self.set_status(f"Connected to {self.address}; the name {refused} was refused")
        self.name_entry.delete(0, "end")
        self.name_entry.insert(0, tk_safe(refused))
        self.name_entry.select_range(0, "end")
        self._update_view()
        self.name_entry.focus_set()

    # --- Sending ---

    def on_send(self, event: object = None) -> str:
        """Enter in the input line, or the Send button."""
        text = self.entry.get()
        if not text.strip():
            return "break"  # empty input sends nothing
        if self._deliver(text):
            self.entry.delete(0, "end")
            self.history.append(text)
            del self.history[:-HISTORY_LIMIT]
            self.history_pos = None
            self.draft = ""
        return "break"

    def send_command(self, command: str) -> None:
        """A command button."""
        self._deliver(command)

    def _deliver(self, text: str) -> bool:
        """Send one line and show it; on failure say so and return False (the caller keeps the
        text, so nothing is lost)."""
        if self.phase != "chatting" or self.name is None:
            self.note("Not sent: not connected to the grove. Your message stays in the box"
                      + (" until you reconnect." if self.phase == "offline" else "."))
            return False
        if not self.send(text):
            self.note("Not sent: the connection is gone. Your message stays in the box.")
            return False
        self.follow = True  # one's own line brings the view back to the newest
        if text.startswith("@"):
            if text.split()[0].lower() != "@whisper":  # the server confirms a whisper itself
                self.show_line(Message("command", text.strip()), own=True)
            if text.split()[0].lower() == "@leaves":
                self.leaving = True
                self.resume_code = None
        else:
            self.show_line(Message("chat", clean_text(text), self.name), own=True)
        return True

    # --- History and completion ---

    def history_up(self, event: object = None) -> str:
        if not self.history:
            return "break"
        if self.history_pos is None:
            self.draft = self.entry.get()
            self.history_pos = len(self.history)
        if self.history_pos > 0:
            self.history_pos -= 1
            self._set_entry(self.history[self.history_pos])
        return "break"

    def history_down(self, event: object = None) -> str:
        if self.history_pos is None:
            return "break"
        self.history_pos += 1
        if self.history_pos >= len(self.history):
            self.history_pos = None
            self._set_entry(self.draft)
        else:
            self._set_entry(self.history[self.history_pos])
        return "break"

    def _set_entry(self, text: str, cursor: int | None = None) -> None:
        self.entry.delete(0, "end")
        self.entry.insert(0, tk_safe(text))
        self.entry.icursor("end" if cursor is None else cursor)

    def complete(self, event: object = None) -> str:
        """Tab: complete the word before the cursor to an @command or a name; Tab again cycles
        through the matches."""
        text = self.entry.get()
        cursor = self.entry.index("insert")
        state = self._completion
        if state is None or state.result != text or state.cursor != cursor:
            start = max(text.rfind(" ", 0, cursor), text.rfind("\t", 0, cursor)) + 1
            prefix = text[start:cursor].casefold()
            if not prefix:
                return "break"
            if prefix.startswith("@"):
                candidates: Iterable[str] = COMMANDS
            else:
                own = name_key(self.name) if self.name else None
                candidates = sorted((tk_safe(name) for key, name in self.users.items()
                                     if key != own), key=str.casefold)
            matches = [c for c in candidates if c.casefold().startswith(prefix)]
            if not matches:
                self.root.bell()
                return "break"
            state = _Completion(start, text[cursor:], matches, 0)
        else:
            state.index = (state.index + 1) % len(state.matches)
        head = text[:state.start] + state.matches[state.index] + " "
        state.result = head + state.tail
        state.cursor = len(head)
        self._set_entry(state.result, state.cursor)
        self._completion = state
        return "break"

    # --- The chat view ---

    def show_line(self, msg: Message, *, own: bool = False) -> bool:
        """One line in the chat view, styled by its kind. own marks what one sent oneself.

        History lines show the server's time instead of ours, missed lines "missed" instead of
        a time; both are muted, and tagged "history" / "missed". True when the line is a
        mention (somebody else's chat line or whisper naming us), which is highlighted."""
        line_tags: tuple[str, ...] = ("line", "own") if own else ("line",)
        stamp = time.strftime("%H:%M ")
        pieces: list[tuple[str, tuple[str, ...]]] = [(stamp, ("time",))]
        kind = msg.kind
        earlier = kind in ("history", "missed")
        if kind == "history":  # "* history: [12:03] Bob: hi", said before we came
            said = _HISTORY_LINE.match(msg.text)
            if said:
                pieces = [(said.group(1) + " ", ("time",))]
            msg = parse_line(said.group(2) if said else msg.text)
            kind = msg.kind
            line_tags += ("history",)
        elif kind == "missed":  # "* missed: Bob: hi", said while our connection was down
            pieces = [("missed ", ("time", "missed_label"))]
            msg = parse_line(msg.text)
            kind = msg.kind
            line_tags += ("missed",)
        mention = False
        if kind == "chat":
            mention = not own and self._names_me(msg.sender, msg.text)
            pieces.append((msg.sender, (_name_tag(msg.sender),)))
            if own:
                pieces.append((" (you)", ("you",)))
            pieces.append((": " + msg.text, ("earlier",) if earlier else ("body",)))
        elif kind in ("whisper", "whispered"):  # "Bob: psst" / "to Bob: psst"
            rest = msg.text.removeprefix("to ") if kind == "whispered" else msg.text
            who = parse_line(rest)
            if who.kind != "chat":
                pieces.append((msg.text, ("whisper",)))
            elif kind == "whisper":
                mention = self._names_me(who.sender, who.text)
                pieces += [(who.sender, (_name_tag(who.sender),)),
                           (" whispers to you: ", ("whisper_label",)), (who.text, ("whisper",))]
            else:
                pieces += [("you whispered to ", ("whisper_label",)),
                           (who.sender, (_name_tag(who.sender),)),
                           (": " + who.text, ("whisper",))]
        elif kind == "art":
            pieces = [(msg.text, ("art",))]
        elif kind == "fact":
            pieces += [("Bamboo fact: ", ("fact_label",)), (msg.text, ("fact",))]
        elif kind == "command":
            pieces += [("you: ", ("command",)), (msg.text, ("command",))]
        elif kind == "text":
            pieces.append((msg.text, ("body",)))
        else:
            style = {"welcome": "welcome", "info": "info", "error": "error", "help": "help",
                     "shutdown": "alert", "full": "alert", "bye": "alert",
                     "slow": "note"}.get(kind, "system")
            pieces.append(("\u2022 " + msg.text, ("system",) if earlier else (style,)))
        if mention:
            line_tags += ("mention",)
        self._append(pieces, line_tags)
        if not own:
            self.lines_shown += 1
        return mention

    def _names_me(self, sender: str, text: str) -> bool:
        """text, said by sender, names us (and sender is not us)."""
        return (self._mention is not None and self.name is not None
                and name_key(sender) != name_key(self.name)
                and self._mention.search(text) is not None)

    def note(self, text: str) -> None:
        """A line from the client itself: a fault, something not sent."""
        self._append([(time.strftime("%H:%M "), ("time",)), ("\u2022 " + text, ("note",))],
                     ("line",))

    def _append(self, pieces: list[tuple[str, tuple[str, ...]]], line_tags: tuple[str, ...]
                ) -> None:
        chat = self.chat
        chat.configure(state="normal")
        if chat.index("end-1c") != "1.0":  # the newline ends the previous line, in its style
            chat.insert("end", "\n", self._last_line_tags)
        self._last_line_tags = line_tags
        for text, tags in pieces:
            chat.insert("end", tk_safe(text), (*tags, *line_tags))
        chat.configure(state="disabled")
        if not self.follow:
            self.more_below.place(relx=1.0, rely=1.0, x=-22, y=-8, anchor="se")
        if not self._in_batch:
            self._after_append()

    def _after_append(self) -> None:
        """Once per batch: keep the scrollback bounded, and follow the newest line."""
        chat = self.chat
        lines = int(chat.index("end-1c").split(".")[0])
        if lines > MAX_SCROLLBACK_LINES:
            chat.configure(state="normal")
            chat.delete("1.0", f"{lines - MAX_SCROLLBACK_LINES + 1}.0")
            chat.configure(state="disabled")
        if self.follow:
            chat.see("end")

    def scrollback_lines(self) -> int:
        return int(self.chat.index("end-1c").split(".")[0])

    def _on_chat_scrolled(self, first: float | str, last: float | str) -> None:
        """The view moved (scrolled by the person, or grown by new lines): autoscroll only while
        the bottom is in sight, so scrolling up to read is not undone by the next line."""
        self.scrollbar.set(first, last)
        self.follow = float(last) >= 0.999
        if self.follow:
            self.more_below.place_forget()

    def scroll_to_end(self) -> None:
        self.chat.see("end")
        self.chat.yview_moveto(1.0)

    def _scroll_pages(self, pages: int) -> str:
        self.chat.yview_scroll(pages, "pages")
        return "break"

    # --- Who is here ---

    def set_users(self, names: Iterable[str]) -> None:
        """The user list is exactly names (a grove listing)."""
        self.users = {}
        self.add_users(names)
        self.away &= self.users.keys()

    def add_users(self, names: Iterable[str]) -> None:
        for name in names:
            if name:
                self.users[name_key(name)] = name
        self._refresh_users()

    def remove_user(self, name: str) -> None:
        self.users.pop(name_key(name), None)
        self.away.discard(name_key(name))
        self._refresh_users()

    def user_names(self) -> list[str]:
        return sorted(self.users.values(), key=str.casefold)

    def _refresh_users(self) -> None:
        box = self.user_list
        box.delete(0, "end")
        own = name_key(self.name) if self.name else None
        self._listed = self.user_names()
        for name in self._listed:
            key = name_key(name)
            mark = " (you)" if key == own else " (away)" if key in self.away else ""
            box.insert("end", tk_safe(name + mark))
            box.itemconfigure("end", foreground=MUTED if key in self.away else name_colour(name))
        count = len(self.users)
        self.user_header.configure(
            text=f"In the grove \u00b7 {count}" if count else "In the grove")
        self.quiet_label.configure(
            text="The grove is big, so joins and leaves are no longer announced: this list is "
                 "as of the last listing. Press Who's here to refresh it." if self.quiet else "")

    def whisper_to(self, name: str) -> None:
        """Start a whisper to name: the input line becomes "@whisper NAME " and what was typed
        (a whisper to somebody else loses its "@whisper OTHER"), ready to type on."""
        text = self.entry.get()
        words = text.split(" ", 2)
        if words[0].lower() == "@whisper":
            text = words[2] if len(words) > 2 else ""
        self._set_entry(f"@whisper {name} {text}")
        self.entry.focus_set()

    def _on_user_double_click(self, event: tk.Event[tk.Listbox]) -> str:
        """A double click on a name in the user list starts a whisper to that panda."""
        row = self.user_list.index(f"@{event.x},{event.y}")  # the nearest row
        box = self.user_list.bbox(row)
        inside = box is not None and box[1] <= event.y < box[1] + box[3]
        if inside and 0 <= row < len(self._listed) and self.phase == "chatting":
            name = self._listed[row]
            if self.name is None or name_key(name) != name_key(self.name):  # not oneself
                self.whisper_to(name)
        return "break"

    # --- Mentions ---

    def has_focus(self) -> bool:
        """The window has the keyboard focus: the person is (probably) looking at it."""
        focus = str(self.root.tk.call("focus"))  # "" when another application has the focus
        return bool(focus) and str(self.root.tk.call("winfo", "toplevel", focus)) == str(
            self.root)

    def _mentioned(self) -> None:
        """Somebody named us. Unless the window has the focus: one more in the title's count,
        and one ring of the bell (unless bell is off)."""
        if self.has_focus():
            return
        self.unread_mentions += 1
        self._update_title()
        if self.bell:
            self.root.bell()

    def _on_focus_in(self, event: object = None) -> None:
        """The window got the focus: the person sees the mentions now."""
        if self.unread_mentions:
            self.unread_mentions = 0
            self._update_title()

    # --- Coming back by itself ---

    def _schedule_retry(self) -> None:
        """Count down to the next automatic attempt (the waits of retry_delays, the last one
        repeating), shown with Cancel in the status bar."""
        if not self.retry_delays or self.closed:
            return
        self.retry_attempt += 1
        delay = self.retry_delays[min(self.retry_attempt, len(self.retry_delays)) - 1]
        self._retry_at = time.monotonic() + delay
        if not self.retry_label.winfo_manager():  # not shown yet: "... in 2 s… [Cancel]"
            self.cancel_button.pack(side="right", before=self.status)
            self.retry_label.pack(side="right", padx=(0, 6), before=self.status)
        self._retry_tick()

    def _retry_tick(self) -> None:
        self.retry_id = None
        remaining = self._retry_at - time.monotonic()
        if remaining > 0:
            seconds = math.ceil(remaining)
            self.retry_label.configure(
                text=f"Reconnecting in {seconds} s\u2026 (attempt {self.retry_attempt})")
            # Back when the number shown changes, or the wait is over.
            wait_ms = math.ceil((remaining - (seconds - 1)) * 1000)
            self.retry_id = self.root.after(wait_ms, self._retry_tick)
            return
        self.retry_label.configure(text=f"Reconnecting\u2026 (attempt {self.retry_attempt})")
        self._connect_again()

    def _stop_retrying(self) -> None:
        if self.retry_id is not None:
            self.root.after_cancel(self.retry_id)
            self.retry_id = None
        self.retry_attempt = 0
        self.retry_label.pack_forget()
        self.cancel_button.pack_forget()

    def cancel_retry(self) -> None:
        """Cancel: stop reconnecting by itself, ending an attempt under way. Reconnect stays."""
        if not self.retry_attempt:
            return
        under_way = self.retry_id is None and self.phase != "offline"
        self._stop_retrying()
        if under_way:
            self.disconnect()  # nothing of that connection reaches inbox any more
            self.phase = "offline"
            self.pending_name = None
            self.resuming = False
            self.set_status(f"Not connected to {self.address}")
        self.note("Stopped reconnecting. Press Reconnect to try again.")
        self._update_view()

    # --- Faults and the end ---

    def reconnect(self) -> None:
        """Retry / Reconnect: connect again now, joining with the same name."""
        self._stop_retrying()
        self._connect_again()

    def _connect_again(self) -> None:
        if self.closed:
            return
        self.phase = "connecting"
        self.pending_name = None
        self.resuming = False
        self.leaving = False
        self.server_farewell = None
        self.quiet = False
        self.set_status(f"Connecting to {self.address}\u2026")
        self._update_view()
        self.connect()

    def close(self) -> None:
        """Stop polling, say goodbye, close the connection. The window stays for the caller."""
        if self.closed:
            return
        self.closed = True
        self._stop_retrying()
        if self.poll_id is not None:
            self.root.after_cancel(self.poll_id)
            self.poll_id = None
        if self.phase in ("naming", "chatting"):
            self.send("@leaves")  # before a name too: the server then says goodbye at once
        self.disconnect()

    def on_close(self) -> None:
        """The window's close button (and Ctrl+C, SIGTERM)."""
        self.close()
        self.root.destroy()


# --- Running it -------------------------------------------------------------

def display_problem() -> str | None:
    """Why no window can open here, or None when one may (X11 needs $DISPLAY)."""
    if sys.platform in ("win32", "darwin") or os.environ.get("DISPLAY"):
        return None
    return "no display ($DISPLAY is not set)"


def open_chat(root: tk.Tk, host: str, port: int, name: str | None = None,
              tls: ssl.SSLContext | None = None, *, bell: bool = True,
              retry_delays: Sequence[float] = RETRY_DELAYS_S) -> tuple[ChatWindow, Connection]:
    """A ChatWindow on root wired to a real Connection to host:port, connecting."""
    inbox: queue.Queue[InboxItem] = queue.Queue()
    connection = Connection(host, port, inbox, tls)
    window = ChatWindow(root, inbox, send=connection.send, connect=connection.open,
                        disconnect=lambda: connection.close(LINGER_S), address=(host, port),
                        name=name, secure=tls is not None, bell=bell, retry_delays=retry_delays)
    return window, connection


INSECURE_WARNING: Final = (
    "WARNING: --insecure: the server's certificate is NOT checked. The chat is encrypted, but "
    "anybody on the network can pretend to be the server and read everything. Use --cafile "
    "with the server's certificate instead.")


def tls_context(cafile: str | None, insecure: bool = False) -> ssl.SSLContext:
    """For --tls: the server's certificate and host name are checked, against the system's
    certificate authorities or cafile; TLS 1.2 at least. insecure (never the default) turns
    the checks off."""
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def run_window(host: str, port: int, name: str | None, tls: ssl.SSLContext | None,
               bell: bool = True) -> int:
    problem = display_problem()
    root: tk.Tk | None = None
    if problem is None:
        try:
            root = tk.Tk(className="PandaChat")
        except tk.TclError as exc:
            problem = f"cannot open a window ({exc})"
    if root is None:
        print(f"client3.py: {problem}; for the terminal client run: python3 client3.py --no-gui",
              file=sys.stderr)
        return 2
    window, _ = open_chat(root, host, port, name, tls, bell=bell)

    def stop(signum: int, frame: FrameType | None) -> None:
        # Signals arrive between Python bytecodes on this (Tk's) thread; leave via the loop.
        root.after(0, window.on_close)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    root.mainloop()
    return 0


def run_terminal(host: str, port: int, name: str | None, tls: ssl.SSLContext | None,
                 stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    """The --no-gui client: stdin lines to the server, server lines to stdout, until the server
    closes. End of stdin sends an end of file and waits for the server to close."""
    inbox: queue.Queue[InboxItem] = queue.Queue()
    connection = Connection(host, port, inbox, tls)
    connection.open()

    def pump_stdin() -> None:
        for line in stdin:
            if not connection.send(line.rstrip("\r\n")):
                return
        connection.finish()

    try:
        while True:
            item = inbox.get()
            if isinstance(item, Message):
                print(wire_line(item), file=stdout, flush=True)
            elif item.state == "connected":
                if name is not None:
                    connection.send(name)
                threading.Thread(target=pump_stdin, name="panda-stdin", daemon=True).start()
            elif item.state == "failed":
                print(f"client3.py: cannot reach the server at {host}:{port}: {item.detail}",
                      file=sys.stderr)
                return 1
            else:
                return 0
    except KeyboardInterrupt:
        connection.send("@leaves")
        return 130
    finally:
        connection.close(LINGER_S)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The Panda Chat client: a window to chat in.")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"server host ({DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"server port ({DEFAULT_PORT})")
    parser.add_argument("--name", help="join with this panda name instead of being asked")
    parser.add_argument("--no-gui", action="store_true",
                        help="a plain line client: stdin to the server, server lines to stdout")
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS, checking the server's certificate")
    parser.add_argument("--cafile", metavar="PEM",
                        help="trust the certificate(s) in this file for --tls (implies --tls; "
                             "default: the system's certificate authorities)")
    parser.add_argument("--insecure", action="store_true",
                        help="with --tls, do NOT check the server's certificate (implies "
                             "--tls; warns loudly; only for a quick test)")
    parser.add_argument("--quiet", action="store_true",
                        help="no bell when somebody mentions your name (the window's title "
                             "still counts the mentions)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tls = None
    if args.tls or args.cafile or args.insecure:
        if args.insecure:
            print(INSECURE_WARNING, file=sys.stderr)
        try:
            tls = tls_context(args.cafile, insecure=args.insecure)
        except (OSError, ssl.SSLError) as exc:
            print(f"client3.py: cannot use --cafile {args.cafile}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 2
    if args.no_gui:
        for stream in (sys.stdin, sys.stdout):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="replace")
        return run_terminal(args.host, args.port, args.name, tls)
    return run_window(args.host, args.port, args.name, tls, bell=not args.quiet)


if __name__ == "__main__":
    sys.exit(main())
