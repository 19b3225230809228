"""Panda Chat server: a threaded TCP chat server for a classroom or a LAN party.

Run it:     python3 server3.py            (127.0.0.1 port 12345; --help for options)
Join it:    nc 127.0.0.1 12345            or   python3 client3.py
Stop it:    Ctrl+C or SIGTERM: everybody is told, every socket closed, exit code 0.

How it is built: one thread per connection reads that connection's lines and acts
on them. Writing never blocks anybody:

- A Client owns its socket. Client.send() tries a non-blocking send at once, from
  whichever thread calls it. What the kernel does not take waits in that client's
  own backlog (bounded by SEND_BACKLOG_LIMIT), and the one Flusher thread writes it
  out when the socket can take more. The client's send lock keeps its order.
  A client whose backlog overflows has stopped reading: it is dropped.
- The Grove is the locked dict of names to clients. The lock is held only to read
  or change the dict; broadcasting walks a snapshot, outside the lock.
- One broadcast is sent at a time (the Broadcaster). A reader that finds nobody
  broadcasting sends its lines itself, at once; while somebody is, lines queue,
  and the broadcaster thread sends what queued as one write per receiver (up to
  64 KiB at a time). So under load the system calls per delivered line fall,
  and threads do not fight over the GIL to send. The queue is bounded: past it,
  readers wait, which slows the senders (TCP pushes back), never the receivers.
  Answers to commands join the same queue: none overtakes what came before it.
- Every input costs (FloodControl): each line, before and after the name, takes
  a line token, and every byte read or sent in reply takes byte tokens. A reader
  with no tokens left stops reading; TCP then slows that one sender down.
- A connection ends almost without work in its own thread: it hands itself to
  the Reaper, which removes, logs and announces ended connections in batches,
  so that thousands ending at once do not queue for the same locks.
- With --transcript, everything broadcast is also handed to the Transcript, whose
  one writer thread appends it to the file: a slow or full disk never delays chat.

Runs on Windows, macOS and Linux with the standard library alone. Sockets are
non-blocking; each reader waits on its one socket (poll() where the platform has
it, else select() on that socket alone), so no call ever passes more than one
client socket to select(), which takes at most 512 on Windows.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import heapq
import hmac
import io
import ipaddress
import logging
import math
import os
import queue
import re
import secrets
import select
import selectors
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, ModuleType, TracebackType

from ascii_art import banner_lines, goodbye_lines
from names import MAX_NAME_CHARS, lookalike_key, lookalike_problem, name_key, name_problem
from panda_facts import random_fact
from protocol import (
    ENCODING,
    HISTORY_CLOCK,
    LINE_TOO_LONG,
    MAX_LINE_BYTES,
    LineBuffer,
    TlsSession,
    chat_line,
    clean_text,
    count_pandas,
    encode_line,
    format_grove_listing,
    format_history,
    format_lost,
    format_mute,
    format_nick,
    format_resume,
    format_slowmode,
    parse_line,
    system_line,
)

log = logging.getLogger("panda-chat")


def _posix_resource() -> ModuleType | None:
    """The resource module (the file-descriptor limit), where there is one: not on Windows."""
    try:
        import resource
    except ImportError:
        return None
    return resource


resource = _posix_resource()

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 12345
# Far more than a classroom needs; the real ceiling is the file-descriptor limit.
DEFAULT_MAX_CLIENTS = 10_000
# Long enough to think of a good panda name, short enough that idle
# half-open connections do not pile up.
DEFAULT_NAME_TIMEOUT_S = 60.0

# A storm of connections must queue, not be refused, while the accept loop
# catches up (the kernel caps this at net.core.somaxconn).
LISTEN_BACKLOG = 4096
# How long a thread may keep the GIL while others wait for it (CPython's
# default is 5 ms). Every waiting thread wakes once per interval on one shared
# condition variable, so with thousands of threads waiting at once (10,000
# connections reset together) the default makes millions of futex wake-ups a
# second: the mass reset's worst probe latency went from 63 s to 8 s at 0.1 s.
# Our threads block in system calls long before that, so nobody waits longer.
GIL_SWITCH_S = 0.1

# Linux 6.17 and later give a process its own futex hash table, sized by the
# number of CPUs (16 buckets on a 2-core machine), not by its threads. Every
# idle reader blocks on a futex (its Sleeper's lock), so with 10,000
# connections every lock release and GIL hand-over walked a bucket of some
# 600 waiters in the kernel: a third of the server's time in a mass reset.
# prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, n) asks for n buckets instead
# (64 bytes each); size_futex_hash() asks for one per possible thread.
PR_FUTEX_HASH = 78
PR_FUTEX_HASH_SET_SLOTS = 1
MIN_FUTEX_SLOTS = 1024
# Threads beside the connections' own: main, Waker, Reaper, Flusher, Broadcaster...
HELPER_THREADS = 16
# Each connection has a thread; its stack is address space, and a handler needs
# little of it. 256 KiB instead of 8 MiB lets thousands of threads fit.
THREAD_STACK_BYTES = 256 * 1024
# Every blocked reader holds a buffer this big; 4 KiB is one full-size line and
# keeps an idle connection cheap.
RECV_BYTES = 4096
# The kernel's receive buffer per connection (set on the listener, so that
# connections start with it). Left to autotune it grows to megabytes, and a
# flooder the server reads slowly (flood control) fills all of it: 2,000 such
# connections took gigabytes of the machine's TCP memory, and under that
# pressure every connection slowed, the others' included. A chat connection
# is read at a few KiB a second; 64 KiB holds a long paste at once.
RECV_BUFFER_BYTES = 64 * 1024
# What a client that is not reading may have waiting for it before it is
# dropped: thousands of chat lines, so a reader who is seconds behind catches
# up, while 1,000 stuck readers still cost at most 256 MiB.
SEND_BACKLOG_LIMIT = 256 * 1024
# Broadcasts waiting for the Broadcaster thread; a reader that finds more than
# this queued waits (and so reads no more from its client) until there is room.
BROADCAST_QUEUE_BYTES = 1024 * 1024
# What the broadcaster sends as one write per listener, at most: enough that the
# system calls per line are few, little enough that a burst of it does not fill
# a healthy but briefly busy client's backlog (SEND_BACKLOG_LIMIT) at once.
BROADCAST_BATCH_BYTES = 64 * 1024
# Accept at most this many connections per wake-up so that a connection storm
# cannot starve a shutdown request.
ACCEPT_BATCH = 64
# After running out of file descriptors, wait this long before accepting again.
ACCEPT_RETRY_S = 0.1
# Descriptors kept for the listener, the flusher, logging and the wake-up pair.
FD_RESERVE = 32
# Joins and leaves are announced to everybody only while the grove has at most
# this many pandas: announcing every join to everybody costs N squared lines.
ANNOUNCE_LIMIT = 200
# Chat lines kept for newcomers (--history); 50 is a screenful of context.
DEFAULT_HISTORY = 50
# Flood control (--rate-limit, --burst): a fast typist sends a line every second
# or two and a paste of a few dozen lines comes at once, so a burst of 50 lines
# and 10 lines a second after it are never hit by a person, while a script
# flooding the grove is slowed to a pace people can read.
DEFAULT_RATE_LIMIT = 10.0
DEFAULT_BURST = 50
# Flood control counts bytes too (read, and sent in reply or grown by escaping),
# so that a long line costs more than a short one. The burst holds one
# accidental paste of 64 KiB (refused as over-long) plus a few full lines, so
# the person's next line goes out at once; 4 KiB a second is a full-length line
# every second, far more than anybody types, while 16 connections from one
# address can push at most 64 KiB a second at each listener between bursts.
FLOOD_BYTE_BURST = 64 * 1024 + 4 * MAX_LINE_BYTES
FLOOD_BYTES_PER_S = 4096
# Before its name a connection has, on top of that, 5 tries at once and one a
# second after: a person needs two or three, while 2,000 scripted connections
# each refused 10 times a second would keep both cores busy refusing.
NAME_TRIES_BURST = 5
NAME_TRIES_PER_S = 1.0
# A reader held back by flood control looks this often whether the server is
# stopping (it is not woken: see ChatServer._pause).
PAUSE_SLICE_S = 1.0
# Connections at once from one address (--max-per-address; IPv6: one /64): a
# pupil needs one or two, a family laptop a few; a script needs thousands.
DEFAULT_MAX_PER_ADDRESS = 16
# Wrong resume codes: a connection that sends this many is closed; an address
# whose connections send this many within RESUME_FAILURE_WINDOW_S is refused
# further attempts until the window has passed. A person mistypes a code once
# or twice; a 22-character random code is never guessed either way.
RESUME_FAILURES_PER_CONNECTION = 5
RESUME_FAILURES_PER_ADDRESS = 20
RESUME_FAILURE_WINDOW_S = 60.0
# TCP keepalive: a laptop that vanished (lid shut, Wi-Fi gone) without a FIN is
# noticed after about 60 + 6 x 10 s instead of the kernel's two hours, so its
# slot and its name come free.
KEEPALIVE_IDLE_S = 60
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_PROBES = 6
# Where a thread can only select() (Windows), a signal handler runs only
# between waits, and the accept loop waits on the listener alone: it wakes
# this often to look whether it was asked to stop (Ctrl+C). A reader wakes
# every READER_WAKE_S to look whether it was hung up. Where poll() exists
# neither needs to.
ACCEPT_WAKE_S = 0.1
READER_WAKE_S = 1.0
# Where the Flusher can only select(), it cannot wait on every full socket at
# once (Windows' select takes 512): it retries the waiting backlogs this often.
FLUSH_RETRY_S = 0.01
# How many reader threads the Waker lets run at once (see Waker): enough that
# a busy grove never waits for a turn, few enough that the GIL's queue stays
# short when thousands of connections need a look at once. Measured with
# 10,000 connections reset at once: 16 digested them in 5.7 s, 8 in 5.0 s,
# 4 in 8.2 s.
RUNNING_READERS = 8
# The Waker sweeps out ended waits' timers once there are more than this many
# of them and they are over half its heap (see Waker._timer_ended_locked).
STALE_TIMERS_KEPT = 256
# The Reaper ends at most this many connections per batch; above
# REAP_LOG_EACH in a batch it logs one summary line instead of one per panda.
REAP_BATCH = 1000
REAP_LOG_EACH = 8
# In a storm (more than one ended at once) the Reaper gathers for this long
# before it finishes a batch: a few summary lines, not thousands of small ones.
REAP_GATHER_S = 0.05
# Log lines that a flood could repeat (refusals, wrong codes) are written at
# most once per this many seconds per kind, with a count of those left out.
LOG_EVERY_S = 1.0
# A grove listing is split into lines of about this many characters.
LISTING_LINE_CHARS = 400
# On shutdown: how long the broadcast being sent may take to finish (one to
# 10,000 pandas takes about 0.15 s), how long the goodbye lines may take to
# flush, and how long hanging up and waiting for the connection threads may
# take, so that the whole stop, process exit included, takes under 2 s.
SHUTDOWN_BROADCAST_S = 0.2
SHUTDOWN_FLUSH_S = 0.7
SHUTDOWN_HANG_UP_S = 0.5

# How long a panda whose connection dropped keeps its name and its missed
# lines (--resume-window): long enough for Wi-Fi to come back.
DEFAULT_RESUME_WINDOW_S = 120.0
# What an away panda keeps of the lines it misses (the newest): about a
# thousand chat lines; and how many pandas may be away at once. Together they
# bound all resume state to 64 MiB, however fast clients join and vanish.
MISSED_LIMIT_BYTES = 64 * 1024
MAX_AWAY = 1000
# Resume codes: 16 random bytes (22 characters) cannot be guessed.
RESUME_CODE_BYTES = 16
# How long a new connection has to finish its TLS handshake.
TLS_HANDSHAKE_TIMEOUT_S = 10.0
# A TLS client sends its hello at once; a connection to the TLS port that says
# nothing for this long is a person with nc waiting for a prompt, and is told.
TLS_SILENCE_S = 3.0
# How long a resume waits for the half-open connection it replaces to end.
RESUME_TAKEOVER_S = 2.0

# Keepers (--keeper-code): the code a teacher types; 12 random characters are
# never guessed, least of all at 5 tries a connection (KEEPER_FAILURES).
KEEPER_CODE_BYTES = 9
KEEPER_FAILURES = 5
# @mute without MINUTES: a lesson's pause; and the longest mute or timed ban.
DEFAULT_MUTE_MINUTES = 10.0
MAX_MINUTES = 7 * 24 * 60.0
# @slowmode SECONDS at most: an hour between lines is already a silence.
MAX_SLOWMODE_S = 3600.0
# @nick at most this often: a name is how others know you.
NICK_EVERY_S = 60.0

# Reasons for leaving that the code tells apart.
SLOW_READER = "could not keep up (stopped reading)"
GOODBYE = "said goodbye"
SHUTTING_DOWN = "server shutting down"
PLAIN_ON_TLS_PORT = ("This grove speaks TLS. Connect with: python3 client3.py --tls, "
                     "or: openssl s_client -quiet -connect HOST:PORT")

# Whether this platform has poll(): Linux, macOS and the BSDs do; Windows has
# only select(), which takes at most 512 sockets per call in CPython's build.
CAN_POLL = hasattr(select, "poll")
# Whether readers can wait through the Waker (epoll: Linux); elsewhere each
# waits on its own socket, which is fine for a classroom's few hundred.
CAN_EPOLL = hasattr(select, "epoll")


class WakeUp:
    """A socket pair that wakes a thread waiting in poll, epoll or select:
    wake() from anywhere (a signal handler too); the waiting thread watches
    reader and calls drain() once it has woken."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self) -> None:
        try:
            self._writer.send(b"\0")
        except OSError:
            pass  # the pair is full, so a wake-up is pending anyway; or closed

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()


def wait_readable(sock: socket.socket, timeout: float | None) -> bool:
    """Wait up to timeout seconds (None: for ever) for sock to have data or EOF.

    One socket per call, so that this is cheap on every platform: poll() where
    it exists (no limit on descriptor numbers, no descriptor of its own, as a
    selectors.DefaultSelector per thread would need), else select() on that
    one socket.
    """
    if timeout is not None:
        timeout = max(0.0, timeout)
    if CAN_POLL:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(None if timeout is None else timeout * 1000))
    readable, _, _ = select.select([sock], [], [], timeout)
    return bool(readable)


