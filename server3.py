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

Needs Linux, macOS or another system with MSG_DONTWAIT and poll(); on Windows run
the server under WSL (the GUI client runs anywhere).
"""

from __future__ import annotations

import argparse
import difflib
import heapq
import hmac
import logging
import resource
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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, TracebackType

from ascii_art import banner_lines, goodbye_lines
from panda_facts import random_fact
from protocol import (
    ENCODING,
    LINE_TOO_LONG,
    MAX_LINE_BYTES,
    MAX_NAME_CHARS,
    LineBuffer,
    TlsSession,
    chat_line,
    clean_text,
    encode_line,
    name_key,
    name_problem,
    system_line,
)

log = logging.getLogger("panda-chat")

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
# Each connection has a thread; its stack is address space, and a handler needs
# little of it. 256 KiB instead of 8 MiB lets thousands of threads fit.
THREAD_STACK_BYTES = 256 * 1024
# Every blocked reader holds a buffer this big; 4 KiB is one full-size line and
# keeps an idle connection cheap.
RECV_BYTES = 4096
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

# Reasons for leaving that the code tells apart.
SLOW_READER = "could not keep up (stopped reading)"
GOODBYE = "said goodbye"
SHUTTING_DOWN = "server shutting down"
PLAIN_ON_TLS_PORT = ("This grove speaks TLS. Connect with: python3 client3.py --tls, "
                     "or: openssl s_client -quiet -connect HOST:PORT")

# send() that never waits, even on a blocking socket.
_DONTWAIT = socket.MSG_DONTWAIT


def _pandas(count: int) -> str:
    return f"{count} panda{'' if count == 1 else 's'}"


def _wait_readable(sock: socket.socket, timeout: float) -> bool:
    """Wait up to timeout seconds for sock to have data (or EOF) to read."""
    poller = select.poll()  # poll(), not select(): descriptors may be above 1024
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


class TokenBucket:
    """Flood control: on average rate lines a second, up to burst at once.

    wait() takes a token and returns 0, or returns how long until one is there.
    throttled is True from the first wait until the bucket is full again, so
    that a flooder hears "slow down" once per episode.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()
        self.throttled = False

    def wait(self) -> float:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= self.burst:
            self.throttled = False
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


class Client:
    """One connection, and the panda on it. It owns its socket.

    Its own thread reads with read_lines(); anybody writes with send(), which
    never blocks and keeps order; the Flusher calls flush() when the socket can
    take more of the backlog. hang_up() wakes the reader so that its thread can
    finish; close() is the last thing that thread does.

    A panda whose connection dropped can stay in the grove "away" (go_away()):
    what is sent to it then is kept, bounded, as missed lines, until a new
    connection resumes it (adopt()) or it expires.
    """

    def __init__(self, sock: socket.socket, address: tuple[str, int], flusher: Flusher,
                 tls: TlsSession | None = None) -> None:
        self.sock = sock
        self.fileno = sock.fileno()
        self.address = address
        self.tls = tls
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
        self._closed = False
        self._ready = tls is None  # whether lines can be sent: after any TLS handshake
        self._missed: deque[bytes] | None = None  # not None while away
        self._missed_bytes = 0
        self.away_since = 0.0

    def __repr__(self) -> str:
        return f"{self.name or '(no name)'} from {self.address[0]}:{self.address[1]}"

    @property
    def away(self) -> bool:
        return self._missed is not None

    # --- reading: only the client's own thread -----------------------------

    def read_lines(self, timeout: float | None = None) -> list[str | object] | None:
        """The lines one recv() brings; None at EOF; TimeoutError after timeout."""
        if self._early_lines:
            early, self._early_lines = self._early_lines, []
            return early
        if timeout is not None and (timeout <= 0 or not _wait_readable(self.sock, timeout)):
            raise TimeoutError  # a deadline that passed stays passed, even if data comes
        raw = self.sock.recv(RECV_BYTES)
        if self.tls is not None:
            data = self._decrypt(raw)
        elif raw.startswith(b"\x16\x03") and not self._heard:
            raise WrongProtocol("a TLS client came to the plain-text port")
        else:
            data = raw or None
        self._heard = True
        return None if data is None else list(self._framer.feed(data))

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
            if first and not _wait_readable(self.sock, min(wait, TLS_SILENCE_S)):
                if wait > TLS_SILENCE_S:  # a TLS client speaks first: this one is a person
                    self.send_plain(encode_line(system_line("error", PLAIN_ON_TLS_PORT)))
                    raise WrongProtocol("a plain-text client came to the TLS port")
                raise TimeoutError
            if not _wait_readable(self.sock, deadline - time.monotonic()):
                raise TimeoutError
            raw = self.sock.recv(RECV_BYTES)
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
                data = self.tls.encrypt(data)
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
        return len(self._backlog) == 1

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
        """One non-blocking send; the caller holds the lock."""
        try:
            return self.sock.send(data, _DONTWAIT)
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
            self._closed, self._ready, self.drop_reason = False, True, ""
            self._backlog, new._backlog = new._backlog, deque()
            self._backlog_bytes, new._backlog_bytes = new._backlog_bytes, 0
            new._closed = True  # the connection is this client's now
            new.successor = self
            data = greeting + b"".join(encode_line(system_line("missed", line))
                                       for line in missed.splitlines())
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
        self._flusher.watch(self)  # so that it forgets this client
        if abort:
            try:  # a reset frees the kernel's buffers at once
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass  # already disconnected
        sock.close()


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


