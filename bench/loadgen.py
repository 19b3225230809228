"""The load generator: worker processes that each run many chat clients.

Not run by itself: the scenarios in bench/scenarios.py drive a WorkerPool, and
`python3 bench/run.py` runs the scenarios. Standard library only.

Each worker is a process of its own (forked) running one asyncio loop over its
share of the clients, so that the generator spreads over the cores instead of
being what gets measured; every reply carries the worker's CPU seconds so that a
reader can see how busy the generator was.

A worker obeys one command at a time from its pipe (see Worker.COMMANDS):

    connect      open clients and register their names (each waits for "* welcome:")
    arm          start counting the chat lines that the given senders will send
    run          send those lines (a burst, or paced), maybe churn, then wait for delivery
    wait         wait a while longer for lines still missing (late deliveries)
    read_paused  let the clients that stopped reading read again; did the server drop them?
    closed       wait until the server has closed every client (after SIGTERM)
    quit         close every client and end

A chat line the generator sends is "SEQ SEND_NS PAD": a per-sender sequence
number and the send time in nanoseconds on a system-wide monotonic clock, so
a receiver in any process can tell lost, duplicated and out-of-order lines and
the latency of each delivery.
"""

from __future__ import annotations

import asyncio
import errno
import multiprocessing
import resource
import selectors
import socket
import struct
import time
from array import array
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, ClassVar

HOST = "127.0.0.1"  # the generator only ever talks to loopback


def _pick_clock() -> Callable[[], int]:
    """perf_counter_ns when it is the system-wide monotonic clock (Linux), else monotonic_ns.

    Send and receive times come from different processes, so the clock must be one
    that every process reads alike: CLOCK_MONOTONIC is; a per-process counter is not.
    """
    perf = time.get_clock_info("perf_counter").implementation
    if perf == time.get_clock_info("monotonic").implementation:
        return time.perf_counter_ns
    return time.monotonic_ns


now_ns = _pick_clock()

# How often a waiting worker looks at its progress; short, so that a finished
# phase is noticed quickly (the delivery times themselves are stamped on receipt).
POLL_S = 0.05
# Clients one worker connects and registers at once: more than a textbook listen
# backlog (100), as in a real storm, but bounded.
CONNECT_CONCURRENCY = 500
# A churn client that has not finished its little act by then is abandoned.
CHURN_STEP_TIMEOUT_S = 5.0
# Sent by a churn client before it resets: half a chat line, no newline.
HALF_LINE = b"this line never en"
CHURN_KINDS = ("fin", "rst", "half", "noname")
# struct for SO_LINGER: on, 0 s, so that close() sends a reset (RST), not a FIN.
LINGER_RESET = struct.pack("ii", 1, 0)


