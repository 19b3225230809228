"""The Panda Chat wire format, shared by server3.py and client3.py.

Pure code: bytes in, lines out; lines in, bytes out. No sockets, no threads.

The protocol is UTF-8 text, one message per line ending in "\\n" ("\\r\\n" is
accepted), so that a person can chat with `nc 127.0.0.1 12345`:

    NAME: text            a chat line from NAME (names never hold whitespace,
                          so the first ": " always ends the name)
    * KIND: text          a system line; KIND is one lowercase word
                          (welcome, join, leave, grove, more, fact, help,
                          error, name, bye, shutdown, full, quiet, ...)

A line can never be both: a chat line starts with a name and a name holds no
space, while a system line starts with "* ". README's "Protocol" section lists
every KIND.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final

# What a name may be lives in names.py; server3.py and client3.py import these from here.
from names import MAX_NAME_CHARS as MAX_NAME_CHARS
from names import name_key as name_key
from names import name_problem as name_problem

ENCODING: Final = "utf-8"

# A typed chat line is rarely over a few hundred characters; 4 KiB holds a long
# pasted paragraph while bounding what one connection can make the server hold
# in its line buffer.
MAX_LINE_BYTES: Final = 4096

# The longest line a server sends: a name, ": " and a chat line whose escaping
# (ESC becomes the 4 characters \x1b, a bad byte the 3 bytes of U+FFFD) made it
# up to 4 times longer, plus a prefix such as "* history: [12:00] ". Clients
# frame what they receive with this limit.
MAX_SERVER_LINE_BYTES: Final = 4 * MAX_LINE_BYTES + 256

SYSTEM_PREFIX: Final = "* "


class _LineTooLong:
    """The marker LineBuffer.feed() yields for a line it had to discard."""

    def __repr__(self) -> str:
        return "LINE_TOO_LONG"


LINE_TOO_LONG: Final = _LineTooLong()


class LineBuffer:
    """Split a byte stream into text lines, whatever the chunking.

    feed(data) returns the lines completed by data, decoded as UTF-8 with
    invalid bytes replaced (never an exception) and without the line ending.
    A line longer than max_line_bytes is discarded up to its newline and
    reported once, in its place, as LINE_TOO_LONG; at most max_line_bytes are
    ever held, whatever arrives.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._partial = bytearray()
        self._discarding = False  # inside an over-long line, until its "\n"

    def feed(self, data: bytes) -> list[str | _LineTooLong]:
        out: list[str | _LineTooLong] = []
        first_end = data.find(b"\n")
        if first_end < 0:
            self._keep_partial(data, out)
            return out
        self._finish_line(data[:first_end], out)  # the end of the line held so far
        last_end = data.rfind(b"\n")
        if last_end > first_end:
            self._whole_lines(data[first_end + 1:last_end], out)
        self._keep_partial(data[last_end + 1:], out)
        return out

    def _whole_lines(self, block: bytes, out: list[str | _LineTooLong]) -> None:
        """Lines that begin and end in one chunk, decoded and split at once:
        a flood of tiny lines then costs C speed to frame, not a Python step
        per line (2,048 lines of one byte took 1.9 ms that way). A "\n" is
        never inside a UTF-8 sequence, so decoding the block decodes each line."""
        pieces = block.split(b"\n")
        if max(map(len, pieces)) > self.max_line_bytes:  # over-long ones: line by line
            for piece in pieces:
                self._finish_line(piece, out)
            return
        text = block.decode(ENCODING, errors="replace")
        lines = text.split("\n")
        if "\r" in text:
            lines = [line[:-1] if line.endswith("\r") else line for line in lines]
        out.extend(lines)

    def _keep_partial(self, piece: bytes, out: list[str | _LineTooLong]) -> None:
        if self._discarding:
            return
        if len(self._partial) + len(piece) > self.max_line_bytes + 1:  # +1: a "\r"
            self._partial.clear()
            self._discarding = True
            out.append(LINE_TOO_LONG)
        else:
            self._partial += piece

    def _finish_line(self, piece: bytes, out: list[str | _LineTooLong]) -> None:
        if self._discarding:
            self._discarding = False  # the over-long line ends here
            return
        too_long = len(self._partial) + len(piece) > self.max_line_bytes + 1
        if not too_long:
            self._partial += piece
            if self._partial.endswith(b"\r"):
                del self._partial[-1]
            too_long = len(self._partial) > self.max_line_bytes
        out.append(LINE_TOO_LONG if too_long else self._partial.decode(ENCODING, errors="replace"))
        self._partial.clear()


def encode_line(text: str) -> bytes:
    """One line of text as bytes on the wire, with its "\\n"."""
    return (text + "\n").encode(ENCODING, errors="replace")


