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
poll() drains that queue with after(), within a time budget per tick, and no other thread ever
touches a widget. Only Connection.send() writes to the socket.

The parts, in the order of this file (each section starts with a "# --- " line):
  Text for display   pure: tk_safe, escaping, bidi_display, links, name colours, mentions
  render             pure: render(message) -> the pieces and tags of one chat line
  Input helpers      pure: InputHistory (Up/Down), Completer (Tab), Placeholders; Question
                     and its checks (what a keeper's dialog asks)
  Settings           the small JSON file in the user's config folder (font size, theme)
  Timers             Reconnector (the countdown to the next attempt), Notifier (bell, desktop)
  Session            no Tk: phase, names, the user list, the resume code, the write-ahead
                     outbox, the keepers' rules (states, keeper, kicked); what each message
                     kind does, in one table (Session.KINDS)
  The connection     Connection and its receiver thread
  Widgets            one class per view: ChatView (+ FindBar), UserList, NameForm, InputBar,
                     OfflineBanner, StatusBar, AskDialog (a keeper's question), ShortcutList
  ChatWindow         the coordinator: builds the views, wires them to the Session, polls
  Running it         open_chat(), the --no-gui client, main()
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tkinter as tk
import unicodedata
import webbrowser
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from tkinter import filedialog, ttk
from tkinter import font as tkfont
from types import FrameType
from typing import Any, ClassVar, Final, Literal, Protocol, TextIO

from protocol import (
    LINE_TOO_LONG,
    MAX_NAME_CHARS,
    MAX_SERVER_LINE_BYTES,
    LineBuffer,
    Member,
    Message,
    TlsSession,
    chat_line,
    clean_text,
    encode_line,
    name_key,
    parse_grove_line,
    parse_history,
    parse_line,
    parse_lost,
    parse_mute,
    parse_nick,
    parse_resume,
    parse_slowmode,
    system_line,
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
# A tick's budget, by time and by characters rather than by lines (a 4,000-character line costs
# Tk twenty times what a short one does): 15 ms of work leaves Tk the rest of a 50 ms frame for
# keys, clicks and redraws; 12,000 characters bound what Tk lays out (wraps) after the tick. While
# more lines wait, the next tick comes after BACKLOG_POLL_MS rather than POLL_MS.
POLL_BUDGET_S: Final = 0.015
POLL_BUDGET_CHARS: Final = 12_000
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
# The bell rings at most once in this many seconds: a flood of mentions is one ring, not 5,000.
BELL_GAP_S: Final = 5.0
# The chat's font size in points, and how far zooming may take it (readable to poster-sized).
FONT_SIZE: Final = 11
FONT_SIZES: Final = range(7, 33)

# What Tab completes after "@": the server's commands (@help lists them), and for keepers theirs.
COMMANDS: Final = ("@bamboo", "@grove", "@help", "@keeper", "@leaves", "@me", "@nick",
                   "@whisper")
KEEPER_COMMANDS: Final = ("@announce", "@ban", "@bans", "@hush", "@kick", "@lock", "@mute",
                          "@slowmode", "@unban", "@unhush", "@unlock", "@unmute")
# How long the user list's "Mute 10 minutes" mutes (the server's default too).
MUTE_MINUTES: Final = 10
COMMAND_BUTTONS: Final = (("@bamboo", "Bamboo fact"), ("@grove", "Who's here"),
                          ("@help", "Help"), ("@leaves", "Leave"))

# The keys of the window, for F1's list (and README).
SHORTCUTS: Final = (
    ("Enter", "send the line (while offline: send it when back)"),
    ("Up / Down", "walk through the lines you sent"),
    ("Tab", "complete a name or an @command; Tab again for the next match"),
    ("PageUp / PageDown", "scroll the chat"),
    ("Ctrl+F", "find in the chat (Enter: next, Shift+Enter: previous, Escape: close)"),
    ("Ctrl+plus / Ctrl+minus / Ctrl+0", "zoom the chat in, out, back to normal"),
    ("Ctrl+S", "save the chat as a text file"),
    ("F1", "this list"),
)

# Colours. A chat name keeps its colour: the colour is picked by a stable hash of the name (not
# Python's hash(), which changes from run to run), from colours that read well on the paper.
NAME_COLOURS: Final = ("#c62828", "#1565c0", "#2e7d32", "#7b1fa2", "#e65100", "#00838f",
                       "#ad1457", "#5d4037", "#303f9f", "#827717")
GREEN: Final = "#2e7d32"        # bamboo: the header, the accent
GREEN_DARK: Final = "#1b5e20"
HEADER_INFO_FG: Final = "#dcedc8"  # the address on the green header, in both themes
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

Phase = Literal["connecting", "naming", "chatting", "offline"]


@dataclass(frozen=True)
class Palette:
    """The colours of one theme. The light one is the constants above."""

    paper: str = PAPER
    panel: str = PANEL
    ink: str = INK
    muted: str = MUTED
    border: str = "#d5dbd2"
    status_bg: str = "#e3e9e0"
    time: str = "#9aa5b1"
    own_bg: str = OWN_BG
    error: str = ERROR_FG
    alert: str = ALERT_FG
    fact_fg: str = FACT_FG
    fact_bg: str = FACT_BG
    help: str = HELP_FG
    whisper: str = WHISPER_FG
    mention_bg: str = MENTION_BG
    offline_bg: str = OFFLINE_BG
    art: str = "#374151"
    link: str = "#1d4ed8"
    found_bg: str = "#fde68a"
    found_current_bg: str = "#f59e0b"
    accent: str = GREEN           # welcome and info lines
    announce_fg: str = "#ffffff"  # a keeper's announcement: a bamboo-green banner
    announce_bg: str = GREEN
    moderation: str = "#9a3412"   # the keepers' lines: lock, hush, mute, ...
    names: tuple[str, ...] = NAME_COLOURS
    dots: Mapping[str, str] = field(default_factory=lambda: {
        "connecting": "#d97706", "naming": "#d97706", "chatting": "#16a34a",
        "offline": "#dc2626"})


LIGHT: Final = Palette()
# The dark theme: the same roles on a dark grey, the name colours lightened to read on it.
DARK: Final = replace(
    LIGHT, paper="#1e2124", panel="#26292d", ink="#e5e7eb", muted="#9ca3af", border="#3a3f45",
    status_bg="#202326", time="#7b8794", own_bg="#1f3326", error="#f87171", alert="#fb923c",
    fact_fg="#bbf7d0", fact_bg="#163322", help="#93c5fd", whisper="#c4b5fd",
    mention_bg="#4a3f10", offline_bg="#3b1f1f", art="#d1d5db", link="#93c5fd", accent="#a5d6a7",
    found_bg="#7c5e10", found_current_bg="#b45309", announce_fg="#f1f8e9",
    announce_bg=GREEN_DARK, moderation="#fdba74",
    names=("#ef9a9a", "#90caf9", "#a5d6a7", "#ce93d8", "#ffcc80", "#80deea", "#f48fb1",
           "#bcaaa4", "#9fa8da", "#e6ee9c"))
THEMES: Final = {"light": LIGHT, "dark": DARK}


# --- Text for display (pure) ------------------------------------------------

_ASTRAL: Final = re.compile("[\U00010000-\U0010ffff]")


def _astral_name(match: re.Match[str]) -> str:
    ch = match.group()
    name = unicodedata.name(ch, "")
    return f"[{name.lower()}]" if name else f"[U+{ord(ch):04X}]"


def tk_safe(text: str) -> str:
    """text with every character above U+FFFF, which Tk 8.6 cannot hold or draw reliably (emoji
    can crash it), replaced by its name in brackets: "\\U0001F43C" -> "[giant panda]".

    For display only: what is sent keeps the real characters (see Placeholders)."""
    if text.isascii():
        return text
    return _ASTRAL.sub(_astral_name, text)


# Where right-to-left letters live (Hebrew, Arabic, Syriac, Thaana, NKo, ..., their presentation
# forms, and the astral RTL blocks): a quick test that spares the per-character look-up below
# for the lines (nearly all) that have none.
_MAYBE_RTL: Final = re.compile(
    "[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefe\U00010800-\U00010fff\U0001e800-\U0001efff]")
_STRONG_RTL: Final = frozenset({"R", "AL"})
# Inside a right-to-left run these stay with it; anything else (a Latin letter) ends the run.
_RUN_NEUTRAL: Final = frozenset({"WS", "ON", "CS", "ES", "ET", "EN", "AN", "NSM", "BN", "S"})
_DIGITS: Final = frozenset({"EN", "AN"})
_MIRRORED: Final = str.maketrans("()[]{}<>«»", ")(][}{><»«")


def bidi_display(text: str) -> str:
    """text in the order to draw it left to right: each run of right-to-left text (from a strong
    RTL letter to the last one, with the spaces, punctuation and digits between) is reversed,
    its digits kept in reading order and its brackets mirrored. Tk 8.6 draws in typing order,
    which shows Arabic and Hebrew words backwards; this is a simple bidi for display only.

    It is its own inverse (bidi_display(bidi_display(t)) == t): copying from the chat view
    turns what is shown back into what was said."""
    if not _MAYBE_RTL.search(text):
        return text
    classes = [unicodedata.bidirectional(ch) for ch in text]
    out: list[str] = []
    i = 0
    while i < len(text):
        if classes[i] not in _STRONG_RTL:
            out.append(text[i])
            i += 1
            continue
        end = last = i  # the run: from here to its last strong RTL letter
        while end < len(text) and (classes[end] in _STRONG_RTL or classes[end] in _RUN_NEUTRAL):
            if classes[end] in _STRONG_RTL:
                last = end
            end += 1
        out.append(_reverse_run(text[i:last + 1], classes[i:last + 1]))
        i = last + 1
    return "".join(out)


def _reverse_run(run: str, classes: list[str]) -> str:
    pieces: list[str] = []  # digit groups whole (numbers read left to right), others alone
    after_digit = False
    for ch, kind in zip(run, classes, strict=True):
        digit = kind in _DIGITS
        if digit and after_digit:
            pieces[-1] += ch
        else:
            pieces.append(ch)
        after_digit = digit
    return "".join(reversed(pieces)).translate(_MIRRORED)


def for_display(text: str) -> str:
    """What a widget may show of text from the network: control characters escaped (a foreign
    server may not have; a NUL would end the text in Tk), RTL runs reordered, astral characters
    named. Never for what is sent."""
    return tk_safe(bidi_display(clean_text(text)))


def name_colour(name: str, palette: Palette = LIGHT) -> str:
    """The colour of a name: the same for that name (ignoring case) in every line and every run."""
    return palette.names[name_index(name)]


def name_index(name: str) -> int:
    return zlib.crc32(name_key(name).encode("utf-8")) % len(NAME_COLOURS)


def name_tag(name: str) -> str:
    """The chat view's tag for a name's colour (one tag per colour, not per name)."""
    return f"name{name_index(name)}"


def mention_pattern(name: str) -> re.Pattern[str]:
    """What finds name in a line: as a whole word, in any case. "bob!" and "@Bob" name Bob;
    "Bobby" and "bob_x" do not (a letter, digit or _ next to it makes it another word)."""
    return re.compile(rf"(?<!\w){re.escape(name)}(?!\w)", re.IGNORECASE)


def first_word(text: str) -> str:
    words = text.split(maxsplit=1)
    return words[0] if words else ""


# A link: http(s):// up to a space, without the punctuation that usually ends a sentence.
LINK: Final = re.compile(r"https?://[^\s<>\"]+[^\s<>\".,;:!?)\]}'’]")


def wire_line(msg: Message) -> str:
    """A parsed line back as it came over the wire."""
    if msg.kind == "chat":
        return chat_line(msg.sender, msg.text)
    if msg.kind == "text":
        return msg.text
    return system_line(msg.kind, msg.text)


# --- render (pure) -----------------------------------------------------------

Tags = tuple[str, ...]
Piece = tuple[str, Tags]


@dataclass(frozen=True)
class Rendered:
    """One chat line: its pieces (text, tags) left to right, the tags of the whole line, and
    whether it names us (mention) or whispers to us (both may call for a notification)."""

    pieces: tuple[Piece, ...]
    line_tags: Tags = ()
    mention: bool = False
    whisper: bool = False

    def plain(self) -> str:
        """The line as text, as said (Save writes this)."""
        return "".join(text for text, _ in self.pieces)


# The style of each system line kind; anything not here is "system" (grey italics). The keepers'
# lines (issue #11) are "moderation"; announcements and actions have pieces of their own (_body).
SYSTEM_STYLES: Final = {"welcome": "welcome", "info": "info", "error": "error", "help": "help",
                        "shutdown": "alert", "full": "alert", "bye": "alert", "slow": "note",
                        "kick": "alert", "keeper": "moderation", "mute": "moderation",
                        "unmute": "moderation", "lock": "moderation", "unlock": "moderation",
                        "hush": "moderation", "unhush": "moderation",
                        "slowmode": "moderation", "ban": "moderation", "nick": "moderation"}


def render(msg: Message, *, clock: str, me: str | None = None, own: bool = False) -> Rendered:
    """The pieces and tags of msg as a line of the chat view. clock is the time to show ("12:03"),
    me our own name (for mentions), own marks a line we sent ourselves.

    History lines show the server's time instead of ours, missed lines "missed" instead of a
    time; both are muted ("earlier") and tagged "history" / "missed" on the whole line."""
    line_tags: Tags = ("line", "own") if own else ("line",)
    stamp: Piece = (clock + " ", ("time",))
    kind = msg.kind
    earlier = kind in ("history", "missed")
    if kind == "history":  # "* history: [12:03] Bob: hi", said before we came
        said = parse_history(msg.text)
        if said:
            stamp = (said[0] + " ", ("time",))
        msg = parse_line(said[1] if said else msg.text)
        line_tags += ("history",)
    elif kind == "missed":  # "* missed: Bob: hi", said while our connection was down
        stamp = ("missed ", ("time", "missed_label"))
        msg = parse_line(msg.text)
        line_tags += ("missed",)
    pieces, mention, whisper = _body(msg, me, own, earlier)
    if msg.kind == "art":
        stamp = ("", ())
    if msg.kind == "announce" and not earlier:
        line_tags += ("announce_line",)  # a banner across the chat (its newline is tagged too)
    if mention:
        line_tags += ("mention",)
    return Rendered((stamp, *pieces), line_tags, mention, whisper)


def _body(msg: Message, me: str | None, own: bool, earlier: bool
          ) -> tuple[list[Piece], bool, bool]:
    """The pieces after the time; whether they name us; whether they whisper to us."""
    kind = msg.kind
    if kind == "chat":
        mention = not own and _names(me, msg.sender, msg.text)
        you = [(" (you)", ("you",))] if own else []
        said = ("earlier",) if earlier else ("body",)
        return ([(msg.sender, (name_tag(msg.sender),)), *you,
                 *_linked(": " + msg.text, said)], mention, False)
    if kind in ("whisper", "whispered"):  # "Bob: psst" / "to Bob: psst"
        rest = msg.text.removeprefix("to ") if kind == "whispered" else msg.text
        who = parse_line(rest)
        if who.kind != "chat":
            return [(msg.text, ("whisper",))], False, False
        if kind == "whisper":
            return ([(who.sender, (name_tag(who.sender),)),
                     (" whispers to you: ", ("whisper_label",)),
                     *_linked(who.text, ("whisper",))],
                    _names(me, who.sender, who.text), True)
        return ([("you whispered to ", ("whisper_label",)),
                 (who.sender, (name_tag(who.sender),)),
                 *_linked(": " + who.text, ("whisper",))], False, False)
    if kind == "art":
        return [(msg.text, ("art",))], False, False
    if kind == "fact":
        return [("Bamboo fact: ", ("fact_label",)), (msg.text, ("fact",))], False, False
    if kind == "command":
        return [("you: ", ("command",)), (msg.text, ("command",))], False, False
    if kind == "text":
        return _linked(msg.text, ("body",)), False, False
    if kind == "announce":  # "Teacher: quiet now, please"
        told = parse_line(msg.text)
        if told.kind == "chat":
            return ([("\u25b6 Announcement from ", ("announce",)),
                     (told.sender, ("announce",)),
                     *_linked(": " + told.text, ("announce",))], False, False)
        return [("\u25b6 " + msg.text, ("announce",))], False, False
    if kind == "action":  # "Bob waves", shown "* Bob waves"
        actor, _, did = msg.text.partition(" ")
        return ([("* ", ("action",)), (actor, (name_tag(actor), "action_name")),
                 *_linked(" " + did if did else "", ("action",))],
                not own and _names(me, actor, did), False)
    style = "system" if earlier else SYSTEM_STYLES.get(kind, "system")
    return _linked("\u2022 " + msg.text, (style,)), False, False


def _names(me: str | None, sender: str, text: str) -> bool:
    """text, said by sender, names me (and sender is not me)."""
    return (me is not None and name_key(sender) != name_key(me)
            and mention_pattern(me).search(text) is not None)


def _linked(text: str, tags: Tags) -> list[Piece]:
    """text as pieces, its links apart with the "link" tag added."""
    if "://" not in text:
        return [(text, tags)]
    pieces: list[Piece] = []
    at = 0
    for link in LINK.finditer(text):
        if link.start() > at:
            pieces.append((text[at:link.start()], tags))
        pieces.append((link.group(), (*tags, "link")))
        at = link.end()
    if at < len(text):
        pieces.append((text[at:], tags))
    return pieces


def render_note(text: str, clock: str) -> Rendered:
    """A line from the client itself: a fault, something not sent."""
    return Rendered(((clock + " ", ("time",)), ("\u2022 " + text, ("note",))), ("line",))


# --- Input helpers (pure) ----------------------------------------------------

class InputHistory:
    """The lines one sent, for Up and Down (cf. idlelib's history.py).

    add(text)       a line was sent; the walk starts again from the newest
    up(current)     the line before (current, the unsent text, is kept as the draft);
                    None when there is nothing older
    down()          the line after; past the newest, the draft again; None when not walking
    """

    def __init__(self, limit: int = HISTORY_LIMIT) -> None:
        self.limit = limit
        self.entries: list[str] = []
        self._pos: int | None = None
        self._draft = ""

    def add(self, text: str) -> None:
        self.entries.append(text)
        del self.entries[:-self.limit]
        self._pos = None
        self._draft = ""

    def up(self, current: str) -> str | None:
        if not self.entries:
            return None
        if self._pos is None:
            self._draft = current
            self._pos = len(self.entries)
        if self._pos == 0:
            return None
        self._pos -= 1
        return self.entries[self._pos]

    def down(self) -> str | None:
        if self._pos is None:
            return None
        self._pos += 1
        if self._pos >= len(self.entries):
            self._pos = None
            return self._draft
        return self.entries[self._pos]


class Completer:
    """Tab completion of the word before the cursor: an @command, or a name.

    complete(text, cursor, names) -> (new text, new cursor), or None when nothing matches.
    A Tab right after a completion (the text and cursor it left) goes on to the next match.
    """

    def __init__(self, commands: Sequence[str] = COMMANDS) -> None:
        self.commands = commands
        self._last: tuple[str, int] | None = None  # the text and cursor we left
        self._start = 0
        self._tail = ""
        self._matches: list[str] = []
        self._index = 0

    def complete(self, text: str, cursor: int, names: Iterable[str]) -> tuple[str, int] | None:
        if self._last != (text, cursor):
            start = max(text.rfind(" ", 0, cursor), text.rfind("\t", 0, cursor)) + 1
            prefix = text[start:cursor].casefold()
            if not prefix:
                return None
            candidates = (self.commands if prefix.startswith("@")
                          else sorted(names, key=str.casefold))
            matches = [c for c in candidates if c.casefold().startswith(prefix)]
            if not matches:
                return None
            self._start, self._tail, self._matches, self._index = start, text[cursor:], matches, 0
        else:
            self._index = (self._index + 1) % len(self._matches)
        head = text[:self._start] + self._matches[self._index] + " "
        self._last = (head + self._tail, len(head))
        return self._last


class Placeholders:
    """What tk_safe() put in the input line, to be put back before sending.

    The entry shows "Mei[panda face]" for "Mei🐼" (Tk 8.6 cannot hold the emoji); learn(text)
    remembers the names of text's astral characters, restore(shown) turns them back.
    """

    def __init__(self) -> None:
        self._chars: dict[str, str] = {}

    def learn(self, text: str) -> str:
        """text as the entry shows it; its placeholders remembered."""
        for ch in _ASTRAL.findall(text):
            self._chars[tk_safe(ch)] = ch
        return tk_safe(text)

    def restore(self, shown: str) -> str:
        if not self._chars or "[" not in shown:
            return shown
        pattern = "|".join(re.escape(p) for p in sorted(self._chars, key=len, reverse=True))
        return re.sub(pattern, lambda m: self._chars[m.group()], shown)


def _any_answer(text: str) -> str | None:
    return None


@dataclass(frozen=True)
class Question:
    """What a keeper's small dialog asks (Kick..., Ban..., Slow mode..., Announce...).

    title, prompt   the dialog's title and what it asks
    ok              the label of the button that confirms: what it does ("Kick Bob")
    initial         the answer to start from
    check(answer)   why answer is not taken (shown in the dialog), or None to take it
    """

    title: str
    prompt: str
    ok: str
    initial: str = ""
    check: Callable[[str], str | None] = _any_answer


# The server's limits on the numbers keepers give (server3.py checks them again).
MAX_MINUTES: Final = 7 * 24 * 60.0
MAX_SLOWMODE_S: Final = 3600.0


def _number_problem(text: str, low: float, high: float, what: str) -> str | None:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if low <= number <= high and (number > 0 or low == 0):
        return None
    return f"Type {what} from {low:g} to {high:g}."


def minutes_problem(text: str) -> str | None:
    """Ban... : empty (until the server stops) or a number of minutes (a fraction is fine)."""
    text = text.strip()
    return _number_problem(text, 0.01, MAX_MINUTES, "a number of minutes") if text else None


def seconds_problem(text: str) -> str | None:
    """Slow mode... : seconds between two lines of each panda; 0 ends slow mode."""
    return _number_problem(text.strip(), 0, MAX_SLOWMODE_S, "a number of seconds")


def text_problem(text: str) -> str | None:
    return None if text.strip() else "Type the text first."


# --- Settings ------------------------------------------------------------------

SETTINGS_ENV: Final = "PANDA_CHAT_SETTINGS"  # a settings file elsewhere (tests, portable use)


def settings_path() -> Path:
    """Where the settings live: $PANDA_CHAT_SETTINGS, else the platform's config folder."""
    if override := os.environ.get(SETTINGS_ENV):
        return Path(override)
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "panda-chat" / "settings.json"


class Settings:
    """The window's few settings, in one small JSON file; never required.

    Settings(path) reads it; a missing file is the defaults, a broken one is the defaults and one
    warning (on stderr, and in .warning for the window to show). save() writes it back.
      font_size  the chat's font size in points (Ctrl+plus / minus / 0)
      theme      "system" (follow the desktop's where it can tell), "light" or "dark"
    """

    THEME_CHOICES: ClassVar = ("system", "light", "dark")

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else settings_path()
        self.font_size = FONT_SIZE
        self.theme = "system"
        self.warning: str | None = None
        self.load()

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self._warn(f"cannot read {self.path} ({exc}); using the defaults")
            return
        if not isinstance(data, dict):
            self._warn(f"{self.path} is not a JSON object; using the defaults")
            return
        size, theme = data.get("font_size", FONT_SIZE), data.get("theme", "system")
        if isinstance(size, int) and size in FONT_SIZES:
            self.font_size = size
        if theme in self.THEME_CHOICES:
            self.theme = theme

    def _warn(self, text: str) -> None:
        self.warning = f"Settings: {text}."
        print(f"client3.py: {self.warning}", file=sys.stderr)

    def save(self) -> None:
        data = {"font_size": self.font_size, "theme": self.theme}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            tmp.replace(self.path)  # never half a file
        except OSError as exc:
            if self.warning is None:
                self._warn(f"cannot write {self.path} ({exc.strerror or exc})")


Runner = Callable[[Sequence[str]], str | None]  # runs a command briefly; its stdout or None


def run_briefly(argv: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=2, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def system_prefers_dark(run: Runner = run_briefly, env: Mapping[str, str] = os.environ) -> bool:
    """The desktop's choice of a dark theme, where it can be told without extra packages:
    GNOME's color-scheme, a GTK_THEME ending in ":dark", macOS's AppleInterfaceStyle, Windows'
    AppsUseLightTheme. False when nothing says dark."""
    if env.get("GTK_THEME", "").lower().endswith(":dark"):
        return True
    if sys.platform == "win32":
        try:
            import winreg
            key = winreg.OpenKey(winreg.HKEY_CURRENT_USER,  # type: ignore[attr-defined,unused-ignore]
                                 r"Software\Microsoft\Windows\CurrentVersion\Themes\Personalize")
            value, _ = winreg.QueryValueEx(key, "AppsUseLightTheme")  # type: ignore[attr-defined,unused-ignore]
            return value == 0
        except OSError:
            return False
    if sys.platform == "darwin":
        return "dark" in (run(["defaults", "read", "-g", "AppleInterfaceStyle"]) or "").lower()
    if shutil.which("gsettings"):
        scheme = run(["gsettings", "get", "org.gnome.desktop.interface", "color-scheme"])
        return "dark" in (scheme or "").lower()
    return False


# --- Timers ------------------------------------------------------------------------

After = Callable[[int, Callable[[], None]], str]
AfterCancel = Callable[[str], None]


class Reconnector:
    """The countdown to the next automatic attempt to connect.

    Reconnector(after, after_cancel, delays, attempt, show)
      after, after_cancel   Tk's (root.after, root.after_cancel), or a test's clock
      delays                the waits before each attempt, the last one repeating
      attempt()             called when a wait is over: connect now
      show(text)            the countdown to show ("Reconnecting in 4 s… (attempt 3)"); "" hides it
    schedule() counts down to the next attempt; stop() ends it all (and cancels the timer).
    attempt_no is the attempt under way or next (0: none); waiting says a countdown runs.
    """

    def __init__(self, after: After, after_cancel: AfterCancel, delays: Sequence[float],
                 attempt: Callable[[], None], show: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.after, self.after_cancel = after, after_cancel
        self.delays = tuple(delays)
        self.attempt, self.show, self.clock = attempt, show, clock
        self.attempt_no = 0
        self._timer: str | None = None
        self._due = 0.0

    @property
    def waiting(self) -> bool:
        return self._timer is not None

    def schedule(self) -> None:
        if not self.delays:
            return
        self.attempt_no += 1
        self._due = self.clock() + self.delays[min(self.attempt_no, len(self.delays)) - 1]
        self._tick()

    def _tick(self) -> None:
        self._timer = None
        remaining = self._due - self.clock()
        if remaining > 0:
            seconds = math.ceil(remaining)
            self.show(f"Reconnecting in {seconds} s\u2026 (attempt {self.attempt_no})")
            # Back when the number shown changes, or the wait is over.
            wait_ms = math.ceil((remaining - (seconds - 1)) * 1000)
            self._timer = self.after(wait_ms, self._tick)
            return
        self.show(f"Reconnecting\u2026 (attempt {self.attempt_no})")
        self.attempt()

    def stop(self) -> None:
        if self._timer is not None:
            self.after_cancel(self._timer)
            self._timer = None
        self.attempt_no = 0
        self.show("")


def notify_send_command() -> str | None:
    """The desktop's notifier where it needs no extra packages: notify-send (libnotify) on
    Linux. None elsewhere: the bell and the title count do."""
    return shutil.which("notify-send") if sys.platform.startswith("linux") else None


class Notifier:
    """Tells the person about a mention or a whisper while they look elsewhere: a desktop
    notification (command, e.g. notify-send, run without waiting) or else the bell; either at
    most once every BELL_GAP_S (a flood of mentions is one notification, not 5,000 processes;
    the window's title counts them all).

    Notifier(bell, command=None, spawn=subprocess.Popen, clock=time.monotonic, ring=True)
      notify(title, body)   one notification; False when it only could ring (or stay quiet)
    """

    def __init__(self, bell: Callable[[], None], command: str | None = None, *,
                 spawn: Callable[..., Any] = subprocess.Popen,
                 clock: Callable[[], float] = time.monotonic, ring: bool = True) -> None:
        self.bell, self.command, self.spawn, self.clock, self.ring = (
            bell, command, spawn, clock, ring)
        self._last: float | None = None  # when it last notified or rang
        self._children: list[Any] = []  # spawned notifiers, reaped as they end

    def notify(self, title: str, body: str) -> bool:
        self._children = [c for c in self._children if c.poll() is None]
        now = self.clock()
        if self._last is not None and now - self._last < BELL_GAP_S:
            return False
        self._last = now
        if self.command is not None:
            try:
                self._children.append(self.spawn(
                    [self.command, "--app-name=Panda Chat", title, body],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL))
                return True
            except OSError:
                self.command = None  # gone since: the bell from now on
        if self.ring:
            self.bell()
        return False


# --- Session (no Tk) -------------------------------------------------------------------

class SessionView(Protocol):
    """What a Session asks of its window (ChatWindow; a test's recorder)."""

    def show(self, msg: Message, *, own: bool = False) -> None:
        """A line in the chat view."""

    def note(self, text: str) -> None:
        """A line from the client itself."""

    def set_status(self, text: str) -> None: ...

    def set_offline_reason(self, text: str) -> None:
        """Why we are offline, for the banner with Retry / Reconnect."""

    def set_name_prompt(self, text: str) -> None: ...

    def set_name_error(self, text: str) -> None: ...

    def name_refused(self, name: str) -> None:
        """Ask for a name again, with the refused one to edit."""

    def welcomed(self) -> None: ...

    def users_changed(self) -> None: ...

    def phase_changed(self) -> None:
        """Show and enable what fits session.phase (and asking_name)."""

    def show_countdown(self, text: str) -> None:
        """The reconnection countdown; "" hides it."""

    def rules_changed(self) -> None:
        """session.states, session.keeper or session.input_reason() changed: the status bar,
        the input's reason, the keepers' menus and commands."""

    def name_changed(self) -> None:
        """Our own name changed (@nick): the title, the list's "(you)", completion."""


# What the server's lines about the grove's rules say (server3.py's texts), for the status bar.
SECRET_SHOWN: Final = "(the code, not shown)"
KICKED_PREFIX: Final = "You were removed from the grove"
BANNED_PREFIX: Final = "You are banned"
MUTED_ERROR_PREFIX: Final = "You are muted"
HUSHED_ERROR_PREFIX: Final = "The grove is hushed"
# The states the status bar shows, in this order.
STATE_ORDER: Final = ("locked", "hushed", "slowmode", "muted")


def _nothing() -> None:
    pass


def _not_sent(text: str) -> bool:
    return False


class Session:
    """The chat session, without Tk: where we are (phase), who we are, who is here, and what
    each line from the server does. Tested without a display.

    Session(view, send=..., connect=..., disconnect=..., address="host:port", name=None,
            after=..., after_cancel=..., retry_delays=RETRY_DELAYS_S)
      send(text)    writes a line to the server; False when it could not
      connect()     (re)opens the connection; what happens next comes to on_event/on_message
      disconnect()  closes it (on Cancel, on close)
      after, after_cancel, clock   the timers and clock of the Reconnector (self.retry)
    The window calls: start(), on_event(), on_message(), submit_name(), submit(), reconnect(),
    cancel_retry(), close(). KINDS maps a message kind to what it does; a kind not in it is only
    shown.

    phase is "connecting", "naming" (connected, no name accepted yet), "chatting" or "offline".
    A connection lost while chatting (not after @leaves) is tried again by itself, resuming
    with the server's resume code when there is one. Lines submitted while not chatting wait in
    outbox and are sent, in order, on the next welcome.

    Keepers (issue #11): keeper says we are one (commands() then has theirs); states holds the
    grove's rules as the server's lines told them ("locked", "hushed", "slowmode", "muted": the
    words to show); input_reason() says why our lines may not go out. kicked holds the kick or
    ban line: after it, no automatic reconnection (Reconnect still works).
    """

    def __init__(self, view: SessionView, *, send: Callable[[str], bool] = _not_sent,
                 connect: Callable[[], None] = _nothing,
                 disconnect: Callable[[], None] = _nothing,
                 address: str = f"{DEFAULT_HOST}:{DEFAULT_PORT}", name: str | None = None,
                 after: After, after_cancel: AfterCancel,
                 retry_delays: Sequence[float] = RETRY_DELAYS_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.view = view
        self.send, self.connect, self.disconnect = send, connect, disconnect
        self.address = address
        self.retry = Reconnector(after, after_cancel, retry_delays, self._connect_again,
                                 view.show_countdown, clock)
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
        self.users: dict[str, Member] = {}    # name_key -> who
        self.away: set[str] = set()           # name_keys whose connection dropped
        self.quiet = False                    # the server no longer announces joins and leaves
        self.outbox: list[str] = []           # written while offline, sent when back
        self.closed = False
        self.keeper = False                   # we are a keeper of this grove
        self.states: dict[str, str] = {}      # the grove's rules in force, as told
        self.kicked: str | None = None        # why a keeper removed or banned us

    def commands(self) -> tuple[str, ...]:
        """The @commands Tab completes: a keeper's too, for a keeper."""
        return tuple(sorted(COMMANDS + KEEPER_COMMANDS)) if self.keeper else COMMANDS

    def input_reason(self) -> str:
        """Why what we type may not go out now ("" when it goes): a mute or a hush, which
        keepers are above."""
        if self.keeper:
            return ""
        if "muted" in self.states:
            return ("You are muted: your lines are not sent; you can still whisper to a keeper.")
        if "hushed" in self.states:
            return ("The grove is hushed: only keepers can talk; you can still whisper to a "
                    "keeper.")
        return ""

    def start(self) -> None:
        self.reconnect()

    # --- Who is here ---

    def user_names(self) -> list[str]:
        return sorted((m.name for m in self.users.values()), key=str.casefold)

    def is_me(self, name: str) -> bool:
        return self.name is not None and name_key(name) == name_key(self.name)

    def _set_users(self, members: Iterable[Member]) -> None:
        self.users = {}
        self._add_users(members)
        self.away &= self.users.keys()

    def _add_users(self, members: Iterable[Member]) -> None:
        for member in members:
            if member.name:
                self.users[name_key(member.name)] = member
                if self.is_me(member.name) and member.keeper != self.keeper:
                    self._set_keeper(member.keeper)  # a listing says it, after a resume too
        self.view.users_changed()

    def _set_keeper(self, keeper: bool) -> None:
        self.keeper = keeper
        self.view.rules_changed()

    def _set_state(self, state: str, shown: str | None) -> None:
        """Show state with the words shown; None: it ended."""
        if shown is None:
            self.states.pop(state, None)
        else:
            self.states[state] = shown
        self.states = {key: self.states[key] for key in STATE_ORDER if key in self.states}
        self.view.rules_changed()

    # --- What the server says: one function per kind, in KINDS ---

    def on_message(self, msg: Message) -> None:
        handler = self.KINDS.get(msg.kind)
        if handler is None or handler(self, msg):
            self.view.show(msg)

    def _on_welcome(self, msg: Message) -> bool:
        self.retry.stop()
        if not self.resuming:  # a new panda: no rules known yet (the server says them next)
            self.keeper = False
            self.states = {}
            self.view.rules_changed()
        self.resuming = False
        self.kicked = None
        self.name = self.pending_name or self.wanted_name
        self.wanted_name = self.name
        self.pending_name = None
        self.phase = "chatting"
        self.asking_name = False
        self.view.set_name_error("")
        self.view.set_status(f"Connected to {self.address} as {self.name}")
        self.view.phase_changed()
        self.view.welcomed()
        self.view.show(msg)
        self._send_outbox()
        return False  # shown before the written-ahead lines go out

    def _on_error(self, msg: Message) -> bool:
        if self.resuming:  # the code is wrong or has expired (the server restarted): join afresh
            self.resuming = False
            self.resume_code = None
            if self.pending_name is not None:
                self._send_name(self.pending_name)
            return False
        if self.pending_name is not None:
            self._name_refused(msg.text)
            return False
        if msg.text.startswith(MUTED_ERROR_PREFIX) and "muted" not in self.states:
            self._set_state("muted", "You are muted")
        elif msg.text.startswith(HUSHED_ERROR_PREFIX) and "hushed" not in self.states:
            self._set_state("hushed", "Hushed: only keepers talk")
        return True

    def _on_resume(self, msg: Message) -> bool:
        self.resume_code = parse_resume(msg.text)  # Reconnect sends it; nobody need see it
        return False

    def _on_name(self, msg: Message) -> bool:
        self.view.set_name_prompt(msg.text)
        return False  # the form asks; the prompt is not chat

    def _on_grove(self, msg: Message) -> bool:
        self._set_users(parse_grove_line("grove", msg.text))
        return True

    def _on_more(self, msg: Message) -> bool:
        self._add_users(parse_grove_line("more", msg.text))
        return True

    def _on_join(self, msg: Message) -> bool:
        self._add_users([Member(first_word(msg.text))])
        return True

    def _on_leave(self, msg: Message) -> bool:
        key = name_key(first_word(msg.text))
        self.users.pop(key, None)
        self.away.discard(key)
        self.view.users_changed()
        return True

    def _on_lost(self, msg: Message) -> bool:  # still here, may come back
        if lost := parse_lost(msg.text):
            self.away.add(name_key(lost[0]))
            self.view.users_changed()
        return True

    def _on_back(self, msg: Message) -> bool:
        self.away.discard(name_key(first_word(msg.text)))
        self.view.users_changed()
        return True

    def _on_quiet(self, msg: Message) -> bool:
        self.quiet = True
        self.view.users_changed()
        return True

    def _on_farewell(self, msg: Message) -> bool:  # shutdown, full, bye, kick
        self.server_farewell = msg.text
        self.resume_code = None  # nothing to come back to
        if msg.kind == "bye":
            self.leaving = True
        if (msg.kind == "kick" and msg.text.startswith(KICKED_PREFIX)) or (
                msg.kind == "full" and msg.text.startswith(BANNED_PREFIX)):
            self.kicked = msg.text  # a keeper wants us out: no coming back by itself
        return True

    # The keepers' lines (issue #11)

    def _on_keeper(self, msg: Message) -> bool:
        if msg.text.startswith("You are a keeper"):
            if self.name is not None:
                self.users[name_key(self.name)] = Member(self.name, True)
                self.view.users_changed()
            self._set_keeper(True)
        elif msg.text.endswith(" is now a keeper."):
            name = msg.text.removesuffix(" is now a keeper.")
            self._add_users([Member(name, True)])
        return True

    def _on_nick(self, msg: Message) -> bool:  # "OLD is now NEW."
        if not (said := parse_nick(msg.text)):
            return True
        old, new = said
        was = self.users.pop(name_key(old), None)
        self.users[name_key(new)] = Member(new, was.keeper if was else False)
        if name_key(old) in self.away:
            self.away.discard(name_key(old))
            self.away.add(name_key(new))
        if self.is_me(old):
            self.name = self.wanted_name = new
            self.view.set_status(f"Connected to {self.address} as {new}")
            self.view.name_changed()
        self.view.users_changed()
        return True

    def _on_mute(self, msg: Message) -> bool:
        said = parse_mute(msg.text)
        if said and self.is_me(said[0]):
            self._set_state("muted", f"You are muted ({said[1]:g} min)")
        return True

    def _on_unmute(self, msg: Message) -> bool:
        if self.is_me(first_word(msg.text)):
            self._set_state("muted", None)
        return True

    def _on_rule(self, msg: Message) -> bool:  # lock, unlock, hush, unhush, slowmode
        if msg.kind in ("lock", "unlock"):
            self._set_state("locked", "Locked: no newcomers" if msg.kind == "lock" else None)
        elif msg.kind in ("hush", "unhush"):
            self._set_state("hushed", "Hushed: only keepers talk" if msg.kind == "hush"
                            else None)
        elif every := parse_slowmode(msg.text):
            self._set_state("slowmode", f"Slow mode: one line every {every:g} s")
        else:  # "... ended slow mode."
            self._set_state("slowmode", None)
        return True

    def _on_missed(self, msg: Message) -> bool:
        """Said while our connection was down: the rules it changed hold now."""
        said = parse_line(msg.text)
        if said.kind in self.RULE_KINDS:
            self.KINDS[said.kind](self, said)
        return True

    RULE_KINDS: ClassVar = frozenset({"lock", "unlock", "hush", "unhush", "slowmode", "mute",
                                      "unmute"})

    KINDS: ClassVar[Mapping[str, Callable[[Session, Message], bool]]] = {
        "welcome": _on_welcome, "error": _on_error, "resume": _on_resume, "name": _on_name,
        "grove": _on_grove, "more": _on_more, "join": _on_join, "leave": _on_leave,
        "lost": _on_lost, "back": _on_back, "quiet": _on_quiet,
        "shutdown": _on_farewell, "full": _on_farewell, "bye": _on_farewell,
        "kick": _on_farewell, "keeper": _on_keeper, "nick": _on_nick, "mute": _on_mute,
        "unmute": _on_unmute, "lock": _on_rule, "unlock": _on_rule, "hush": _on_rule,
        "unhush": _on_rule, "slowmode": _on_rule, "missed": _on_missed,
    }
    """What each kind does besides being shown; True: show it too."""

    # --- The connection ---

    def on_event(self, event: ConnectionEvent) -> None:
        if event.state == "connected":
            self._on_connected()
        elif event.state == "failed":
            self._on_failed(event.detail)
        else:
            self._on_connection_lost(event.detail)
        self.view.phase_changed()

    def _on_connected(self) -> None:
        self.phase = "naming"
        self.ever_connected = True
        self.view.set_status(f"Connected to {self.address}; choose a panda name")
        if self.wanted_name is not None and self.resume_code is not None:
            # Come back as the same panda without missing a line; on an error, the name.
            self.resuming = self.send(f"@resume {self.resume_code}")
            self.pending_name = self.wanted_name
            self.view.set_status(f"Connected to {self.address}; coming back as "
                                 f"{self.wanted_name}")
        elif self.wanted_name is not None:
            self._send_name(self.wanted_name)
        else:
            self.asking_name = True

    def _on_failed(self, detail: str) -> None:
        self.phase = "offline"
        self.pending_name = None
        why = f"Cannot reach the server at {self.address}: {detail}."
        if self.retry.attempt_no:  # trying again by itself: the status bar counts, not the chat
            self.retry.schedule()
        else:
            self.view.note(why)
            self.view.set_offline_reason(why + " Press Retry to try again.")
        self.view.set_status(f"Not connected: cannot reach {self.address}")

    def _on_connection_lost(self, detail: str) -> None:
        was_chatting = self.phase == "chatting"
        retrying = self.retry.attempt_no > 0  # an automatic attempt connected, then lost it
        self.phase = "offline"
        self.pending_name = None
        if self.name is not None:
            self.wanted_name = self.name  # Reconnect joins with the same name
        self.name = None
        self._set_users([])  # who is there is unknown until the next listing
        if self.leaving:
            why = "You left the grove."
            self.view.set_offline_reason("You left the grove. Press Reconnect to come back.")
        elif self.kicked is not None:  # a keeper's decision: not undone by trying again
            why = f"Disconnected from {self.address}: {self.kicked}"
            self.retry.stop()
            self.view.set_offline_reason(
                why + " Press Reconnect to try again (the window does not, by itself).")
        else:
            reason = self.server_farewell or f"Connection lost: {detail}."
            why = f"Disconnected from {self.address}: {reason}"
            if self.server_farewell is None and not retrying:  # else said already
                self.view.note(why)
            if not retrying:
                again = (f" Press Reconnect to join again as {self.wanted_name}."
                         if was_chatting and self.wanted_name else " Press Reconnect to try again.")
                self.view.set_offline_reason(why + again)
            if (was_chatting or retrying) and self.wanted_name is not None:
                self.retry.schedule()  # even after a shutdown: the server may be back soon
        self.view.set_status(why)

    # --- The name ---

    def submit_name(self, name: str) -> None:
        """The name form's Enter and Join button."""
        name = name.strip()
        if not name:
            self.view.set_name_error("Type a name first.")
        elif self.pending_name is None:
            self.wanted_name = name
            if self.phase == "naming":
                self._send_name(name)
            elif self.phase == "offline":
                self.view.set_name_error(
                    "Not connected. Press Retry; you will join with this name.")
            else:
                self.view.set_name_error("Connecting; you will join with this name.")
            self.view.phase_changed()

    def _send_name(self, name: str) -> None:
        if self.send(name):
            self.pending_name = name
            self.view.set_name_error("")
            self.view.set_status(f"Connected to {self.address}; joining as {name}")
        else:
            self.view.set_name_error("Not sent: the connection is gone.")

    def _name_refused(self, reason: str) -> None:
        self.retry.stop()  # the connection is up: the person chooses a name now
        refused = self.pending_name or ""
        self.pending_name = None
        self.wanted_name = None
        self.asking_name = True
        self.view.set_name_error(reason)
        self.view.set_status(f"Connected to {self.address}; the name {refused} was refused")
        self.view.phase_changed()
        self.view.name_refused(refused)

    # --- Sending ---

    def submit(self, text: str) -> bool:
        """A line the person wrote (Enter, Send, a button): sent now, or kept in outbox until
        we are back in the grove. False for a blank line, which sends nothing."""
        if not text.strip():
            return False
        if self.outbox or not self._deliver(text):
            self.outbox.append(text)
            self.view.note(f"Not connected: this goes out when you are back: {text}")
        return True

    def wire_text(self, text: str) -> str:
        """What goes on the wire for text. "@Bob are you there?" (Bob being here) is a mention,
        as README says, not a command: the server takes every line starting with "@" for a
        command, but relays a line starting with a space as chat, so it gets one. Commands win
        (a panda called "help" is not mentioned by "@help"), and "@Somebody" who is not here
        goes as typed, so a mistyped command still gets the server's "Did you mean" answer."""
        word = first_word(text)
        if (text.startswith("@") and word.lower() not in COMMANDS + KEEPER_COMMANDS
                and name_key(word[1:]) in self.users):
            return " " + text
        return text

    def _deliver(self, text: str) -> bool:
        """Send one line and show it; False when it could not go (not chatting, or the
        connection just went)."""
        if self.phase != "chatting" or self.name is None:
            return False
        wire = self.wire_text(text)
        if not self.send(wire):
            return False
        if wire.startswith("@"):
            word = first_word(wire).lower()
            did = wire.partition(" ")[2].strip()
            if word == "@me" and did:  # the server shows it to the others only
                self.view.show(Message("action", f"{self.name} {clean_text(did)}"), own=True)
            elif word == "@keeper":  # the code stays off the screen (a projector, a transcript)
                self.view.show(Message("command", f"@keeper {SECRET_SHOWN}"), own=True)
            elif word != "@whisper":  # the server confirms a whisper itself
                self.view.show(Message("command", text.strip()), own=True)
            if word == "@leaves":
                self.leaving = True
                self.resume_code = None
        else:
            self.view.show(Message("chat", clean_text(text), self.name), own=True)
        return True

    def _send_outbox(self) -> None:
        while self.outbox and self._deliver(self.outbox[0]):
            del self.outbox[0]

    # --- Coming back, and the end ---

    def reconnect(self) -> None:
        """Retry / Reconnect: connect again now, joining with the same name."""
        self.retry.stop()
        self._connect_again()

    def _connect_again(self) -> None:
        if self.closed:
            return
        self.phase = "connecting"
        self.pending_name = None
        self.resuming = False
        self.leaving = False
        self.server_farewell = None
        self.kicked = None
        self.quiet = False
        self.view.set_status(f"Connecting to {self.address}\u2026")
        self.view.phase_changed()
        self.connect()

    def cancel_retry(self) -> None:
        """Cancel: stop reconnecting by itself, ending an attempt under way. Reconnect stays."""
        if not self.retry.attempt_no:
            return
        under_way = not self.retry.waiting and self.phase != "offline"
        self.retry.stop()
        if under_way:
            self.disconnect()  # nothing of that connection reaches us any more
            self.phase = "offline"
            self.pending_name = None
            self.resuming = False
            self.view.set_status(f"Not connected to {self.address}")
        self.view.note("Stopped reconnecting. Press Reconnect to try again.")
        self.view.phase_changed()

    def close(self) -> None:
        """Say goodbye and close the connection."""
        if self.closed:
            return
        self.closed = True
        self.retry.stop()
        if self.phase in ("naming", "chatting"):
            self.send("@leaves")  # before a name too: the server then says goodbye at once
        self.disconnect()


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
    close_soon()  the same with the lingering in a thread: for Tk's thread, which must not wait.
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
        self._closers: list[threading.Thread] = []  # close_soon()'s threads

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
        self._hang_up(*self._detach(), linger)

    def close_soon(self, linger: float = LINGER_S) -> None:
        """close(linger) without waiting: nothing more reaches inbox from now on, and the
        linger runs in a thread of its own, so that closing the window never blocks Tk's
        thread on a frozen server. join_closers() waits for those threads."""
        sock, thread = self._detach()
        if sock is not None:
            closer = threading.Thread(target=self._hang_up, args=(sock, thread, linger),
                                      name="panda-closer", daemon=True)
            closer.start()
            self._closers.append(closer)

    def join_closers(self, timeout: float = LINGER_S + 1.0) -> None:
        deadline = time.monotonic() + timeout
        for closer in self._closers:
            closer.join(max(0.0, deadline - time.monotonic()))

    def _detach(self) -> tuple[socket.socket | None, threading.Thread | None]:
        """Take the socket and its receiver away: nothing of them reaches inbox any more."""
        with self._lock:
            self._generation += 1
            sock, self._sock, self._session = self._sock, None, None
        thread, self._thread = self._thread, None
        return sock, thread

    @staticmethod
    def _hang_up(sock: socket.socket | None, thread: threading.Thread | None,
                 linger: float) -> None:
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



# --- Widgets: one class per view -----------------------------------------------------------

class Fonts:
    """The fonts of a part of the window, all sized from one size in points (so they follow the
    screen's dpi, and zoom together)."""

    def __init__(self, root: tk.Misc, size: int) -> None:
        family = tkfont.nametofont("TkDefaultFont").actual("family")
        mono = tkfont.nametofont("TkFixedFont").actual("family")
        self.body = tkfont.Font(root, family=family)
        self.bold = tkfont.Font(root, family=family, weight="bold")
        self.italic = tkfont.Font(root, family=family, slant="italic")
        self.bold_italic = tkfont.Font(root, family=family, weight="bold", slant="italic")
        self.small = tkfont.Font(root, family=family)
        self.title = tkfont.Font(root, family=family, weight="bold")
        self.mono = tkfont.Font(root, family=mono)
        self.size = size
        self.resize(size)

    def resize(self, size: int) -> None:
        self.size = size
        for font, step in ((self.body, 0), (self.bold, 0), (self.italic, -1),
                           (self.bold_italic, -1), (self.small, -2),
                           (self.title, 4), (self.mono, -1)):
            font.configure(size=max(5, size + step))

    def em(self) -> int:
        """The width of a digit: the unit Tk measures widths of text widgets in."""
        return max(1, self.body.measure("0"))

    def line(self) -> int:
        return max(1, int(self.body.metrics("linespace")))


class ChatView:
    """The chat: a read-only Text with a tag per style, a bounded scrollback, and following.

    ChatView(parent, fonts, palette, open_url)
      append(rendered)  one line; what the network said goes through for_display() first
      end_batch()       after a tick's lines: trim the scrollback, follow the newest line
      mark_unread()     the "new since you looked" line, before the next line (one at a time)
      scroll_to_end(), scroll_pages(n), scrollback_lines(), copy_text(), apply(palette)
    follow is True while the bottom is in sight: new lines then scroll into view; scrolled up,
    the view stays and "New messages" (below the chat, never over it) shows. open_url(url) is
    called for a click on a link.
    """

    UNREAD_TEXT: ClassVar = "\u2014\u2014\u2014 new since you looked \u2014\u2014\u2014"

    def __init__(self, parent: tk.Misc, fonts: Fonts, palette: Palette,
                 open_url: Callable[[str], object]) -> None:
        self.fonts = fonts
        self.open_url = open_url
        self.frame = tk.Frame(parent, padx=1, pady=1)
        self.frame.columnconfigure(0, weight=1)
        self.frame.rowconfigure(0, weight=1)
        # height and width are the least it asks for; the window gives it all the room there is.
        self.text = tk.Text(self.frame, wrap="word", state="disabled", font=fonts.body,
                            relief="flat", borderwidth=0, highlightthickness=0, padx=10, pady=8,
                            spacing1=2, spacing3=2, cursor="arrow", takefocus=False,
                            height=6, width=30)
        self.text.grid(row=0, column=0, sticky="nsew")
        self.scrollbar = ttk.Scrollbar(self.frame, orient="vertical", command=self.text.yview)
        self.scrollbar.grid(row=0, column=1, sticky="ns")
        self.text.configure(yscrollcommand=self._on_scrolled)
        self.more_below = tk.Button(self.frame, text="New messages \u2193", font=fonts.small,
                                    foreground="white", relief="flat", cursor="hand2",
                                    activeforeground="white", command=self.scroll_to_end,
                                    takefocus=False)
        self.follow = True
        self._height = 0              # the text's height at the last scroll report
        self._last_line_tags: Tags = ()
        self._appended = False        # lines came since end_batch()
        self._configure_tags()
        self.apply(palette)
        self.text.tag_bind("link", "<ButtonRelease-1>", self._on_link_click)
        self.text.tag_bind("link", "<Enter>", lambda _e: self.text.configure(cursor="hand2"))
        self.text.tag_bind("link", "<Leave>", lambda _e: self.text.configure(cursor="arrow"))
        self.text.bind("<<Copy>>", self._on_copy)

    def _configure_tags(self) -> None:
        text, fonts = self.text, self.fonts
        for tag, font in (("time", fonts.small), ("you", fonts.small), ("system", fonts.italic),
                          ("welcome", fonts.bold), ("info", fonts.bold), ("alert", fonts.bold),
                          ("fact_label", fonts.bold), ("command", fonts.small),
                          ("art", fonts.mono), ("note", fonts.italic), ("whisper", fonts.italic),
                          ("whisper_label", fonts.small), ("unread", fonts.small),
                          ("action", fonts.italic), ("announce", fonts.bold),
                          ("moderation", fonts.italic)):
            text.tag_configure(tag, font=font)
        for index in range(len(NAME_COLOURS)):
            text.tag_configure(f"name{index}", font=fonts.bold)
        # After the name tags, so that it wins: an action's name in its colour, in italics.
        text.tag_configure("action_name", font=fonts.bold_italic)
        # An announcement is a banner: its background across the whole line (its newline is
        # tagged too), with room above and below.
        text.tag_configure("announce_line", spacing1=6, spacing3=6)
        text.tag_configure("art", spacing1=0, spacing3=0)
        text.tag_configure("link", underline=True)
        text.tag_configure("unread", justify="center")
        self.apply_metrics()
        # Whole-line marks, set on every piece of the line (and its newline): "history" (said
        # before we came) and "missed" (said while our connection was down) are shown muted by
        # "earlier"; "mention" (the line names us) is highlighted, over any other background.
        for tag in ("mention", "found", "found_current"):
            text.tag_configure(tag)
        text.tag_raise("mention")
        text.tag_raise("found")
        text.tag_raise("found_current")
        text.tag_raise("sel")

    def apply_metrics(self) -> None:
        """Wrapped lines start under the text after the time, whatever the font size or dpi."""
        indent = self.fonts.small.measure("00:00 ")
        self.text.tag_configure("line", lmargin2=indent)
        self.text.tag_configure("art", lmargin1=indent)

    def apply(self, palette: Palette) -> None:
        text = self.text
        self.frame.configure(background=palette.border)
        text.configure(background=palette.paper, foreground=palette.ink,
                       insertbackground=palette.ink, selectbackground=palette.found_bg,
                       inactiveselectbackground=palette.found_bg)
        self.more_below.configure(background=GREEN, activebackground=GREEN_DARK)
        colours = {"time": (palette.time, ""), "own": ("", palette.own_bg),
                   "you": (palette.muted, ""), "body": (palette.ink, ""),
                   "system": (palette.muted, ""), "welcome": (palette.accent, ""),
                   "info": (palette.accent, ""),
                   "error": (palette.error, ""), "alert": (palette.alert, ""),
                   "fact": (palette.fact_fg, palette.fact_bg),
                   "fact_label": (palette.fact_fg, palette.fact_bg), "help": (palette.help, ""),
                   "command": (palette.muted, ""), "art": (palette.art, ""),
                   "note": (palette.alert, ""), "earlier": (palette.muted, ""),
                   "whisper": (palette.whisper, ""), "whisper_label": (palette.whisper, ""),
                   "missed_label": (palette.alert, ""), "link": (palette.link, ""),
                   "mention": ("", palette.mention_bg), "found": ("", palette.found_bg),
                   "found_current": ("", palette.found_current_bg),
                   "unread": (palette.alert, ""), "action": (palette.ink, ""),
                   "announce": (palette.announce_fg, ""),
                   "announce_line": ("", palette.announce_bg),
                   "moderation": (palette.moderation, "")}
        for tag, (fg, bg) in colours.items():
            text.tag_configure(tag, foreground=fg, background=bg)
        for index, colour in enumerate(palette.names):
            text.tag_configure(f"name{index}", foreground=colour)

    # --- Adding lines ---

    def append(self, rendered: Rendered) -> None:
        text = self.text
        if not self._appended:
            text.configure(state="normal")  # disabled again in end_batch()
            self._appended = True
        if text.index("end-1c") != "1.0":  # the newline ends the previous line, in its style
            text.insert("end", "\n", self._last_line_tags)
        self._last_line_tags = rendered.line_tags
        words: list[object] = []
        for piece, tags in rendered.pieces:
            if piece:
                words += [for_display(piece), (*tags, *rendered.line_tags)]
        if words:  # one call for the whole line
            text.tk.call(str(text), "insert", "end", *words)

    def end_batch(self) -> None:
        """Once per tick, after its lines: keep the scrollback bounded, follow the newest line
        only when lines came and we follow (so a tick with nothing new never moves the view)."""
        if not self._appended:
            return
        self._appended = False
        text = self.text
        lines = self.scrollback_lines()
        if lines > MAX_SCROLLBACK_LINES:
            text.delete("1.0", f"{lines - MAX_SCROLLBACK_LINES + 1}.0")
        text.configure(state="disabled")
        if self.follow:
            text.see("end")
        else:
            self.more_below.grid(row=1, column=0, columnspan=2, sticky="ew")

    def mark_unread(self) -> None:
        """Put "new since you looked" at the end, the one before it gone."""
        ranges = self.text.tag_ranges("unread_line")
        if ranges:
            self.text.configure(state="normal")
            self.text.delete(ranges[0], ranges[-1])
            if not self._appended:
                self.text.configure(state="disabled")
        self.append(Rendered(((self.UNREAD_TEXT, ("unread",)),), ("line", "unread_line")))

    def scrollback_lines(self) -> int:
        return int(self.text.index("end-1c").split(".")[0])

    # --- Following ---

    def _on_scrolled(self, first: float | str, last: float | str) -> None:
        """The view moved or changed size. Follow only while the very bottom is in sight (one
        wheel notch up stops it), except when the view shrank (a banner appeared, the window got
        smaller) while following: then the newest line is brought back into sight."""
        self.scrollbar.set(first, last)
        height = self.text.winfo_height()
        resized, self._height = height != self._height, height
        if resized and self.follow and float(last) < 1.0:
            self.text.see("end")
            return
        self.follow = float(last) >= 1.0
        if self.follow:
            self.more_below.grid_remove()

    def scroll_to_end(self) -> None:
        self.follow = True
        self.text.see("end")
        self.text.yview_moveto(1.0)
        self.more_below.grid_remove()

    def scroll_pages(self, pages: int) -> str:
        self.text.yview_scroll(pages, "pages")
        return "break"

    # --- Links, copying ---

    def _on_link_click(self, event: tk.Event[tk.Text]) -> None:
        if self.text.tag_ranges("sel"):
            return  # the end of a selection, not a click
        span = self.text.tag_prevrange("link", f"@{event.x},{event.y} + 1c")
        if span:
            self.open_url(self.text.get(*span))

    def copy_text(self) -> str:
        """The selection as it was said: right-to-left runs back in typing order (bidi_display
        undoes itself; exactly so for whole runs, which is what people select)."""
        if not self.text.tag_ranges("sel"):
            return ""
        shown = self.text.get("sel.first", "sel.last")
        return "\n".join(bidi_display(line) for line in shown.split("\n"))

    def _on_copy(self, event: object = None) -> str:
        if copied := self.copy_text():
            self.text.clipboard_clear()
            self.text.clipboard_append(copied)
        return "break"


class FindBar:
    """Ctrl+F: find in the chat. Matches are highlighted as one types ("found"), Enter goes to
    the next, Shift+Enter to the previous ("found_current", scrolled into view), Escape closes.

    FindBar(parent, chat, fonts, on_close)   open(), close(), next(step), highlight(pattern)
    """

    MAX_MATCHES: ClassVar = 1000  # highlighting more would only slow the typing down

    def __init__(self, parent: tk.Misc, chat: ChatView, fonts: Fonts,
                 on_close: Callable[[], None]) -> None:
        self.chat = chat
        self.on_close = on_close
        self.frame = tk.Frame(parent, padx=10, pady=4)
        self.label = tk.Label(self.frame, text="Find:", font=fonts.body)
        self.label.pack(side="left")
        self.entry = ttk.Entry(self.frame, font=fonts.body, width=30)
        self.entry.pack(side="left", padx=(6, 6))
        self.count = tk.Label(self.frame, text="", font=fonts.small)
        self.count.pack(side="left")
        self.close_button = ttk.Button(self.frame, text="Close", command=self.close,
                                       takefocus=False)
        self.close_button.pack(side="right")
        # Highlight as one types: the entry's key validation sees every edit, pasted ones too.
        self.entry.configure(validate="key",
                             validatecommand=(self.entry.register(self._on_edit), "%P"))
        self.entry.bind("<Return>", lambda _e: self.next(1))
        self.entry.bind("<KP_Enter>", lambda _e: self.next(1))
        self.entry.bind("<Shift-Return>", lambda _e: self.next(-1))
        self.entry.bind("<Escape>", lambda _e: self.close())
        self.matches: list[tuple[str, str]] = []
        self.current = -1
        self._pattern = ""

    def apply(self, palette: Palette) -> None:
        for widget in (self.frame, self.label, self.count):
            widget.configure(background=palette.panel)
        self.label.configure(foreground=palette.ink)
        self.count.configure(foreground=palette.muted)

    def open(self) -> str:
        self.frame.grid()
        self.entry.focus_set()
        self.entry.select_range(0, "end")
        return "break"

    def close(self) -> str:
        text = self.chat.text
        text.tag_remove("found", "1.0", "end")
        text.tag_remove("found_current", "1.0", "end")
        self.matches, self.current, self._pattern = [], -1, ""
        self.count.configure(text="")
        self.frame.grid_remove()
        self.on_close()
        return "break"

    def _on_edit(self, pattern: str) -> bool:
        self.highlight(pattern)
        return True  # any text may be searched for

    def highlight(self, pattern: str) -> None:
        """Mark every match of pattern (any case)."""
        text = self.chat.text
        text.tag_remove("found", "1.0", "end")
        text.tag_remove("found_current", "1.0", "end")
        self._pattern, self.matches, self.current = pattern, [], -1
        if pattern:
            length = tk.IntVar(text)
            index = "1.0"
            while len(self.matches) < self.MAX_MATCHES:
                index = text.search(pattern, index, stopindex="end", nocase=True, count=length)
                if not index or not length.get():
                    break
                end = f"{index} + {length.get()}c"
                self.matches.append((index, text.index(end)))
                text.tag_add("found", index, end)
                index = end
        self._show_count()

    def next(self, step: int) -> str:
        """Go to the next (1) or previous (-1) match; from the newest backwards at first."""
        if self.entry.get() != self._pattern:
            self.highlight(self.entry.get())
        if not self.matches:
            return "break"
        if self.current < 0:
            self.current = len(self.matches) - 1 if step < 0 else 0
        else:
            self.current = (self.current + step) % len(self.matches)
        text = self.chat.text
        text.tag_remove("found_current", "1.0", "end")
        start, end = self.matches[self.current]
        text.tag_add("found_current", start, end)
        text.see(start)
        self._show_count()
        return "break"

    def _show_count(self) -> None:
        if not self._pattern:
            self.count.configure(text="")
        elif not self.matches:
            self.count.configure(text="not found")
        else:
            at = f"{self.current + 1} of " if self.current >= 0 else ""
            self.count.configure(text=f"{at}{len(self.matches)} found")


class UserList:
    """Who is here: a header with the count, the names (yours marked "(you)", keepers with a
    star, those whose connection dropped greyed "(away)"), and a note once the grove is too big
    to announce joins and leaves.

    UserList(parent, fonts, palette, on_whisper)
      show(session)     the list as the session knows it
      menu              the right-click menu on a name ("Whisper"); for a keeper,
                        set_keeper_actions() adds Kick..., Mute, Unmute, Ban... below it
    A double click on a name, or the menu's Whisper, calls on_whisper(name); never for oneself.
    The menu opens on a right click, or on open_menu() (the menu key) for the selected name.
    """

    KEEPER_MARK: ClassVar = "\u2605 "

    def __init__(self, parent: tk.Misc, fonts: Fonts, palette: Palette,
                 on_whisper: Callable[[str], None]) -> None:
        self.on_whisper = on_whisper
        self.palette = palette
        self.frame = tk.Frame(parent)
        self.frame.columnconfigure(0, weight=1)
        self.header = tk.Label(self.frame, text="In the grove", font=fonts.bold, anchor="w")
        self.header.grid(row=0, column=0, sticky="ew", pady=(0, 4))
        self.border = tk.Frame(self.frame, padx=1, pady=1)
        self.border.grid(row=1, column=0, sticky="nsew")
        self.border.rowconfigure(0, weight=1)
        self.border.columnconfigure(0, weight=1)
        self.box = tk.Frame(self.border, padx=6, pady=6)
        self.box.grid(row=0, column=0, sticky="nsew")
        self.box.rowconfigure(0, weight=1)
        self.box.columnconfigure(0, weight=1)
        # Wide enough for a 20-character name of middling letters ("n") and its "(away)" in this
        # font (measured, not counted in digits, which letters outgrow); at least 4 rows.
        wide = fonts.body.measure("n" * MAX_NAME_CHARS + " (away)") + fonts.em()
        self.listbox = tk.Listbox(self.box, width=math.ceil(wide / fonts.em()), height=4,
                                  font=fonts.body, activestyle="none", relief="flat",
                                  borderwidth=0, highlightthickness=0, takefocus=False)
        self.listbox.grid(row=0, column=0, sticky="nsew")
        self.frame.rowconfigure(1, weight=1, minsize=fonts.line() * 5)
        self.quiet_label = tk.Label(self.frame, text="", font=fonts.small, justify="left",
                                    anchor="w", wraplength=wide)
        self.quiet_label.grid(row=2, column=0, sticky="ew", pady=(4, 0))
        self.menu = tk.Menu(self.listbox, tearoff=False)
        self._menu_name: str | None = None
        self.add_action("Whisper", self.on_whisper)
        self.listbox.bind("<Double-Button-1>", self._on_double_click)
        self.listbox.bind("<Button-3>", self._on_menu)
        self.listed: list[Member] = []  # the members row by row
        self._away: set[str] = set()
        self.apply(palette)

    def add_action(self, label: str, action: Callable[[str], None]) -> None:
        """A menu entry for the name right-clicked (issue #11: Kick..., Mute, Ban...)."""
        def on_name() -> None:
            if self._menu_name is not None:
                action(self._menu_name)

        self.menu.add_command(label=label, command=on_name)

    def set_keeper_actions(self, actions: Sequence[tuple[str, Callable[[str], None]]]) -> None:
        """The menu: Whisper, then these actions (none: Whisper alone)."""
        self.menu.delete(1, "end")
        if actions:
            self.menu.add_separator()
        for label, action in actions:
            self.add_action(label, action)

    def apply(self, palette: Palette) -> None:
        self.palette = palette
        for widget in (self.frame, self.header, self.quiet_label):
            widget.configure(background=palette.panel)
        self.header.configure(foreground=palette.ink)
        self.quiet_label.configure(foreground=palette.muted)
        self.border.configure(background=palette.border)
        self.box.configure(background=palette.paper)
        self.listbox.configure(background=palette.paper, foreground=palette.ink,
                               selectbackground=palette.own_bg)
        self._recolour()

    def show(self, members: Iterable[Member], me: str | None, away: set[str],
             quiet: bool) -> None:
        box = self.listbox
        box.delete(0, "end")
        own = name_key(me) if me else None
        self.listed = sorted(members, key=lambda m: m.name.casefold())
        self._away = {name_key(m.name) for m in self.listed} & away
        for member in self.listed:
            key = name_key(member.name)
            mark = " (you)" if key == own else " (away)" if key in away else ""
            keeper = self.KEEPER_MARK if member.keeper else ""
            box.insert("end", tk_safe(keeper + member.name + mark))
        self._recolour()
        count = len(self.listed)
        self.header.configure(text=f"In the grove \u00b7 {count}" if count else "In the grove")
        self.quiet_label.configure(
            text="The grove is big, so joins and leaves are no longer announced: this list is "
                 "as of the last listing. Press Who's here to refresh it." if quiet else "")

    def _recolour(self) -> None:
        """Each name in its colour, selected or not (a selected name keeps its colour)."""
        for row, member in enumerate(self.listed):
            away = name_key(member.name) in self._away
            colour = self.palette.muted if away else name_colour(member.name, self.palette)
            self.listbox.itemconfigure(row, foreground=colour, selectforeground=colour)

    def name_at(self, x: int, y: int) -> str | None:
        row = self.listbox.index(f"@{x},{y}")  # the nearest row
        box = self.listbox.bbox(row)
        inside = box is not None and box[1] <= y < box[1] + box[3]
        return self.listed[row].name if inside and 0 <= row < len(self.listed) else None

    def _on_double_click(self, event: tk.Event[tk.Listbox]) -> str:
        if (name := self.name_at(event.x, event.y)) is not None:
            self.on_whisper(name)
        return "break"

    def _on_menu(self, event: tk.Event[tk.Listbox]) -> str:
        self._menu_name = self.name_at(event.x, event.y)
        if self._menu_name is not None:
            self.menu.tk_popup(event.x_root, event.y_root)
        return "break"

    def open_menu(self) -> None:
        """The menu key: the menu of the selected name (the window binds the key)."""
        selected = self.listbox.curselection()  # type: ignore[no-untyped-call]
        if selected:
            self._menu_name = self.listed[selected[0]].name
            box = self.listbox.bbox(selected[0])
            if box:
                self.menu.tk_popup(self.listbox.winfo_rootx() + box[0],
                                   self.listbox.winfo_rooty() + box[1] + box[3])


class NameForm:
    """The name form, in the window: asked until the server welcomes a name.
    NameForm(parent, fonts, on_submit): on_submit(name) for Enter and "Join the grove"."""

    def __init__(self, parent: tk.Misc, fonts: Fonts,
                 on_submit: Callable[[str], None]) -> None:
        self.frame = tk.Frame(parent, padx=12, pady=8)
        self.prompt = tk.Label(self.frame, text="What is your panda name?", font=fonts.bold,
                               anchor="w")
        self.prompt.grid(row=0, column=0, columnspan=2, sticky="w", pady=(0, 4))
        self.entry = ttk.Entry(self.frame, width=28, font=fonts.body)
        self.entry.grid(row=1, column=0, sticky="w")
        self.join_button = ttk.Button(self.frame, text="Join the grove", style="Accent.TButton",
                                      command=lambda: on_submit(self.entry.get()),
                                      takefocus=False)
        self.join_button.grid(row=1, column=1, sticky="w", padx=(8, 0))
        self.error = tk.Label(self.frame, text="", font=fonts.body, anchor="w", justify="left",
                              wraplength=fonts.em() * 90)
        self.error.grid(row=2, column=0, columnspan=2, sticky="w", pady=(4, 0))
        self.on_submit = on_submit
        self.entry.bind("<Return>", self._on_return)

    def _on_return(self, event: object) -> str:
        self.on_submit(self.entry.get())
        return "break"

    def apply(self, palette: Palette) -> None:
        for widget in (self.frame, self.prompt, self.error):
            widget.configure(background=palette.panel)
        self.prompt.configure(foreground=palette.ink)
        self.error.configure(foreground=palette.error)

    def refused(self, name: str) -> None:
        """Ask again, the refused name selected to edit."""
        self.entry.delete(0, "end")
        self.entry.insert(0, tk_safe(name))
        self.entry.select_range(0, "end")
        self.entry.focus_set()


class InputBar:
    """The input line and Send, with the sent lines (Up/Down), Tab completion and the
    placeholders of characters Tk cannot hold.

    InputBar(parent, fonts, on_submit, names, scroll)
      on_submit(text) -> bool   Enter / Send with the text to send (placeholders put back);
                                True: it was taken, the line is cleared and kept in history
      names()                   the names Tab completes
      scroll(pages)             PageUp / PageDown
      get(), put(text)          the text, real characters in and out
      set_reason(text)          why lines may not go out now (muted, hushed), under the input;
                                "" hides it
      set_commands(commands)    the @commands Tab completes (a keeper's too, for a keeper)
    """

    def __init__(self, parent: tk.Misc, fonts: Fonts, on_submit: Callable[[str], bool],
                 names: Callable[[], Iterable[str]], scroll: Callable[[int], object]) -> None:
        self.on_submit, self.names = on_submit, names
        self.history = InputHistory()
        self.completer = Completer()
        self.placeholders = Placeholders()
        self.frame = tk.Frame(parent, padx=10, pady=8)
        self.frame.columnconfigure(0, weight=1)
        self.entry = ttk.Entry(self.frame, font=fonts.body)
        self.entry.grid(row=0, column=0, sticky="ew")
        # Never takes the focus: a space typed after a click must go to the input, not press it.
        self.send_button = ttk.Button(self.frame, text="Send", style="Accent.TButton",
                                      command=self.submit, takefocus=False)
        self.send_button.grid(row=0, column=1, padx=(8, 0))
        self.reason = tk.Label(self.frame, text="", font=fonts.small, anchor="w", justify="left")
        entry = self.entry
        for key in ("<Return>", "<KP_Enter>"):
            entry.bind(key, self.submit)
        entry.bind("<Up>", self.history_up)
        entry.bind("<Down>", self.history_down)
        entry.bind("<Tab>", self.complete)
        entry.bind("<Prior>", lambda _e: scroll(-1) and "break")
        entry.bind("<Next>", lambda _e: scroll(1) and "break")

    def apply(self, palette: Palette) -> None:
        self.frame.configure(background=palette.panel)
        self.reason.configure(background=palette.panel, foreground=palette.alert)

    def set_commands(self, commands: Sequence[str]) -> None:
        self.completer.commands = commands

    def set_reason(self, text: str) -> None:
        self.reason.configure(text=for_display(text))
        if text:
            self.reason.grid(row=1, column=0, columnspan=2, sticky="ew", pady=(4, 0))
        else:
            self.reason.grid_remove()

    def get(self) -> str:
        return self.placeholders.restore(self.entry.get())

    def put(self, text: str, cursor: int | None = None) -> None:
        self.entry.delete(0, "end")
        self.entry.insert(0, self.placeholders.learn(text))
        self.entry.icursor("end" if cursor is None else cursor)

    def submit(self, event: object = None) -> str:
        text = self.get()
        if self.on_submit(text):
            self.entry.delete(0, "end")
            if first_word(text).lower() != "@keeper":  # Up never brings the code back
                self.history.add(text)
        self.entry.focus_set()
        return "break"

    def history_up(self, event: object = None) -> str:
        if (text := self.history.up(self.get())) is not None:
            self.put(text)
        return "break"

    def history_down(self, event: object = None) -> str:
        if (text := self.history.down()) is not None:
            self.put(text)
        return "break"

    def complete(self, event: object = None) -> str:
        names = [self.placeholders.learn(name) for name in self.names()]
        done = self.completer.complete(self.entry.get(), self.entry.index("insert"), names)
        if done is None:
            self.entry.bell()
        else:
            self.entry.delete(0, "end")
            self.entry.insert(0, done[0])
            self.entry.icursor(done[1])
        return "break"


class OfflineBanner:
    """Why we are not connected, with Retry / Reconnect."""

    def __init__(self, parent: tk.Misc, fonts: Fonts, on_retry: Callable[[], None]) -> None:
        self.frame = tk.Frame(parent, padx=12, pady=6)
        self.label = tk.Label(self.frame, text="", font=fonts.body, anchor="w", justify="left",
                              wraplength=fonts.em() * 75)
        self.label.pack(side="left", fill="x", expand=True)
        self.retry_button = ttk.Button(self.frame, text="Retry", style="Accent.TButton",
                                       command=on_retry, takefocus=False)
        self.retry_button.pack(side="right")

    def apply(self, palette: Palette) -> None:
        self.frame.configure(background=palette.offline_bg)
        self.label.configure(background=palette.offline_bg, foreground=palette.error)


class StatusBar:
    """The bottom line: a coloured dot for the phase, what is going on, the grove's state (issue
    #11: locked, hushed, slow mode, muted) and, while reconnecting by itself, the countdown and
    Cancel.

    set_text(text), set_phase(phase), set_states({"locked": "Locked", ...}), show_countdown(text)
    """

    def __init__(self, parent: tk.Misc, fonts: Fonts, on_cancel: Callable[[], None]) -> None:
        self.frame = tk.Frame(parent, padx=10, pady=3)
        self.dot = tk.Label(self.frame, text="\u25cf", font=fonts.small)
        self.dot.pack(side="left")
        self.label = tk.Label(self.frame, text="", font=fonts.small, anchor="w")
        self.label.pack(side="left", fill="x", expand=True)
        self.cancel_button = ttk.Button(self.frame, text="Cancel", style="Status.TButton",
                                        command=on_cancel, takefocus=False)
        self.retry_label = tk.Label(self.frame, text="", font=fonts.small)
        self.states_label = tk.Label(self.frame, text="", font=fonts.small)
        self.states: dict[str, str] = {}
        self._phase: str = "connecting"
        self.palette = LIGHT

    def apply(self, palette: Palette) -> None:
        self.palette = palette
        for widget in (self.frame, self.dot, self.label, self.retry_label, self.states_label):
            widget.configure(background=palette.status_bg)
        self.label.configure(foreground=palette.ink)
        self.retry_label.configure(foreground=palette.alert)
        self.states_label.configure(foreground=palette.alert)
        self.set_phase(self._phase)

    def set_text(self, text: str) -> None:
        self.label.configure(text=for_display(text))

    def set_phase(self, phase: str) -> None:
        self._phase = phase
        self.dot.configure(foreground=self.palette.dots[phase])

    def set_states(self, states: Mapping[str, str]) -> None:
        """The grove's states to show ("locked": "Locked"...); empty hides them."""
        self.states = dict(states)
        if states:
            self.states_label.configure(text=" \u00b7 ".join(states.values()))
            self.states_label.pack(side="right", padx=(6, 0), before=self.label)
        else:
            self.states_label.pack_forget()

    def show_countdown(self, text: str) -> None:
        if not text:
            self.retry_label.pack_forget()
            self.cancel_button.pack_forget()
            return
        self.retry_label.configure(text=text)
        if not self.retry_label.winfo_manager():  # "... in 2 s… [Cancel]" on the right
            self.cancel_button.pack(side="right", before=self.label)
            self.retry_label.pack(side="right", padx=(0, 6), before=self.label)


class SmallWindow:
    """A small window of the chat window's own (a dialog, the key list): close() and exists()."""

    top: tk.Toplevel

    def close(self) -> None:
        with contextlib.suppress(tk.TclError):
            self.top.destroy()

    def exists(self) -> bool:
        try:
            return bool(self.top.winfo_exists())
        except tk.TclError:
            return False


class AskDialog(SmallWindow):
    """A keeper's small dialog: a Question's prompt, an entry for the answer, and its OK button
    (labelled with what it does) and Cancel. It does not wait: on_answer(text) is called when
    the answer is confirmed (OK or Enter, and question.check() takes it); Cancel, Escape or
    closing it call nothing.

    AskDialog(root, question, fonts, palette, on_answer)   entry, ok_button, error, close()
    """

    def __init__(self, root: tk.Misc, question: Question, fonts: Fonts, palette: Palette,
                 on_answer: Callable[[str], None]) -> None:
        self.question, self.on_answer = question, on_answer
        self.top = tk.Toplevel(root, padx=16, pady=12, background=palette.panel)
        self.top.title(f"Panda Chat — {question.title}")
        self.top.transient(root.winfo_toplevel())
        self.top.columnconfigure(0, weight=1)
        tk.Label(self.top, text=for_display(question.prompt), font=fonts.body, justify="left",
                 anchor="w", wraplength=fonts.em() * 50, background=palette.panel,
                 foreground=palette.ink).grid(row=0, column=0, columnspan=3, sticky="w")
        self.entry = ttk.Entry(self.top, font=fonts.body, width=40)
        self.entry.insert(0, tk_safe(question.initial))
        self.entry.select_range(0, "end")
        self.entry.grid(row=1, column=0, columnspan=3, sticky="ew", pady=(8, 4))
        self.error = tk.Label(self.top, text="", font=fonts.small, anchor="w",
                              background=palette.panel, foreground=palette.error)
        self.error.grid(row=2, column=0, columnspan=3, sticky="w")
        self.ok_button = ttk.Button(self.top, text=for_display(question.ok),
                                    style="Accent.TButton", command=self.confirm)
        self.ok_button.grid(row=3, column=1, sticky="e", pady=(8, 0), padx=(0, 6))
        ttk.Button(self.top, text="Cancel", command=self.close).grid(
            row=3, column=2, sticky="e", pady=(8, 0))
        for key in ("<Return>", "<KP_Enter>"):
            self.entry.bind(key, self._on_return)
        self.top.bind("<Escape>", lambda _e: self.close())
        self.top.protocol("WM_DELETE_WINDOW", self.close)
        self.entry.focus_set()

    def _on_return(self, event: object) -> str:
        self.confirm()
        return "break"

    def confirm(self) -> None:
        answer = self.entry.get().strip()
        if problem := self.question.check(answer):
            self.error.configure(text=for_display(problem))
            return
        self.close()
        self.on_answer(answer)


Ask = Callable[[Question, Callable[[str], None]], object]  # ask(question, on_answer)


class ShortcutList(SmallWindow):
    """F1: the window's keys, in a small window of their own; Escape or Close closes it."""

    def __init__(self, root: tk.Misc, fonts: Fonts, palette: Palette) -> None:
        self.top = tk.Toplevel(root, padx=16, pady=12, background=palette.panel)
        self.top.title("Panda Chat \u2014 keys")
        self.top.transient(root.winfo_toplevel())
        tk.Label(self.top, text="Keys of the chat window", font=fonts.bold,
                 background=palette.panel, foreground=palette.ink).grid(
            row=0, column=0, columnspan=2, sticky="w", pady=(0, 8))
        for row, (keys, does) in enumerate(SHORTCUTS, start=1):
            for column, (text, font) in enumerate(((keys, fonts.bold), (does, fonts.body))):
                tk.Label(self.top, text=text, font=font, background=palette.panel,
                         foreground=palette.ink, anchor="w").grid(
                    row=row, column=column, sticky="w", padx=(0, 12), pady=1)
        ttk.Button(self.top, text="Close", command=self.close).grid(
            row=len(SHORTCUTS) + 1, column=1, sticky="e", pady=(10, 0))
        self.top.bind("<Escape>", lambda _e: self.close())
        self.top.protocol("WM_DELETE_WINDOW", self.close)
        self.top.focus_set()

    def text(self) -> str:
        return "\n".join(str(w.cget("text")) for w in self.top.winfo_children()
                         if isinstance(w, tk.Label))


def draw_panda(parent: tk.Misc, background: str, scale: float) -> tk.Canvas:
    """A little panda face, sized for the screen's dpi."""
    def s(*xs: float) -> list[float]:
        return [x * scale for x in xs]

    face = tk.Canvas(parent, width=34 * scale, height=30 * scale, background=background,
                     highlightthickness=0)
    face.create_oval(*s(2, 2, 12, 12), fill="black", outline="")      # ears
    face.create_oval(*s(22, 2, 32, 12), fill="black", outline="")
    face.create_oval(*s(4, 5, 30, 29), fill="white", outline="")      # face
    face.create_oval(*s(9, 12, 16, 20), fill="black", outline="")     # eye patches
    face.create_oval(*s(18, 12, 25, 20), fill="black", outline="")
    face.create_oval(*s(15, 21, 19, 24), fill="black", outline="")    # nose
    return face


# --- ChatWindow: the coordinator -----------------------------------------------------------

class ChatWindow:
    """The chat window, on Tk's thread: builds the views, wires them to a Session, and polls
    the inbox. It is the Session's view (SessionView).

    ChatWindow(root, inbox, send=..., connect=..., disconnect=..., address=..., name=...)
      inbox         the queue the Connection's receiver thread fills; poll() drains it
      send(text)    writes a line to the server; returns False when it could not
      connect()     (re)opens the connection; what happens next arrives in inbox
      disconnect()  closes the connection (after @leaves when closing; on Cancel); must not block
      address       (host, port), for the status bar
      name          join with this name at once instead of asking for one
      secure        the connection uses TLS (shown in the header)
      bell          ring for a mention or whisper while the window has no focus (False: --quiet)
      retry_delays  the waits before each automatic reconnection (empty: never by itself)
      settings      a Settings (default: the user's settings file)
      notify_command  a desktop notifier such as notify-send (None: the bell and the title)
      spawn, open_url, ask_save_path, prefers_dark   seams for the notifier's process, opening
                    a link, the Save dialog and the desktop's theme
      ask           ask(question, on_answer): the keepers' dialogs (default: an AskDialog,
                    kept in .dialog); a test may answer at once
    The parts: session (Session), chat_view (ChatView), find_bar, user_list, name_form, input
    (InputBar), banner (OfflineBanner), status_bar, command_buttons, notifier, grove_menu (the
    keepers' Grove menu, in the menu bar while we are a keeper).
    has_focus() says whether the person is looking; a test may override it.
    """

    def __init__(self, root: tk.Tk, inbox: queue.Queue[InboxItem],
                 send: Callable[[str], bool] = _not_sent, *,
                 connect: Callable[[], None] = _nothing,
                 disconnect: Callable[[], None] = _nothing,
                 address: tuple[str, int] = (DEFAULT_HOST, DEFAULT_PORT),
                 name: str | None = None, secure: bool = False, bell: bool = True,
                 retry_delays: Sequence[float] = RETRY_DELAYS_S,
                 settings: Settings | None = None, notify_command: str | None = None,
                 spawn: Callable[..., Any] = subprocess.Popen,
                 open_url: Callable[[str], object] = webbrowser.open,
                 ask_save_path: Callable[[], str] | None = None,
                 prefers_dark: Callable[[], bool] = system_prefers_dark,
                 ask: Ask | None = None) -> None:
        self.root = root
        self.inbox = inbox
        self.address = f"{address[0]}:{address[1]}"
        self.secure = secure
        self.settings = settings if settings is not None else Settings()
        self.prefers_dark = prefers_dark
        self.ask_save_path = ask_save_path or self._ask_save_path
        self.ask: Ask = ask or self._ask_in_dialog
        self.dialog: AskDialog | None = None
        self.palette = self._chosen_palette()
        self.notifier = Notifier(root.bell, notify_command, spawn=spawn, ring=bell)
        self.session = Session(self, send=send, connect=connect, disconnect=disconnect,
                               address=self.address, name=name, after=root.after,
                               after_cancel=root.after_cancel, retry_delays=retry_delays)
        self.unread_mentions = 0              # mentions and whispers not yet seen
        self.lines_shown = 0                  # lines received and shown, all time
        self.transcript: deque[str] = deque(maxlen=MAX_SCROLLBACK_LINES)  # for Save
        self._unread_marked = False           # "new since you looked" placed this time away
        self.shortcuts: ShortcutList | None = None
        # How responsive the loop is (the flood test reads these): the longest time between
        # two poll ticks, by the clock and in CPU time of Tk's thread (which leaves out the time
        # the machine gave to other processes).
        self.ticks = 0
        self.last_tick: tuple[float, float] | None = None  # (monotonic, thread_time)
        self.max_tick_gap = 0.0
        self.max_tick_cpu = 0.0
        self.create_widgets(open_url)
        self.apply_palette(self.palette)
        self.root.protocol("WM_DELETE_WINDOW", self.on_close)
        # Every widget's events pass through its toplevel's bindings: this sees the window (or
        # anything in it) get the focus.
        self.root.bind("<FocusIn>", self._on_focus_in, add="+")
        self.phase_changed()
        if self.session.asking_name:
            self.name_form.entry.focus_set()  # the name can be typed while connecting
        else:
            self.input.entry.focus_set()
        if self.settings.warning:
            self.note(self.settings.warning)
        self.poll_id: str | None = self.root.after(POLL_MS, self.poll)
        self.session.start()

    # --- Building ---

    def create_widgets(self, open_url: Callable[[str], object]) -> None:
        root = self.root
        root.title("Panda Chat")
        self.ui_fonts = Fonts(root, FONT_SIZE)
        self.chat_fonts = Fonts(root, self.settings.font_size)
        self.style = ttk.Style(root)
        if "clam" in self.style.theme_names():
            self.style.theme_use("clam")
        root.columnconfigure(0, weight=1)
        root.rowconfigure(1, weight=1)
        self._create_header()
        self._create_menus()

        body = self.body = tk.Frame(root)
        body.grid(row=1, column=0, sticky="nsew")
        body.columnconfigure(0, weight=1)
        body.rowconfigure(0, weight=1)
        self.chat_view = ChatView(body, self.chat_fonts, self.palette, open_url)
        self.chat_view.frame.grid(row=0, column=0, sticky="nsew", padx=(10, 6), pady=(10, 6))
        # Clicking or selecting in the chat gives the keyboard back to the input at once.
        self.chat_view.text.bind("<ButtonRelease-1>", lambda _e: self._focus_input(), add="+")

        side = self.side = tk.Frame(body)
        side.grid(row=0, column=1, sticky="ns", padx=(0, 10), pady=(10, 6))
        side.rowconfigure(0, weight=1)
        self.user_list = UserList(side, self.ui_fonts, self.palette, self.whisper_to)
        self.user_list.frame.grid(row=0, column=0, sticky="nsew")
        self.buttons = tk.Frame(side)
        self.buttons.grid(row=1, column=0, sticky="ew", pady=(8, 0))
        self.buttons.columnconfigure(0, weight=1)
        self.command_buttons: dict[str, ttk.Button] = {}
        for row, (command, label) in enumerate(COMMAND_BUTTONS):
            button = ttk.Button(self.buttons, text=f"{label}  ({command})", style="Side.TButton",
                                command=functools.partial(self.send_command, command),
                                takefocus=False)
            button.grid(row=row, column=0, sticky="ew", pady=2)
            self.command_buttons[command] = button

        self.banner = OfflineBanner(root, self.ui_fonts, self.session.reconnect)
        self.name_form = NameForm(root, self.ui_fonts, self.session.submit_name)
        self.find_bar = FindBar(root, self.chat_view, self.ui_fonts, self._focus_input)
        self.find_bar.frame.grid(row=4, column=0, sticky="ew")
        self.find_bar.frame.grid_remove()
        self.input = InputBar(root, self.ui_fonts, self.session.submit, self._completable_names,
                              self.chat_view.scroll_pages)
        self.input.set_commands(self.session.commands())
        self.input.entry.bind("<<Copy>>", self._copy_from_chat)
        self.status_bar = StatusBar(root, self.ui_fonts, self.session.cancel_retry)
        self.status_bar.frame.grid(row=6, column=0, sticky="ew")
        self._bind_keys()
        self._size_window()

    def _create_header(self) -> None:
        header = self.header = tk.Frame(self.root, background=GREEN, padx=12, pady=8)
        header.grid(row=0, column=0, sticky="ew")
        # Drawn in pixels at 96 dpi: scaled as Tk scales fonts (its pixels per point).
        scale = max(1.0, float(self.root.tk.call("tk", "scaling")) * 72 / 96)
        draw_panda(header, GREEN, scale).pack(side="left")
        tk.Label(header, text="Panda Chat", font=self.ui_fonts.title, background=GREEN,
                 foreground="white").pack(side="left", padx=(8, 0))
        where = f"{self.address} \u00b7 TLS" if self.secure else self.address
        self.header_info = tk.Label(header, text=tk_safe(where), font=self.ui_fonts.body,
                                    background=GREEN, foreground=HEADER_INFO_FG)
        self.header_info.pack(side="right")

    def _create_menus(self) -> None:
        """Chat, View and Help menus; a keeper's "Grove" menu goes between View and Help."""
        menubar = self.menubar = tk.Menu(self.root)
        chat = tk.Menu(menubar, tearoff=False)
        chat.add_command(label="Find\u2026", accelerator="Ctrl+F", command=self.open_find)
        chat.add_command(label="Save chat\u2026", accelerator="Ctrl+S", command=self.save_chat)
        chat.add_separator()
        chat.add_command(label="Close", command=self.on_close)
        menubar.add_cascade(label="Chat", menu=chat)
        view = tk.Menu(menubar, tearoff=False)
        view.add_command(label="Zoom in", accelerator="Ctrl++", command=lambda: self.zoom(1))
        view.add_command(label="Zoom out", accelerator="Ctrl+-", command=lambda: self.zoom(-1))
        view.add_command(label="Normal size", accelerator="Ctrl+0", command=lambda: self.zoom(0))
        view.add_separator()
        # A Tcl variable by name, not a tk.StringVar: that one's __del__ calls Tk, from whichever
        # thread the garbage collector happens to run in.
        self.theme_variable = f"panda_theme_{id(self)}"
        self.root.setvar(self.theme_variable, self.settings.theme)
        for value, label in (("system", "Theme of the system"), ("light", "Light theme"),
                             ("dark", "Dark theme")):
            view.add_radiobutton(label=label, value=value,
                                 variable=self.theme_variable,  # type: ignore[arg-type]
                                 command=lambda: self.set_theme(
                                     str(self.root.getvar(self.theme_variable))))
        menubar.add_cascade(label="View", menu=view)
        grove = self.grove_menu = tk.Menu(menubar, tearoff=False)
        for label, action in (
                ("Lock the grove (no newcomers)", lambda: self.moderate("@lock")),
                ("Unlock the grove", lambda: self.moderate("@unlock")),
                ("Hush (only keepers talk)", lambda: self.moderate("@hush")),
                ("Unhush (everybody talks)", lambda: self.moderate("@unhush"))):
            grove.add_command(label=label, command=action)
        grove.add_separator()
        grove.add_command(label="Slow mode\u2026", command=self.ask_slowmode)
        grove.add_command(label="Announce\u2026", command=self.ask_announce)
        helps = tk.Menu(menubar, tearoff=False)
        helps.add_command(label="Keyboard shortcuts", accelerator="F1",
                          command=self.show_shortcuts)
        menubar.add_cascade(label="Help", menu=helps)
        self.root.configure(menu=menubar)

    def _bind_keys(self) -> None:
        """The window's keys, wherever the focus is in it (the toplevel's bindings)."""
        root = self.root
        for keys, action in (
                (("<Control-f>", "<Control-F>"), self.open_find),
                (("<Control-s>", "<Control-S>"), self.save_chat),
                (("<Control-plus>", "<Control-equal>", "<Control-KP_Add>"),
                 lambda: self.zoom(1)),
                (("<Control-minus>", "<Control-KP_Subtract>"), lambda: self.zoom(-1)),
                (("<Control-0>", "<Control-KP_0>"), lambda: self.zoom(0)),
                (("<F1>",), self.show_shortcuts),
                (("<Key-Menu>", "<Shift-F10>"), self.user_list.open_menu)):
            for key in keys:
                root.bind(key, functools.partial(self._on_key, action))

    @staticmethod
    def _on_key(action: Callable[[], object], event: object) -> str:
        action()
        return "break"

    def _size_window(self) -> None:
        """Size from the fonts, not in pixels: the same look at any dpi. The least size is what
        the parts ask for (the chat 6 lines, the user list 4 names)."""
        em, line = self.ui_fonts.em(), self.ui_fonts.line()
        self.root.geometry(f"{em * 108}x{line * 31}")
        self.root.update_idletasks()
        self.root.minsize(max(em * 70, self.root.winfo_reqwidth()),
                          max(line * 20, self.root.winfo_reqheight()))

    # --- Looks ---

    def _chosen_palette(self) -> Palette:
        theme = self.settings.theme
        if theme == "system":
            theme = "dark" if self.prefers_dark() else "light"
        return THEMES[theme]

    def set_theme(self, theme: str) -> None:
        """The View menu: "system", "light" or "dark"; remembered."""
        self.settings.theme = theme
        self.settings.save()
        self.root.setvar(self.theme_variable, theme)
        self.apply_palette(self._chosen_palette())

    def apply_palette(self, palette: Palette) -> None:
        self.palette = palette
        self.root.configure(background=palette.panel)
        for menu in (self.menubar, *self.menubar.winfo_children()):
            if isinstance(menu, tk.Menu):
                menu.configure(background=palette.panel, foreground=palette.ink,
                               activebackground=palette.border, activeforeground=palette.ink)
        for frame in (self.body, self.side, self.buttons):
            frame.configure(background=palette.panel)
        for part in (self.chat_view, self.user_list, self.name_form, self.input, self.banner,
                     self.status_bar, self.find_bar):
            part.apply(palette)
        style, fonts = self.style, self.ui_fonts
        style.configure("TButton", padding=(10, 4), font=fonts.body, background=palette.panel,
                        foreground=palette.ink)
        style.map("TButton", background=[("active", palette.border)])
        style.configure("Accent.TButton", background=GREEN, foreground="white",
                        bordercolor=GREEN_DARK, font=fonts.bold)
        style.map("Accent.TButton", background=[("disabled", "#9cbf9e"), ("active", GREEN_DARK)])
        style.configure("TEntry", padding=(6, 5), fieldbackground=palette.paper,
                        foreground=palette.ink, insertcolor=palette.ink)
        style.configure("Side.TButton", padding=(8, 3), font=fonts.body, anchor="w")
        style.configure("Status.TButton", padding=(6, 0), font=fonts.small)
        style.configure("Vertical.TScrollbar", background=palette.panel,
                        troughcolor=palette.paper)

    def zoom(self, step: int) -> None:
        """Ctrl+plus (1), Ctrl+minus (-1), Ctrl+0 (0: back to normal); remembered."""
        size = FONT_SIZE if step == 0 else self.chat_fonts.size + step
        if size not in FONT_SIZES:
            return
        self.chat_fonts.resize(size)
        self.chat_view.apply_metrics()
        self.settings.font_size = size
        self.settings.save()

    # --- The poll: the only way received lines reach the widgets ---

    def poll(self) -> None:
        """Handle what inbox holds, within a budget of time and characters, then come back:
        at once while more waits."""
        self._measure_tick()
        started, chars, more = time.perf_counter(), 0, False
        try:
            while not self.session.closed:
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    break
                self.handle(item)
                chars += len(item.text) if isinstance(item, Message) else 0
                if chars >= POLL_BUDGET_CHARS or time.perf_counter() - started >= POLL_BUDGET_S:
                    more = True
                    break
        finally:
            self.chat_view.end_batch()
            if not self.session.closed:
                self.poll_id = self.root.after(BACKLOG_POLL_MS if more else POLL_MS, self.poll)

    def _measure_tick(self) -> None:
        now = (time.monotonic(), time.thread_time())
        if self.last_tick is not None:
            self.max_tick_gap = max(self.max_tick_gap, now[0] - self.last_tick[0])
            self.max_tick_cpu = max(self.max_tick_cpu, now[1] - self.last_tick[1])
        self.last_tick = now
        self.ticks += 1

    def handle(self, item: InboxItem) -> None:
        if isinstance(item, ConnectionEvent):
            self.session.on_event(item)
        else:
            self.session.on_message(item)

    # --- SessionView: what the session asks of the window ---

    def show(self, msg: Message, *, own: bool = False) -> None:
        rendered = render(msg, clock=time.strftime("%H:%M"), me=self.session.name, own=own)
        if not own:
            self._mark_unread_if_away(msg)
        self.chat_view.append(rendered)
        self.transcript.append(rendered.plain())
        if own:  # one's own line, sent outside a poll tick, brings the view back to the newest
            self.chat_view.follow = True
            self.chat_view.end_batch()
            return
        self.lines_shown += 1
        if (rendered.mention or rendered.whisper) and msg.kind != "history":
            self._alert(rendered)

    def _mark_unread_if_away(self, msg: Message) -> None:
        """The first new line while the person looks elsewhere gets "new since you looked"
        above it (once per time away; replayed history is not new)."""
        if (not self._unread_marked and self.session.phase == "chatting"
                and msg.kind not in ("welcome", "history") and not self.has_focus()):
            self._unread_marked = True
            self.chat_view.mark_unread()

    def note(self, text: str) -> None:
        rendered = render_note(text, time.strftime("%H:%M"))
        self.chat_view.append(rendered)
        self.transcript.append(rendered.plain())
        self.chat_view.end_batch()  # notes are few: each is shown at once

    def set_status(self, text: str) -> None:
        self.status_bar.set_text(text)

    def set_offline_reason(self, text: str) -> None:
        self.banner.label.configure(text=for_display(text))

    def set_name_prompt(self, text: str) -> None:
        self.name_form.prompt.configure(text=for_display(text))

    def set_name_error(self, text: str) -> None:
        self.name_form.error.configure(text=for_display(text))

    def name_refused(self, name: str) -> None:
        self.name_form.refused(name)

    def welcomed(self) -> None:
        self.input.entry.focus_set()
        self._update_title()

    def users_changed(self) -> None:
        session = self.session
        self.user_list.show(session.users.values(), session.name, session.away, session.quiet)

    def phase_changed(self) -> None:
        """Show and enable the parts of the window that fit the phase. The input stays usable
        offline: what is written then goes out when the window is back in the grove."""
        session = self.session
        rows = ((self.banner.frame, 2, session.phase == "offline"),
                (self.name_form.frame, 3, session.asking_name),
                (self.input.frame, 5, not session.asking_name))
        for frame, row, shown in rows:
            if shown:
                frame.grid(row=row, column=0, sticky="ew")
            else:
                frame.grid_remove()
        chatting = session.phase == "chatting"
        for button in self.command_buttons.values():
            button.state(["!disabled"] if chatting else ["disabled"])
        waiting = session.pending_name is not None
        self.name_form.join_button.state(["disabled"] if waiting else ["!disabled"])
        self.banner.retry_button.configure(
            text="Reconnect" if session.ever_connected else "Retry")
        self.status_bar.set_phase(session.phase)
        self._update_title()

    def show_countdown(self, text: str) -> None:
        self.status_bar.show_countdown(text)

    def rules_changed(self) -> None:
        session = self.session
        self.status_bar.set_states(session.states)
        self.input.set_reason(session.input_reason())
        self.input.set_commands(session.commands())
        self._show_keeper_menus(session.keeper)

    def name_changed(self) -> None:
        self._update_title()

    # --- Keepers: the user list's menu and the Grove menu ---

    def _show_keeper_menus(self, keeper: bool) -> None:
        shown = self.grove_menu_shown()
        if keeper and not shown:
            self.menubar.insert_cascade(self.menubar.index("Help") or 0, label="Grove",
                                        menu=self.grove_menu)
        elif shown and not keeper:
            self.menubar.delete("Grove")
        if keeper != shown:
            self.user_list.set_keeper_actions(
                [("Kick\u2026", self.ask_kick),
                 (f"Mute {MUTE_MINUTES} minutes", lambda name: self.moderate(
                     f"@mute {name} {MUTE_MINUTES}")),
                 ("Unmute", lambda name: self.moderate(f"@unmute {name}")),
                 ("Ban\u2026", self.ask_ban)] if keeper else [])

    def grove_menu_shown(self) -> bool:
        end = self.menubar.index("end")
        return end is not None and any(
            self.menubar.type(i) == "cascade" and self.menubar.entrycget(i, "label") == "Grove"
            for i in range(end + 1))

    def moderate(self, command: str) -> None:
        """A keeper's command from a menu or dialog: sent like a typed one."""
        self.session.submit(command.strip())
        self._focus_input()

    def ask_kick(self, name: str) -> None:
        self.ask(Question("Kick", f"Remove {name} from the grove? {name} cannot come back "
                                  "by resume. The reason (may be empty) is shown to everybody.",
                          f"Kick {name}"),
                 lambda reason: self.moderate(f"@kick {name} {reason}"))

    def ask_ban(self, name: str) -> None:
        self.ask(Question("Ban", f"Remove {name} and keep their address out: for how many "
                                 "minutes? Empty: until the server stops.",
                          f"Ban {name}", check=minutes_problem),
                 lambda minutes: self.moderate(f"@ban {name} {minutes}"))

    def ask_slowmode(self) -> None:
        self.ask(Question("Slow mode", "One chat line every how many seconds, for each panda "
                                       "but keepers? 0 ends slow mode.",
                          "Set slow mode", initial="10", check=seconds_problem),
                 lambda seconds: self.moderate(f"@slowmode {seconds}"))

    def ask_announce(self) -> None:
        self.ask(Question("Announce", "What should everybody see stand out?", "Announce",
                          check=text_problem),
                 lambda text: self.moderate(f"@announce {text}"))

    def _ask_in_dialog(self, question: Question, on_answer: Callable[[str], None]) -> None:
        if self.dialog is not None:
            self.dialog.close()
        self.dialog = AskDialog(self.root, question, self.ui_fonts, self.palette, on_answer)

    # --- What the person does ---

    def send_command(self, command: str) -> None:
        """A command button; the keyboard stays with the input line."""
        self.session.submit(command)
        self._focus_input()

    def whisper_to(self, name: str) -> None:
        """Start a whisper to name: the input line becomes "@whisper NAME " and what was typed
        (a whisper to somebody else loses its "@whisper OTHER"), ready to type on."""
        if self.session.phase != "chatting" or self.session.is_me(name):
            return
        text = self.input.get()
        words = text.split(" ", 2)
        if words[0].lower() == "@whisper":
            text = words[2] if len(words) > 2 else ""
        self.input.put(f"@whisper {name} {text}")
        self.input.entry.focus_set()

    def _completable_names(self) -> list[str]:
        return [n for n in self.session.user_names() if not self.session.is_me(n)]

    def _focus_input(self) -> None:
        if self.session.asking_name:
            self.name_form.entry.focus_set()
        else:
            self.input.entry.focus_set()

    def _copy_from_chat(self, event: object = None) -> str | None:
        """Ctrl+C in the input with nothing selected there copies what is selected in the chat
        (the input has the keyboard even while one selects in the chat)."""
        if self.input.entry.selection_present():
            return None  # the entry's own copy
        return self.chat_view._on_copy()

    def open_find(self) -> None:
        self.find_bar.open()

    def show_shortcuts(self) -> None:
        if self.shortcuts is None or not self.shortcuts.exists():
            self.shortcuts = ShortcutList(self.root, self.ui_fonts, self.palette)

    def save_chat(self) -> None:
        """Ctrl+S: the chat as a text file, a line each with its time and name."""
        path = self.ask_save_path()
        if not path:
            return
        try:
            Path(path).write_text("\n".join(self.transcript) + "\n", encoding="utf-8")
        except OSError as exc:
            self.note(f"Could not save the chat to {path}: {exc.strerror or exc}")
            return
        self.note(f"Saved the chat to {path}.")

    def _ask_save_path(self) -> str:
        return filedialog.asksaveasfilename(
            parent=self.root, title="Save the chat", defaultextension=".txt",
            initialfile=f"panda-chat-{time.strftime('%Y-%m-%d-%H%M')}.txt",
            filetypes=[("Text", "*.txt"), ("All files", "*")])

    # --- Mentions, whispers, and looking away ---

    def has_focus(self) -> bool:
        """The window has the keyboard focus: the person is (probably) looking at it."""
        focus = str(self.root.tk.call("focus"))  # "" when another application has the focus
        return bool(focus) and str(self.root.tk.call("winfo", "toplevel", focus)) == str(
            self.root)

    def _alert(self, rendered: Rendered) -> None:
        """A mention or a whisper while the person looks elsewhere: one more in the title's
        count, and a notification (or the bell, at most every BELL_GAP_S)."""
        if self.has_focus():
            return
        self.unread_mentions += 1
        self._update_title()
        said = rendered.plain().split(" ", 1)[-1]
        title = "Panda Chat: a whisper" if rendered.whisper else "Panda Chat: you were named"
        self.notifier.notify(title, said)

    def _on_focus_in(self, event: object = None) -> None:
        """The window got the focus: the person sees the mentions now."""
        self._unread_marked = False
        if self.unread_mentions:
            self.unread_mentions = 0
            self._update_title()

    def _update_title(self) -> None:
        """"Panda Chat — Alice", with "(2) " before it for mentions not yet seen."""
        name = self.session.name
        title = f"Panda Chat \u2014 {name}" if name else "Panda Chat"
        if self.unread_mentions:
            title = f"({self.unread_mentions}) {title}"
        self.root.title(for_display(title))

    # --- The end ---

    def close(self) -> None:
        """Stop polling, say goodbye, close the connection (without waiting for it). The window
        stays for the caller."""
        if self.session.closed:
            return
        self.session.close()
        if self.poll_id is not None:
            self.root.after_cancel(self.poll_id)
            self.poll_id = None
        if self.shortcuts is not None:
            self.shortcuts.close()
        if self.dialog is not None:
            self.dialog.close()

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
              retry_delays: Sequence[float] = RETRY_DELAYS_S,
              **options: Any) -> tuple[ChatWindow, Connection]:
    """A ChatWindow on root wired to a real Connection to host:port, connecting. options go to
    ChatWindow (settings, notify_command, open_url, ...)."""
    inbox: queue.Queue[InboxItem] = queue.Queue()
    connection = Connection(host, port, inbox, tls)
    window = ChatWindow(root, inbox, send=connection.send, connect=connection.open,
                        disconnect=connection.close_soon, address=(host, port), name=name,
                        secure=tls is not None, bell=bell, retry_delays=retry_delays, **options)
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
    window, connection = open_chat(root, host, port, name, tls, bell=bell,
                                   notify_command=notify_send_command())

    def stop(signum: int, frame: FrameType | None) -> None:
        # Signals arrive between Python bytecodes on this (Tk's) thread; leave via the loop.
        root.after(0, window.on_close)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    root.mainloop()
    connection.join_closers()  # the goodbye's linger, now that no window waits for it
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