def address_key(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """Whose connection this is, for per-address limits: the IPv4 address, or an
    IPv6 address's /64 (one home or one machine gets a whole /64)."""
    host = address[0].split("%")[0]
    if host.startswith("::ffff:") and "." in host:
        return host[len("::ffff:"):]  # an IPv4 client of a dual-stack listener
    if ":" not in host:
        return host
    packed = socket.inet_pton(socket.AF_INET6, host)
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


def enable_keepalive(sock: socket.socket) -> None:
    """Probe an idle peer so that one that vanished without a word is noticed in
    minutes: with whatever knobs this platform has."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "SIO_KEEPALIVE_VALS"):  # Windows
            sock.ioctl(socket.SIO_KEEPALIVE_VALS,  # type: ignore[attr-defined]
                       (1, KEEPALIVE_IDLE_S * 1000, KEEPALIVE_INTERVAL_S * 1000))
            return
        idle = getattr(socket, "TCP_KEEPIDLE", getattr(socket, "TCP_KEEPALIVE", None))
        for option, value in ((idle, KEEPALIVE_IDLE_S),
                              (getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL_S),
                              (getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_PROBES)):
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        pass  # the peer is gone already; its reader will see it


class TokenBucket:
    """rate tokens a second, up to burst saved: spend() may run into debt and
    says how long until the debt is paid (0 when there is none).

    throttled is True from the first wait until the bucket is full again, so
    that a flooder hears "slow down" once per episode.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self.throttled = False

    def spend(self, amount: float) -> float:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= self.burst:
            self.throttled = False
        self._tokens -= amount
        return max(0.0, -self._tokens) / self.rate


class FloodControl:
    """What one connection may make the server do: lines, and bytes.

    line() is called for every line, whatever it is; read(n) for the bytes of
    every recv(); sent(n) for what the server sends because of a line (a reply,
    or the growth of its text by escaping). Each returns how long the reader
    must now wait before it reads or acts on anything more.
    """

    def __init__(self, rate: float, burst: int, byte_rate: float = FLOOD_BYTES_PER_S,
                 byte_burst: int = FLOOD_BYTE_BURST) -> None:
        self.lines = TokenBucket(rate, burst)
        self.bytes = TokenBucket(byte_rate, byte_burst)
        self.name_tries = TokenBucket(NAME_TRIES_PER_S, NAME_TRIES_BURST)
        self.new_episode = False

    def line(self, naming: bool = False) -> float:
        """A line (naming: one before the name, which name_tries counts too).
        new_episode is then True when this wait starts a flood episode, so
        that the flooder hears "slow down" once per episode."""
        wait, self.new_episode = 0.0, False
        for bucket in (self.lines, self.name_tries) if naming else (self.lines,):
            if (bucket_wait := bucket.spend(1)) > 0:
                wait = max(wait, bucket_wait)
                self.new_episode |= not bucket.throttled
                bucket.throttled = True
        return wait

    def read(self, count: int) -> float:
        return self.bytes.spend(count)

    def sent(self, count: int) -> float:
        return self.bytes.spend(count)

    def read_wait(self) -> float:
        """How long until this connection may read again."""
        return self.bytes.spend(0)


class RateLimitedLog:
    """Log lines that a flood could repeat: at most one per LOG_EVERY_S per
    kind, the next one saying how many were left out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def info(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -LOG_EVERY_S) < LOG_EVERY_S:
                self._skipped[kind] = self._skipped.get(kind, 0) + 1
                return
            self._last[kind] = now
            skipped = self._skipped.pop(kind, 0)
        if skipped:
            message += f" (and {skipped} more like it since the last such line)"
        log.info(message, *args)


class Client:
    """One connection, and the panda on it. It owns its socket.

    Its own thread reads with read_lines(); anybody writes with send(), which
    never blocks and keeps order; the Flusher calls flush() when the socket can
    take more of the backlog. hang_up() wakes the reader so that its thread can
    finish; the Reaper then calls close() and sets ended.

    A panda whose connection dropped can stay in the grove "away" (go_away()):
    what is sent to it then is kept, bounded, as missed lines, until a new
    connection resumes it (adopt()) or it expires.
    """

    def __init__(self, sock: socket.socket, address: tuple[str, int], flusher: Flusher,
                 tls: TlsSession | None = None, waker: Waker | None = None) -> None:
        self.sock = sock
        self.fileno = sock.fileno()
        self.address = address
        self.address_key = address_key(address)
        self.tls = tls
        self.flood: FloodControl | None = None  # None: flood control is off
        self.resume_failures = 0
        self.ended = threading.Event()  # set once the Reaper has finished this connection
        self.waker = waker  # None: this connection's thread waits on its own socket
        self.sleeper = Sleeper()
        self.name = ""
        self.thread: threading.Thread | None = None
        self.drop_reason = ""  # why the server hung up, when it did
        self.resume_code = ""
        self.successor: Client | None = None  # the panda this connection resumed
        self._framer = LineBuffer()
        self._heard = False  # whether anything was read yet
        self._early_lines: list[str | object] = []  # read during the TLS handshake
        self._flusher = flusher
        self._lock = threading.Lock()  # guards the socket's writes, the backlogs, the states
        self._backlog: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._flusher_knows = False  # whether this client was ever handed to the Flusher
        self._closed = False
        self._ready = tls is None  # whether lines can be sent: after any TLS handshake
        self._missed: deque[bytes] | None = None  # not None while away
        self._missed_bytes = 0
        self.away_since = 0.0
        self.keeper = False
        self.keeper_failures = 0
        self.muted_until = 0.0  # time.monotonic() when a keeper's mute ends
        self.spoke_at = -math.inf  # the last chat line, for slow mode
        self.nick_changed_at = -math.inf
        self.removed = False  # by a keeper: no resume

    def __repr__(self) -> str:
        return f"{self.name or '(no name)'} from {self.address[0]}:{self.address[1]}"

    @property
    def away(self) -> bool:
        return self._missed is not None

    # --- reading: only the client's own thread -----------------------------

    def read_lines(self, timeout: float | None = None) -> tuple[list[str | object], int] | None:
        """The lines one recv() brings and the bytes it read; None at EOF;
        TimeoutError after timeout."""
        if self._early_lines:
            early, self._early_lines = self._early_lines, []
            return early, 0
        raw = self._receive(timeout)
        if self.tls is not None:
            data = self._decrypt(raw)
        elif raw.startswith(b"\x16\x03") and not self._heard:
            raise WrongProtocol("a TLS client came to the plain-text port")
        else:
            data = raw or None
        self._heard = True
        return None if data is None else (list(self._framer.feed(data)), len(raw))

    def _receive(self, timeout: float | None) -> bytes:
        """One recv() of what has come (b"" at EOF), waiting up to timeout for it.

        It tries first and waits only when nothing is there, so that a busy
        reader makes one system call per read, not two.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError  # a deadline that passed stays passed, even if data comes
            try:
                return self.sock.recv(RECV_BYTES)
            except BlockingIOError:
                pass
            if self.waker is not None:
                if (not self.waker.wait(self.sleeper, self.fileno, left, urgent=bool(self.name))
                        and self.waker.stopping):
                    return b""  # the server stops: end as if the peer had closed
                continue
            if not CAN_POLL:  # select(): wake now and then to see a hang_up()'s shutdown
                left = READER_WAKE_S if left is None else min(left, READER_WAKE_S)
            wait_readable(self.sock, left)

    def sleep(self, delay: float) -> None:
        """This connection's thread waits up to delay seconds (flood control).

        Through the Waker, which wakes it early when the server stops; without
        one, at most PAUSE_SLICE_S, so that the caller looks at the stop flag."""
        if self.waker is not None:
            self.waker.wait(self.sleeper, None, delay)
        else:
            time.sleep(min(delay, PAUSE_SLICE_S))

    def done_waiting(self) -> None:
        """This connection's thread ends: its turn to run goes to the next."""
        if self.waker is not None:
            self.waker.done(self.sleeper, self.fileno)

    def _decrypt(self, raw: bytes) -> bytes | None:
        assert self.tls is not None
        with self._lock:
            data = self.tls.feed(raw)
            started_backlog = self._queue_locked(self.tls.outgoing())  # e.g. a key update
        if started_backlog:
            self._flusher.watch(self)
        return data

    def tls_handshake(self, timeout: float) -> None:
        """Complete the TLS handshake within timeout; TimeoutError, ssl.SSLError or
        WrongProtocol when it cannot be done."""
        assert self.tls is not None
        deadline = time.monotonic() + timeout
        first = True
        while True:
            with self._lock:
                done = self.tls.handshake()
                started_backlog = self._queue_locked(self.tls.outgoing())
                early = self.tls.read() if done else b""
                self._ready = done
            if started_backlog:
                self._flusher.watch(self)
            if done:
                # The client's first lines may have come with its last handshake bytes.
                self._early_lines = list(self._framer.feed(early or b""))
                return
            wait = deadline - time.monotonic()
            if first and not wait_readable(self.sock, min(wait, TLS_SILENCE_S)):
                if wait > TLS_SILENCE_S:  # a TLS client speaks first: this one is a person
                    self.send_plain(encode_line(system_line("error", PLAIN_ON_TLS_PORT)))
                    raise WrongProtocol("a plain-text client came to the TLS port")
                raise TimeoutError
            raw = self._receive(deadline - time.monotonic())
            if first and raw[:1] not in (b"\x16", b""):
                self.send_plain(encode_line(system_line("error", PLAIN_ON_TLS_PORT)))
                raise WrongProtocol("a plain-text client came to the TLS port")
            first = False
            if not raw:
                raise ConnectionResetError(0, "closed during the TLS handshake")
            with self._lock:
                self.tls.receive(raw)

    def send_plain(self, data: bytes) -> None:
        """Send bytes around TLS: only to tell a plain client it came to a TLS port."""
        with self._lock:
            started_backlog = self._queue_locked(data)
        if started_backlog:
            self._flusher.watch(self)

    def charge(self, count: int) -> None:
        """Count count bytes sent because of this client against its flood control."""
        if self.flood is not None:
            self.flood.sent(count)

    # --- writing: anybody, through here only -------------------------------

    def send(self, data: bytes) -> None:
        """Send data now if the socket takes it, else queue it in order."""
        with self._lock:
            if self._missed is not None:
                self._keep_missed_locked(data)
                return
            if self._closed or not self._ready:
                return
            if self.tls is not None:
                try:
                    data = self.tls.encrypt(data)
                except ssl.SSLError:  # the peer closed TLS; its reader has seen it
                    self._hang_up_locked("TLS closed")
                    return
            started_backlog = self._queue_locked(data)
        if started_backlog:
            self._flusher.watch(self)

    def send_last(self, data: bytes) -> None:
        """Send data as the last thing this connection gets, ahead of queued
        lines (the server is stopping, they would be lost anyway); only the
        line being sent is finished first, so that no line arrives cut."""
        with self._lock:
            if self._backlog and self.tls is None:
                in_flight = self._backlog[0]
                in_flight = in_flight[:in_flight.find(b"\n") + 1]
                self._backlog.clear()
                self._backlog.append(in_flight)
                self._backlog_bytes = len(in_flight)
        self.send(data)

    def _queue_locked(self, data: bytes) -> bool:
        """Send what the socket takes now and keep the rest; True when that
        starts a backlog, which the Flusher must be told of."""
        if not data or self._closed:
            return False
        if not self._backlog:
            sent = self._send_now(data)
            if sent == len(data) or self._closed:
                return False
            data = data[sent:]
        if self._backlog_bytes + len(data) > SEND_BACKLOG_LIMIT:
            self._hang_up_locked(SLOW_READER)
            return False
        self._backlog.append(data)
        self._backlog_bytes += len(data)
        started = len(self._backlog) == 1
        self._flusher_knows |= started
        return started

    def flush(self) -> bool:
        """Write out what the backlog holds; True when nothing is left to wait for."""
        with self._lock:
            if self._backlog and not self._closed:
                data = b"".join(self._backlog)
                self._backlog.clear()
                sent = self._send_now(data)
                if sent < len(data) and not self._closed:
                    self._backlog.append(data[sent:])
                self._backlog_bytes = len(data) - sent
            return self._closed or not self._backlog

    def _send_now(self, data: bytes) -> int:
        """One send on the non-blocking socket; the caller holds the lock."""
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:  # the peer is gone; its reader will see EOF
            self._hang_up_locked(f"connection lost: {exc.strerror or exc}")
            return 0

    # --- away, and back -------------------------------------------------------

    def go_away(self) -> None:
        """The connection is gone (closed) but the panda stays: keep what it misses."""
        with self._lock:
            self._missed = deque()
            self._missed_bytes = 0
            self.away_since = time.monotonic()

    def _keep_missed_locked(self, data: bytes) -> None:
        """Keep data as missed, dropping the oldest whole lines past the limit."""
        assert self._missed is not None
        self._missed.append(data)
        self._missed_bytes += len(data)
        while (excess := self._missed_bytes - MISSED_LIMIT_BYTES) > 0:
            oldest = self._missed[0]
            cut = len(oldest) if excess >= len(oldest) else oldest.find(b"\n", excess - 1) + 1
            if cut in (0, len(oldest)):
                self._missed.popleft()
                cut = len(oldest)
            else:
                self._missed[0] = oldest[cut:]
            self._missed_bytes -= cut

    def adopt(self, new: Client, greeting: bytes) -> None:
        """Carry on over new's connection: greeting, the missed lines marked as
        missed, then live lines; nothing can slip in between."""
        with self._lock, new._lock:
            missed = b"".join(self._missed or ()).decode(ENCODING, errors="replace")
            self._missed = None
            self.sock, self.fileno, self.address = new.sock, new.fileno, new.address
            self.tls, self._framer, self.thread = new.tls, new._framer, new.thread
            self.address_key, self.flood, self.ended = new.address_key, new.flood, new.ended
            self.waker, self.sleeper = new.waker, new.sleeper  # the thread is new's
            self._closed, self._ready, self.drop_reason = False, True, ""
            self._backlog, new._backlog = new._backlog, deque()
            self._backlog_bytes, new._backlog_bytes = new._backlog_bytes, 0
            self._flusher_knows |= new._flusher_knows
            new._closed = True  # the connection is this client's now
            new.successor = self
            # Split at "\n" alone: str.splitlines() also splits at U+2028 and
            # others, which would let chat text start a line of its own.
            data = greeting + b"".join(encode_line(system_line("missed", line))
                                       for line in missed.split("\n") if line)
            if self.tls is not None:
                data = self.tls.encrypt(data)
            started_backlog = self._queue_locked(data)
        if started_backlog:
            self._flusher.watch(self)

    # --- ending --------------------------------------------------------------

    def hang_up(self, reason: str) -> None:
        """Stop all traffic and wake the reader; its thread then finishes."""
        with self._lock:
            self._hang_up_locked(reason)

    def _hang_up_locked(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.drop_reason = reason
        self._backlog.clear()
        self._backlog_bytes = 0
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already disconnected

    def close(self, abort: bool = False) -> None:
        """Release the socket; abort sends a reset (for a client that stopped reading)."""
        with self._lock:
            self._closed = True
            self._backlog.clear()
            self._backlog_bytes = 0
            sock = self.sock
            flusher_knows = self._flusher_knows
        if flusher_knows:
            self._flusher.watch(self)  # so that it forgets this client
        if abort:
            try:  # a reset frees the kernel's buffers at once
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass  # already disconnected
        sock.close()


# struct linger {on, seconds}: on, 0 s, so that close() resets. Windows' fields
# are two u_shorts, everybody else's two ints.
_LINGER_RESET = struct.pack("HH" if sys.platform == "win32" else "ii", 1, 0)


class WrongProtocol(Exception):
    """A connection spoke something else than expected (plain text to TLS, or TLS to plain)."""


class Scheduler:
    """One thread that runs small jobs at given times (expiring away pandas),
    instead of a timer thread each."""

    def __init__(self) -> None:
        self._jobs: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = 0
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call_at(self, when: float, job: Callable[[], None]) -> None:
        with self._changed:
            self._counter += 1
            heapq.heappush(self._jobs, (when, self._counter, job))
            self._changed.notify()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        # No local names here: a job kept until the next one would keep alive
        # what it refers to (an expired panda), perhaps for hours.
        while not self._stopping:
            self._run_job(self._next_job())

    def _next_job(self) -> Callable[[], None] | None:
        """Wait for the next job's time; None when stopping."""
        with self._changed:
            while not self._stopping and (
                    not self._jobs or self._jobs[0][0] > time.monotonic()):
                timeout = self._jobs[0][0] - time.monotonic() if self._jobs else None
                self._changed.wait(timeout)
            return None if self._stopping else heapq.heappop(self._jobs)[2]

    @staticmethod
    def _run_job(job: Callable[[], None] | None) -> None:
        try:
            if job is not None:
                job()
        except Exception:
            log.exception("scheduled job failed")


class Sleeper:
    """A reader thread's side of the Waker: the lock it blocks on (held while
    it sleeps), and what the Waker knows of it. One per connection thread."""

    __slots__ = ("lock", "queued", "readable", "running", "timed", "token", "urgent",
                 "waiting")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()  # released by the Waker to wake the thread
        self.waiting = False  # blocked on lock now
        self.queued = False  # ready, waiting for a turn to run
        self.readable = False  # woken because the socket has something
        self.token = 0  # which wait a timer belongs to
        self.timed = 0  # the token of its timer in the Waker's heap; 0: none there
        self.running = False  # woken by the Waker and counted as running
        self.urgent = False  # its data goes before others' (a panda in the grove)


# What epoll says of a socket whose peer closed, reset or vanished.
_HUNG_UP = (select.EPOLLHUP | select.EPOLLRDHUP | select.EPOLLERR) if CAN_EPOLL else 0


class Waker:
    """Wakes reader threads, at most RUNNING_READERS at a time (Linux: epoll).

    A reader with nothing to read, or held back by flood control, does not
    wait in poll() on its own socket: when thousands of sockets become
    readable together (10,000 connections reset at once), thousands of threads
    would wake together and queue for the GIL, and CPython's GIL costs more
    the longer its queue. Instead the reader calls wait(sleeper, fd, timeout)
    and blocks on its own lock; the Waker's thread watches every waiting
    socket with one epoll (one-shot) and the timeouts with a heap, and
    releases the ready readers a few at a time: a reader counts as running
    from its wake-up until it waits again or ends (done()). Pandas in the
    grove whose socket has data go first; connections without a name yet,
    those whose peer hung up (epoll says so) and those whose timer ran out
    go with the turns left over. So when ten thousand
    connections reset at once they are worked through eight at a time, and
    a panda chatting meanwhile waits behind at most those eight.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()  # type: ignore[attr-defined,unused-ignore]
        self._lock = threading.Lock()
        self._sleepers: dict[int, Sleeper] = {}  # registered descriptors
        self._ready: deque[Sleeper] = deque()  # data waiting: first
        self._later: deque[Sleeper] = deque()  # hang-ups and timers: after
        self._timers: list[tuple[float, int, int, Sleeper]] = []  # when, counter, token
        self._stale = 0  # timers in the heap whose wait ended before they ran out
        self._counter = 0
        self._running = 0
        self._held = False
        self._stopping = False
        self._wake_up = WakeUp()
        self._epoll.register(self._wake_up.reader.fileno(), select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="waker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait(self, sleeper: Sleeper, fd: int | None, timeout: float | None,
             urgent: bool = False) -> bool:
        """Block until fd is readable (fd None: never) or timeout passes, and
        until it is this reader's turn; True when woken by the socket. Data
        for an urgent reader (a panda in the grove) goes before the rest."""
        with self._lock:
            self._stop_running_locked(sleeper)
            self._timer_ended_locked(sleeper)
            sleeper.urgent = urgent
            sleeper.token += 1
            sleeper.waiting, sleeper.readable = True, False
            if fd is not None:
                self._arm_locked(fd, sleeper)
            if timeout is not None:
                self._counter += 1
                heapq.heappush(self._timers, (time.monotonic() + max(0.0, timeout),
                                              self._counter, sleeper.token, sleeper))
                sleeper.timed = sleeper.token
                earliest = self._timers[0][3] is sleeper
            else:
                earliest = False
            if self._stopping:
                self._make_ready_locked(sleeper)
            self._release_locked()
        if earliest:
            self._wake_up.wake()  # the Waker's thread sleeps until its earliest timer
        sleeper.lock.acquire()
        return sleeper.readable

    @property
    def stopping(self) -> bool:
        return self._stopping

    def waiting(self) -> int:
        """How many readers wait now (for tests and the curious)."""
        with self._lock:
            return sum(sleeper.waiting for sleeper in self._sleepers.values())

    def done(self, sleeper: Sleeper, fd: int | None) -> None:
        """This reader ends (or stops using the Waker): its turn goes to the next."""
        with self._lock:
            self._stop_running_locked(sleeper)
            self._timer_ended_locked(sleeper)
            if fd is not None and self._sleepers.get(fd) is sleeper:
                del self._sleepers[fd]
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass  # closed already
            self._release_locked()

    def hold(self) -> None:
        """No reader gets a new turn until stop(): while the server says
        goodbye to everybody, its main thread has the GIL nearly alone."""
        with self._lock:
            self._held = True

    def stop(self) -> None:
        """The server stops: every waiting reader gets its turn (a few at a
        time, as always), finds its connection hung up, and ends."""
        with self._lock:
            self._held = False
            self._stopping = True
            for sleeper in self._sleepers.values():
                if sleeper.waiting:
                    self._make_ready_locked(sleeper)
            for _, _, _, sleeper in self._timers:
                if sleeper.waiting:
                    self._make_ready_locked(sleeper)
            self._release_locked()
        self._wake_up.wake()

    def _arm_locked(self, fd: int, sleeper: Sleeper) -> None:
        events = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT
        known = fd in self._sleepers
        self._sleepers[fd] = sleeper
        try:
            if known:
                self._epoll.modify(fd, events)
            else:
                self._epoll.register(fd, events)
        except FileNotFoundError:  # closed and reused since: register anew
            self._epoll.register(fd, events)
        except FileExistsError:
            self._epoll.modify(fd, events)

    def _timer_ended_locked(self, sleeper: Sleeper) -> None:
        """sleeper's timer, if it has one in the heap, will never matter: count
        it stale, and when over half the heap is stale, sweep them out. A
        reader woken by its socket leaves its timer behind (the name timeout's
        60 s, for every connection), and a flood of short connections would
        otherwise keep a minute of them, each holding its Sleeper."""
        if not sleeper.timed:
            return
        sleeper.timed = 0
        self._stale += 1
        if self._stale > max(STALE_TIMERS_KEPT, len(self._timers) // 2):
            self._timers = [timer for timer in self._timers if timer[3].timed == timer[2]]
            heapq.heapify(self._timers)
            self._stale = 0

    def _stop_running_locked(self, sleeper: Sleeper) -> None:
        if sleeper.running:
            sleeper.running = False
            self._running -= 1

    def _make_ready_locked(self, sleeper: Sleeper, readable: bool = False,
                           first: bool = False) -> None:
        sleeper.readable |= readable
        if not sleeper.queued:
            sleeper.queued = True
            (self._ready if first else self._later).append(sleeper)

    def _release_locked(self) -> None:
        while (self._ready or self._later) and self._running < RUNNING_READERS and not self._held:
            sleeper = (self._ready or self._later).popleft()
            sleeper.queued = False
            if not sleeper.waiting:
                continue  # woken twice over: it has gone already
            sleeper.waiting, sleeper.running = False, True
            self._running += 1
            sleeper.lock.release()

    def _run(self) -> None:
        # No local names here: a sleeper kept until the next wake-up would
        # keep its client alive.
        while True:
            self._wake_ready(self._poll(self._next_timeout()))

    def _next_timeout(self) -> float:
        with self._lock:
            if not self._timers:
                return -1  # epoll: for ever
            return max(0.0, self._timers[0][0] - time.monotonic())

    def _poll(self, timeout: float) -> list[tuple[int, int]]:
        # Every event at once (Python's default is 1,023 a call).
        return self._epoll.poll(timeout, max(1024, len(self._sleepers) + 1))

    def _wake_ready(self, events: list[tuple[int, int]]) -> None:
        now = time.monotonic()
        with self._lock:
            for fd, event in events:
                if fd == self._wake_up.reader.fileno():
                    self._wake_up.drain()
                elif (sleeper := self._sleepers.get(fd)) is not None and sleeper.waiting:
                    self._make_ready_locked(sleeper, readable=True,
                                            first=sleeper.urgent and not event & _HUNG_UP)
            while self._timers and self._timers[0][0] <= now:
                _, _, token, sleeper = heapq.heappop(self._timers)
                if sleeper.timed != token:
                    self._stale -= 1  # counted stale when its wait ended
                    continue
                sleeper.timed = 0
                if sleeper.waiting:  # its timer is its current wait's (timed == token)
                    self._make_ready_locked(sleeper)
            self._release_locked()


Ended = tuple[Client, str]  # a connection that ended, and why


class Reaper:
    """The one thread that finishes ended connections, in batches.

    A connection's own thread, when its connection ends, only calls put() (a
    C-level queue append, no lock of ours) and returns. The reaper takes what
    ended as one batch (up to REAP_BATCH) and hands it to finish(batch), so
    that when thousands of connections end at once the locks, the log and the
    announcements are worked through by one thread, not fought over by all.
    """

    def __init__(self, finish: Callable[[list[Ended]], None]) -> None:
        self._finish = finish
        self._ended: queue.SimpleQueue[Ended | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, client: Client, reason: str) -> None:
        self._ended.put((client, reason))

    def stop(self, timeout: float) -> None:
        """Finish what ended so far, within timeout, and end the thread."""
        self._ended.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        # No local names here: a batch kept until the next one would keep its
        # clients alive.
        while self._finish_batch(self._next_batch()):
            pass

    def _next_batch(self) -> list[Ended | None]:
        """What ended; when more than one is waiting already (a storm), what
        ends within REAP_GATHER_S more, so that a storm makes few batches."""
        batch = [self._ended.get()]
        deadline = None
        while len(batch) < REAP_BATCH and batch[-1] is not None:
            try:
                if deadline is None:
                    batch.append(self._ended.get_nowait())
                    deadline = time.monotonic() + REAP_GATHER_S
                else:
                    batch.append(self._ended.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _finish_batch(self, batch: list[Ended | None]) -> bool:
        """Finish the batch; False when it ends with the stop mark."""
        ended = [item for item in batch if item is not None]
        try:
            if ended:
                self._finish(ended)
        except Exception:
            log.exception("finishing %d connections failed", len(ended))
        return batch[-1] is not None


class Flusher:
    """The one thread that writes backlogs out.

    watch(client) hands it a client whose socket was full (or that closed);
    it waits until the socket can take more and calls client.flush() until the
    backlog is empty. Only this thread touches its selector.

    Where the platform can wait on many sockets at once (epoll, kqueue, poll),
    it waits on the full ones. Where it has only select() (Windows: at most 512
    sockets a call), it waits on its wake-up socket alone and, while backlogs
    wait, tries each of them again every FLUSH_RETRY_S: a send the kernel
    refuses costs microseconds, and a classroom has few slow readers at a time.
    """

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._retrying: dict[int, Client] | None = (  # select() only: the waiting backlogs
            {} if isinstance(self._selector, selectors.SelectSelector) else None)
        self._wake_up = WakeUp()
        self._selector.register(self._wake_up.reader, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._handed: list[Client] = []
        self._stopping = False
        self.idle = threading.Event()  # set while no backlog is waiting
        self.idle.set()
        self._thread = threading.Thread(target=self._run, name="flusher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, client: Client) -> None:
        with self._lock:
            self._handed.append(client)
            self.idle.clear()
            first = len(self._handed) == 1
        if first:
            self._wake_up.wake()

    def stop(self) -> None:
        self._stopping = True
        self._wake_up.wake()
        if self._thread.is_alive():
            self._thread.join()
        self._selector.close()
        self._wake_up.close()

    def _run(self) -> None:
        while not self._stopping:
            if self._retrying is None:
                self._flush_ready(self._selector.select())
            else:
                self._flush_ready(self._selector.select(FLUSH_RETRY_S if self._retrying else None))
                self._retry_backlogs()
            self._take_handed()

    def _retry_backlogs(self) -> None:
        assert self._retrying is not None
        for fileno, client in list(self._retrying.items()):
            if client.flush():
                del self._retrying[fileno]

    def _flush_ready(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        # A function of its own, so that no client stays referred to by a loop
        # variable while the thread waits.
        for key, _ in ready:
            if key.fileobj is self._wake_up.reader:
                self._wake_up.drain()
            elif key.data.flush():
                self._selector.unregister(key.fd)

    def _take_handed(self) -> None:
        with self._lock:
            handed, self._handed = self._handed, []
        for client in handed:
            if self._retrying is not None:
                if not client.flush():
                    self._retrying[client.fileno] = client
                elif self._retrying.get(client.fileno) is client:
                    del self._retrying[client.fileno]
                continue
            key = self._selector.get_map().get(client.fileno)
            if key is not None and key.data is not client:
                # A closed client's descriptor number was reused: forget the old one.
                self._selector.unregister(client.fileno)
                key = None
            if client.flush():
                if key is not None:
                    self._selector.unregister(client.fileno)
            elif key is None:
                try:
                    self._selector.register(client.fileno, selectors.EVENT_WRITE, client)
                except (OSError, ValueError):
                    pass  # closed meanwhile: nothing to flush
        with self._lock:
            if not self._handed and len(self._selector.get_map()) == 1 and not self._retrying:
                self.idle.set()


Listeners = tuple[Client, ...]
BroadcastItem = tuple[bytes, Client | None, Listeners]  # data, who not to send it to, to whom


class Broadcaster:
    """Sends what is for more than its sender's own ears, one broadcast at a time.

    put() sends at once, from the caller's thread, when nothing else is being
    broadcast (the quiet case: no hand-off, the lowest latency), and then one
    batch of what queued meanwhile. Otherwise it queues, and the broadcaster
    thread sends what queued together: one write per listener for up to
    BROADCAST_BATCH_BYTES of it. So the busier the grove, the fewer the system
    calls per line, and threads never contend to send; Client.send() never
    blocks, so nobody waits on a slow client either way.

    The queue is bounded: a reader that finds it full waits, and so reads no
    more from its client until there is room, which slows the senders, never
    the listeners.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # queued, and nobody sending
        self._room = threading.Condition(self._lock)  # the queue has room
        self._queue: deque[BroadcastItem] = deque()
        self._queued_bytes = 0
        self._sending = False  # somebody is sending a broadcast now
        self._stopping = False
        self._put_count = 0  # items put, and items sent, ever: for sync()
        self._sent_count = 0
        self._thread = threading.Thread(target=self._run, name="broadcaster", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, data: bytes, exclude: Client | None, listeners: Listeners) -> None:
        """Send data to listeners but exclude, after every broadcast put before it."""
        with self._lock:
            while self._queued_bytes >= BROADCAST_QUEUE_BYTES and not self._stopping:
                self._room.wait()
            if self._stopping:
                return
            self._put_count += 1
            if self._sending or self._queue:
                self._queue.append((data, exclude, listeners))
                self._queued_bytes += len(data)
                return
            self._sending = True
        batch: list[BroadcastItem] = []
        try:
            _send_items([(data, exclude, listeners)])
            # One batch of what queued meanwhile goes now, without waking the
            # thread for it (a tenth of a millisecond off the latency tail);
            # any more is left to the thread, so no reader sends for long.
            with self._lock:
                batch = self._take_batch_locked()
            _send_items(batch)
        finally:
            self._done_sending(1 + len(batch))

    def sync(self, timeout: float) -> None:
        """Wait, up to timeout, until everything put before this call was sent."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._put_count
            while (self._sent_count < target and not self._stopping
                   and self._work.wait(max(0.0, deadline - time.monotonic()))):
                pass

    def stop(self, timeout: float) -> None:
        """Drop what is queued, and wait up to timeout for the broadcast being
        sent to finish (the server is stopping: its goodbye is to come last)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stopping = True
            self._queue.clear()
            self._queued_bytes = 0
            self._work.notify_all()
            self._room.notify_all()
            while self._sending and self._work.wait(max(0.0, deadline - time.monotonic())):
                pass
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        # No local names here: a batch held until the next one would keep the
        # clients of its listeners alive, long after they left.
        while not self._stopping:
            self._send_batch(self._next_batch())

    def _next_batch(self) -> list[BroadcastItem]:
        """Wait for queued items and nobody sending; take a batch of them
        (none when stopping)."""
        with self._lock:
            while (self._sending or not self._queue) and not self._stopping:
                self._work.wait()
            if self._stopping:
                return []
            self._sending = True
            return self._take_batch_locked()

    def _take_batch_locked(self) -> list[BroadcastItem]:
        """The oldest queued items, up to BROADCAST_BATCH_BYTES of them."""
        batch, size = [], 0
        while self._queue and size < BROADCAST_BATCH_BYTES:
            batch.append(self._queue.popleft())
            size += len(batch[-1][0])
        if batch:
            self._queued_bytes -= size
            self._room.notify_all()
        return batch

    def _send_batch(self, batch: list[BroadcastItem]) -> None:
        if not batch:  # stopping
            return
        try:
            _send_items(batch)
        except Exception:
            log.exception("broadcast failed")
        finally:
            self._done_sending(len(batch))

    def _done_sending(self, count: int) -> None:
        with self._lock:
            self._sending = False
            self._sent_count += count
            self._work.notify_all()  # the thread, for what queued; stop(); sync()


def _send_items(items: list[BroadcastItem]) -> None:
    """Send items in order; consecutive ones for the same listeners together."""
    start = 0
    for end in range(1, len(items) + 1):
        if end == len(items) or items[end][2] is not items[start][2]:
            _send_run(items[start:end])
            start = end


def _send_run(run: list[BroadcastItem]) -> None:
    """Send items for the same listeners as one write per listener."""
    everything = b"".join(data for data, _, _ in run)
    excluded = {exclude for _, exclude, _ in run if exclude is not None}
    for client in run[0][2]:
        if client not in excluded:
            client.send(everything)
        elif data := b"".join(data for data, exclude, _ in run if exclude is not client):
            client.send(data)


class Grove:
    """The chat room: a locked dict of names to clients.

    add() claims a name, admit() lets the client hear broadcasts (after it was
    welcomed, so that its welcome comes first), remove() takes it out.
    broadcast() sends to everybody admitted, on a snapshot, outside the lock;
    tell() to one panda. Both go through the one Broadcaster, so that each
    panda gets everything in the order the grove said it.
    Everything broadcast is also handed to record(data), when it is set (the
    transcript); nothing told is.
    """

    def __init__(self) -> None:
        self.broadcaster = Broadcaster()
        self._lock = threading.Lock()
        self._members: dict[str, Client] = {}  # by name_key
        self._lookalikes: dict[str, Client] = {}  # the same members, by lookalike_key
        self._away: dict[Client, str] = {}  # members whose connection dropped: address_key
        self._away_per_address: dict[str, int] = {}
        self._listeners: dict[Client, None] = {}  # an ordered set
        self._quiet = False  # whether the last join found over ANNOUNCE_LIMIT here
        # What broadcast() walks: a copy of _listeners, made again only when a
        # broadcast finds it out of date, so that a change costs O(1).
        self._snapshot: Listeners | None = ()
        # Given everything broadcast (the transcript's record, when there is one);
        # never what tell() sends to one panda.
        self.record: Callable[[bytes], None] | None = None

    def add(self, client: Client, name: str) -> str | None:
        """Give client the name; the reason why not when it is taken, or looks
        like the name of a panda here or away."""
        key, looks = name_key(name), lookalike_key(name)
        with self._lock:
            if key in self._members:
                return f"The name {self._members[key].name} is taken; pick another."
            if (other := self._lookalikes.get(looks)) is not None:
                return lookalike_problem(other.name)
            self._members[key] = client
            self._lookalikes[looks] = client
        client.name = name
        return None

    def admit(self, client: Client) -> tuple[int, bool]:
        """Let client hear broadcasts; the number of pandas now here, and
        whether this join is the one that took the grove over ANNOUNCE_LIMIT
        (decided here, under the lock: two joins can see the same count)."""
        with self._lock:
            self._listeners[client] = None
            self._snapshot = None
            count = len(self._members) - len(self._away)
            went_quiet = count > ANNOUNCE_LIMIT and not self._quiet
            self._quiet = count > ANNOUNCE_LIMIT
            return count, went_quiet

    def remove(self, client: Client) -> int | None:
        """Take client out; the number of pandas left, or None if it was not in."""
        with self._lock:
            if self._members.get(name_key(client.name)) is not client:
                return None
            del self._members[name_key(client.name)]
            del self._lookalikes[lookalike_key(client.name)]
            self._forget_away_locked(client)
            self._listeners.pop(client, None)
            self._snapshot = None
            return len(self._members) - len(self._away)

    def rename(self, client: Client, new: str) -> str | None:
        """Call client new; the reason why not when that name is taken or looks
        like another panda's."""
        key, looks = name_key(new), lookalike_key(new)
        with self._lock:
            if self._members.get(key, client) is not client:
                return f"The name {self._members[key].name} is taken; pick another."
            if (other := self._lookalikes.get(looks, client)) is not client:
                return lookalike_problem(other.name)
            del self._members[name_key(client.name)]
            del self._lookalikes[lookalike_key(client.name)]
            self._members[key] = client
            self._lookalikes[looks] = client
            client.name = new
        return None

    def names(self) -> list[str]:
        """The names of the pandas here (not those away)."""
        with self._lock:
            members = list(self._members.values())
        return sorted((c.name for c in members if not c.away), key=str.casefold)

    def keepers(self) -> set[str]:
        """The names of the keepers here and away."""
        with self._lock:
            return {c.name for c in self._members.values() if c.keeper}

    def claim_by_code(self, code: str, new_code: str) -> Client | None:
        """The panda whose resume code this is, with its code replaced by
        new_code (codes are single-use); None when no panda has it."""
        with self._lock:
            for client in self._members.values():  # every code, each in constant time
                if client.resume_code and hmac.compare_digest(client.resume_code, code):
                    client.resume_code = new_code
                    return client
        return None

    def remove_if_away(self, client: Client, code: str, since: float) -> int | None:
        """Remove client if it is still away since then with that code; as remove()."""
        with self._lock:
            if not (client.away and client.resume_code == code and client.away_since == since):
                return None
        return self.remove(client)

    def count(self) -> int:
        """How many pandas are here (not counting those away)."""
        with self._lock:
            return len(self._members) - len(self._away)

    def mark_away(self, client: Client, per_address: int) -> bool:
        """Note that client's connection dropped; False when too many are away
        already, in all (MAX_AWAY) or from client's address (per_address), so
        that pandas from one address cannot take every other panda's room."""
        key = client.address_key
        with self._lock:
            from_there = self._away_per_address.get(key, 0)
            if len(self._away) >= MAX_AWAY or from_there >= per_address:
                return False
            self._away[client] = key
            self._away_per_address[key] = from_there + 1
            return True

    def mark_back(self, client: Client) -> None:
        with self._lock:
            self._forget_away_locked(client)

    def _forget_away_locked(self, client: Client) -> None:
        key = self._away.pop(client, None)
        if key is not None:
            if (left := self._away_per_address[key] - 1) > 0:
                self._away_per_address[key] = left
            else:
                del self._away_per_address[key]

    def find(self, name: str) -> Client | None:
        with self._lock:
            return self._members.get(name_key(name))

    def listeners(self) -> Listeners:
        """Everybody who hears broadcasts now."""
        listeners = self._snapshot
        if listeners is None:
            with self._lock:
                listeners = self._snapshot = tuple(self._listeners)
        return listeners

    def broadcast(self, data: bytes, exclude: Client | None = None,
                  listeners: Listeners | None = None) -> None:
        """Send data to everybody (or to listeners, taken earlier) but exclude,
        in order after every broadcast before it."""
        if self.record is not None:
            self.record(data)
        self.broadcaster.put(data, exclude, self.listeners() if listeners is None else listeners)

    def tell(self, client: Client, data: bytes) -> None:
        """Send data to client alone, in order after every broadcast before it:
        an answer never overtakes what the grove said earlier."""
        self.broadcaster.put(data, None, (client,))


# --- Commands: a word, a small function, and a help line ------------------------
# A command function gets the server, the client and the rest of the line; it
# returns a reason when the client is to leave, else None.

CommandFunction = Callable[["ChatServer", Client, str], "str | None"]


class CommandError(Exception):
    """A command cannot be done as asked: the message is the error its sender gets."""


@dataclass(frozen=True)
class Command:
    run: CommandFunction
    help: str
    keepers_only: bool = False  # listed to keepers alone, refused to the others


def _reply(server: ChatServer, client: Client, kind: str, text: str) -> None:
    """An answer to a panda in the grove: in order after what it was sent
    before, and paid for by it (flood control counts what it makes us send)."""
    server.answer(client, encode_line(system_line(kind, text)))


def _tell_now(client: Client, kind: str, text: str) -> None:
    """Straight to the socket: for a connection not in the grove (yet), or one
    about to close, which a queued line might not reach in time; paid for."""
    _send_paid(client, encode_line(system_line(kind, text)))


def _send_paid(client: Client, data: bytes) -> None:
    """Straight to client's socket, counted against its flood control."""
    client.charge(len(data))
    client.send(data)


def _announce_all(server: ChatServer, kind: str, text: str,
                  exclude: Client | None = None) -> None:
    """A line for the whole grove (and its transcript), whatever its size."""
    server.grove.broadcast(encode_line(system_line(kind, text)), exclude=exclude)


def do_bamboo(server: ChatServer, client: Client, arg: str) -> None:
    _reply(server, client, "fact", random_fact())


def do_grove(server: ChatServer, client: Client, arg: str) -> None:
    server.answer(client, server.grove_listing())


def do_help(server: ChatServer, client: Client, arg: str) -> None:
    server.answer(client, b"".join(
        encode_line(system_line("help", f"{word} - {command.help}"))
        for word, command in COMMANDS.items() if client.keeper or not command.keepers_only))


def do_whisper(server: ChatServer, client: Client, arg: str) -> None:
    name, _, text = arg.partition(" ")
    text = clean_text(text.strip())
    if not name or not text:
        raise CommandError("To whisper, type: @whisper NAME your message")
    target = server.grove.find(name)
    if target is client:
        raise CommandError("Whispering to yourself? Your secret is safe with you.")
    if target is None:
        raise CommandError(_no_such_panda(name))
    if not target.keeper and (refusal := server.speech_refusal(client, chat=False)):
        raise CommandError(refusal)  # keepers can always be asked for help
    # In order after what client said before, like everything told.
    whisper = encode_line(system_line("whisper", chat_line(client.name, text)))
    client.charge(len(whisper))  # the whisperer pays for what it makes us send
    server.grove.tell(target, whisper)
    _reply(server, client, "whispered", f"to {chat_line(target.name, text)}")


def do_me(server: ChatServer, client: Client, arg: str) -> None:
    if not (text := clean_text(arg.strip())):
        raise CommandError("To act, type: @me waves (everybody sees: * YOU waves)")
    if refusal := server.speech_refusal(client, chat=True):
        raise CommandError(refusal)
    _announce_all(server, "action", f"{client.name} {text}", exclude=client)


def do_nick(server: ChatServer, client: Client, arg: str) -> None:
    new = unicodedata.normalize("NFC", arg.strip())
    wait = client.nick_changed_at + NICK_EVERY_S - time.monotonic()
    if not new:
        raise CommandError("To change your name, type: @nick NEWNAME")
    if wait > 0:
        raise CommandError(f"You can change your name once a minute; "
                           f"wait {math.ceil(wait)} more seconds.")
    old = client.name
    if problem := name_problem(new) or server.grove.rename(client, new):
        raise CommandError(problem)
    client.nick_changed_at = time.monotonic()
    log.info("nick %s is now %s", old, new)
    _announce_all(server, "nick", format_nick(old, new))


def do_leaves(server: ChatServer, client: Client, arg: str) -> str:
    # Straight to the socket: the connection closes next.
    client.send(b"".join(encode_line(system_line("art", line)) for line in goodbye_lines()))
    _tell_now(client, "bye", f"Goodbye, {client.name}! Come back to the grove soon.")
    return GOODBYE


# --- Keepers: the teacher (or the host) moderates ------------------------------------


def _no_such_panda(name: str) -> str:
    return f"There is no panda called {clean_text(name)} here. @grove lists who is here."


def do_keeper(server: ChatServer, client: Client, arg: str) -> str | None:
    if client.keeper:
        _reply(server, client, "error", "You are a keeper already.")
    elif not server.keeper_code:
        _reply(server, client, "error", "This grove has no keepers.")
    elif hmac.compare_digest(arg.encode(ENCODING, errors="replace"),
                             server.keeper_code.encode(ENCODING)):
        client.keeper = True
        log.info("keeper %s is now a keeper", client.name)
        _reply(server, client, "keeper", "You are a keeper of this grove. "
                                         "@help lists what keepers can do.")
        _announce_all(server, "keeper", f"{client.name} is now a keeper.", exclude=client)
    else:
        client.keeper_failures += 1
        server.flood_log.info("keeper code", "wrong keeper code from %r", client)
        if client.keeper_failures >= KEEPER_FAILURES:
            _tell_now(client, "bye", "Too many wrong keeper codes; goodbye.")
            return "too many wrong keeper codes"
        _reply(server, client, "error", "That is not the keeper code.")
    return None


def _target(server: ChatServer, keeper: Client, arg: str, verb: str) -> tuple[Client, str]:
    """The panda a keeper command names (first word of arg), and the rest of arg."""
    name, _, rest = arg.partition(" ")
    if not name:
        raise CommandError(f"Type: @{verb} NAME")
    target = server.grove.find(name)
    if target is None:
        raise CommandError(_no_such_panda(name))
    if target is keeper:
        raise CommandError(f"You cannot {verb} yourself.")
    if target.keeper:
        raise CommandError(f"Keepers cannot {verb} keepers.")
    return target, rest.strip()


def _number(text: str, low: float, high: float, what: str) -> float:
    """text as a number from low to high (above 0 unless low is 0); else a CommandError."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (low <= number <= high and (number > 0 or low == 0)):
        raise CommandError(f"{clean_text(text)} is not {what} (from {low:g} to {high:g}).")
    return number


def _minutes(text: str) -> float | None:
    """MINUTES as given (a fraction is fine); None when none was given."""
    return _number(text, 0.01, MAX_MINUTES, "a number of minutes") if text else None


def _for_minutes(minutes: float | None) -> str:
    return "until the server stops" if minutes is None else f"for {minutes:g} minutes"


def do_kick(server: ChatServer, keeper: Client, arg: str) -> None:
    target, reason = _target(server, keeper, arg, "kick")
    server.remove_panda(target, keeper, clean_text(reason))


def do_ban(server: ChatServer, keeper: Client, arg: str) -> None:
    target, text = _target(server, keeper, arg, "ban")
    minutes = _minutes(text)
    server.moderation.ban(target.address_key, target.name, keeper.name, minutes)
    log.info("ban %s (%s) %s by %s", target.name, target.address_key, _for_minutes(minutes),
             keeper.name)
    server.remove_panda(target, keeper, f"banned {_for_minutes(minutes)}")


def do_unban(server: ChatServer, keeper: Client, arg: str) -> None:
    address = arg.strip()
    if not address:
        raise CommandError("Type: @unban ADDRESS (@bans lists them)")
    if not server.moderation.unban(address):
        raise CommandError(f"{clean_text(address)} is not banned. @bans lists the bans.")
    log.info("unban %s by %s", address, keeper.name)
    _reply(server, keeper, "ban", f"The ban on {address} is lifted.")


def do_bans(server: ChatServer, keeper: Client, arg: str) -> None:
    bans = server.moderation.bans()
    lines = [f"{address} {ban.name} ({ban.left()}), by {ban.by}" for address, ban in bans]
    server.answer(keeper, b"".join(encode_line(system_line("ban", line))
                                   for line in lines or ["No bans."]))


def do_mute(server: ChatServer, keeper: Client, arg: str) -> None:
    target, text = _target(server, keeper, arg, "mute")
    minutes = _minutes(text) or DEFAULT_MUTE_MINUTES
    until = time.monotonic() + minutes * 60
    target.muted_until = until
    log.info("mute %s for %g minutes by %s", target.name, minutes, keeper.name)
    _announce_all(server, "mute", format_mute(target.name, keeper.name, minutes))
    server.schedule_unmute(target, until)


def do_unmute(server: ChatServer, keeper: Client, arg: str) -> None:
    target, _ = _target(server, keeper, arg, "unmute")
    if not target.muted_until:
        raise CommandError(f"{target.name} is not muted.")
    target.muted_until = 0.0
    log.info("unmute %s by %s", target.name, keeper.name)
    _announce_all(server, "unmute", f"{target.name} can talk again.")


def _grove_switch(attribute: str, on: bool, kind: str, text: str) -> CommandFunction:
    """A keeper command that turns one of the grove's rules on or off, once."""
    def run(server: ChatServer, keeper: Client, arg: str) -> None:
        if getattr(server.moderation, attribute) == on:
            raise CommandError(f"The grove is {'' if on else 'not '}{attribute} already.")
        setattr(server.moderation, attribute, on)
        log.info("%s by %s", kind, keeper.name)
        _announce_all(server, kind, text.format(keeper=keeper.name))
    return run


def do_slowmode(server: ChatServer, keeper: Client, arg: str) -> None:
    if not arg:
        raise CommandError(f"Type: @slowmode SECONDS (up to {MAX_SLOWMODE_S:g}; 0 ends it)")
    seconds = _number(arg, 0, MAX_SLOWMODE_S, "a number of seconds")
    server.moderation.slowmode_s = seconds
    log.info("slowmode %g s by %s", seconds, keeper.name)
    _announce_all(server, "slowmode", format_slowmode(seconds, keeper.name))


def do_announce(server: ChatServer, keeper: Client, arg: str) -> None:
    if not (text := clean_text(arg.strip())):
        raise CommandError("Type: @announce TEXT")
    log.info("announce by %s", keeper.name)
    _announce_all(server, "announce", chat_line(keeper.name, text))


COMMANDS: dict[str, Command] = {
    "@bamboo": Command(do_bamboo, "a random panda fact, to you alone"),
    "@grove": Command(do_grove, "who is in the grove (@ marks keepers)"),
    "@help": Command(do_help, "this list of commands"),
    "@leaves": Command(do_leaves, "say goodbye and leave the grove"),
    "@me": Command(do_me, "@me text: an action, shown as * YOU text"),
    "@nick": Command(do_nick, "@nick NEWNAME: change your name (once a minute)"),
    "@whisper": Command(do_whisper, "@whisper NAME text: a private message to NAME alone"),
    "@keeper": Command(do_keeper, "@keeper CODE: become a keeper (the code is in the "
                                  "server's terminal)"),
    "@kick": Command(do_kick, "@kick NAME [reason]: remove NAME from the grove",
                     keepers_only=True),
    "@ban": Command(do_ban, "@ban NAME [MINUTES]: remove NAME and keep their address out "
                            "(default: until the server stops)", keepers_only=True),
    "@unban": Command(do_unban, "@unban ADDRESS: lift a ban", keepers_only=True),
    "@bans": Command(do_bans, "the bans: address, name, time left", keepers_only=True),
    "@mute": Command(do_mute, f"@mute NAME [MINUTES]: NAME cannot talk for a while "
                              f"(default {DEFAULT_MUTE_MINUTES:g})", keepers_only=True),
    "@unmute": Command(do_unmute, "@unmute NAME: end a mute", keepers_only=True),
    "@slowmode": Command(do_slowmode, "@slowmode SECONDS: one chat line per SECONDS each "
                                      "(0 ends it)", keepers_only=True),
    "@announce": Command(do_announce, "@announce TEXT: a line everybody sees stand out",
                         keepers_only=True),
}


# The keepers' switches: word, the rule it sets (and to what), the line the
# grove gets, and the help line.
_SWITCHES = [
    ("@lock", "locked", True, "{keeper} locked the grove: no newcomers for now.",
     "no newcomers for now (resumes still come back)"),
    ("@unlock", "locked", False, "{keeper} unlocked the grove: newcomers are welcome.",
     "newcomers welcome again"),
    ("@hush", "hushed", True, "Only keepers can talk for now ({keeper} hushed the grove).",
     "announcement mode: only keepers can talk"),
    ("@unhush", "hushed", False, "Everybody can talk again ({keeper} ended the hush).",
     "everybody can talk again"),
]
COMMANDS.update({word: Command(_grove_switch(rule, on, word[1:], text), help, keepers_only=True)
                 for word, rule, on, text, help in _SWITCHES})


def unknown_command_reply(word: str, keeper: bool = False) -> str:
    words = [word for word, command in COMMANDS.items() if keeper or not command.keepers_only]
    close = difflib.get_close_matches(word.lower(), words, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]}?" if close else ""
    return f"Unknown command {clean_text(word)}.{hint} Commands: {' '.join(words)}"