def system_line(kind: str, text: str) -> str:
    """A system line: "* KIND: text"."""
    return f"{SYSTEM_PREFIX}{kind}: {text}"


def chat_line(name: str, text: str) -> str:
    return f"{name}: {text}"


@dataclass(frozen=True)
class Message:
    """A received line, parsed: kind is "chat" for chat lines, else the KIND."""

    kind: str
    text: str
    sender: str = ""


def parse_line(line: str) -> Message:
    """Tell a chat line from a system line; anything else is kind "text"."""
    if line.startswith(SYSTEM_PREFIX):
        kind, sep, text = line[len(SYSTEM_PREFIX):].partition(": ")
        if sep and kind and " " not in kind:
            return Message(kind, text)
        return Message("text", line)
    sender, sep, text = line.partition(": ")
    if sep and sender and not any(ch.isspace() for ch in sender):
        return Message("chat", text, sender)
    return Message("text", line)


# --- Text from users ------------------------------------------------------

# Characters that end a line for some reader (str.splitlines() splits at every one): the
# categories Cc (controls, with \n, \r, NEL) and Zl, Zp (U+2028, U+2029). Unescaped, they would
# let chat text start a line of its own, one that can pretend to be from another panda.
_CONTROLS = (*range(0x20), *range(0x7F, 0xA0))  # all of category Cc
_LINE_SEPARATORS = (0x2028, 0x2029)             # all of categories Zl and Zp
# Bidirectional controls make a line display differently from what it says. ZWJ and ZWNJ
# (U+200D, U+200C) are not among them: Persian words and emoji sequences need them.
_BIDI_CONTROLS = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))


def _escape_table() -> dict[int, str]:
    """What clean_text() replaces: each character by its escape, "\\x1b" or "\\u2028"."""
    table = {code: f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
             for code in (*_CONTROLS, *_LINE_SEPARATORS, *_BIDI_CONTROLS)}
    table[ord("\t")] = " "
    return table


_ESCAPES: Final = _escape_table()


def clean_text(text: str) -> str:
    """Text from a user made safe to show others or log: control characters (ESC, NUL, ...),
    line and paragraph separators and bidi controls become visible escapes like "\\x1b" and
    "\\u2028", so the text stays on one line and reads as it is; a tab becomes a space."""
    return text.translate(_ESCAPES)


# --- Payload formats ------------------------------------------------------
# What some system lines carry. server3.py writes each with its format_*
# function and client3.py reads it with the parse_* function beside it, so the
# two ends cannot drift apart. A parse function returns None for text that
# does not have its shape (an older or foreign server): the client then shows
# the line and does nothing more with it.

# The clock of a replayed line: hours and minutes are enough in a chat.
HISTORY_CLOCK: Final = "%H:%M"
_HISTORY: Final = re.compile(r"\[(\d{1,2}:\d{2})\] (.*)", re.DOTALL)


def format_history(clock: str, line: str) -> str:
    """The text of "* history:": a line said before one joined, with the
    clock (time.strftime(HISTORY_CLOCK)) it was said at: "[12:03] Bob: hi"."""
    return f"[{clock}] {line}"


def parse_history(text: str) -> tuple[str, str] | None:
    """(clock, line) of a format_history() text."""
    said = _HISTORY.fullmatch(text)
    return (said.group(1), said.group(2)) if said else None


# Keepers (issue #11) are marked in the grove listing by this before their
# name; no name starts with "@" (name_problem), so the mark is unambiguous.
KEEPER_MARK: Final = "@"


@dataclass(frozen=True)
class Member:
    """A panda as the grove listing names it."""

    name: str
    keeper: bool = False


def count_pandas(count: int) -> str:
    return f"{count} panda{'' if count == 1 else 's'}"


def format_grove_listing(names: Iterable[str], line_chars: int,
                         keepers: Collection[str] = ()) -> list[tuple[str, str]]:
    """(kind, text) of the lines that list names: one "grove" line, "3 pandas
    here: Alice Bob Carol", then "more" lines with the names that did not fit
    in line_chars. A name in keepers gets KEEPER_MARK before it."""
    listed = list(names)
    kind, words, width = "grove", [f"{count_pandas(len(listed))} here:"], 0
    out: list[tuple[str, str]] = []
    for name in listed:
        word = KEEPER_MARK + name if name in keepers else name
        if width + len(word) > line_chars:
            out.append((kind, " ".join(words)))
            kind, words, width = "more", [], 0
        words.append(word)
        width += len(word) + 1
    out.append((kind, " ".join(words)))
    return out


def parse_grove_line(kind: str, text: str) -> list[Member]:
    """The pandas one line of a grove listing names (kind "grove" or "more")."""
    if kind == "grove":
        _, sep, text = text.partition(" here:")
        if not sep:
            return []
    return [Member(word[len(KEEPER_MARK):], True) if word.startswith(KEEPER_MARK)
            else Member(word) for word in text.split()]