def cpu_seconds() -> float:
    """User plus system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StampingSelector(selectors.EpollSelector):
    """An epoll selector that notes the time at which each select() returned.

    Every socket that select() reports ready had its data by then, so that time
    is the receive time of all of them, however long the loop then takes to run
    their callbacks one after another (which would otherwise count as latency).
    """

    stamp = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(timeout)
        self.stamp = now_ns()
        return ready


class Tally:
    """Counts the lines a set of senders send to the receivers of one worker."""

    def __init__(self, senders: list[str], lines: int, receivers: list[Conn]) -> None:
        self.index = {name.encode(): i for i, name in enumerate(senders)}
        self.lines = lines
        self.receivers = receivers
        self.expected = 0
        self.received = 0
        self.dups = 0
        self.order = 0  # a line that arrived after a later line from the same sender
        self.echoes = 0  # a client's own line sent back to it
        self.malformed = 0
        self.first_send_ns = 0
        self.last_send_ns = 0
        self.last_recv_ns = 0
        self.sent = 0
        self.latencies = array("q")
        self.done = asyncio.Event()
        for conn in receivers:
            conn.join_tally(len(senders), lines, conn.name_b in self.index)
            self.expected += conn.expected
        if self.expected == 0:
            self.done.set()

    def count(self, conn: Conn, line: bytes, now: int) -> None:
        name, _, rest = line.partition(b": ")
        sender = self.index.get(name)
        if sender is None:
            return  # not a line of this phase (a churn client, a join notice...)
        if name == conn.name_b:
            self.echoes += 1
            return
        try:
            seq_text, sent_text, _ = rest.split(b" ", 2)
            seq, sent = int(seq_text), int(sent_text)
        except ValueError:
            self.malformed += 1
            return
        seen = conn.seen[sender]
        if not 0 <= seq < self.lines or seen[seq]:
            self.dups += 1
            return
        seen[seq] = 1
        if seq < conn.last[sender]:
            self.order += 1
        else:
            conn.last[sender] = seq
        conn.got += 1
        self.received += 1
        self.latencies.append(now - sent)
        self.last_recv_ns = now
        if self.received == self.expected:
            self.done.set()

    def note_send(self, sent: int) -> None:
        if not self.first_send_ns:
            self.first_send_ns = sent
        self.last_send_ns = sent
        self.sent += 1

    def report(self) -> dict[str, Any]:
        complete = sum(1 for conn in self.receivers if conn.got == conn.expected)
        return {"expected": self.expected, "received": self.received, "dups": self.dups,
                "order": self.order, "echoes": self.echoes, "malformed": self.malformed,
                "first_send_ns": self.first_send_ns, "last_send_ns": self.last_send_ns,
                "last_recv_ns": self.last_recv_ns, "sent": self.sent,
                "receivers": len(self.receivers), "receivers_complete": complete,
                "latencies": self.latencies.tobytes()}


class Conn(asyncio.Protocol):
    """One chat client: registers its name, then hands each chat line to the tally."""

    def __init__(self, worker: Worker, name: str, paused: bool = False) -> None:
        self.worker = worker
        self.name = name
        self.name_b = name.encode()
        self.paused = paused  # stops reading once welcomed: a client that never reads
        self.draining = False  # reading again, only to see whether the server hung up
        self.transport: asyncio.Transport | None = None
        self.partial = b""
        self.welcome: asyncio.Future[str] = worker.loop.create_future()  # "" or why not
        self.first_data: asyncio.Future[None] = worker.loop.create_future()
        self.ended = ""  # "eof" or "reset" once the connection is gone
        self.bytes_in = 0
        self.seen: list[bytearray] = []
        self.last: list[int] = []
        self.got = 0
        self.expected = 0

    def join_tally(self, senders: int, lines: int, is_sender: bool) -> None:
        self.seen = [bytearray(lines) for _ in range(senders)]
        self.last = [-1] * senders
        self.got = 0
        self.expected = lines * (senders - 1 if is_sender else senders)

    # --- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if not self.first_data.done():
            self.first_data.set_result(None)
        if self.draining:
            return
        if self.partial:
            data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        tally = self.worker.tally
        now = self.worker.selector.stamp
        for line in lines:
            if line.startswith(b"* "):
                self._system_line(line)
            elif tally is not None and self.seen:
                tally.count(self, line, now)

    def eof_received(self) -> bool:
        self.ended = "eof"
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended:
            self.ended = "reset" if exc is not None else "eof"
        if not self.welcome.done():
            self.welcome.set_result("closed")
        if not self.first_data.done():
            self.first_data.set_result(None)

    # --- what the client does --------------------------------------------------

    def _system_line(self, line: bytes) -> None:
        if not self.welcome.done():
            if line.startswith(b"* welcome:"):
                self.welcome.set_result("")
                if self.paused and self.transport is not None:
                    self.transport.pause_reading()
            elif line.startswith((b"* full:", b"* error:", b"* bye:")):
                self.welcome.set_result(line[2:].split(b":", 1)[0].decode())
        elif line.startswith((b"* leave: ", b"* lost: ")):  # gone, or gone but may come back
            name = line.split(b" ", 3)[2]
            self.worker.leaves.add(name.decode(errors="replace"))
        elif line.startswith(b"* shutdown:"):
            self.worker.shutdown_notices += 1

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def reset(self) -> None:
        """Vanish with a TCP reset (RST)."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            except OSError:
                pass  # already gone
        self.transport.abort()


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        return errno.errorcode.get(exc.errno, str(exc)) if exc.errno else str(exc)
    return type(exc).__name__


