"""The abuse scenarios: what one mischievous student's script does to Panda Chat.

    python3 bench/abuse.py                 # every scenario, full size: 5-10 min
    python3 bench/abuse.py --quick         # smaller counts, 3 s floods: 1-3 min
    python3 bench/abuse.py --scenarios mass_rst,name_flood
    python3 bench/abuse.py --per-address-off   # server3.py --max-per-address 0, if it has it

Only loopback is ever a target: server3.py listens on 127.0.0.1, the probe pair
connects from 127.0.0.1, and the attackers bind their sockets to 127.0.A.B
(B from 1 to 254, A from 1 up), at most PER_ADDRESS (16) per address, so that a
per-address limit (server3.py --max-per-address, default 16) lets them all in
and the scenario measures what the attack costs the server, not its refusal.
Every wait is bounded (the longest: 60 s for the server to get idle), so a
hung server makes the run longer, never endless.

    mass_rst      10,000 registered idle pandas all close at once with a reset (RST)
    mass_fin      the same, with a normal close (FIN)
    empty_lines   50 registered connections stream "\\n" as fast as the socket takes it
    name_flood    2,000 connections never choose a name, streaming invalid ones
                  ("*", empty and over-long lines) as fast as they can
    byte_stream   50 registered connections stream bytes without any newline
    resume_flood  4 connections send "@resume WRONGCODE" as fast as they can

A flood lasts flood_s (10 s), then the attackers close. They read everything the
server sends them as fast as they can, so the server is never held back by a
full socket and what it sends per byte it reads is its amplification.

Each scenario runs twice, each time against a fresh server3.py with its own
defaults (flood control on; only --max-clients is raised for 10,000 attackers
plus the pair), logging at INFO to bench/results/logs/abuse-SCENARIO-MODE.log:
- "digest": the probe pair chats throughout; after the attack's last action
  (the mass close, or the end of the flood) the server must get back to idle.
- "sigterm": the same attack with SIGTERM sent in the middle of it (mass:
  MASS_SIGTERM_AFTER_S after the close; floods: halfway through).

The probe pair: Alice and Bob, two ordinary pandas from 127.0.0.1. Alice
whispers Bob a line (@whisper Bob SEQ SEND_NS) 9 times a second from before
the attack until the server is idle again. A whisper, not a broadcast: to
10,000 idle pandas the probe would itself be a load of 90,000 deliveries a
second. 9, not 10: the default flood control allows 10 lines a second, and 10
would be right at its limit. Even so, after a stall of over 5 s Alice's queued
lines exceed her burst of 50 and her own flood control delays the rest: the
table says when that happened ("slowed"), and "longest silence" is not
affected by it.

The figures (one table row per scenario: the digest run, and the SIGTERM run's
exit):
- probe worst / p99 ms: from Alice's send to Bob's receipt. A line never
  delivered counts with the time it had waited when the probe stopped; then
  the figure is a lower bound, shown "≥". probe lost: never delivered (Bob
  waits for the last lines until none came for DRAIN_IDLE_S).
- probe longest silence ms: the longest time Bob got nothing while Alice was
  sending; 111 ms (her pace) when all is well.
- server cores (attack): the server's CPU (user + system, /proc/PID/stat) over
  the flood, or for a mass close from the close until idle.
- time to idle s: from the attack's last action until the server uses under
  IDLE_CORES (5 %) of a core for IDLE_WINDOW_S (0.5 s) with at most
  IDLE_THREAD_SLACK threads more than before the attackers came; "> 60": not
  within the bound. For a mass close this is the time to digest it.
- SIGTERM to exit s, exit code: of the SIGTERM run; "killed" = not exited
  within stop_grace_s (10 s), then SIGKILL (exit code -9).
- traceback: "Traceback" in the server's output in either run.
- log lines: written by the server from the attack's start until idle.
- flood MiB sent / server read / server sent, and their ratio: at the end of
  the flood, from the attackers' counters and /proc/net/tcp's queues (see
  in_flight()). What the server read it may not have acted on yet, so a
  server that is behind shows a lower amplification than it has.

The probe pair, the /proc watcher and the mass close run at real-time
priority when allowed (see Realtime; --no-realtime turns that off), so that a
server with thousands of runnable threads does not starve the measuring.

Printed: one markdown table; written: every figure as JSON to bench/results/
(or --json PATH). Ctrl+C or SIGTERM stops the run, the attackers and the
server. Linux only (figures come from /proc).
"""
from __future__ import annotations

import argparse
import errno
import itertools
import json
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the "bench" package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import HOST, LINGER_RESET, WorkerPool, cpu_seconds
from bench.run import code_version, machine
from bench.scenarios import percentile_ms, wait_for_quiet
from bench.servers import REPO, ServerProcess, process_cpu_s

RESULTS = REPO / "bench" / "results"
SERVER = [sys.executable, str(REPO / "server3.py"), "--host", "{host}", "--port", "{port}",
          "--log-level", "INFO"]
# server3.py's own default: the most connections at once. The mass scenarios
# need the attackers plus the probe pair, so then (only) --max-clients is raised.
SERVER_MAX_CLIENTS = 10_000