_RESUME: Final = " is your resume code"


def format_resume(code: str, window_s: float) -> str:
    """The text of "* resume:": the code that brings a dropped panda back."""
    return (f"{code}{_RESUME}: if your connection drops, send \"@resume {code}\" instead "
            f"of a name within {window_s:g} s to come back without missing a line.")


def parse_resume(text: str) -> str | None:
    """The code in a format_resume() text."""
    code, sep, _ = text.partition(_RESUME)
    return code if sep and code and not any(ch.isspace() for ch in code) else None


_LOST: Final = " lost connection ("


def format_lost(name: str, reason: str) -> str:
    """The text of "* lost:": a panda whose connection dropped, who may come back."""
    return f"{name}{_LOST}{reason})."


def parse_lost(text: str) -> tuple[str, str] | None:
    """(name, reason) of a format_lost() text."""
    name, sep, rest = text.partition(_LOST)
    if not sep or not name or any(ch.isspace() for ch in name) or not rest.endswith(")."):
        return None
    return name, rest[:-2]


_MUTE: Final = re.compile(r"(\S+) was muted by (\S+) for ([\d.]+) minutes\.")


def format_mute(name: str, keeper: str, minutes: float) -> str:
    """The text of "* mute:": a keeper muted name for minutes."""
    return f"{name} was muted by {keeper} for {minutes:g} minutes."


def parse_mute(text: str) -> tuple[str, float] | None:
    """(name, minutes) of a format_mute() text."""
    said = _MUTE.fullmatch(text)
    return (said[1], float(said[3])) if said else None


_SLOWMODE_EVERY: Final = re.compile(r".*one line every ([\d.]+) seconds each\.")
_SLOWMODE_ENDED: Final = " ended slow mode."


def format_slowmode(seconds: float, keeper: str | None = None) -> str:
    """The text of "* slowmode:": keeper started it (seconds) or ended it (0);
    without a keeper, the rule in force, as a newcomer is told it."""
    if not seconds:
        return f"{keeper}{_SLOWMODE_ENDED}"
    every = f"one line every {seconds:g} seconds each."
    return f"Slow mode: {every}" if keeper is None else f"{keeper} started slow mode: {every}"


def parse_slowmode(text: str) -> float | None:
    """The seconds of a format_slowmode() text: 0.0 when it ended."""
    if said := _SLOWMODE_EVERY.fullmatch(text):
        return float(said[1])
    return 0.0 if text.endswith(_SLOWMODE_ENDED) else None


_NICK: Final = re.compile(r"(\S+) is now (\S+)\.")


def format_nick(old: str, new: str) -> str:
    """The text of "* nick:": a panda changed its name."""
    return f"{old} is now {new}."


def parse_nick(text: str) -> tuple[str, str] | None:
    """(old, new) of a format_nick() text."""
    said = _NICK.fullmatch(text)
    return (said[1], said[2]) if said else None


# --- TLS over memory buffers ----------------------------------------------------


class TlsSession:
    """TLS done in memory (ssl.SSLObject with two MemoryBIOs), so that the
    caller keeps its own plain socket, reads and writes it as before, and only
    passes bytes through here. Not thread-safe: the caller holds one lock
    around every call on the same session.

        session = TlsSession(context, server_side=True)
        session.handshake()       -> True once done (False: needs more bytes)
        session.feed(raw)         -> plaintext that raw completed; None at close
                                     (receive(raw) then read(), which can be split)
        session.encrypt(text)     -> bytes to send
        session.outgoing()        -> bytes TLS itself wants sent (handshake, ...)
    """

    def __init__(self, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing,
                                     server_side=server_side, server_hostname=server_hostname)

    def handshake(self) -> bool:
        """Advance the handshake; raises ssl.SSLError when it fails."""
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def feed(self, raw: bytes) -> bytes | None:
        """Decrypt raw bytes from the peer (b"" for EOF); None once TLS has closed."""
        self.receive(raw)
        return self.read()

    def receive(self, raw: bytes) -> None:
        """Take raw bytes from the peer (b"" for EOF) without decrypting yet."""
        if raw:
            self._incoming.write(raw)
        else:
            self._incoming.write_eof()

    def read(self) -> bytes | None:
        """The plaintext that the bytes received so far complete; None once closed."""
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._ssl.read(65536)
            except ssl.SSLWantReadError:
                return b"".join(chunks)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b"".join(chunks) or None
            if not chunk:
                return b"".join(chunks) or None
            chunks.append(chunk)

    def encrypt(self, data: bytes) -> bytes:
        self._ssl.write(data)
        return self._outgoing.read()

    def outgoing(self) -> bytes:
        return self._outgoing.read()

    def version(self) -> str | None:
        return self._ssl.version()