@dataclass
class Ban:
    name: str  # the panda banned, as it was called
    by: str  # the keeper who banned it
    until: float | None  # time.monotonic() when it ends; None: when the server stops

    def left(self) -> str:
        if self.until is None:
            return "until the server stops"
        return f"{max(0.0, self.until - time.monotonic()) / 60:.1f} minutes left"


class Moderation:
    """The grove's rules that keepers set: locked, hushed, slow mode, and bans.

    The flags are read by every reader and set by one keeper command at a
    time; a bool or float is read whole under the GIL, so they need no lock.
    The bans (by address_key) have one.
    """

    def __init__(self) -> None:
        self.locked = False
        self.hushed = False
        self.slowmode_s = 0.0
        self._bans: dict[str, Ban] = {}
        self._lock = threading.Lock()

    def ban(self, address: str, name: str, by: str, minutes: float | None) -> None:
        until = None if minutes is None else time.monotonic() + minutes * 60
        with self._lock:
            self._bans[address] = Ban(name, by, until)

    def unban(self, address: str) -> bool:
        with self._lock:
            return self._bans.pop(address, None) is not None

    def ban_on(self, address: str) -> Ban | None:
        """The ban on address now, if there is one (ended bans are forgotten)."""
        with self._lock:
            ban = self._bans.get(address)
            if ban is not None and ban.until is not None and ban.until <= time.monotonic():
                del self._bans[address]
                return None
            return ban

    def bans(self) -> list[tuple[str, Ban]]:
        with self._lock:
            addresses = list(self._bans)
        return [(address, ban) for address in addresses if (ban := self.ban_on(address))]