class Worker:
    """One worker process: its clients, its tally, and the commands it obeys."""

    def __init__(self, loop: asyncio.AbstractEventLoop, selector: StampingSelector,
                 pipe: Connection, address: tuple[str, int]) -> None:
        self.loop = loop
        self.selector = selector
        self.pipe = pipe
        self.address = address
        self.clients: dict[str, Conn] = {}
        self.tally: Tally | None = None
        self.leaves: set[str] = set()  # names seen in "* leave:" or "* lost:" notices
        self.shutdown_notices = 0
        self.inbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def serve(self) -> None:
        self.loop.add_reader(self.pipe.fileno(), self._on_pipe)
        while True:
            op, args = await self.inbox.get()
            if op == "quit":
                break
            try:
                reply = await self.COMMANDS[op](self, **args)
            except Exception as exc:  # reported to the coordinator, which gives up
                reply = {"error": f"{op}: {type(exc).__name__}: {exc}"}
            reply["cpu_s"] = cpu_seconds()
            self.pipe.send(reply)
        self.loop.remove_reader(self.pipe.fileno())
        for conn in self.clients.values():
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)  # let the transports close

    def _on_pipe(self) -> None:
        try:
            message = self.pipe.recv()
        except (EOFError, OSError):  # the coordinator is gone
            message = ("quit", {})
        if message[0] == "quit":
            self.loop.remove_reader(self.pipe.fileno())
        self.inbox.put_nowait(message)

    # --- opening clients -----------------------------------------------------------

    async def open_client(self, conn: Conn, send_name: bool, rcvbuf: int | None = None,
                          mss: int | None = None) -> None:
        """Connect conn (and send its name at once, without waiting for the prompt).

        rcvbuf and mss are set before connect(), so that they hold from the
        start: a small receive window, and segments of a real network's size.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if mss is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
            await self.loop.sock_connect(sock, self.address)
            await self.loop.create_connection(lambda: conn, sock=sock)
        except BaseException:
            if conn.transport is not None:
                conn.transport.abort()
            else:
                sock.close()
            raise
        if send_name:
            conn.write(conn.name_b + b"\n")

    async def _register(self, name: str, timeout: float, gate: asyncio.Semaphore,
                        rcvbuf: int | None, mss: int | None, paused: bool) -> str:
        """Connect and register one client; "" when welcomed, else why not."""
        conn = Conn(self, name, paused)
        async with gate:
            try:
                await asyncio.wait_for(self._connect_and_join(conn, rcvbuf, mss), timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                why = _error_name(exc)
            else:
                why = conn.welcome.result()
        if why:
            if conn.transport is not None:
                conn.transport.abort()
            return why
        self.clients[name] = conn
        return ""

    async def _connect_and_join(self, conn: Conn, rcvbuf: int | None, mss: int | None) -> None:
        await self.open_client(conn, True, rcvbuf, mss)
        await asyncio.shield(conn.welcome)

    # --- commands --------------------------------------------------------------------

    async def cmd_connect(self, names: list[str], timeout: float, rcvbuf: int | None = None,
                          mss: int | None = None, paused: bool = False) -> dict[str, Any]:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        whys = await asyncio.gather(*(self._register(name, timeout, gate, rcvbuf, mss, paused)
                                      for name in names))
        errors = Counter(why for why in whys if why)
        welcomed = [name for name, why in zip(names, whys, strict=True) if not why]
        return {"ok": len(welcomed), "failed": len(names) - len(welcomed),
                "errors": dict(errors), "first_ok": welcomed[0] if welcomed else ""}

    async def cmd_arm(self, senders: list[str], lines: int) -> dict[str, Any]:
        receivers = [conn for conn in self.clients.values() if not conn.paused and not conn.ended]
        self.tally = Tally(senders, lines, receivers)
        return {"expected": self.tally.expected}

    async def cmd_run(self, senders: list[str], lines: int, start_ns: int, deadline_s: float,
                      idle_s: float, pad: int = 1, rate: float = 0.0,
                      churn: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send (a burst when rate is 0, else rate lines/s in all), then wait for delivery."""
        assert self.tally is not None, "arm first"
        deadline = self.loop.time() + deadline_s
        jobs: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self._send(senders, lines, start_ns, pad, rate))]
        if churn:
            jobs.append(asyncio.ensure_future(self.churn(start_ns=start_ns, **churn)))
        done, pending = await asyncio.wait(jobs, timeout=deadline_s)
        for job in pending:
            job.cancel()
        for job in done:
            error = job.exception()
            if error is not None:
                raise error
        outcome = await self._wait_delivery(deadline, idle_s)
        reply = {"outcome": outcome, "ended_ns": now_ns(), **self.tally.report()}
        if churn:
            reply["churn"] = jobs[1].result() if jobs[1] in done else {"unfinished": 1}
        return reply

    async def cmd_wait(self, timeout: float, idle_s: float) -> dict[str, Any]:
        assert self.tally is not None, "arm first"
        outcome = await self._wait_delivery(self.loop.time() + timeout, idle_s)
        return {"outcome": outcome, "ended_ns": now_ns(), **self.tally.report(),
                "leaves": sorted(self.leaves)}

    async def cmd_read_paused(self, names: list[str], timeout: float,
                              idle_s: float) -> dict[str, Any]:
        """Let the paused clients of names read again, until the server hangs up on
        them or sends them nothing for idle_s (then it had not dropped them)."""
        paused = [self.clients[name] for name in names
                  if name in self.clients and self.clients[name].paused]
        for conn in paused:
            conn.draining = True
            if conn.transport is not None and not conn.ended:
                conn.transport.resume_reading()
        deadline = self.loop.time() + timeout
        quiet_since, last_bytes = self.loop.time(), -1
        while any(not conn.ended for conn in paused) and self.loop.time() < deadline:
            total = sum(conn.bytes_in for conn in paused)
            if total != last_bytes:
                quiet_since, last_bytes = self.loop.time(), total
            elif self.loop.time() - quiet_since >= idle_s:
                break
            await asyncio.sleep(POLL_S)
        ended = Counter(conn.ended or "open" for conn in paused)
        return {"clients": len(paused), "eof": ended["eof"], "reset": ended["reset"],
                "open": ended["open"], "bytes": sum(conn.bytes_in for conn in paused),
                "leaves": sorted(self.leaves)}

    async def cmd_closed(self, timeout: float) -> dict[str, Any]:
        """Wait until every client has seen the server hang up (EOF or reset)."""
        deadline = self.loop.time() + timeout
        while any(not conn.ended for conn in self.clients.values()):
            if self.loop.time() >= deadline:
                break
            await asyncio.sleep(POLL_S)
        ended = Counter(conn.ended or "open" for conn in self.clients.values())
        return {"clients": len(self.clients), "closed": ended["eof"] + ended["reset"],
                "open": ended["open"], "shutdown_notices": self.shutdown_notices}

    COMMANDS: ClassVar[dict[str, Callable[..., Any]]] = {
        "connect": cmd_connect, "arm": cmd_arm, "run": cmd_run, "wait": cmd_wait,
        "read_paused": cmd_read_paused, "closed": cmd_closed}

    # --- sending -------------------------------------------------------------------------

    async def _send(self, senders: list[str], lines: int, start_ns: int, pad: int,
                    rate: float) -> None:
        mine = [(position, self.clients[name]) for position, name in enumerate(senders)
                if name in self.clients]
        filler = b"x" * max(1, pad)
        await asyncio.sleep(max(0.0, (start_ns - now_ns()) / 1e9))
        if rate > 0:
            await self._send_paced(mine, len(senders), lines, filler, start_ns, rate)
        else:
            await self._send_burst([conn for _, conn in mine], lines, filler)

    async def _send_burst(self, senders: list[Conn], lines: int, filler: bytes) -> None:
        """Every sender sends its lines as fast as it can, one write per line."""
        tally = self.tally
        assert tally is not None
        for seq in range(lines):
            for conn in senders:
                sent = now_ns()
                conn.write(b"%d %d %s\n" % (seq, sent, filler))
                tally.note_send(sent)
            await asyncio.sleep(0)  # let the replies in between rounds, as separate clients would

    async def _send_paced(self, mine: list[tuple[int, Conn]], senders: int, lines: int,
                          filler: bytes, start_ns: int, rate: float) -> None:
        """Line k of all (round-robin over the senders) goes out at start + k / rate."""
        tally = self.tally
        assert tally is not None
        gap_ns = 1e9 / rate
        schedule = sorted((seq * senders + position, seq, conn)
                          for position, conn in mine for seq in range(lines))
        for k, seq, conn in schedule:
            delay = (start_ns + k * gap_ns - now_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            sent = now_ns()
            conn.write(b"%d %d %s\n" % (seq, sent, filler))
            tally.note_send(sent)

    async def _wait_delivery(self, deadline: float, idle_s: float) -> str:
        """How the wait ended: complete, idle (no progress for idle_s) or deadline."""
        tally = self.tally
        assert tally is not None
        last_received, progress_at = -1, self.loop.time()
        while not tally.done.is_set():
            now = self.loop.time()
            if now >= deadline:
                return "deadline"
            if tally.received != last_received:
                last_received, progress_at = tally.received, now
            elif now - progress_at >= idle_s:
                return "idle"
            try:
                await asyncio.wait_for(tally.done.wait(), min(POLL_S, deadline - now))
            except asyncio.TimeoutError:
                pass
        return "complete"

    # --- churn ----------------------------------------------------------------------------

    async def churn(self, start_ns: int, numbers: list[int], rate: float) -> dict[str, int]:
        """Churn clients c<number>, rate per second, that connect, say a little and vanish;
        the number picks how (see CHURN_KINDS)."""
        jobs = []
        for k, number in enumerate(numbers):
            delay = (start_ns + k * 1e9 / rate - now_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            kind = CHURN_KINDS[number % len(CHURN_KINDS)]
            jobs.append(asyncio.ensure_future(self._churn_one(kind, f"c{number}")))
        outcomes = await asyncio.gather(*jobs)
        return dict(Counter(outcomes))

    async def _churn_one(self, kind: str, name: str) -> str:
        """One churn client; its outcome, e.g. "rst" or "rst failed: timeout"."""
        conn = Conn(self, name)
        try:
            await asyncio.wait_for(self._churn_act(conn, kind), CHURN_STEP_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as exc:
            conn.reset()
            return f"{kind} failed: {_error_name(exc)}"
        return kind

    async def _churn_act(self, conn: Conn, kind: str) -> None:
        await self.open_client(conn, kind != "noname")
        if kind == "noname":
            await asyncio.shield(conn.first_data)  # the banner: the server has taken us on
            conn.reset()
            return
        why = await asyncio.shield(conn.welcome)
        if why:
            raise OSError(f"not welcomed: {why}")
        if kind == "fin":
            conn.write(b"churn says hello\n")
            assert conn.transport is not None
            conn.transport.close()  # a FIN, once the line is out
        elif kind == "rst":
            conn.write(b"churn says hello\n")
            conn.reset()
        else:
            conn.write(HALF_LINE)
            conn.reset()


def worker_main(pipe: Connection, address: tuple[str, int]) -> None:
    """The body of a worker process."""
    selector = StampingSelector()
    loop = asyncio.SelectorEventLoop(selector)
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(Worker(loop, selector, pipe, address).serve())
    finally:
        loop.close()


class WorkerError(RuntimeError):
    """A worker failed a command or did not answer in time."""


class WorkerPool:
    """The worker processes of one scenario run, and the pipes to them.

    call(op, args, timeout) sends a command to every worker (args is one dict for
    all, or a list with one per worker) and returns their replies in order (or
    send() now and replies() later); share(items) deals items out to the
    workers; close() ends them (bounded). main(pipe, address, *extra) is what
    each worker process runs (bench/abuse.py's attackers use this pool too).
    """

    def __init__(self, count: int, address: tuple[str, int],
                 main: Callable[..., None] | None = None, extra: tuple[Any, ...] = (),
                 label: str = "worker") -> None:
        context = multiprocessing.get_context("fork")
        self.label = label
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for index in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(target=main or worker_main,
                                      args=(theirs, address, *extra),
                                      name=f"bench-{label}-{index}", daemon=True)
            process.start()
            theirs.close()
            self.pipes.append(ours)
            self.processes.append(process)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        return len(self.pipes)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes if process.pid is not None]

    def share(self, items: list[Any]) -> list[list[Any]]:
        return [items[index::self.size] for index in range(self.size)]

    def call(self, op: str, args: dict[str, Any] | list[dict[str, Any]],
             timeout: float) -> list[dict[str, Any]]:
        self.send(op, args)
        return self.replies(op, timeout)

    def send(self, op: str, args: dict[str, Any] | list[dict[str, Any]]) -> None:
        per_worker = args if isinstance(args, list) else [args] * self.size
        for pipe, worker_args in zip(self.pipes, per_worker, strict=True):
            pipe.send((op, worker_args))

    def replies(self, op: str, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        replies = []
        for index, pipe in enumerate(self.pipes):
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise WorkerError(f"{self.label} {index} did not finish {op!r} "
                                  f"within {timeout:g} s")
            reply: dict[str, Any] = pipe.recv()
            if "error" in reply:
                raise WorkerError(f"{self.label} {index}: {reply['error']}")
            replies.append(reply)
        return replies

    def close(self, timeout: float = 5.0) -> None:
        """Ask every worker to quit; kill those that do not within timeout."""
        for pipe in self.pipes:
            try:
                pipe.send(("quit", {}))
            except OSError:
                pass  # already gone
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1.0)
        for pipe in self.pipes:
            pipe.close()