# Connections per source address: the default of the per-address limit.
PER_ADDRESS = 16
# Where the probe pair connects from; attackers use 127.0.1.1 and up.
PROBE_SOURCE = "127.0.0.1"
# Processes that run the attackers: one per core, as bench/run.py's workers.
ATTACKERS = 2
# Connections an attacker process has connecting (not yet welcomed) at once.
CONNECT_CONCURRENCY = 500
# Linux's IP_BIND_ADDRESS_NO_PORT: bind the source address, leave the port to connect().
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
# An attacker's own send buffer. On a real network it is the attacker's
# machine's memory; on loopback it is this machine's, and left to autotune
# (4 MiB each) 2,000 flooders pushed the shared TCP memory past the kernel's
# pressure line (net.ipv4.tcp_mem), which slowed every socket here, the
# probe's included: a cost of testing on one machine, not of the server. The
# server's side stays full either way (its receive buffer is 64 KiB).
ATTACKER_SNDBUF = 64 * 1024
# What a flooder writes at once, and reads at once.
CHUNK = 64 * 1024
# No attacker process sends more than this in one flood, however fast it goes.
FLOOD_BYTES_CAP = 16 * 1024**3
# How often an attacker looks at its pipe and its deadlines while busy.
POLL_S = 0.05

# Alice's whispers a second (see the module docstring: under the default 10).
PROBE_RATE = 9.0
# The probe pair's names, and how long each may take to be welcomed.
PROBE_NAMES = ("Alice", "Bob")
PROBE_CONNECT_TIMEOUT_S = 15.0

# Idle: the server uses under this many cores over IDLE_WINDOW_S, and has at
# most IDLE_THREAD_SLACK threads more than before the attackers connected.
IDLE_CORES = 0.05
IDLE_WINDOW_S = 0.5
IDLE_THREAD_SLACK = 2
# How often the server's CPU and threads are read from /proc.
SAMPLE_S = 0.1
# Before the attack, the server settles from the attackers' registration (bounded).
QUIET_TIMEOUT_S = 15.0
# SIGTERM in a mass scenario goes this long after the last close.
MASS_SIGTERM_AFTER_S = 0.3
# Replies from attacker processes may take this much longer than their own deadline.
REPLY_MARGIN_S = 15.0
# The real-time priority (SCHED_RR) of the coordinator's threads and of the
# attackers' mass close; see realtime().
REALTIME_PRIORITY = 1
# After Alice stops, Bob waits until no line of hers came for this long (bounded by drain_s).
DRAIN_IDLE_S = 2.0


class Realtime:
    """Whether the measuring threads run at real-time priority (SCHED_RR).

    On a 2-core machine a server with thousands of runnable threads would
    otherwise starve the probe pair, the watcher and the attackers' close: the
    figures would then include the generator waiting for a CPU, which on a real
    network it has of its own. So the coordinator's threads (which only block
    or read /proc) and the attackers' close (one short burst of system calls)
    run at SCHED_RR priority 1, above every normal thread; the flooding itself
    and the server run at normal priority. SCHED_RESET_ON_FORK: nothing started
    from a real-time thread (the server, the attackers, threads) inherits it.
    Without the privilege (or with --no-realtime) everything runs normally.
    """

    wanted = True

    @classmethod
    def enter(cls) -> bool:
        if not cls.wanted:
            return False
        try:
            os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK,
                                  os.sched_param(REALTIME_PRIORITY))
        except (OSError, AttributeError):
            return False
        return True

    @staticmethod
    def leave() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except (OSError, AttributeError):
            pass  # was not real-time


# --- the scenarios ---------------------------------------------------------------------------


def _name_flood_chunk() -> bytes:
    """Invalid names: mostly "*" (refused: not a name), some empty lines, one over-long."""
    return b"*\n" * 28_000 + b"\n" * 2_000 + b"y" * 5_000 + b"\n"


@dataclass(frozen=True)
class AbuseParams:
    attackers: int  # connections
    register: bool  # whether each picks a name (and waits for "* welcome:") first
    close: str = ""  # mass scenarios: "rst" or "fin", all at once; floods: ""
    payload: bytes = b""  # floods: what each connection writes, again and again
    flood_s: float = 10.0
    connect_timeout_s: float = 30.0  # for one connection to be welcomed (or greeted)
    open_timeout_s: float = 180.0  # for all of them
    idle_timeout_s: float = 60.0  # for the server to get back to idle after the attack
    lead_s: float = 2.0  # the probe chats this long before the attack
    tail_s: float = 1.0  # ... and this long after the server is idle again
    drain_s: float = 30.0  # after Alice stops, Bob may wait this long for her lines at most
    stop_grace_s: float = 10.0  # SIGTERM gets this long before SIGKILL (the target is 2 s)