# --- The server -----------------------------------------------------------------


class ServerStopping(Exception):
    """Raised in a connection's thread that was waiting when the server began to stop."""


# --- The transcript -------------------------------------------------------------

# --transcript-max-mb: 100 MB holds about a million chat lines, years of lessons.
DEFAULT_TRANSCRIPT_MAX_MB = 100.0
TRANSCRIPT_BYTES_PER_MB = 1_000_000
# The writer writes what gathered this often while lines come: together, they
# are one write, and every line is in the file within a second.
TRANSCRIPT_WRITE_EVERY_S = 0.5
# Lines waiting for the writer: a disk that stalls for minutes costs at most this
# much memory (tens of thousands of lines); past it the oldest are dropped.
TRANSCRIPT_QUEUE_BYTES = 4 * 1024 * 1024
# How long close() waits for the last lines to be written: a healthy disk takes
# milliseconds, and the whole stop must stay under 2 s.
TRANSCRIPT_STOP_S = 0.3
# History is read back from the end of a transcript in blocks this big, and at
# most this much in all: 50 chat lines among thousands of joins, never 100 MB.
READ_BACK_BLOCK_BYTES = 64 * 1024
READ_BACK_LIMIT_BYTES = 4 * 1024 * 1024
TRANSCRIPT_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# A transcript line: its local date and time, and the line as the grove got it.
TRANSCRIPT_LINE = re.compile(r"\d{4}-\d\d-\d\d (?P<hhmm>\d\d:\d\d):\d\d (?P<line>.*)")