class Flusher:
    """The one thread that writes backlogs out.

    watch(client) hands it a client whose socket was full (or that closed);
    it waits until the socket can take more and calls client.flush() until the
    backlog is empty. Only this thread touches its selector.
    """

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
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
            self._wake()

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # the pipe is full or closed, so a wake-up is pending anyway

    def _run(self) -> None:
        while not self._stopping:
            self._flush_ready(self._selector.select())
            self._take_handed()

    def _flush_ready(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        # A function of its own, so that no client stays referred to by a loop
        # variable while the thread waits.
        for key, _ in ready:
            if key.fileobj is self._wake_r:
                self._drain_wake_pipe()
            elif key.data.flush():
                self._selector.unregister(key.fd)

    def _drain_wake_pipe(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _take_handed(self) -> None:
        with self._lock:
            handed, self._handed = self._handed, []
        for client in handed:
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
            if not self._handed and len(self._selector.get_map()) == 1:
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
            if self._sending or self._queue:
                self._queue.append((data, exclude, listeners))
                self._queued_bytes += len(data)
                return
            self._sending = True
        try:
            _send_items([(data, exclude, listeners)])
            # One batch of what queued meanwhile goes now, without waking the
            # thread for it (a tenth of a millisecond off the latency tail);
            # any more is left to the thread, so no reader sends for long.
            with self._lock:
                batch = self._take_batch_locked()
            _send_items(batch)
        finally:
            self._done_sending()

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
            self._done_sending()

    def _done_sending(self) -> None:
        with self._lock:
            self._sending = False
            self._work.notify_all()  # the thread, for what queued; or stop()


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
    """

    def __init__(self) -> None:
        self.broadcaster = Broadcaster()
        self._lock = threading.Lock()
        self._members: dict[str, Client] = {}
        self._away: set[Client] = set()  # members whose connection dropped
        self._listeners: dict[Client, None] = {}  # an ordered set
        # What broadcast() walks: a copy of _listeners, made again only when a
        # broadcast finds it out of date, so that a change costs O(1).
        self._snapshot: Listeners | None = ()

    def add(self, client: Client, name: str) -> str | None:
        """Give client the name; the reason why not when it is taken."""
        key = name_key(name)
        with self._lock:
            if key in self._members:
                return f"The name {self._members[key].name} is taken; pick another."
            self._members[key] = client
        client.name = name
        return None

    def admit(self, client: Client) -> int:
        """Let client hear broadcasts; the number of pandas now here."""
        with self._lock:
            self._listeners[client] = None
            self._snapshot = None
            return len(self._members) - len(self._away)

    def remove(self, client: Client) -> int | None:
        """Take client out; the number of pandas left, or None if it was not in."""
        with self._lock:
            if self._members.get(name_key(client.name)) is not client:
                return None
            del self._members[name_key(client.name)]
            self._away.discard(client)
            self._listeners.pop(client, None)
            self._snapshot = None
            return len(self._members) - len(self._away)

    def names(self) -> list[str]:
        """The names of the pandas here (not those away)."""
        with self._lock:
            members = list(self._members.values())
        return sorted((c.name for c in members if not c.away), key=str.casefold)

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

    def mark_away(self, client: Client) -> bool:
        """Note that client's connection dropped; False when too many are away already."""
        with self._lock:
            if len(self._away) >= MAX_AWAY:
                return False
            self._away.add(client)
            return True

    def mark_back(self, client: Client) -> None:
        with self._lock:
            self._away.discard(client)

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
        self.broadcaster.put(data, exclude, self.listeners() if listeners is None else listeners)

    def tell(self, client: Client, data: bytes) -> None:
        """Send data to client alone, in order after every broadcast before it:
        an answer never overtakes what the grove said earlier."""
        self.broadcaster.put(data, None, (client,))


# --- Commands: a word, a small function, and a help line ------------------------
# A command function gets the server, the client and the rest of the line; it
# returns a reason when the client is to leave, else None.

CommandFunction = Callable[["ChatServer", Client, str], "str | None"]


@dataclass(frozen=True)
class Command:
    run: CommandFunction
    help: str


def _reply(server: ChatServer, client: Client, kind: str, text: str) -> None:
    """An answer to a panda in the grove: in order after what it was sent before."""
    server.grove.tell(client, encode_line(system_line(kind, text)))


def _tell_now(client: Client, kind: str, text: str) -> None:
    """Straight to the socket: for a connection not in the grove (yet), or one
    about to close, which a queued line might not reach in time."""
    client.send(encode_line(system_line(kind, text)))


def do_bamboo(server: ChatServer, client: Client, arg: str) -> None:
    _reply(server, client, "fact", random_fact())


def do_grove(server: ChatServer, client: Client, arg: str) -> None:
    server.grove.tell(client, server.grove_listing())


def do_help(server: ChatServer, client: Client, arg: str) -> None:
    server.grove.tell(client, b"".join(
        encode_line(system_line("help", f"{word} - {command.help}"))
        for word, command in COMMANDS.items()))


def do_whisper(server: ChatServer, client: Client, arg: str) -> None:
    name, _, text = arg.partition(" ")
    text = clean_text(text.strip())
    target = server.grove.find(name) if name else None
    if not name or not text:
        _reply(server, client, "error", "To whisper, type: @whisper NAME your message")
    elif target is client:
        _reply(server, client, "error", "Whispering to yourself? Your secret is safe with you.")
    elif target is None:
        _reply(server, client, "error", f"There is no panda called {clean_text(name)} here. "
                                        "@grove lists who is here.")
    else:  # in order after what client said before, like everything told
        _reply(server, target, "whisper", chat_line(client.name, text))
        _reply(server, client, "whispered", f"to {chat_line(target.name, text)}")


def do_leaves(server: ChatServer, client: Client, arg: str) -> str:
    # Straight to the socket: the connection closes next.
    client.send(b"".join(encode_line(system_line("art", line)) for line in goodbye_lines()))
    _tell_now(client, "bye", f"Goodbye, {client.name}! Come back to the grove soon.")
    return GOODBYE


COMMANDS: dict[str, Command] = {
    "@bamboo": Command(do_bamboo, "a random panda fact, to you alone"),
    "@grove": Command(do_grove, "who is in the grove"),
    "@help": Command(do_help, "this list of commands"),
    "@leaves": Command(do_leaves, "say goodbye and leave the grove"),
    "@whisper": Command(do_whisper, "@whisper NAME text: a private message to NAME alone"),
}


def unknown_command_reply(word: str) -> str:
    close = difflib.get_close_matches(word.lower(), COMMANDS, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]}?" if close else ""
    return f"Unknown command {clean_text(word)}.{hint} Commands: {' '.join(COMMANDS)}"


# --- The server -----------------------------------------------------------------


class ChatServer:
    """The Panda Chat server.

    serve_forever() accepts connections until shutdown() is called (from
    another thread or a signal handler); close() then says goodbye to every
    connection, hangs up on each and waits for its thread, for at most
    SHUTDOWN_HANG_UP_S (with thousands of connections, the rest are closed
    by the process's exit, their goodbye already sent). Used as a context
    manager, leaving the block calls close().

    Settings are the keyword arguments: max_clients, name_timeout (seconds),
    history (chat lines replayed to newcomers, 0 for none), rate_limit and
    burst (flood control; a rate_limit of 0 turns it off), resume_window
    (seconds a dropped panda may come back in; 0 for never) and tls (an
    ssl.SSLContext to serve TLS). Policies that change what others see are
    off by default here, so that a program embedding the server opts in;
    the command line (main) turns flood control and resume on.
    address is the (host, port) actually bound; port 0 picks a free port.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 max_clients: int = DEFAULT_MAX_CLIENTS,
                 name_timeout: float = DEFAULT_NAME_TIMEOUT_S,
                 history: int = DEFAULT_HISTORY,
                 rate_limit: float = 0.0, burst: int = DEFAULT_BURST,
                 resume_window: float = 0.0,
                 tls: ssl.SSLContext | None = None) -> None:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        self._listener = socket.create_server((host, port), family=family,
                                              backlog=LISTEN_BACKLOG)
        self._listener.setblocking(False)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self.max_clients = min(max_clients, descriptor_capacity())
        self.name_timeout = name_timeout
        self.rate_limit = rate_limit
        self.resume_window = resume_window
        self.tls = tls
        self._scheduler = Scheduler()
        self.burst = burst
        self._history: deque[str] = deque(maxlen=history)
        self._history_lock = threading.Lock()
        # Set once everybody was told of the shutdown: readers stop, and those
        # held back by flood control wake up.
        self._stopping = threading.Event()
        self.grove = Grove()
        self._flusher = Flusher()
        self._connections: set[Client] = set()
        self._connections_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop_requested = False
        self._closing = False
        self._serving = threading.Lock()  # held while serve_forever runs
        self._banner = b"".join(
            [encode_line(system_line("art", line)) for line in banner_lines()]
            + [encode_line(system_line("info", "Welcome to Panda Chat!"))])
        self._prompt = encode_line(system_line(
            "name", f"What is your panda name? (1-{MAX_NAME_CHARS} characters, no spaces)"))

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- accepting ----------------------------------------------------------

    def serve_forever(self) -> None:
        """Accept connections until shutdown() is called."""
        with self._serving, selectors.DefaultSelector() as selector:
            self._flusher.start()
            self._scheduler.start()
            self.grove.broadcaster.start()
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop_requested:
                for key, _ in selector.select():
                    if key.fileobj is self._listener:
                        self._accept_waiting()

    def shutdown(self) -> None:
        """Make serve_forever() return; safe from any thread or a signal handler."""
        self._stop_requested = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # already woken, or closed

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
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delays
        tls = TlsSession(self.tls, server_side=True) if self.tls is not None else None
        client = Client(sock, address, self._flusher, tls)
        with self._connections_lock:
            full = len(self._connections) >= self.max_clients
            if not full:
                self._connections.add(client)
        if not full:
            client.thread = threading.Thread(target=self._serve_client, args=(client,),
                                             name=f"panda {address[0]}:{address[1]}",
                                             daemon=True)
            try:
                client.thread.start()
                return
            except RuntimeError:  # the system would not give us another thread
                with self._connections_lock:
                    self._connections.discard(client)
        log.warning("refused %s:%s: the grove is full (%d connections)",
                    address[0], address[1], self.max_clients)
        _tell_now(client, "full", f"The grove is full ({_pandas(self.max_clients)}). "
                                  "Please try again later.")
        client.close()

    # --- one connection: setup, handle, finish --------------------------------

    def _serve_client(self, client: Client) -> None:
        reason = "connection closed"
        try:
            reason = self._converse(client)
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
            # Why the server hung up explains the end, unless the panda said goodbye
            # (and closed before its goodbye art had been sent).
            self._finish(member, reason if reason == GOODBYE else member.drop_reason or reason)

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

    def _ask_name(self, client: Client) -> str | tuple[Client, list[str | object]]:
        """Prompt until a good name or a resume; then the panda to chat as and
        the lines after the name, else why the client left."""
        deadline = time.monotonic() + self.name_timeout
        while True:
            try:
                lines = client.read_lines(deadline - time.monotonic())
            except TimeoutError:
                _tell_now(client, "bye", f"No name within {self.name_timeout:g} seconds; goodbye.")
                return "no name in time"
            if lines is None:
                return "left before choosing a name"
            for index, line in enumerate(lines):
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
                    if member is None:
                        continue
                    return member, lines[index + 1:]
                problem = name_problem(name) or self.grove.add(client, name)
                if problem:
                    self._refuse_name(client, problem)
                    continue
                return client, lines[index + 1:]

    def _refuse_name(self, client: Client, reason: str) -> None:
        client.send(encode_line(system_line("error", reason)) + self._prompt)

    def _welcome(self, client: Client) -> None:
        name = client.name
        client.resume_code = secrets.token_urlsafe(RESUME_CODE_BYTES)
        client.send(encode_line(system_line(
            "welcome", f"Welcome to the grove, {name}! Type @help for the commands."))
            + self._resume_line(client))
        with self._history_lock:  # see _relay; sending is non-blocking
            count = self.grove.admit(client)
            client.send(b"".join(encode_line(system_line("history", line))
                                 for line in self._history))
        log.info("join %s (%s)", name, _pandas(count))
        if count <= ANNOUNCE_LIMIT:
            client.send(self.grove_listing())
            self._announce(count, "join", f"{name} joined the grove.", exclude=client)
        else:
            quiet = encode_line(system_line(
                "quiet", f"Over {_pandas(ANNOUNCE_LIMIT)} are here, so joins and leaves are "
                         "no longer announced. @grove lists everybody."))
            client.send(quiet)
            if count == ANNOUNCE_LIMIT + 1:
                self.grove.broadcast(quiet, exclude=client)

    def _chat(self, client: Client, lines: list[str | object]) -> str:
        """Relay chat and run commands until the client leaves; why it left."""
        bucket = TokenBucket(self.rate_limit, self.burst) if self.rate_limit > 0 else None
        while not self._stopping.is_set():
            reason = self._handle_lines(client, lines, bucket)
            if reason:
                return reason
            next_lines = client.read_lines()
            if next_lines is None:
                return "connection closed"
            lines = next_lines
        return SHUTTING_DOWN

    def _handle_lines(self, client: Client, lines: list[str | object],
                      bucket: TokenBucket | None) -> str | None:
        """Act on one batch of lines; chat lines go out as one write per receiver."""
        chat: list[str] = []
        for line in lines:
            if isinstance(line, str) and not line.strip():
                continue  # nothing to say is never broadcast, and costs no token
            if bucket is not None and not self._take_token(client, bucket, chat):
                return SHUTTING_DOWN
            if not isinstance(line, str):
                _reply(self, client, "error", f"That line was over {MAX_LINE_BYTES} bytes, "
                                              "so it was dropped.")
            elif not line.startswith("@"):
                chat.append(chat_line(client.name, clean_text(line.rstrip())))
            else:
                self._relay(client, chat)  # what was said before a command goes first
                chat = []
                reason = self._run_command(client, line.rstrip())
                if reason:
                    return reason
        self._relay(client, chat)
        return None

    def _relay(self, client: Client, chat: list[str]) -> None:
        if not chat:
            return
        data = b"".join(encode_line(line) for line in chat)
        if not self._history.maxlen:  # no history: nothing to keep, no boundary to guard
            self.grove.broadcast(data, client)
            return
        stamp = time.strftime("%H:%M")
        with self._history_lock:  # a line is either in a newcomer's history or live
            self._history.extend(f"[{stamp}] {line}" for line in chat)
            listeners = self.grove.listeners()
        self.grove.broadcast(data, client, listeners)

    def _take_token(self, client: Client, bucket: TokenBucket, chat: list[str]) -> bool:
        """Hold this reader back until the flood control allows one more line.

        While it waits it reads nothing, so TCP pushes back on the flooder and
        nothing it sent is lost. False when the server stops meanwhile.
        """
        while (delay := bucket.wait()) > 0:
            self._relay(client, chat)  # what came before the wait goes out now
            chat.clear()
            if not bucket.throttled:
                bucket.throttled = True
                log.info("slow %s: over %g lines a second", client.name, bucket.rate)
                _reply(self, client, "slow", f"Slow down! Over {bucket.rate:g} lines a second; "
                                             "your lines are queued and will all be delivered.")
            if self._stopping.wait(delay):
                return False
        return True

    def _run_command(self, client: Client, text: str) -> str | None:
        word, _, arg = text.partition(" ")
        command = COMMANDS.get(word.lower())
        if command is None:
            _reply(self, client, "error", unknown_command_reply(word))
            return None
        return command.run(self, client, arg.strip())

    def _resume_line(self, client: Client) -> bytes:
        if not self.resume_window:
            return b""
        return encode_line(system_line(
            "resume", f"{client.resume_code} is your resume code: if your connection drops, "
                      f"send \"@resume {client.resume_code}\" instead of a name within "
                      f"{self.resume_window:g} s to come back without missing a line."))

    def _resume(self, client: Client, code: str) -> Client | None:
        """Let client's connection carry on as the panda with that resume code."""
        new_code = secrets.token_urlsafe(RESUME_CODE_BYTES)
        member = self.grove.claim_by_code(code, new_code) if code else None
        if member is not None and not member.away:
            # Its old connection is still open (half-open): end it, then take over.
            member.hang_up("resumed from another connection")
            if (thread := member.thread) is not None:  # None once it has ended
                thread.join(RESUME_TAKEOVER_S)
        if member is None or not member.away:
            self._refuse_name(client, "That resume code is wrong or has expired; "
                                      "choose a name to join afresh.")
            return None
        with self._connections_lock:
            self._connections.discard(client)
            self._connections.add(member)
        member.adopt(client, encode_line(system_line(
            "welcome", f"Welcome back to the grove, {member.name}! Here is what you missed."))
            + self._resume_line(member))
        self.grove.mark_back(member)
        log.info("back %s", member.name)
        self.grove.tell(member, self.grove_listing())
        self._announce(self.grove.count(), "back", f"{member.name} is back.", exclude=member)
        return member

    def _announce(self, count: int, kind: str, text: str, exclude: Client | None = None) -> None:
        """Tell everybody of a join, leave, loss or return while the grove is small."""
        if count <= ANNOUNCE_LIMIT:
            self.grove.broadcast(encode_line(system_line(kind, text)), exclude=exclude)

    def _finish(self, client: Client, reason: str) -> None:
        """The one way out for every connection."""
        with self._connections_lock:
            self._connections.discard(client)
        client.close(abort=reason == SLOW_READER)
        client.thread = None  # this one, ending: an away panda need not keep it
        if not client.name or self.grove.find(client.name) is not client:
            log.debug("%r went away: %s", client, reason)
            return
        if reason == SLOW_READER:
            log.warning("drop %s: %s", client.name, reason)
        if self.resume_window > 0 and not self._closing and reason != GOODBYE:
            self._keep_for_resume(client, reason)
            return
        self._leave(self.grove.remove(client), client, reason)

    def _keep_for_resume(self, client: Client, reason: str) -> None:
        if not self.grove.mark_away(client):
            log.warning("%d pandas are away already: %s leaves at once", MAX_AWAY, client.name)
            self._leave(self.grove.remove(client), client, reason)
            return
        client.go_away()
        log.info("lost %s (%s); name kept %g s", client.name, reason, self.resume_window)
        self._announce(self.grove.count(), "lost", f"{client.name} lost connection ({reason}).",
                       exclude=client)
        code, since = client.resume_code, client.away_since

        def expire() -> None:
            self._leave(self.grove.remove_if_away(client, code, since), client,
                        "did not come back")

        self._scheduler.call_at(since + self.resume_window, expire)

    def _leave(self, left: int | None, client: Client, reason: str) -> None:
        if left is None or self._closing:  # at shutdown, close() logs one line for all
            return
        log.info("leave %s (%s)", client.name, reason)
        if left < ANNOUNCE_LIMIT:
            self._announce(left, "leave", f"{client.name} left the grove ({reason}).")
        elif left == ANNOUNCE_LIMIT:
            self.grove.broadcast(self.grove_listing())  # small enough to announce again

    def grove_listing(self) -> bytes:
        """The grove line (and its more lines) for everybody here."""
        names = self.grove.names()
        kind, words, width = "grove", [f"{_pandas(len(names))} here:"], 0
        out: list[bytes] = []
        for name in names:
            if width + len(name) > LISTING_LINE_CHARS:
                out.append(encode_line(system_line(kind, " ".join(words))))
                kind, words, width = "more", [], 0
            words.append(name)
            width += len(name) + 1
        out.append(encode_line(system_line(kind, " ".join(words))))
        return b"".join(out)

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
        for client in clients:
            client.send_last(goodbye)
        self._stopping.set()  # readers stop only now, so that each got its goodbye
        self._flusher.idle.wait(SHUTDOWN_FLUSH_S)
        self._hang_up_on(clients, time.monotonic() + SHUTDOWN_HANG_UP_S)
        log.info("shutdown: said goodbye to %d connection%s", len(clients),
                 "" if len(clients) == 1 else "s")
        self._flusher.stop()
        self._scheduler.stop()
        self._wake_r.close()
        self._wake_w.close()

    @staticmethod
    def _hang_up_on(clients: list[Client], deadline: float) -> None:
        """Hang up on each client and wait for its thread, until deadline.

        Each hang-up wakes a thread, and woken threads queue for the GIL: with
        10,000 connections the herd starves this loop (finishing them all took
        1.5 to 2 s), so it stops at the deadline and leaves the rest to the
        process's exit, which closes their sockets after their goodbye.
        """
        for client in clients:
            if time.monotonic() >= deadline:
                break
            client.hang_up(SHUTTING_DOWN)
        for client in clients:
            if (left := deadline - time.monotonic()) <= 0:
                break
            if (thread := client.thread) is not None:  # None once it has ended
                thread.join(left)


def descriptor_capacity() -> int:
    """How many clients the file-descriptor limit leaves room for."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, soft - FD_RESERVE)


def raise_descriptor_limit() -> int:
    """Raise this process's soft file-descriptor limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
    return hard


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
    parser.add_argument("--name-timeout", type=float, default=DEFAULT_NAME_TIMEOUT_S,
                        metavar="S", help="seconds a new connection has to choose a name "
                                          "(default %(default)g)")
    parser.add_argument("--history", type=int, default=DEFAULT_HISTORY, metavar="N",
                        help="chat lines replayed to a newcomer; 0 turns it off "
                             "(default %(default)s)")
    parser.add_argument("--rate-limit", type=float, default=DEFAULT_RATE_LIMIT, metavar="R",
                        help="lines a second one client may send on average; faster senders "
                             "are slowed down, never cut off; 0 turns it off "
                             "(default %(default)g)")
    parser.add_argument("--burst", type=int, default=DEFAULT_BURST, metavar="B",
                        help="lines a client may send at once before --rate-limit applies "
                             "(default %(default)s)")
    parser.add_argument("--resume-window", type=float, default=DEFAULT_RESUME_WINDOW_S,
                        metavar="S", help="seconds a panda whose connection dropped keeps its "
                                          "name and missed lines; 0 turns resume off "
                                          "(default %(default)g)")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate "
                                                         "(chain) file; needs --tls-key")
    parser.add_argument("--tls-key", metavar="PEM", help="the private key for --tls-cert")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="how much to log (default %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    threading.stack_size(THREAD_STACK_BYTES)
    fd_limit = raise_descriptor_limit()
    try:
        tls = tls_context(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        print(f"server3.py: cannot use the TLS certificate and key: {exc}", file=sys.stderr)
        return 1
    try:
        server = ChatServer(args.host, args.port, max_clients=args.max_clients,
                            name_timeout=args.name_timeout, history=args.history,
                            rate_limit=args.rate_limit, burst=args.burst,
                            resume_window=args.resume_window, tls=tls)
    except OSError as exc:
        why = "is already in use" if exc.errno == 98 else f"cannot be used: {exc.strerror or exc}"
        print(f"server3.py: port {args.port} on {args.host} {why}.", file=sys.stderr)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        server.shutdown()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    host, port = server.address
    shown = f"[{host}]" if ":" in host else host
    log.info("Panda Chat listening on %s:%d%s; up to %s (file-descriptor limit %d)",
             shown, port, " with TLS" if tls else "", _pandas(server.max_clients), fd_limit)
    with server:
        server.serve_forever()
    print("Panda Chat server stopped. Goodbye from the grove!", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