ABUSE: dict[str, AbuseParams] = {
    "mass_rst": AbuseParams(10_000, register=True, close="rst"),
    "mass_fin": AbuseParams(10_000, register=True, close="fin"),
    "empty_lines": AbuseParams(50, register=True, payload=b"\n" * CHUNK),
    "name_flood": AbuseParams(2_000, register=False, payload=_name_flood_chunk()),
    "byte_stream": AbuseParams(50, register=True, payload=b"x" * CHUNK),
    "resume_flood": AbuseParams(4, register=False,
                                payload=b"@resume WRONGCODE\n" * (CHUNK // 18)),
}


def sized(name: str, size: str) -> AbuseParams:
    """The parameters of a scenario at a size: full, quick (about a minute in
    all) or tiny (the smoke test: seconds)."""
    p = ABUSE[name]
    if size == "quick":
        return replace(p, attackers=min(p.attackers, 1_000 if p.close else 300), flood_s=3.0,
                       idle_timeout_s=15.0, drain_s=10.0)
    if size == "tiny":
        return replace(p, attackers=min(p.attackers, 40), flood_s=0.3, idle_timeout_s=2.0,
                       connect_timeout_s=10.0, open_timeout_s=20.0, lead_s=0.5, tail_s=0.2,
                       drain_s=1.0, stop_grace_s=3.0)
    return p


def source_address(index: int) -> str:
    """The source address of attacker connection index: PER_ADDRESS per address,
    from 127.0.1.1 on (never 127.0.0.x, the probe's)."""
    slot = index // PER_ADDRESS
    return f"127.0.{1 + slot // 254}.{1 + slot % 254}"


# --- the attacker processes ------------------------------------------------------------------


@dataclass
class Opening:
    """A connection being opened by an attacker: connected yet, and the end of what it read."""

    sock: socket.socket
    name: bytes  # sent once connected; b"" when it is not to register
    since: float
    connected: bool = False
    tail: bytes = b""


class Attacker:
    """One attacker process: its connections, on one epoll, obeying its pipe.

    Commands: open (connect, and register or wait for the banner), flood
    (write payload to every connection and read what comes back, until a
    deadline), close (all at once, by RST or FIN), quit.
    """

    def __init__(self, pipe: Connection, address: tuple[str, int]) -> None:
        self.pipe = pipe
        self.address = address
        self.epoll = select.epoll()
        self.socks: list[socket.socket] = []

    def serve(self) -> None:
        while True:
            try:
                op, args = self.pipe.recv()
            except (EOFError, OSError):  # the coordinator is gone
                op, args = "quit", {}
            if op == "quit":
                break
            try:
                reply = getattr(self, f"cmd_{op}")(**args)
            except Exception as exc:  # reported to the coordinator, which gives up
                reply = {"error": f"{op}: {type(exc).__name__}: {exc}"}
            reply["cpu_s"] = cpu_seconds()
            self.pipe.send(reply)
        for sock in self.socks:
            _reset(sock)

    def _stop_asked(self) -> bool:
        return self.pipe.poll(0)

    def cmd_open(self, indexes: list[int], register: bool, timeout: float,
                 total_timeout: float) -> dict[str, Any]:
        """Connect one socket per index from its source address; with register,
        send the name a<index> and wait for "* welcome:", else for any byte."""
        pending = list(reversed(indexes))
        waiting: dict[int, Opening] = {}
        errors: dict[str, int] = {}
        deadline = time.monotonic() + total_timeout

        def fail(fd: int, why: str) -> None:
            _reset(waiting.pop(fd).sock)
            self.epoll.unregister(fd)
            errors[why] = errors.get(why, 0) + 1

        while (pending or waiting) and time.monotonic() < deadline:
            while pending and len(waiting) < CONNECT_CONCURRENCY:
                index = pending.pop()
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, ATTACKER_SNDBUF)
                sock.bind((source_address(index), 0))
                code = sock.connect_ex(self.address)
                if code not in (0, errno.EINPROGRESS):
                    sock.close()
                    why = errno.errorcode.get(code, str(code))
                    errors[why] = errors.get(why, 0) + 1
                    continue
                name = f"a{index}\n".encode() if register else b""
                waiting[sock.fileno()] = Opening(sock, name, time.monotonic())
                self.epoll.register(sock.fileno(), select.EPOLLOUT)
            for fd, _ in self.epoll.poll(POLL_S):
                one = waiting[fd]
                if not one.connected:
                    code = one.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        fail(fd, errno.errorcode.get(code, str(code)))
                        continue
                    one.connected = True
                    if one.name:
                        one.sock.send(one.name)
                    self.epoll.modify(fd, select.EPOLLIN)
                    continue
                try:
                    data = one.sock.recv(CHUNK)
                except OSError as exc:
                    fail(fd, errno.errorcode.get(exc.errno or 0, str(exc)))
                    continue
                if not data:
                    fail(fd, "closed")
                    continue
                seen = one.tail + data
                if register and b"* welcome:" not in seen:
                    refused = [word for word in (b"full", b"error", b"bye")
                               if b"* " + word + b":" in seen]
                    if refused:
                        fail(fd, refused[0].decode())
                    else:
                        one.tail = seen[-64:]
                    continue
                del waiting[fd]
                self.epoll.unregister(fd)
                self.socks.append(one.sock)
            now = time.monotonic()
            for fd in [fd for fd, one in waiting.items() if now - one.since > timeout]:
                fail(fd, "timeout")
        for fd in list(waiting):
            fail(fd, "timeout")
        errors["not tried"] = len(pending)
        return {"ok": len(self.socks), "errors": {k: v for k, v in errors.items() if v}}

    def cmd_flood(self, payload: bytes, duration_s: float) -> dict[str, Any]:
        """Write payload to every connection whenever it can take more, read all
        that comes back, for duration_s (or until told to stop, or the cap)."""
        by_fd = {sock.fileno(): sock for sock in self.socks}
        for fd in by_fd:
            self.epoll.register(fd, select.EPOLLIN | select.EPOLLOUT)
        sent = received = 0
        dead: set[int] = set()
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline and sent < FLOOD_BYTES_CAP and not self._stop_asked():
            for fd, events in self.epoll.poll(POLL_S):
                sock = by_fd[fd]
                try:
                    if events & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                        data = sock.recv(CHUNK)
                        received += len(data)
                        if not data:
                            raise ConnectionResetError
                    if events & select.EPOLLOUT:
                        sent += sock.send(payload)
                except BlockingIOError:
                    pass
                except OSError:
                    dead.add(fd)
                    self.epoll.unregister(fd)
        for fd in by_fd.keys() - dead:
            self.epoll.unregister(fd)
        return {"sent": sent, "received": received, "dead": len(dead)}

    def cmd_close(self, how: str) -> dict[str, Any]:
        """Close every connection, all at once: "rst" with SO_LINGER 0, "fin"
        with a normal close (after reading what is waiting: unread data would
        make the kernel send a reset instead)."""
        realtime = Realtime.enter()
        drained = 0
        for sock in self.socks:
            if how == "fin":
                drained += _drain(sock)
        for sock in self.socks:
            if how == "rst":
                _reset(sock)
            else:
                sock.close()
        closed = len(self.socks)
        self.socks = []
        Realtime.leave()
        return {"closed": closed, "drained": drained, "realtime": realtime}


def _drain(sock: socket.socket) -> int:
    got = 0
    for _ in range(64):  # bounded: an idle panda has a few KiB waiting at most
        try:
            data = sock.recv(CHUNK)
        except OSError:
            return got
        if not data:
            return got
        got += len(data)
    return got


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    except OSError:
        pass  # already gone
    sock.close()


def attacker_main(pipe: Connection, address: tuple[str, int], realtime: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator stops us
    Realtime.wanted = realtime
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    Attacker(pipe, address).serve()


def attacker_pool(count: int, address: tuple[str, int]) -> WorkerPool:
    """The attacker processes of one run: loadgen's pool, running attacker_main."""
    return WorkerPool(count, address, main=attacker_main, extra=(Realtime.wanted,),
                      label="attacker")


class Probe:
    """Alice whispers Bob "SEQ SEND_NS" rate times a second; Bob stamps what arrives.

    Three threads of the coordinator (Alice's sender, Alice's reader, Bob's
    reader); they only block on their own socket or on a timed wait.
    """

    def __init__(self, port: int, rate: float, max_s: float) -> None:
        self.port = port
        self.rate = rate
        self.max_lines = int(rate * max_s) + 1  # the sender's bound in count
        self.sent_ns: list[int] = []
        self.recv_ns: dict[int, int] = {}
        self.slow_notices = 0  # "* slow:" lines to Alice: her own flood control held her back
        self.ended = ""  # why a socket of the pair gave up, if one did
        self._stop_sending = threading.Event()
        self._closing = threading.Event()  # the readers stop too
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def connect(self, timeout: float) -> None:
        for name in PROBE_NAMES:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._socks.append(sock)
            sock.bind((PROBE_SOURCE, 0))
            sock.settimeout(timeout)
            sock.connect((HOST, self.port))
            sock.sendall(name.encode() + b"\n")
            seen, deadline = b"", time.monotonic() + timeout
            while b"* welcome:" not in seen:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} was not welcomed in {timeout:g} s")
                data = sock.recv(CHUNK)
                if not data:
                    raise ConnectionError(f"{name} was not welcomed: {seen[-200:]!r}")
                seen = seen[-200:] + data
            sock.settimeout(SAMPLE_S)

    def start(self) -> None:
        alice, bob = self._socks
        for target, args in ((self._send, (alice,)), (self._read, (alice, False)),
                             (self._read, (bob, True))):
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _send(self, sock: socket.socket) -> None:
        Realtime.enter()
        start = time.monotonic_ns()
        gap = 1e9 / self.rate
        for seq in range(self.max_lines):
            delay = (start + seq * gap - time.monotonic_ns()) / 1e9
            if self._stop_sending.wait(max(0.0, delay)):
                return
            sent = time.monotonic_ns()
            self.sent_ns.append(sent)
            try:
                sock.sendall(b"@whisper Bob %d %d\n" % (seq, sent))
            except OSError as exc:
                self.ended = self.ended or f"Alice could not send: {exc}"
                return

    def _read(self, sock: socket.socket, is_bob: bool) -> None:
        Realtime.enter()
        partial = b""
        while not self._closing.is_set():
            try:
                data = sock.recv(CHUNK)
            except TimeoutError:
                continue
            except OSError as exc:
                self.ended = self.ended or f"{'Bob' if is_bob else 'Alice'}: {exc}"
                return
            now = time.monotonic_ns()
            if not data:
                self.ended = self.ended or f"{'Bob' if is_bob else 'Alice'}: closed"
                return
            lines = (partial + data).split(b"\n")
            partial = lines.pop()
            for line in lines:
                if is_bob and line.startswith(b"* whisper: Alice: "):
                    try:
                        seq = int(line.split(b" ")[3])
                    except (IndexError, ValueError):
                        continue
                    self.recv_ns.setdefault(seq, now)
                elif line.startswith(b"* slow:"):
                    self.slow_notices += 1

    def stop(self, drain_s: float) -> dict[str, Any]:
        """Stop sending; let Bob wait for the last lines (until none came for
        DRAIN_IDLE_S, at most drain_s); the figures.

        A line never delivered counts as lost, and in the latencies with the
        time it had waited when the probe stopped: then the worst and the
        percentiles are lower bounds ("probe_censored")."""
        sending = self._threads[0] if self._threads else None
        self._stop_sending.set()
        if sending is not None:
            sending.join(2.0)
        deadline = time.monotonic() + drain_s
        progress, progress_at = -1, time.monotonic()
        while len(self.recv_ns) < len(self.sent_ns) and not self.ended:
            now = time.monotonic()
            if len(self.recv_ns) != progress:
                progress, progress_at = len(self.recv_ns), now
            if now >= deadline or now - progress_at >= DRAIN_IDLE_S:
                break
            time.sleep(0.05)
        self.close()
        end = time.monotonic_ns()
        sent = list(self.sent_ns)
        delivered = sorted(self.recv_ns[seq] - sent_at for seq, sent_at in enumerate(sent)
                           if seq in self.recv_ns)
        missing = [end - sent_at for seq, sent_at in enumerate(sent) if seq not in self.recv_ns]
        latencies = sorted(delivered + missing)
        # The longest time Bob heard nothing from Alice while she was sending (or
        # until the end, if lines were still missing): how long the server froze,
        # whatever held up each line after (such as Alice's own flood control).
        arrivals = sorted(self.recv_ns.values())
        if sent:
            arrivals = [sent[0], *arrivals, end if missing else sent[-1]]
        silence = max((later - earlier for earlier, later in itertools.pairwise(arrivals)),
                      default=0)
        return {"probe_sent": len(sent), "probe_lost": len(missing),
                "probe_censored": bool(missing),
                "probe_worst_ms": round(latencies[-1] / 1e6, 1) if latencies else None,
                "probe_p99_ms": percentile_ms(latencies, 0.99),
                "probe_p50_ms": percentile_ms(latencies, 0.50),
                "probe_delivered_worst_ms": round(delivered[-1] / 1e6, 1) if delivered else None,
                "probe_silence_ms": round(silence / 1e6, 1),
                "probe_slow_notices": self.slow_notices, "probe_ended": self.ended}

    def close(self) -> None:
        self._stop_sending.set()
        self._closing.set()
        for thread in self._threads:
            thread.join(1.0)
        for sock in self._socks:
            sock.close()


# --- watching the server --------------------------------------------------------------------


class Watcher:
    """Reads the server's CPU seconds and thread count every SAMPLE_S in a thread."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.samples: list[tuple[float, float, int]] = []  # monotonic, cpu_s, threads
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        Realtime.enter()
        while not self._stop.is_set():
            try:
                sample = (time.monotonic(), process_cpu_s(self.server.pid),
                          self.server.status()["threads"])
            except (OSError, KeyError, IndexError, ValueError):
                return  # the server is gone
            with self._lock:
                self.samples.append(sample)
            self._stop.wait(SAMPLE_S)

    def cores(self, start: float, end: float) -> float | None:
        """Cores used between two moments (from the samples nearest inside)."""
        with self._lock:
            inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return round((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]), 2)

    def peak_cores(self, start: float, end: float) -> float | None:
        """The most cores used over any IDLE_WINDOW_S between start and end."""
        with self._lock:
            inside = [s for s in self.samples if start <= s[0] <= end]
        best = None
        for i, first in enumerate(inside):
            for last in inside[i + 1:]:
                if last[0] - first[0] >= IDLE_WINDOW_S:
                    rate = (last[1] - first[1]) / (last[0] - first[0])
                    best = rate if best is None else max(best, rate)
                    break
        return None if best is None else round(best, 2)

    def idle_since(self, after: float, threads_limit: int) -> float | None:
        """The start of the first IDLE_WINDOW_S after `after` over which the server
        was idle (under IDLE_CORES, at most threads_limit threads); None if none yet."""
        with self._lock:
            inside = [s for s in self.samples if s[0] >= after]
        for i, first in enumerate(inside):
            for last in inside[i + 1:]:
                if last[0] - first[0] >= IDLE_WINDOW_S:
                    quiet = (last[1] - first[1]) / (last[0] - first[0]) < IDLE_CORES
                    if quiet and first[2] <= threads_limit and last[2] <= threads_limit:
                        return first[0]
                    break
        return None

    def threads_now(self) -> int:
        with self._lock:
            return self.samples[-1][2] if self.samples else 0


def in_flight(port: int) -> tuple[int, int]:
    """Bytes on their way between the attackers and the server on port, from
    /proc/net/tcp: sent by the attackers and not yet read by the server (their
    send queues and its receive queues), and sent by the server and not yet read
    by the attackers (the other way round). The probe's connections are left out."""
    probe = socket.inet_aton(PROBE_SOURCE)
    to_server = to_attackers = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            tx_queue, rx_queue = (int(part, 16) for part in queues.split(":"))
            local_ip, _, local_port = local.partition(":")
            remote_ip, _, remote_port = remote.partition(":")
            server_end = int(local_port, 16) == port
            if not server_end and int(remote_port, 16) != port:
                continue  # not a connection to the server
            client_ip = remote_ip if server_end else local_ip
            if struct.pack("<I", int(client_ip, 16)) == probe:
                continue
            to_server += rx_queue if server_end else tx_queue
            to_attackers += tx_queue if server_end else rx_queue
    return to_server, to_attackers


def log_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def server_help() -> str:
    try:
        return subprocess.run([sys.executable, str(REPO / "server3.py"), "--help"],
                              capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def server_command(p: AbuseParams, per_address_off: bool, has_per_address: bool) -> list[str]:
    command = list(SERVER)
    needed = p.attackers + len(PROBE_NAMES)
    if needed > SERVER_MAX_CLIENTS:
        command += ["--max-clients", str(needed)]
    if per_address_off and has_per_address:
        command += ["--max-per-address", "0"]
    return command


# --- one run ---------------------------------------------------------------------------------


def run_one(name: str, p: AbuseParams, mode: str, command: list[str],
            log_dir: Path) -> dict[str, Any]:
    """One scenario, one mode ("digest" or "sigterm"), a fresh server; never raises
    for a failed run (the result has "error" then). The server is always stopped."""
    result: dict[str, Any] = {"scenario": name, "mode": mode, "attackers": p.attackers}
    log_path = log_dir / f"abuse-{name}-{mode}.log"
    server = ServerProcess(f"panda-{name}", command, log_path)
    probe: Probe | None = None
    started = time.monotonic()
    try:
        server.start()
        result["server_pid"] = server.pid
        with Watcher(server) as watcher, \
                attacker_pool(ATTACKERS, (HOST, server.port)) as pool:
            result["attacker_pids"] = [process.pid for process in pool.processes]
            probe = Probe(server.port, PROBE_RATE, max_s=3 * p.open_timeout_s)
            probe.connect(PROBE_CONNECT_TIMEOUT_S)
            time.sleep(3 * SAMPLE_S)
            baseline = server.status()["threads"]
            result["threads_baseline"] = baseline
            shares = [list(range(p.attackers))[i::ATTACKERS] for i in range(ATTACKERS)]
            opened_at = time.monotonic()
            opened = pool.call("open", [{"indexes": share, "register": p.register,
                                         "timeout": p.connect_timeout_s,
                                         "total_timeout": p.open_timeout_s}
                                        for share in shares], p.open_timeout_s + REPLY_MARGIN_S)
            result["open_s"] = round(time.monotonic() - opened_at, 2)
            result["attackers_open"] = sum(reply["ok"] for reply in opened)
            errors: dict[str, int] = {}
            for reply in opened:
                for why, count in reply["errors"].items():
                    errors[why] = errors.get(why, 0) + count
            result["attackers_open_errors"] = errors
            attacker_cpu_s = sum(reply["cpu_s"] for reply in opened)
            result["threads_attacked"] = server.status()["threads"]
            result["quiet_wait_s"] = wait_server_quiet(watcher, QUIET_TIMEOUT_S)
            probe.start()
            time.sleep(p.lead_s)
            lines_before = log_lines(log_path)
            attack_at = time.monotonic()
            if p.close:
                replies = pool.call("close", [{"how": p.close}] * ATTACKERS, REPLY_MARGIN_S)
                last_action = time.monotonic()
                result["closed"] = sum(reply["closed"] for reply in replies)
                result["close_s"] = round(last_action - attack_at, 3)
                if mode == "sigterm":
                    time.sleep(MASS_SIGTERM_AFTER_S)
                    result.update(sigterm(server, p.stop_grace_s, attack_at))
            else:
                pool.send("flood", [{"payload": p.payload, "duration_s": p.flood_s}] * ATTACKERS)
                if mode == "sigterm":
                    time.sleep(p.flood_s / 2)
                    result.update(sigterm(server, p.stop_grace_s, attack_at))
                replies = pool.replies("flood", p.flood_s + REPLY_MARGIN_S)
                to_server, to_attackers = in_flight(server.port)
                pool.call("close", [{"how": "fin"}] * ATTACKERS, REPLY_MARGIN_S)
                last_action = time.monotonic()
                sent = sum(reply["sent"] for reply in replies)
                received = sum(reply["received"] for reply in replies)
                # What the server read, and what it sent back (in the kernel's
                # hands, read by the attackers or not) by the end of the flood.
                taken, answered = max(0, sent - to_server), received + to_attackers
                result.update(attack_bytes_sent=sent, attack_bytes_received=received,
                              server_read=taken, server_sent=answered,
                              unread_at_end=to_server,
                              amplification=round(answered / taken, 2) if taken else None,
                              attackers_cut_off=sum(reply["dead"] for reply in replies))
            result["attack_s"] = round(last_action - attack_at, 2)
            attacker_cpu_s = sum(reply["cpu_s"] for reply in replies) - attacker_cpu_s
            result["attacker_cores"] = round(attacker_cpu_s / max(result["attack_s"], 0.1), 2)
            if mode == "digest":
                result.update(wait_idle(watcher, p, attack_at, last_action,
                                        baseline + IDLE_THREAD_SLACK))
                time.sleep(p.tail_s)
                result["log_lines"] = log_lines(log_path) - lines_before
                result.update(probe.stop(p.drain_s))
                result.update(sigterm(server, p.stop_grace_s))
            else:
                result["log_lines"] = log_lines(log_path) - lines_before
                result.update(probe.stop(0.0))
    except Exception as exc:  # one failed run must not end the others
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
    finally:
        if probe is not None:
            probe.close()
        stop = server.stop(p.stop_grace_s)
        result.setdefault("sigterm_s", stop["stop_s"])
        result.setdefault("killed", stop["killed"])
        result.setdefault("exit_code", stop["exit_code"])
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        result["traceback_in_log"] = "Traceback" in text
        result["log_lines_total"] = text.count("\n")
        result["run_s"] = round(time.monotonic() - started, 1)
    return result


def sigterm(server: ServerProcess, grace: float,
            attack_at: float | None = None) -> dict[str, Any]:
    """SIGTERM now (SIGKILL after grace): how long to exit, and how."""
    sent_at = time.monotonic()
    stop = server.stop(grace)
    out = {"sigterm_s": stop["stop_s"], "killed": stop["killed"], "exit_code": stop["exit_code"]}
    if attack_at is not None:
        out["sigterm_after_attack_s"] = round(sent_at - attack_at, 2)
    return out


def wait_server_quiet(watcher: Watcher, timeout: float) -> float:
    """Wait (bounded) until the server is under IDLE_CORES; how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        time.sleep(SAMPLE_S)
        if watcher.idle_since(started, 1 << 30) is not None:
            break
    return round(time.monotonic() - started, 2)


def wait_idle(watcher: Watcher, p: AbuseParams, attack_at: float, last_action: float,
              threads_limit: int) -> dict[str, Any]:
    """Wait until the server is idle after the attack's last action (bounded)."""
    idle_at = None
    while time.monotonic() - last_action < p.idle_timeout_s + IDLE_WINDOW_S:
        idle_at = watcher.idle_since(last_action, threads_limit)
        if idle_at is not None:
            break
        time.sleep(SAMPLE_S)
    end = idle_at if idle_at is not None else time.monotonic()
    # A flood's attack is the flood; a mass close's is the digestion after it.
    attack_end = last_action if not p.close else end
    return {"idle_s": round(idle_at - last_action, 2) if idle_at is not None else None,
            "idle_from_attack_s": round(idle_at - attack_at, 2) if idle_at is not None else None,
            "idle_timeout_s": p.idle_timeout_s,
            "server_cores": watcher.cores(attack_at, max(attack_end, attack_at + 2 * SAMPLE_S)),
            "server_cores_peak": watcher.peak_cores(attack_at, end),
            "digest_cores": watcher.cores(last_action, end),
            "threads_at_idle": watcher.threads_now()}


# --- the report ------------------------------------------------------------------------------


COLUMNS = [
    ("scenario", "scenario"), ("probe_worst_ms", "probe worst ms"),
    ("probe_p99_ms", "probe p99 ms"), ("probe_lost", "probe lost"),
    ("probe_silence_ms", "probe longest silence ms"),
    ("probe_slowed", "probe slowed by its flood control"),
    ("server_cores", "server cores (attack)"), ("idle_s", "time to idle s"),
    ("sigterm_s", "SIGTERM to exit s"), ("exit_code", "exit code"),
    ("traceback", "traceback"), ("log_lines", "log lines"),
    ("bytes", "flood MiB: sent / server read / server sent"),
    ("amplification", "server sent / read"),
]


def row(digest: dict[str, Any], term: dict[str, Any]) -> dict[str, str]:
    """One table row from the digest run and the SIGTERM run of a scenario."""
    out = {"scenario": digest["scenario"]}
    if "error" in digest:
        out["probe_worst_ms"] = f"error: {digest['error'][:60]}"
    else:
        at_least = "≥ " if digest.get("probe_censored") else ""  # lines never delivered
        out["probe_worst_ms"] = at_least + show(digest.get("probe_worst_ms"))
        out["probe_p99_ms"] = at_least + show(digest.get("probe_p99_ms"))
        out["probe_lost"] = f"{digest['probe_lost']} of {digest['probe_sent']}"
        out["probe_slowed"] = "yes" if digest.get("probe_slow_notices") else "no"
        out["probe_silence_ms"] = show(digest.get("probe_silence_ms"))
        out["server_cores"] = show(digest.get("server_cores"))
        idle = digest.get("idle_s")
        out["idle_s"] = show(idle) if idle is not None else f"> {digest['idle_timeout_s']:g}"
        out["log_lines"] = show(digest.get("log_lines"))
        if "attack_bytes_sent" in digest:
            out["bytes"] = (f"{mib(digest['attack_bytes_sent'])} / "
                            f"{mib(digest['server_read'])} / "
                            f"{mib(digest['server_sent'])}")
            amplification = digest["amplification"]
            out["amplification"] = "-" if amplification is None else f"{amplification:g}x"
    if "error" in term and "sigterm_after_attack_s" not in term:
        out["sigterm_s"] = "error"
    else:
        seconds = term["sigterm_s"]
        out["sigterm_s"] = f"> {seconds:g} (killed)" if term["killed"] else show(seconds)
        out["exit_code"] = show(term["exit_code"])
    out["traceback"] = "yes" if digest["traceback_in_log"] or term["traceback_in_log"] else "no"
    return out


def show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def mib(count: int) -> str:
    return f"{count / 1024**2:,.1f}"


def table(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(label for _, label in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(one.get(key, "") for key, _ in COLUMNS) + " |" for one in rows]
    return "\n".join(lines)


# --- the command -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(ABUSE),
                        help="comma-separated (default: all of %(default)s)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="1,000 pandas for the mass scenarios, 300 for the name flood, "
                           "3 s floods: 1-3 min")
    size.add_argument("--tiny", action="store_true",
                      help="40 connections, 0.3 s floods: under a minute (the smoke test)")
    parser.add_argument("--per-address-off", action="store_true",
                        help="run server3.py with --max-per-address 0 (if it has that option)")
    parser.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                        help="before each run, wait up to S seconds for the machine to be "
                             "idle (for a shared machine; default %(default)g)")
    parser.add_argument("--no-realtime", action="store_true",
                        help="run the probe pair, the watcher and the mass close at normal "
                             "priority, not SCHED_RR (see Realtime)")
    parser.add_argument("--no-sigterm", action="store_true",
                        help="skip the SIGTERM repeat of each scenario")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="where to write every figure (default bench/results/abuse-TIME.json)")
    args = parser.parse_args(argv)
    args.scenarios = [word.strip() for word in args.scenarios.split(",") if word.strip()]
    for word in args.scenarios:
        if word not in ABUSE:
            parser.error(f"unknown scenario {word!r}; known: {', '.join(ABUSE)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped by kill as by Ctrl+C
    Realtime.wanted = not args.no_realtime
    realtime = Realtime.enter()  # this (main) thread: it sends SIGTERM and times the exit
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    help_text = server_help()
    has_per_address = "--max-per-address" in help_text
    if args.per_address_off and not has_per_address:
        print("server3.py has no --max-per-address: running it without.", file=sys.stderr)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    version = code_version()
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    rows: list[dict[str, str]] = []
    modes = ["digest"] if args.no_sigterm else ["digest", "sigterm"]
    try:
        for name in args.scenarios:
            p = sized(name, size)
            command = server_command(p, args.per_address_off, has_per_address)
            pair = []
            for mode in modes:
                busy = wait_for_quiet(args.quiet_wait)
                result = run_one(name, p, mode, command, RESULTS / "logs")
                result["busy_before_cores"] = busy
                runs.append(result)
                pair.append(result)
                print(f"{name:<13} {mode:<7} {result['run_s']:6.1f} s  "
                      f"{result.get('error', 'ok')}", file=sys.stderr, flush=True)
            rows.append(row(pair[0], pair[-1]))
    except KeyboardInterrupt:
        print("Interrupted: the table shows the runs done so far.", file=sys.stderr)
    elapsed = time.monotonic() - started
    report = {"started": stamp, "argv": sys.argv, "machine": machine(), "code": version,
              "size": size, "elapsed_s": round(elapsed, 1), "probe_rate": PROBE_RATE,
              "per_address_limit_option": has_per_address,
              "per_address_off": args.per_address_off and has_per_address,
              "realtime": realtime,
              "params": {name: {k: v for k, v in asdict(sized(name, size)).items()
                                if k != "payload"} for name in args.scenarios},
              "runs": runs}
    print(f"\n`python3 bench/abuse.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`"
          f" ({size}; {elapsed / 60:.1f} min; commit {version['commit'] or '?'}, "
          f"server3.py {version.get('server3.py', '?')}; probe {PROBE_RATE:g} whispers/s; "
          f"measuring threads {'real-time' if realtime else 'at normal priority'})\n")
    print(table(rows), flush=True)
    path = Path(args.json) if args.json else RESULTS / f"abuse-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"\nEvery figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