Said = tuple[float, bytes]  # when (time.time()), and what the grove was sent


class TranscriptError(Exception):
    """The transcript cannot be read or opened for writing: the server does not start."""


class Transcript:
    """The grove's transcript: every line the whole grove is sent, with its
    local date and time, appended to a plain UTF-8 file by one writer thread.

    record(data), from any thread, hands it what was broadcast (wire lines,
    already escaped): it only appends to a queue, never waits for the disk and
    never raises. start() starts the writer; stop(timeout) has it write what
    is waiting and close the file, waiting at most timeout. chat_history(path,
    count) reads the last chat lines of a transcript back, for the history.

    The writer wakes when lines come and writes what gathered in
    TRANSCRIPT_WRITE_EVERY_S as one unbuffered write, so each line is in the
    file within a second. The file never grows past max_bytes: when the next
    line would take it past, the file is renamed PATH.1 (replacing the PATH.1
    before) and a new PATH begins (a line longer than max_bytes gets a new file
    of its own). A line is never split between the two files.

    The constructor opens the file, or raises TranscriptError. A write that
    fails later (disk full) is logged once; what it wrote is cut off again, so
    the file holds whole lines only, and its lines are lost. Every later write
    tries again, and the first that works logs how many lines were lost. When
    more than TRANSCRIPT_QUEUE_BYTES wait (the disk stalled), the oldest
    waiting lines are dropped, and one log line says how many.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int) -> None:
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._waiting = threading.Condition(self._lock)  # lines came, or stop()
        self._queue: deque[Said] = deque()
        self._queued_bytes = 0
        self._dropped = 0  # lines dropped from the full queue, not yet logged
        self._stopping = False
        self._lost = 0  # lines lost to write errors since the last write that worked
        self._torn = False  # a failed write left a cut line that could not be cut off
        self._file: io.FileIO | None = None
        self._size = 0  # of the file, in bytes
        try:
            self._open_file()
        except OSError as exc:
            raise TranscriptError(f"cannot write the transcript {self.path}: "
                                  f"{exc.strerror or exc}") from exc
        self._thread = threading.Thread(target=self._run, name="transcript", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(self, data: bytes) -> None:
        """Keep data (one or more lines, each ending in "\\n") for the file."""
        with self._lock:
            if self._stopping:
                return
            self._queue.append((time.time(), data))
            self._queued_bytes += len(data)
            while self._queued_bytes > TRANSCRIPT_QUEUE_BYTES:
                _, old = self._queue.popleft()
                self._queued_bytes -= len(old)
                self._dropped += old.count(b"\n")
            if len(self._queue) == 1:  # the writer may be waiting for a first line
                self._waiting.notify()

    def stop(self, timeout: float) -> None:
        """Write what is waiting and close the file, waiting at most timeout."""
        with self._lock:
            self._stopping = True
            self._waiting.notify()
        if self._thread.ident is None:  # never started: nobody else writes
            self._run()
        elif self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("transcript: the last lines are still being written to %s "
                            "(the disk is slow)", self.path)

    @staticmethod
    def chat_history(path: str | os.PathLike[str], count: int) -> list[str]:
        """The last count chat lines of the transcript at path (and of PATH.1
        before it, when PATH has fewer), as history entries "[HH:MM] NAME: text".
        No file is no history; one that cannot be read raises TranscriptError."""
        path = os.fspath(path)
        entries: list[str] = []
        for name in (path, path + ".1"):
            if len(entries) >= count:
                break
            try:
                entries[:0] = _tail_chat(name, count - len(entries))
            except OSError as exc:
                raise TranscriptError(f"cannot read the transcript {name}: "
                                      f"{exc.strerror or exc}") from exc
        return entries

    # --- the writer thread ------------------------------------------------

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._write_batch(batch)
            except Exception:  # a bug: log it, and keep the transcript going
                log.exception("transcript: writing %d lines failed", len(batch))
        if self._file is not None:
            self._file.close()
            self._file = None

    def _next_batch(self) -> list[Said] | None:
        """Wait for lines, and a little more for those that come with them;
        take them all. None once stopping and everything is written."""
        with self._waiting:
            while not self._queue and not self._stopping:
                self._waiting.wait()
            if not self._stopping:
                self._waiting.wait(TRANSCRIPT_WRITE_EVERY_S)  # stop() ends it early
            batch = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            dropped, self._dropped = self._dropped, 0
        if dropped:
            log.warning("transcript: %d lines were dropped: %s did not keep up",
                        dropped, self.path)
        return batch if batch or not self._stopping else None

    def _write_batch(self, batch: list[Said]) -> None:
        lines = _stamped(batch)
        written = 0
        try:
            while written < len(lines):
                written += self._write_some(lines[written:])
        except OSError as exc:
            if not self._lost:
                log.warning("transcript: cannot write %s: %s; the chat goes on, and the "
                            "next lines will be tried again", self.path, exc.strerror or exc)
            self._lost += len(lines) - written
            return
        if self._lost:
            log.warning("transcript: writing to %s again after losing %d line%s",
                        self.path, self._lost, "" if self._lost == 1 else "s")
            self._lost = 0

    def _write_some(self, lines: list[bytes]) -> int:
        """Write the first of lines that fit in the file, after starting a new
        file if none does; how many were written. On an error, what this write
        wrote is cut off again, and OSError is raised."""
        file = self._open_file()
        room, fitting, size = self.max_bytes - self._size, 0, 0
        while fitting < len(lines) and size + len(lines[fitting]) <= room:
            size += len(lines[fitting])
            fitting += 1
        if fitting == 0 and self._size > 0:
            self._rotate()
            return 0
        fitting = max(fitting, 1)  # a line longer than max_bytes, in a file of its own
        data = (b"\n" if self._torn else b"") + b"".join(lines[:fitting])
        done = 0
        try:
            while done < len(data):
                done += file.write(memoryview(data)[done:])
        except OSError:
            try:
                os.ftruncate(file.fileno(), self._size)
            except OSError:  # rare: cutting needs no room; the next write ends the cut line
                self._size += done
                self._torn = done > 0 or self._torn
            raise
        self._size += len(data)
        self._torn = False
        return fitting

    def _open_file(self) -> io.FileIO:
        if self._file is None:
            # Unbuffered: each write reaches the kernel, where grep sees it.
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 (kept open)
            self._size = os.fstat(self._file.fileno()).st_size
        return self._file

    def _rotate(self) -> None:
        """PATH becomes PATH.1, replacing the one before; the next write opens a new PATH."""
        if self._file is not None:
            self._file.close()
            self._file = None
        os.replace(self.path, self.path + ".1")
        log.info("transcript: %s is full (%d bytes); it is %s.1 now, and a new one begins",
                 self.path, self._size, self.path)
        self._size = 0


def _stamped(batch: list[Said]) -> list[bytes]:
    """The transcript lines for what was said: local date and time, a space,
    the line as sent, "\\n"."""
    lines: list[bytes] = []
    second, stamp = -1, b""
    for when, data in batch:
        if int(when) != second:
            second = int(when)
            stamp = time.strftime(TRANSCRIPT_TIME_FORMAT, time.localtime(when)).encode() + b" "
        lines.extend(stamp + line + b"\n" for line in data.split(b"\n") if line)
    return lines


def _tail_chat(path: str, count: int) -> list[str]:
    """The last count chat lines of the file at path as history entries, read
    from its end back (at most READ_BACK_LIMIT_BYTES); none if there is no file."""
    if count <= 0:
        return []
    try:
        file = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return []
    found: list[str] = []  # newest first
    with file:
        end = position = file.seek(0, os.SEEK_END)
        partial = b""  # the start of a line whose beginning is further back
        while position > 0 and len(found) < count and end - position < READ_BACK_LIMIT_BYTES:
            step = min(READ_BACK_BLOCK_BYTES, position)
            position -= step
            file.seek(position)
            lines = (file.read(step) + partial).split(b"\n")
            partial = lines.pop(0) if position > 0 else b""
            for raw in reversed(lines):
                if (entry := _history_entry(raw)) is not None:
                    found.append(entry)
    return found[:count][::-1]


def _history_entry(raw: bytes) -> str | None:
    """A transcript line as a history entry, if it is a chat line."""
    match = TRANSCRIPT_LINE.fullmatch(raw.decode(ENCODING, errors="replace"))
    if match is None or parse_line(match["line"]).kind != "chat":
        return None
    # Escaped when it was sent; escaped again in case the file was edited since.
    return format_history(match["hhmm"], clean_text(match["line"]))


class ChatServer:
    """The Panda Chat server.

    serve_forever() accepts connections until shutdown() is called (from
    another thread or a signal handler); close() then says goodbye to every
    connection, hangs up on each and waits for its thread, for at most
    SHUTDOWN_HANG_UP_S (with thousands of connections, the rest are closed
    by the process's exit, their goodbye already sent). Used as a context
    manager, leaving the block calls close().

    Settings are the keyword arguments: max_clients, max_per_address
    (connections at once from one address, 0 for no limit), name_timeout
    (seconds), history (chat lines replayed to newcomers, 0 for none),
    rate_limit and burst (flood control; a rate_limit of 0 turns it all off;
    byte_rate and byte_burst are its byte budget, for tests),
    resume_window (seconds a dropped panda may come back in; 0 for never),
    tls (an ssl.SSLContext to serve TLS), transcript (a file to append every
    line the grove is sent to, and to read the history back from; see
    Transcript; TranscriptError when it cannot be) and transcript_max_bytes
    (how big it may grow before it becomes FILE.1). Policies that change what others see
    are off by default here, so that a program embedding the server opts in;
    the command line (main) turns flood control, the per-address limit and
    resume on. keeper_code is what "@keeper CODE" must say to make a panda a
    keeper ("" for no keepers). address is the (host, port) actually bound;
    port 0 picks a free port.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 max_clients: int = DEFAULT_MAX_CLIENTS,
                 max_per_address: int = 0,
                 name_timeout: float = DEFAULT_NAME_TIMEOUT_S,
                 history: int = DEFAULT_HISTORY,
                 rate_limit: float = 0.0, burst: int = DEFAULT_BURST,
                 byte_rate: float = FLOOD_BYTES_PER_S, byte_burst: int = FLOOD_BYTE_BURST,
                 resume_window: float = 0.0,
                 keeper_code: str = "",
                 tls: ssl.SSLContext | None = None,
                 transcript: str | os.PathLike[str] | None = None,
                 transcript_max_bytes: int = int(DEFAULT_TRANSCRIPT_MAX_MB
                                                 * TRANSCRIPT_BYTES_PER_MB)) -> None:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        self._listener = socket.create_server((host, port), family=family,
                                              backlog=LISTEN_BACKLOG)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER_BYTES)
        self._listener.setblocking(False)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self.max_clients = min(max_clients, descriptor_capacity())
        self.max_per_address = max_per_address
        self.name_timeout = name_timeout
        self.rate_limit = rate_limit
        self._byte_budget = (byte_rate, byte_burst)
        self.resume_window = resume_window
        self.keeper_code = keeper_code
        self.moderation = Moderation()
        self.tls = tls
        self._scheduler = Scheduler()
        self.burst = burst
        self._history: deque[str] = deque(maxlen=history)
        self._history_lock = threading.Lock()
        # Set once everybody was told of the shutdown: readers stop, and those
        # held back by flood control wake up.
        self._stopping = threading.Event()
        self.grove = Grove()
        self._transcript = (None if transcript is None
                            else self._open_transcript(transcript, transcript_max_bytes))
        self._flusher = Flusher()
        self._waker = Waker() if CAN_EPOLL else None
        self._reaper = Reaper(self._finish_batch)
        self._connections: set[Client] = set()
        self._per_address: dict[str, int] = {}  # connections now, by address_key
        self._connections_lock = threading.Lock()
        self._resume_failures: dict[str, tuple[float, int]] = {}  # address: window start, count
        self._resume_failures_lock = threading.Lock()
        self.flood_log = RateLimitedLog()
        self._wake_up = WakeUp()
        self._stop_requested = False
        self._closing = False
        self._serving = threading.Lock()  # held while serve_forever runs
        self._banner = b"".join(
            [encode_line(system_line("art", line)) for line in banner_lines()]
            + [encode_line(system_line("info", "Welcome to Panda Chat!"))])
        self._prompt = encode_line(system_line(
            "name", f"What is your panda name? (1-{MAX_NAME_CHARS} letters or digits; "
                    "- _ . may join them)"))
        self._quiet_line = encode_line(system_line(
            "quiet", f"Over {count_pandas(ANNOUNCE_LIMIT)} are here, so joins and leaves are "
                     "no longer announced. @grove lists everybody."))

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _open_transcript(self, path: str | os.PathLike[str], max_bytes: int) -> Transcript:
        """The history read back from the transcript at path, which is opened
        for everything broadcast; TranscriptError (and no listener) if it cannot be."""
        try:
            self._history.extend(Transcript.chat_history(path, self._history.maxlen or 0))
            transcript = Transcript(path, max_bytes)
        except TranscriptError:
            self._listener.close()
            raise
        self.grove.record = transcript.record
        return transcript

    # --- accepting ----------------------------------------------------------

    def serve_forever(self) -> None:
        """Accept connections until shutdown() is called."""
        with self._serving:
            self._flusher.start()
            if self._waker is not None:
                self._waker.start()
            self._scheduler.start()
            self._reaper.start()
            self.grove.broadcaster.start()
            if self._transcript is not None:
                self._transcript.start()
            while not self._stop_requested:
                if self._wait_for_connections():
                    self._accept_waiting()

    def _wait_for_connections(self) -> bool:
        """Wait until the listener has connections (True) or shutdown() was called.

        With poll(), shutdown() ends the wait at once through the wake-up
        socket. With select() alone (Windows) the listener is the one socket
        waited on, and the wait ends every ACCEPT_WAKE_S, since a signal
        handler (Ctrl+C) runs there only between waits.
        """
        if not CAN_POLL:
            return wait_readable(self._listener, ACCEPT_WAKE_S)
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._wake_up.reader, select.POLLIN)
        return any(fd == self._listener.fileno() for fd, _ in poller.poll())

    def shutdown(self) -> None:
        """Make serve_forever() return; safe from any thread or a signal handler."""
        self._stop_requested = True
        self._wake_up.wake()

    def _accept_waiting(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of descriptors or memory: let some go first
                log.warning("accept failed: %s; retrying in %.1f s", exc, ACCEPT_RETRY_S)
                time.sleep(ACCEPT_RETRY_S)
                return
            self._start_connection(sock, address)

    def _start_connection(self, sock: socket.socket, address: tuple[str, int]) -> None:
        sock.setblocking(False)  # sends never wait; readers wait in wait_readable()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delays
        enable_keepalive(sock)
        tls = TlsSession(self.tls, server_side=True) if self.tls is not None else None
        client = Client(sock, address, self._flusher, tls, self._waker)
        if self.rate_limit > 0:
            client.flood = FloodControl(self.rate_limit, self.burst, *self._byte_budget)
        refusal = self._register(client)
        if refusal is None:
            client.thread = threading.Thread(target=self._serve_client, args=(client,),
                                             name=f"panda {address[0]}:{address[1]}",
                                             daemon=True)
            try:
                client.thread.start()
                return
            except RuntimeError:  # the system would not give us another thread
                self._unregister([client])
                refusal = (f"The grove is full ({count_pandas(self.max_clients)}). "
                           "Please try again later.")
        self.flood_log.info(f"full {client.address_key}", "refused %s: %s",
                             client.address_key, refusal)
        _tell_now(client, "full", refusal)
        client.close()

    def _register(self, client: Client) -> str | None:
        """Count client's connection in; why not when there is no room for it."""
        key = client.address_key
        with self._connections_lock:
            if len(self._connections) >= self.max_clients:
                return (f"The grove is full ({count_pandas(self.max_clients)}). "
                        "Please try again later.")
            if (ban := self.moderation.ban_on(key)) is not None:
                return (f"You are banned from this grove by {ban.by} ({ban.left()}).")
            if self.max_per_address and self._per_address.get(key, 0) >= self.max_per_address:
                return (f"Too many connections from your address ({self.max_per_address} at "
                        "most per address; everybody behind one router shares one). "
                        "Close one and try again.")
            self._connections.add(client)
            self._per_address[key] = self._per_address.get(key, 0) + 1
        return None

    def _unregister(self, clients: list[Client]) -> None:
        with self._connections_lock:
            for client in clients:
                if client in self._connections:
                    self._connections.discard(client)
                    key = client.address_key
                    if (left := self._per_address[key] - 1) > 0:
                        self._per_address[key] = left
                    else:
                        del self._per_address[key]

    # --- one connection: setup, handle, finish --------------------------------

    def _serve_client(self, client: Client) -> None:
        reason = "connection closed"
        try:
            reason = self._converse(client)
        except ServerStopping:
            reason = SHUTTING_DOWN
        except WrongProtocol as exc:
            log.info("%r: %s", client, exc)
            reason = str(exc)
        except ssl.SSLError as exc:
            log.info("%r: TLS failed: %s", client, exc.reason or exc)
            reason = "TLS failed"
        except OSError as exc:
            reason = f"connection lost: {exc.strerror or exc}"
        except Exception:
            log.exception("error serving %r", client)
            reason = "server error"
        finally:
            member = client.successor or client  # after a resume, the panda it resumed
            member.done_waiting()
            # Why the server hung up explains the end, unless the panda said goodbye
            # (and closed before its goodbye art had been sent).
            self._reaper.put(member, reason if reason == GOODBYE
                             else member.drop_reason or reason)

    def _converse(self, client: Client) -> str:
        if client.tls is not None:
            try:
                client.tls_handshake(TLS_HANDSHAKE_TIMEOUT_S)
            except TimeoutError:
                log.info("%r: no TLS handshake within %g s", client, TLS_HANDSHAKE_TIMEOUT_S)
                return "TLS handshake timed out"
        client.send(self._banner + self._prompt)
        named = self._ask_name(client)
        if isinstance(named, str):
            return named
        member, lines = named
        if member is client:
            self._welcome(client)
        return self._chat(member, lines)

    def _read(self, client: Client, deadline: float | None = None,
              ) -> list[str | object] | None:
        """The next lines from client, None at EOF; TimeoutError past deadline.

        Read only what flood control allows: a reader over its byte budget
        waits first, and meanwhile TCP pushes back on that client alone.
        """
        if client.flood is not None:
            self._pause(client, client.flood.read_wait())
        got = client.read_lines(None if deadline is None else deadline - time.monotonic())
        if got is None:
            return None
        lines, count = got
        if client.flood is not None:
            client.flood.read(count)
        return lines

    def _pause(self, client: Client, delay: float) -> None:
        """client's thread waits delay seconds, unless the server stops
        meanwhile (ServerStopping).

        Through the Waker where there is one, else asleep, looking at the stop
        flag every PAUSE_SLICE_S: not on one shared Event, whose Condition
        made thousands of paused flooders queue on its lock, and a stop need
        not wake them all at once.
        """
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            if self._stopping.is_set():
                raise ServerStopping
            client.sleep(left)
        if self._stopping.is_set():
            raise ServerStopping

    def _pay_for_line(self, client: Client, chat: list[str] | None = None,
                      naming: bool = False) -> None:
        """Take one line from client's flood control (naming: a line before
        the name), waiting until it allows one more; what chat was gathered
        before the wait goes out first."""
        if client.flood is None or (delay := client.flood.line(naming)) <= 0:
            return
        if chat:
            self._relay(client, chat)
            chat.clear()
        if client.flood.new_episode:
            self.flood_log.info("slow", "slow %r: over its flood budget", client)
            if naming:
                _tell_now(client, "slow", f"Slow down! At most {NAME_TRIES_PER_S:g} name a "
                                          "second; your lines are queued.")
            else:
                _reply(self, client, "slow", f"Slow down! Over {client.flood.lines.rate:g} "
                       "lines a second; your lines are queued and will all be delivered.")
        self._pause(client, delay)

    def _ask_name(self, client: Client) -> str | tuple[Client, list[str | object]]:
        """Prompt until a good name or a resume; then the panda to chat as and
        the lines after the name, else why the client left."""
        deadline = time.monotonic() + self.name_timeout
        while True:
            try:
                lines = self._read(client, deadline)
            except TimeoutError:
                _tell_now(client, "bye", f"No name within {self.name_timeout:g} seconds; goodbye.")
                return "no name in time"
            if lines is None:
                return "left before choosing a name"
            for index, line in enumerate(lines):
                if time.monotonic() > deadline:  # one read can hold many lines to pay for
                    _tell_now(client, "bye", f"No name within {self.name_timeout:g} seconds; "
                                             "goodbye.")
                    return "no name in time"
                # Every line costs, even an empty one; a try at a name costs a name try too.
                self._pay_for_line(client, naming=not isinstance(line, str) or bool(line.strip()))
                if line is LINE_TOO_LONG:
                    self._refuse_name(client, "That was far too long for a name.")
                    continue
                assert isinstance(line, str)
                name = line.strip()
                if not name:
                    continue
                word, _, arg = name.partition(" ")
                if word.lower() == "@leaves":
                    _tell_now(client, "bye", "Goodbye!")
                    return "left before choosing a name"
                if word.lower() == "@resume":
                    member = self._resume(client, arg.strip())
                    if member is not None:
                        return member, lines[index + 1:]
                    if client.resume_failures >= RESUME_FAILURES_PER_CONNECTION:
                        _tell_now(client, "bye", "Too many wrong resume codes; goodbye.")
                        return "too many wrong resume codes"
                    continue
                if self.moderation.locked:
                    _tell_now(client, "full", "The grove is locked by its keepers: no newcomers "
                                              "for now. Please try again later.")
                    return "the grove is locked"
                name = unicodedata.normalize("NFC", name)  # the form name_problem counts
                problem = name_problem(name) or self.grove.add(client, name)
                if problem:
                    self._refuse_name(client, problem)
                    continue
                return client, lines[index + 1:]

    def _refuse_name(self, client: Client, reason: str) -> None:
        _send_paid(client, encode_line(system_line("error", reason)) + self._prompt)

    def _welcome(self, client: Client) -> None:
        name = client.name
        client.resume_code = secrets.token_urlsafe(RESUME_CODE_BYTES)
        greeting = encode_line(system_line(
            "welcome", f"Welcome to the grove, {name}! Type @help for the commands."))
        # All the newcomer is told goes out as one write (a storm of joins makes
        # thousands), under the history lock so that no chat line comes between
        # the history and the lines after it (see _relay; sending never blocks).
        with self._history_lock:
            count, went_quiet = self.grove.admit(client)
            client.send(b"".join([
                greeting, self._resume_line(client),
                *(encode_line(system_line("history", line)) for line in self._history),
                self._rules_now(),
                self.grove_listing() if count <= ANNOUNCE_LIMIT else self._quiet_line]))
        log.info("join %s (%s)", name, count_pandas(count))
        if count <= ANNOUNCE_LIMIT:
            self._announce(count, "join", f"{name} joined the grove.", exclude=client)
        elif went_quiet:
            self.grove.broadcast(self._quiet_line, exclude=client)

    def _chat(self, client: Client, lines: list[str | object]) -> str:
        """Relay chat and run commands until the client leaves; why it left."""
        while not self._stopping.is_set():
            reason = self._handle_lines(client, lines)
            if reason:
                return reason
            next_lines = self._read(client)
            if next_lines is None:
                return "connection closed"
            lines = next_lines
        return SHUTTING_DOWN

    def _handle_lines(self, client: Client, lines: list[str | object]) -> str | None:
        """Act on one batch of lines; chat lines go out as one write per receiver."""
        chat: list[str] = []
        for line in lines:
            self._pay_for_line(client, chat)  # every line costs, even an empty one
            if not isinstance(line, str):
                _reply(self, client, "error", f"That line was over {MAX_LINE_BYTES} bytes, "
                                              "so it was dropped.")
            elif not line.strip():
                continue  # nothing to say is never broadcast
            elif not line.startswith("@"):
                if refusal := self.speech_refusal(client, chat=True):
                    _reply(self, client, "error", refusal)
                else:
                    chat.append(self._chat_line(client, line.rstrip()))
            else:
                self._relay(client, chat)  # what was said before a command goes first
                chat = []
                reason = self._run_command(client, line.rstrip())
                if reason:
                    return reason
        self._relay(client, chat)
        return None

    @staticmethod
    def _chat_line(client: Client, text: str) -> str:
        """client's chat line; escaping that made it longer is paid for, so
        that a line of control characters costs what it sends."""
        clean = clean_text(text)
        if len(clean) != len(text):
            client.charge(len(clean.encode(ENCODING, errors="replace"))
                          - len(text.encode(ENCODING, errors="replace")))
        return chat_line(client.name, clean)

    def _relay(self, client: Client, chat: list[str]) -> None:
        if not chat:
            return
        data = b"".join(encode_line(line) for line in chat)
        if not self._history.maxlen:  # no history: nothing to keep, no boundary to guard
            self.grove.broadcast(data, client)
            return
        stamp = time.strftime(HISTORY_CLOCK)
        with self._history_lock:  # a line is either in a newcomer's history or live
            self._history.extend(format_history(stamp, line) for line in chat)
            listeners = self.grove.listeners()
        self.grove.broadcast(data, client, listeners)

    def answer(self, client: Client, data: bytes) -> None:
        """Send data to client in order after what the grove said before, and
        count it against client's flood control: the asker pays for answers."""
        client.charge(len(data))
        self.grove.tell(client, data)

    def _run_command(self, client: Client, text: str) -> str | None:
        word, _, arg = text.partition(" ")
        command = COMMANDS.get(word.lower())
        if command is None or (command.keepers_only and not client.keeper):
            if command is None or not self.keeper_code:
                _reply(self, client, "error", unknown_command_reply(word, client.keeper))
            else:
                _reply(self, client, "error", f"Only keepers can use {word.lower()}.")
            return None
        try:
            return command.run(self, client, arg.strip())
        except CommandError as exc:
            _reply(self, client, "error", str(exc))
            return None

    # --- keepers ------------------------------------------------------------

    def speech_refusal(self, client: Client, chat: bool) -> str | None:
        """Why client may not talk now (a mute, a hush, slow mode for a chat
        line), or None; keepers always may. A chat line allowed in slow mode
        starts the wait for the next."""
        if client.keeper:
            return None
        now = time.monotonic()
        if client.muted_until > now:
            return (f"You are muted for {(client.muted_until - now) / 60:.1f} more minutes; "
                    "you can still whisper to a keeper.")
        if self.moderation.hushed:
            return ("The grove is hushed: only keepers can talk for now; "
                    "you can still whisper to a keeper.")
        if chat and (slow := self.moderation.slowmode_s):
            if (wait := client.spoke_at + slow - now) > 0:
                return f"Slow mode: wait {math.ceil(wait)} more seconds before your next line."
            client.spoke_at = now
        return None

    def remove_panda(self, target: Client, keeper: Client, reason: str) -> None:
        """A keeper's kick: target is told why and closed, and does not come
        back by resume; the others see it leave, removed by the keeper."""
        why = f"removed by {keeper.name}" + (f": {reason}" if reason else "")
        log.info("kick %s (%s)", target.name, why)
        target.removed = True
        if target.away:  # no connection to close: it leaves now
            self._leave(self.grove.remove(target), target, why, log_it=False)
            return
        target.send(encode_line(system_line(
            "kick", f"You were removed from the grove by {keeper.name}"
                    + (f" ({reason})." if reason else "."))))
        target.hang_up(why)

    def schedule_unmute(self, target: Client, until: float) -> None:
        """When target's mute ends, say so (unless it was ended or renewed)."""
        def unmute() -> None:
            if target.muted_until == until and self.grove.find(target.name) is target:
                target.muted_until = 0.0
                _announce_all(self, "unmute", f"{target.name} can talk again.")
        self._scheduler.call_at(until, unmute)

    def _rules_now(self) -> bytes:
        """For a newcomer: the keepers' rules in force (hush, slow mode)."""
        lines = []
        if self.moderation.hushed:
            lines.append(system_line("hush", "Only keepers can talk for now."))
        if seconds := self.moderation.slowmode_s:
            lines.append(system_line("slowmode", format_slowmode(seconds)))
        return b"".join(encode_line(line) for line in lines)

    # --- resume -------------------------------------------------------------

    def _resume_line(self, client: Client) -> bytes:
        if not self.resume_window:
            return b""
        return encode_line(system_line("resume", format_resume(client.resume_code,
                                                               self.resume_window)))

    def _resume(self, client: Client, code: str) -> Client | None:
        """Let client's connection carry on as the panda with that resume code."""
        if self._resume_refused(client):
            return None
        new_code = secrets.token_urlsafe(RESUME_CODE_BYTES)
        member = self.grove.claim_by_code(code, new_code) if code else None
        if member is None:
            self._count_resume_failure(client)
            self._refuse_name(client, "That resume code is wrong or has expired; "
                                      "choose a name to join afresh.")
            return None
        if not member.away and not self._take_over(member, client):
            self._refuse_name(client, "That panda's connection is still closing; "
                                      "try again in a moment.")
            return None
        self._unregister([client])
        with self._connections_lock:  # client's connection is member's now: counted as it was
            self._connections.add(member)
            self._per_address[client.address_key] = (
                self._per_address.get(client.address_key, 0) + 1)
        member.adopt(client, encode_line(system_line(
            "welcome", f"Welcome back to the grove, {member.name}! Here is what you missed."))
            + self._resume_line(member))
        self.grove.mark_back(member)
        log.info("back %s from %s", member.name, member.address_key)
        self.grove.tell(member, self.grove_listing())
        self._announce(self.grove.count(), "back", f"{member.name} is back.", exclude=member)
        return member

    def _take_over(self, member: Client, client: Client) -> bool:
        """End member's connection, which is still open (half-open, or simply
        another window): it is told why, first. True once member is away."""
        ended = member.ended
        displaced = encode_line(system_line(
            "bye", f"Your name {member.name} was resumed from another connection "
                   f"({client.address_key}), so this one is closed."))
        client.charge(len(displaced))  # the resumer pays, not the panda it displaces
        member.send(displaced)
        member.hang_up("resumed from another connection")
        ended.wait(RESUME_TAKEOVER_S)
        # What was queued for the old connection is sent (or kept as missed)
        # before the new one is adopted: none of it goes to the new connection live.
        self.grove.broadcaster.sync(RESUME_TAKEOVER_S)
        return member.away

    def _resume_refused(self, client: Client) -> bool:
        """True (and client told) when client's address sent too many wrong codes lately."""
        now = time.monotonic()
        with self._resume_failures_lock:
            start, count = self._resume_failures.get(client.address_key, (now, 0))
            refused = count >= RESUME_FAILURES_PER_ADDRESS and now - start < RESUME_FAILURE_WINDOW_S
        if refused:
            self.flood_log.info("resume refused", "resume refused for %s: %d wrong codes "
                                 "within %g s", client.address_key, count,
                                 RESUME_FAILURE_WINDOW_S)
            client.resume_failures += 1
            self._refuse_name(client, "Too many wrong resume codes from your address; "
                                      "wait a minute, or choose a name to join afresh.")
        return refused

    def _count_resume_failure(self, client: Client) -> None:
        client.resume_failures += 1
        now = time.monotonic()
        with self._resume_failures_lock:
            start, count = self._resume_failures.get(client.address_key, (now, 0))
            if now - start >= RESUME_FAILURE_WINDOW_S:
                start, count = now, 0
            self._resume_failures[client.address_key] = (start, count + 1)
            if len(self._resume_failures) > MAX_AWAY:  # forget windows that have passed
                for key, (began, _) in list(self._resume_failures.items()):
                    if now - began >= RESUME_FAILURE_WINDOW_S:
                        del self._resume_failures[key]
        self.flood_log.info("resume failed", "wrong resume code from %r", client)

    # --- ending ---------------------------------------------------------------

    def _announce(self, count: int, kind: str, text: str, exclude: Client | None = None) -> None:
        """Tell everybody of a join, leave, loss or return while the grove is small."""
        if count <= ANNOUNCE_LIMIT:
            self.grove.broadcast(encode_line(system_line(kind, text)), exclude=exclude)

    def _finish_batch(self, batch: list[Ended]) -> None:
        """The one way out for every connection, in the Reaper's thread."""
        self._unregister([client for client, _ in batch])
        summary: dict[str, int] = {}
        for client, reason in batch:
            client.close(abort=reason == SLOW_READER)
            client.thread = None  # this one, ending: an away panda need not keep it
            outcome = self._finish(client, reason, log_it=len(batch) <= REAP_LOG_EACH)
            summary[outcome] = summary.get(outcome, 0) + 1
            client.ended.set()
        if len(batch) > REAP_LOG_EACH and not self._closing:
            log.info("%d connections ended: %s; %s here now", len(batch),
                     ", ".join(f"{count} {outcome}" for outcome, count in sorted(summary.items())),
                     count_pandas(self.grove.count()))

    def _finish(self, client: Client, reason: str, log_it: bool) -> str:
        """Take an ended connection's panda out of the grove, or keep it away
        for resume; what became of it, in a word or two."""
        if not client.name or self.grove.find(client.name) is not client:
            log.debug("%r went away: %s", client, reason)
            return "unnamed"
        if reason == SLOW_READER:
            log.warning("drop %s: %s", client.name, reason)
        if (self.resume_window > 0 and not self._closing and reason != GOODBYE
                and not client.removed and self._keep_for_resume(client, reason, log_it)):
            return "lost (kept for resume)"
        self._leave(self.grove.remove(client), client, reason, log_it)
        return "left"

    def _keep_for_resume(self, client: Client, reason: str, log_it: bool) -> bool:
        """Keep client away for resume; False when there is no room for it."""
        per_address = self.max_per_address or MAX_AWAY
        if not self.grove.mark_away(client, per_address):
            self.flood_log.info("away full", "no room to keep %s for resume (%d away in all, "
                                 "at most %d per address)", client.name, MAX_AWAY, per_address)
            return False
        client.go_away()
        if log_it:
            log.info("lost %s (%s); name kept %g s", client.name, reason, self.resume_window)
        self._announce(self.grove.count(), "lost", format_lost(client.name, reason),
                       exclude=client)
        code, since = client.resume_code, client.away_since

        def expire() -> None:
            self._leave(self.grove.remove_if_away(client, code, since), client,
                        "did not come back", log_it=True)

        self._scheduler.call_at(since + self.resume_window, expire)
        return True

    def _leave(self, left: int | None, client: Client, reason: str, log_it: bool) -> None:
        if left is None or self._closing:  # at shutdown, close() logs one line for all
            return
        if log_it:
            log.info("leave %s (%s)", client.name, reason)
        if left < ANNOUNCE_LIMIT:
            self._announce(left, "leave", f"{client.name} left the grove ({reason}).")
        elif left == ANNOUNCE_LIMIT:
            self.grove.broadcast(self.grove_listing())  # small enough to announce again

    def grove_listing(self) -> bytes:
        """The grove line (and its more lines) for everybody here, keepers marked."""
        return b"".join(encode_line(system_line(kind, text)) for kind, text in
                        format_grove_listing(self.grove.names(), LISTING_LINE_CHARS,
                                             self.grove.keepers()))

    # --- stopping -------------------------------------------------------------

    def close(self) -> None:
        """Say goodbye to every connection, hang up on each, end the threads."""
        if self._closing:
            return
        self._closing = True
        self.shutdown()
        with self._serving:  # wait for serve_forever() to return
            self._listener.close()
        self.grove.broadcaster.stop(SHUTDOWN_BROADCAST_S)  # so that nothing follows the goodbye
        with self._connections_lock:
            clients = list(self._connections)
        goodbye = encode_line(system_line("shutdown", "The server is shutting down. Goodbye!"))
        if self._waker is not None:
            self._waker.hold()  # readers wait while the goodbyes go out
        for client in clients:
            client.send_last(goodbye)
        if self._transcript is not None:
            self._transcript.record(goodbye)
        self._stopping.set()  # readers stop only now, so that each got its goodbye
        self._flusher.idle.wait(SHUTDOWN_FLUSH_S)
        deadline = time.monotonic() + SHUTDOWN_HANG_UP_S
        self._hang_up_on(clients, deadline)
        if self._waker is not None:
            self._waker.stop()  # the waiting readers end, a few at a time
        self._join(clients, deadline)
        self._reaper.stop(max(0.0, deadline - time.monotonic()))
        log.info("shutdown: said goodbye to %d connection%s", len(clients),
                 "" if len(clients) == 1 else "s")
        if self._transcript is not None:
            self._transcript.stop(TRANSCRIPT_STOP_S)
        self._flusher.stop()
        self._scheduler.stop()
        self._wake_up.close()

    @staticmethod
    def _hang_up_on(clients: list[Client], deadline: float) -> None:
        """Hang up on each client, until deadline.

        Each hang-up wakes a thread, and woken threads queue for the GIL: with
        10,000 connections the herd starves this loop (finishing them all took
        1.5 to 2 s), so it stops at the deadline and leaves the rest to the
        process's exit, which closes their sockets after their goodbye.
        """
        for client in clients:
            if time.monotonic() >= deadline:
                break
            client.hang_up(SHUTTING_DOWN)

    @staticmethod
    def _join(clients: list[Client], deadline: float) -> None:
        """Wait for each client's thread to end, until deadline."""
        for client in clients:
            if (left := deadline - time.monotonic()) <= 0:
                break
            if (thread := client.thread) is not None:  # None once it has ended
                thread.join(left)


def descriptor_capacity() -> int:
    """How many clients the file-descriptor limit leaves room for (where there
    is such a limit: not on Windows, whose sockets are not file descriptors)."""
    if resource is None:
        return DEFAULT_MAX_CLIENTS
    soft: int = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(1, soft - FD_RESERVE)


def raise_descriptor_limit() -> str:
    """Raise this process's soft file-descriptor limit to the hard one; what
    the limit now is, in words for the log."""
    if resource is None:
        return "no file-descriptor limit to raise here (no resource module)"
    limits: tuple[int, int] = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = limits
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # keep the soft limit; descriptor_capacity() allows for it
    return f"file-descriptor limit {soft}"


def size_futex_hash(threads: int) -> str:
    """Ask Linux (6.17 and later) for a futex hash bucket per thread (see
    PR_FUTEX_HASH); what became of it, in words for the log ("" elsewhere)."""
    if sys.platform != "linux":
        return ""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return "futex hash left to the kernel (no ctypes)"
    slots = max(MIN_FUTEX_SLOTS, 1 << (threads - 1).bit_length())  # a power of two
    args = (PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, slots, 0, 0)
    if libc.prctl(*(ctypes.c_ulong(arg) for arg in args)) != 0:
        # EINVAL: a kernel before 6.17, whose one shared hash is sized for the machine.
        return f"futex hash left to the kernel ({os.strerror(ctypes.get_errno())})"
    return f"futex hash of {slots} buckets"


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server TLS context (TLS 1.2 at least, the ssl module's modern defaults),
    or None when no certificate was given."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("--tls-cert and --tls-key go together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


# --- Who can join: this machine's addresses, found without sending a packet -----

# SIOCGIFADDR, the ioctl that asks the kernel for an interface's IPv4 address:
# Linux numbers it in <linux/sockios.h>; macOS as _IOWR('i', 33, struct ifreq).
SIOCGIFADDR = {"linux": 0x8915, "darwin": 0xC0206921}
# struct ifreq: a 16-byte interface name, then a sockaddr_in whose IPv4
# address starts 4 bytes in (after the family and the port) on both.
IFREQ_NAME_BYTES = 16
IFREQ_IPV4_AT = IFREQ_NAME_BYTES + 4
# Linux lists every IPv6 address of the machine here, one a line.
LINUX_IPV6_ADDRESSES = "/proc/net/if_inet6"


def local_addresses(version: int | None = None) -> list[str]:
    """This machine's IP addresses that others on its networks can reach it at
    (only IPv4 or IPv6 ones, given version 4 or 6): IPv4 first, never a
    loopback one, no duplicates; an IPv6 link-local one (with its %interface)
    only when there is nothing else. Found by asking the
    kernel (on Linux and macOS) or the system's own record of its name
    (elsewhere): no packet is sent."""
    request = next((number for prefix, number in SIOCGIFADDR.items()
                    if sys.platform.startswith(prefix)), None)
    if request is not None:
        found = _interface_ipv4_addresses(request) + _linux_ipv6_addresses()
    else:
        found = _own_name_addresses()
    return _reachable(found, version)


def _interface_ipv4_addresses(request: int) -> list[str]:
    """Each interface's IPv4 address, as the kernel answers SIOCGIFADDR."""
    import fcntl  # POSIX only: this runs on Linux and macOS alone

    found = []
    # The socket only carries the question to the kernel; nothing is sent on it.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as handle:
        for _, name in socket.if_nameindex():
            question = struct.pack("256s", name.encode()[:IFREQ_NAME_BYTES - 1])
            try:
                answer = fcntl.ioctl(handle.fileno(), request, question)
            except OSError:
                continue  # this interface has no IPv4 address (or is down)
            found.append(socket.inet_ntoa(answer[IFREQ_IPV4_AT:IFREQ_IPV4_AT + 4]))
    return found


def _linux_ipv6_addresses() -> list[str]:
    """Every IPv6 address Linux lists; none where there is no such list."""
    try:
        with open(LINUX_IPV6_ADDRESSES) as listing:
            rows = [line.split() for line in listing]
    except OSError:
        return []  # not Linux, or no IPv6
    found = []
    for row in rows:  # address in hex, index, prefix length, scope, flags, interface
        if len(row) == 6:
            address = ipaddress.IPv6Address(bytes.fromhex(row[0]))
            found.append(f"{address}%{row[5]}" if address.is_link_local else str(address))
    return found


def _own_name_addresses() -> list[str]:
    """The addresses of this machine's own name. Windows answers its own
    computer name from its interfaces' addresses, without asking the network."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [str(info[4][0]) for info in infos]


def _reachable(addresses: list[str], version: int | None) -> list[str]:
    """addresses (of that IP version, if given) without loopback ones and
    duplicates, IPv4 first, link-local IPv6 ones only when there is no other."""
    parsed = {text: ipaddress.ip_address(text.partition("%")[0])
              for text in dict.fromkeys(addresses)}
    usable = [text for text, ip in parsed.items()
              if not (ip.is_loopback or ip.is_unspecified) and version in (None, ip.version)]
    usable.sort(key=lambda text: parsed[text].version)  # stable: the kernel's order within
    wider = [text for text in usable if not (parsed[text].version == 6
                                            and parsed[text].is_link_local)]
    return wider or usable


def who_can_join(host: str, port: int, tls: bool) -> list[str]:
    """The startup lines saying who can join a server listening on host (an
    IP address) and port: only this computer, or pandas on the network, with
    the command line they join with."""
    ip = ipaddress.ip_address(host.partition("%")[0])
    if ip.is_loopback:
        return [f"Only this computer can join (listening on {host}); "
                "--host 0.0.0.0 lets pandas on your network in."]
    options = (f" --port {port}" if port != DEFAULT_PORT else "") + (" --tls" if tls else "")
    # Listening on all addresses: those of ip's family (create_server makes :: IPv6 only).
    addresses = local_addresses(ip.version) if ip.is_unspecified else [host]
    if not addresses:
        return ["No network address found on this computer: only this computer can join "
                "for now."]
    return [f"Pandas on your network can join with: python3 client3.py --host {address}"
            f"{options}" for address in addresses]


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be over 0, not {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="server3.py",
        description="Panda Chat server. Join with: nc HOST PORT, or python3 client3.py. "
                    "Stop with Ctrl+C.")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on, IPv4 or IPv6 (default %(default)s; "
                             "0.0.0.0 for the whole LAN)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="TCP port (default %(default)s; 0 picks a free one)")
    parser.add_argument("--max-clients", type=int, default=DEFAULT_MAX_CLIENTS, metavar="N",
                        help="most connections at once; more get a 'grove is full' line "
                             "(default %(default)s)")
    parser.add_argument("--max-per-address", type=int, default=DEFAULT_MAX_PER_ADDRESS,
                        metavar="N", help="most connections at once from one IP address (IPv6: "
                                          "one /64); everybody behind one router or proxy "
                                          "shares one address; 0 turns the limit off "
                                          "(default %(default)s)")
    parser.add_argument("--name-timeout", type=float, default=DEFAULT_NAME_TIMEOUT_S,
                        metavar="S", help="seconds a new connection has to choose a name "
                                          "(default %(default)g)")
    parser.add_argument("--history", type=int, default=DEFAULT_HISTORY, metavar="N",
                        help="chat lines replayed to a newcomer; 0 turns it off "
                             "(default %(default)s)")
    parser.add_argument("--rate-limit", type=float, default=DEFAULT_RATE_LIMIT, metavar="R",
                        help="lines a second one connection may send on average, before and "
                             "after its name (bytes are counted too); faster senders are "
                             "slowed down, never cut off; 0 turns all flood control off "
                             "(default %(default)g)")
    parser.add_argument("--burst", type=int, default=DEFAULT_BURST, metavar="B",
                        help="lines a client may send at once before --rate-limit applies "
                             "(default %(default)s)")
    parser.add_argument("--resume-window", type=float, default=DEFAULT_RESUME_WINDOW_S,
                        metavar="S", help="seconds a panda whose connection dropped keeps its "
                                          "name and missed lines; 0 turns resume off "
                                          "(default %(default)g)")
    parser.add_argument("--keeper-code", metavar="CODE",
                        help="the code that makes a panda a keeper (\"@keeper CODE\"); "
                             "default: a random one, printed at start; '' for no keepers")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate "
                                                         "(chain) file; needs --tls-key")
    parser.add_argument("--tls-key", metavar="PEM", help="the private key for --tls-cert")
    parser.add_argument("--transcript", metavar="FILE",
                        help="append every line the whole grove sees (never a whisper) to FILE, "
                             "each with its local date and time; the last --history chat "
                             "lines are read back from it at start (default: no transcript)")
    parser.add_argument("--transcript-max-mb", type=_positive_float,
                        default=DEFAULT_TRANSCRIPT_MAX_MB, metavar="MB",
                        help="past this size FILE becomes FILE.1 (replacing the one before) "
                             "and a new FILE begins (default %(default)g)")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="how much to log (default %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    threading.stack_size(THREAD_STACK_BYTES)
    sys.setswitchinterval(GIL_SWITCH_S)
    limits = "; ".join(filter(None, [raise_descriptor_limit(),
                                     size_futex_hash(args.max_clients + HELPER_THREADS)]))
    keeper_code = (secrets.token_urlsafe(KEEPER_CODE_BYTES) if args.keeper_code is None
                   else args.keeper_code)
    try:
        tls = tls_context(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        print(f"server3.py: cannot use the TLS certificate and key: {exc}", file=sys.stderr)
        return 1
    try:
        server = ChatServer(args.host, args.port, max_clients=args.max_clients,
                            max_per_address=args.max_per_address,
                            name_timeout=args.name_timeout, history=args.history,
                            rate_limit=args.rate_limit, burst=args.burst,
                            resume_window=args.resume_window, tls=tls,
                            keeper_code=keeper_code, transcript=args.transcript,
                            transcript_max_bytes=int(args.transcript_max_mb
                                                     * TRANSCRIPT_BYTES_PER_MB))
    except TranscriptError as exc:
        print(f"server3.py: {exc}.", file=sys.stderr)
        return 1
    except OSError as exc:
        why = ("is already in use" if exc.errno == errno.EADDRINUSE
               else f"cannot be used: {exc.strerror or exc}")
        print(f"server3.py: port {args.port} on {args.host} {why}.", file=sys.stderr)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        server.shutdown()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    host, port = server.address
    shown = f"[{host}]" if ":" in host else host
    log.info("Panda Chat listening on %s:%d%s; up to %s (%s)",
             shown, port, " with TLS" if tls else "", count_pandas(server.max_clients), limits)
    for line in who_can_join(host, port, tls is not None):
        log.info("%s", line)
    if keeper_code:  # a line of its own: the person at this terminal alone sees it
        log.info('Keeper code: %s (type "@keeper %s" in a client to moderate)',
                 keeper_code, keeper_code)
    with server:
        server.serve_forever()
    print("Panda Chat server stopped. Goodbye from the grove!", file=sys.stderr)
    return 0


def exit_at_once(code: int) -> None:
    """End the process without the interpreter's own finalization.

    By now close() has told, closed and counted every connection and stopped
    every helper thread; what is left is thousands of parked daemon threads,
    and tearing down the interpreter around them took longer than the whole
    shutdown (0.65 s of 1.43 s with 10,000 connections; 0.77 s in all this
    way). Logging and the standard streams are flushed first.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe or stream: nothing more can be said there
    os._exit(code)


if __name__ == "__main__":
    exit_at_once(main())
