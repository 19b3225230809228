"""The benchmark scenarios: what load each one makes and what it measures.

Not run by itself: `python3 bench/run.py` runs them (or, for one scenario against
one server: run_scenario("fanout", "panda", FanoutParams(), workers=2,
log_dir=Path("/tmp/bench-logs"))).

    fanout        100 clients, 10 of them send 200 lines each as fast as they can
                  (5 rounds): deliveries/s, lost, order violations, latency
    latency       100 clients send 200 lines/s in all for 10 s: latency p50/p99/max
    connections   ramp to 10,000 clients in batches: how many registered, how fast,
                  server memory per connection, one broadcast to all, then the time
                  from SIGTERM to exit with them all connected
    slowconsumer  fanout without and then with a fresh client that never reads (9
                  rounds of each): the healthy clients' rate and losses, whether
                  the slow one was dropped, the server's peak memory
    churn         a steady group chats while clients connect, say a little and
                  vanish (FIN, RST, half a line then RST, no name then RST): steady
                  lines lost, server threads/fds/memory before and after (memory:
                  what the first round leaves, then growth over two more rounds)

Counting: a "delivery" is one line reaching one receiver; "lost" counts the
deliveries still missing when the scenario stopped waiting (the "outcome" says
why it stopped: complete, idle = no progress for idle_s, or deadline). When a
phase is incomplete its deliveries/s are over the whole wait, not to the last
delivery, so that a stall is not mistaken for speed. Every wait is bounded.
"""

from __future__ import annotations

import math
import statistics
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import HOST, WorkerPool, now_ns
from bench.servers import CLOCK_TICKS, SERVERS, MemorySampler, ServerProcess

# Join notices of a burst of registrations are still on their way when the last
# client is welcomed; this lets them land before a measurement starts.
SETTLE_S = 0.3
# How much longer than the deadline it was given a worker may take to reply
# (sending its latencies on a busy machine) before it is given up on.
REPLY_MARGIN_S = 15.0
# Sending starts this long after the "run" command goes out, so that every
# worker starts at the same moment.
START_DELAY_S = 0.05
# While waiting for the server to settle after churn: how often to look.
SETTLE_POLL_S = 0.1
# The ramp stops when less than this share of a batch registers: the server
# is full or failing, and more batches would only burn the time limit.
RAMP_GIVE_UP_SHARE = 0.5
OUTCOME_RANK = {"complete": 0, "idle": 1, "deadline": 2}
# Counts that add up over rounds (every other figure is the median round's).
SUMMED = {"expected", "delivered", "lost", "order_violations", "duplicates", "echoes",
          "malformed", "sent"}
# Between runs: a machine using at most this many cores (of somebody else's
# work) counts as quiet; measured over QUIET_SAMPLE_S.
QUIET_CORES = 0.3
QUIET_SAMPLE_S = 0.5


class ScenarioError(RuntimeError):
    """A scenario could not set itself up (e.g. not every client registered)."""


# --- parameters ------------------------------------------------------------------------


@dataclass(frozen=True)
class FanoutParams:
    clients: int = 100
    senders: int = 10
    lines: int = 200  # per sender
    # One round is over in well under a second, and how a server batches what it
    # reads depends on timing, so single rounds vary a lot: the figures are the
    # median round of this many (losses are summed over all of them).
    rounds: int = 5
    pad: int = 1  # filler bytes per line, on top of "SEQ SEND_NS "
    connect_timeout_s: float = 15.0  # for one client to be welcomed
    timeout_s: float = 60.0  # for every line to arrive
    idle_s: float = 5.0  # no delivery for this long: the server stalled or lost lines


@dataclass(frozen=True)
class LatencyParams:
    clients: int = 100  # every one of them sends, in turn
    rate: float = 200.0  # lines per second offered, in all
    duration_s: float = 10.0
    connect_timeout_s: float = 15.0
    idle_s: float = 5.0


@dataclass(frozen=True)
class ConnectionsParams:
    clients: int = 10_000
    batch: int = 500  # clients connecting at once: a storm, but a bounded one
    connect_timeout_s: float = 15.0  # SYN retries after a full backlog take 1 s, 3 s, 7 s
    ramp_limit_s: float = 150.0  # no new batch after this
    broadcast_timeout_s: float = 15.0
    closed_timeout_s: float = 5.0  # for clients to see EOF after the server exits


@dataclass(frozen=True)
class SlowConsumerParams:
    # 200 lines x 10 senders x ~530 bytes is about 1 MiB for the slow client:
    # far beyond the kernel's buffers and any sane per-client send queue
    # (Panda Chat's is 256 KiB), so a server that queues without limit shows it.
    fanout: FanoutParams = field(default_factory=lambda: FanoutParams(pad=500))  # not its rounds
    # Each round: a fanout round without the slow client, then one with a fresh
    # slow client; the rates are the median rounds'. A round takes a fraction of
    # a second and single rounds vary by 2x, so it takes this many for the
    # ratio of the medians to settle within a few percent.
    rounds: int = 9
    slow_rcvbuf: int = 4096  # the slow client's SO_RCVBUF: a small window, quickly full
    # The slow client's segment size, as on Ethernet. With loopback's 64 KiB
    # segments the server's kernel would take ~3 MB for it before pushing back;
    # with 1460 it takes ~50 KB, as over a real network.
    slow_mss: int = 1460
    stall_idle_s: float = 3.0  # no delivery this long with the slow client: stalled
    read_timeout_s: float = 10.0  # reading the slow client afterwards: at most this long
    read_idle_s: float = 1.0  # ... or until it has been sent nothing for this long
    late_timeout_s: float = 10.0  # then the healthy clients' missing lines may still come
    late_idle_s: float = 2.0


@dataclass(frozen=True)
class ChurnParams:
    steady: int = 20  # clients that stay and chat
    senders: int = 5  # of them, sending in turn
    rate: float = 100.0  # steady lines per second, in all
    duration_s: float = 5.0
    churn_rate: float = 100.0  # vanishing clients per second, in all
    connect_timeout_s: float = 15.0
    idle_s: float = 5.0
    settle_timeout_s: float = 10.0  # for threads and fds to come back down afterwards
    # Waited after each round before measuring, by every server alike: longer
    # than the longest a server keeps a vanished client (Panda Chat's resume
    # window, 2 s in the benchmark).
    resume_wait_s: float = 3.0
    # Memory that a server keeps after its first round may be its allocator's
    # (freed objects leave partly used arenas behind, kept for reuse); memory
    # that grows again in later rounds, like the first, is more likely a leak.
    # So growth is measured from the end of round 1 to the end of the last: of
    # the resident memory (RSS), and of the memory mapped for data (VmData),
    # which a leak must make grow sooner or later and reuse never does.
    rounds: int = 3


# --- helpers ------------------------------------------------------------------------------


def client_names(prefix: str, count: int, first: int = 0) -> list[str]:
    return [f"{prefix}{number}" for number in range(first, first + count)]


def register(pool: WorkerPool, names: list[str], timeout: float, *, rcvbuf: int | None = None,
             mss: int | None = None, paused: bool = False,
             only_worker: int | None = None) -> dict[str, Any]:
    """Connect and register names, dealt out to the workers (or all to one)."""
    if only_worker is None:
        shares = pool.share(names)
    else:
        shares = [names if index == only_worker else [] for index in range(pool.size)]
    args = [{"names": share, "timeout": timeout, "rcvbuf": rcvbuf, "mss": mss, "paused": paused}
            for share in shares]
    replies = pool.call("connect", args, timeout + REPLY_MARGIN_S)
    errors: Counter[str] = Counter()
    for reply in replies:
        errors.update(reply["errors"])
    return {"ok": sum(reply["ok"] for reply in replies),
            "failed": sum(reply["failed"] for reply in replies), "errors": dict(errors),
            "first_ok": next((reply["first_ok"] for reply in replies if reply["first_ok"]), "")}


def require_registered(registration: dict[str, Any], wanted: int) -> None:
    if registration["ok"] < wanted:
        raise ScenarioError(f"only {registration['ok']} of {wanted} clients registered: "
                            f"{registration['errors']}")


def percentile_ms(ordered_ns: list[int], fraction: float) -> float | None:
    """The nearest-rank percentile of sorted nanoseconds, in milliseconds."""
    if not ordered_ns:
        return None
    index = min(len(ordered_ns) - 1, max(0, math.ceil(fraction * len(ordered_ns)) - 1))
    return round(ordered_ns[index] / 1e6, 3)


def summarize(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """One phase's worker replies as one set of figures."""
    expected = sum(reply["expected"] for reply in replies)
    delivered = sum(reply["received"] for reply in replies)
    outcome = max((reply["outcome"] for reply in replies), key=OUTCOME_RANK.__getitem__)
    first_send = min((r["first_send_ns"] for r in replies if r["first_send_ns"]), default=0)
    last_send = max(reply["last_send_ns"] for reply in replies)
    end = max(reply["last_recv_ns"] if outcome == "complete" else reply["ended_ns"]
              for reply in replies)
    span_s = (end - first_send) / 1e9 if first_send and end > first_send else 0.0
    latencies = array("q")
    for reply in replies:
        latencies.frombytes(reply["latencies"])
    ordered = sorted(latencies)
    sent = sum(reply["sent"] for reply in replies)
    send_span_s = (last_send - first_send) / 1e9 if first_send else 0.0
    return {
        "outcome": outcome, "expected": expected, "delivered": delivered,
        "lost": expected - delivered,
        "order_violations": sum(reply["order"] for reply in replies),
        "duplicates": sum(reply["dups"] for reply in replies),
        "echoes": sum(reply["echoes"] for reply in replies),
        "malformed": sum(reply["malformed"] for reply in replies),
        "receivers": sum(reply["receivers"] for reply in replies),
        "receivers_complete": sum(reply["receivers_complete"] for reply in replies),
        "deliveries_per_s": round(delivered / span_s) if span_s else 0,
        "span_s": round(span_s, 3),
        "sent": sent,
        "sent_lines_per_s": round(sent / send_span_s, 1) if send_span_s else 0.0,
        "latency_p50_ms": percentile_ms(ordered, 0.50),
        "latency_p99_ms": percentile_ms(ordered, 0.99),
        "latency_max_ms": percentile_ms(ordered, 1.0),
    }


def deliver(server: ServerProcess, pool: WorkerPool, senders: list[str], lines: int, *,
            deadline_s: float, idle_s: float, pad: int = 1, rate: float = 0.0,
            churn: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One phase: senders each send lines (a burst, or rate lines/s in all); wait for them."""
    armed = pool.call("arm", {"senders": senders, "lines": lines}, REPLY_MARGIN_S)
    generator_cpu = sum(reply["cpu_s"] for reply in armed)
    server_cpu = server.cpu_s()
    machine_cpu = machine_busy_s()
    started = time.monotonic()
    run = {"senders": senders, "lines": lines, "start_ns": now_ns() + int(START_DELAY_S * 1e9),
           "deadline_s": deadline_s, "idle_s": idle_s, "pad": pad, "rate": rate}
    args = [{**run, "churn": spec} for spec in churn] if churn else run
    replies = pool.call("run", args, deadline_s + REPLY_MARGIN_S)
    wall_s = time.monotonic() - started
    result = summarize(replies)
    generator_cpu = sum(reply["cpu_s"] for reply in replies) - generator_cpu
    server_cpu = server.cpu_s() - server_cpu
    machine_cpu = machine_busy_s() - machine_cpu
    result.update(wall_s=round(wall_s, 3), generator_cpu_s=round(generator_cpu, 3),
                  generator_cores=round(generator_cpu / wall_s, 2),
                  server_cpu_s=round(server_cpu, 3), server_cores=round(server_cpu / wall_s, 2),
                  machine_cores=round(machine_cpu / wall_s, 2),
                  other_cores=round((machine_cpu - server_cpu - generator_cpu) / wall_s, 2))
    if churn:
        outcomes: Counter[str] = Counter()
        for reply in replies:
            outcomes.update(reply.get("churn", {}))
        result["churn"] = dict(outcomes)
    return result


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as stat:
        ticks = [int(field) for field in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / CLOCK_TICKS  # user .. steal; guest is inside user


def server_snapshot(server: ServerProcess) -> dict[str, int]:
    status = server.status()
    return {"threads": status["threads"], "fds": server.fds(), "rss_kib": status["rss_kib"],
            "data_kib": status["data_kib"]}


def wait_settled(server: ServerProcess, baseline: dict[str, int],
                 timeout: float) -> tuple[dict[str, int], float]:
    """Poll until threads and fds are back down to baseline (or timeout)."""
    started = time.monotonic()
    while True:
        now = server_snapshot(server)
        settled = now["threads"] <= baseline["threads"] and now["fds"] <= baseline["fds"]
        if settled or time.monotonic() - started >= timeout:
            return now, round(time.monotonic() - started, 2)
        time.sleep(SETTLE_POLL_S)


# --- the scenarios ---------------------------------------------------------------------------


def fanout(server: ServerProcess, pool: WorkerPool, p: FanoutParams) -> dict[str, Any]:
    names = client_names("p", p.clients)
    require_registered(register(pool, names, p.connect_timeout_s), len(names))
    time.sleep(SETTLE_S)
    rounds = [deliver(server, pool, names[:p.senders], p.lines, pad=p.pad,
                      deadline_s=p.timeout_s, idle_s=p.idle_s) for _ in range(p.rounds)]
    return combine(rounds)


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one phase as one result: counts summed, the worst outcome, and
    the median over the rounds of every other figure (each round's rate is kept
    in "rounds_per_s")."""
    out: dict[str, Any] = {"rounds": len(rounds),
                           "rounds_per_s": [one["deliveries_per_s"] for one in rounds],
                           "outcome": max((one["outcome"] for one in rounds),
                                          key=OUTCOME_RANK.__getitem__)}
    for key, value in rounds[0].items():
        if key in out or not isinstance(value, (int, float)):
            continue
        values = [one[key] for one in rounds if one[key] is not None]
        if key in SUMMED:
            out[key] = sum(values)
        elif values:
            out[key] = statistics.median(values)
    return out


def latency(server: ServerProcess, pool: WorkerPool, p: LatencyParams) -> dict[str, Any]:
    names = client_names("p", p.clients)
    require_registered(register(pool, names, p.connect_timeout_s), len(names))
    time.sleep(SETTLE_S)
    lines_each = max(1, round(p.rate * p.duration_s / p.clients))
    result = deliver(server, pool, names, lines_each, rate=p.rate,
                     deadline_s=p.duration_s + p.idle_s + REPLY_MARGIN_S, idle_s=p.idle_s)
    result["offered_lines_per_s"] = p.rate
    return result


def connections(server: ServerProcess, pool: WorkerPool, p: ConnectionsParams) -> dict[str, Any]:
    idle = server_snapshot(server)
    out = ramp(pool, p)
    time.sleep(SETTLE_S)
    loaded = server_snapshot(server)
    registered = out["registered"]
    out.update(rss_idle_kib=idle["rss_kib"], rss_loaded_kib=loaded["rss_kib"],
               kib_per_connection=(round((loaded["rss_kib"] - idle["rss_kib"]) / registered, 1)
                                   if registered else None),
               threads_loaded=loaded["threads"], fds_loaded=loaded["fds"])
    out.update(broadcast_to_all(server, pool, out.pop("sender"), p.broadcast_timeout_s))
    out.update(shutdown_with_clients(server, pool, p.closed_timeout_s))
    return out


def ramp(pool: WorkerPool, p: ConnectionsParams) -> dict[str, Any]:
    """Register p.clients clients, p.batch at a time, until done, failing or out of time."""
    names = client_names("p", p.clients)
    registered, errors, sender, why_stopped = 0, Counter[str](), "", ""
    started = time.monotonic()
    for first in range(0, len(names), p.batch):
        batch = names[first:first + p.batch]
        result = register(pool, batch, p.connect_timeout_s)
        registered += result["ok"]
        errors.update(result["errors"])
        sender = sender or result["first_ok"]
        if result["ok"] < RAMP_GIVE_UP_SHARE * len(batch):
            why_stopped = f"batch from client {first}: only {result['ok']} of {len(batch)}"
            break
        if time.monotonic() - started > p.ramp_limit_s:
            why_stopped = f"ramp time limit ({p.ramp_limit_s:g} s)"
            break
    register_s = time.monotonic() - started
    return {"clients": p.clients, "registered": registered, "register_failed": dict(errors),
            "ramp_stopped": why_stopped, "register_s": round(register_s, 2),
            "registered_per_s": round(registered / register_s) if register_s else 0,
            "sender": sender}


def broadcast_to_all(server: ServerProcess, pool: WorkerPool, sender: str,
                     timeout: float) -> dict[str, Any]:
    """One line from sender to everybody: how many got it, and how fast."""
    if not sender:
        return {"broadcast_reached": 0, "broadcast_to": 0, "broadcast_all_ms": None}
    result = deliver(server, pool, [sender], 1, deadline_s=timeout, idle_s=timeout)
    complete = result["outcome"] == "complete"
    return {"broadcast_reached": result["delivered"], "broadcast_to": result["expected"],
            "broadcast_all_ms": round(result["span_s"] * 1000, 1) if complete else None,
            "broadcast_p50_ms": result["latency_p50_ms"]}


def shutdown_with_clients(server: ServerProcess, pool: WorkerPool,
                          timeout: float) -> dict[str, Any]:
    """SIGTERM with every client still connected: how long to exit; did they all see it?"""
    stop = server.stop()
    closed = pool.call("closed", {"timeout": timeout}, timeout + REPLY_MARGIN_S)
    return {"shutdown_s": stop["stop_s"], "shutdown_killed": stop["killed"],
            "shutdown_exit_code": stop["exit_code"],
            "clients_closed": sum(reply["closed"] for reply in closed),
            "shutdown_notices": sum(reply["shutdown_notices"] for reply in closed)}


def slowconsumer(server: ServerProcess, pool: WorkerPool,
                 p: SlowConsumerParams) -> dict[str, Any]:
    f = p.fanout
    names = client_names("p", f.clients)
    require_registered(register(pool, names, f.connect_timeout_s), len(names))
    time.sleep(SETTLE_S)
    rss_before = server.status()["rss_kib"]
    controls, loadeds, fates = [], [], []
    with MemorySampler(server) as sampler:
        for number in range(p.rounds):
            controls.append(deliver(server, pool, names[:f.senders], f.lines, pad=f.pad,
                                    deadline_s=f.timeout_s, idle_s=f.idle_s))
            loaded, fate = with_slow_client(server, pool, names[:f.senders], f"s{number}", p)
            loadeds.append(loaded)
            fates.append(fate)
        status = server.status()
    control, loaded = combine(controls), combine(loadeds)
    return {
        "control_deliveries_per_s": control["deliveries_per_s"], "control_lost": control["lost"],
        "healthy_deliveries_per_s": loaded["deliveries_per_s"],
        "healthy_ratio": (round(loaded["deliveries_per_s"] / control["deliveries_per_s"], 3)
                          if control["deliveries_per_s"] else None),
        "stalled": loaded["outcome"] != "complete", "outcome": loaded["outcome"],
        "expected": loaded["expected"], "delivered_before_limit": loaded["delivered"],
        "healthy_lost": sum(fate["lost"] for fate in fates),
        "late_deliveries": sum(fate["late"] for fate in fates),
        "healthy_order_violations": sum(fate["order_violations"] for fate in fates),
        "healthy_latency_p99_ms": loaded["latency_p99_ms"],
        "slow_dropped": all(fate["slow_dropped"] for fate in fates),
        "slow_ends": [fate["slow_end"] for fate in fates],
        "slow_leave_notices": sum(fate["slow_leave_notice"] for fate in fates),
        "slow_bytes_read": [fate["slow_bytes_read"] for fate in fates],
        "rss_before_kib": rss_before, "peak_rss_kib": max(sampler.peak_kib, status["rss_kib"]),
        "hwm_kib": status["hwm_kib"], "rounds_per_s": loaded["rounds_per_s"],
        "control_rounds_per_s": control["rounds_per_s"],
        "generator_cores": loaded["generator_cores"], "server_cores": loaded["server_cores"]}


def with_slow_client(server: ServerProcess, pool: WorkerPool, senders: list[str], slow: str,
                     p: SlowConsumerParams) -> tuple[dict[str, Any], dict[str, Any]]:
    """A fresh client that never reads joins; a fanout round; then its fate."""
    f = p.fanout
    require_registered(register(pool, [slow], f.connect_timeout_s, rcvbuf=p.slow_rcvbuf,
                                mss=p.slow_mss, paused=True, only_worker=0), 1)
    time.sleep(SETTLE_S)
    loaded = deliver(server, pool, senders, f.lines, pad=f.pad, deadline_s=f.timeout_s,
                     idle_s=p.stall_idle_s)
    return loaded, slow_client_fate(pool, slow, loaded, p)


def slow_client_fate(pool: WorkerPool, slow: str, loaded: dict[str, Any],
                     p: SlowConsumerParams) -> dict[str, Any]:
    """Read the slow client at last: had the server hung up on it? Then give the
    healthy clients time for the lines a stalled server was holding up."""
    fate = pool.call("read_paused", {"names": [slow], "timeout": p.read_timeout_s,
                                     "idle_s": p.read_idle_s},
                     p.read_timeout_s + REPLY_MARGIN_S)[0]  # the slow client is worker 0's
    late = pool.call("wait", {"timeout": p.late_timeout_s, "idle_s": p.late_idle_s},
                     p.late_timeout_s + REPLY_MARGIN_S)
    final = summarize(late)
    notices = {name for reply in late for name in reply["leaves"]}
    slow_end = "reset" if fate["reset"] else "eof" if fate["eof"] else "open"
    return {"slow_dropped": slow_end != "open" or slow in notices, "slow_end": slow_end,
            "slow_leave_notice": slow in notices, "slow_bytes_read": fate["bytes"],
            "order_violations": final["order_violations"], "lost": final["lost"],
            "late": final["delivered"] - loaded["delivered"]}


def churn(server: ServerProcess, pool: WorkerPool, p: ChurnParams) -> dict[str, Any]:
    names = client_names("p", p.steady)
    require_registered(register(pool, names, p.connect_timeout_s), len(names))
    time.sleep(SETTLE_S)
    before = server_snapshot(server)
    afters, results, settle_s = [before], [], 0.0
    for number in range(p.rounds):
        results.append(churn_round(server, pool, names[:p.senders], number, p))
        time.sleep(p.resume_wait_s)  # a fixed wait for the server's own expiry, not a sync
        after, waited = wait_settled(server, before, p.settle_timeout_s)
        afters.append(after)
        settle_s = max(settle_s, waited)
    after = afters[-1]
    outcomes: Counter[str] = Counter()
    for result in results:
        outcomes.update(result["churn"])
    return {
        "steady_lost": sum(result["lost"] for result in results),
        "steady_order_violations": sum(result["order_violations"] for result in results),
        "steady_latency_p99_ms": max(result["latency_p99_ms"] or 0.0 for result in results),
        "outcome": max((result["outcome"] for result in results), key=OUTCOME_RANK.__getitem__),
        "churned": sum(outcomes.values()), "churn_outcomes": dict(outcomes),
        "churn_failed": sum(count for kind, count in outcomes.items() if "failed" in kind),
        "threads_before": before["threads"], "threads_after": after["threads"],
        "fds_before": before["fds"], "fds_after": after["fds"],
        "rss_before_kib": before["rss_kib"], "rss_after_kib": after["rss_kib"],
        "rss_after_rounds_kib": [one["rss_kib"] for one in afters[1:]],
        "rss_first_round_kib": afters[1]["rss_kib"] - before["rss_kib"],
        "rss_growth_kib": after["rss_kib"] - afters[1]["rss_kib"],
        "data_growth_kib": after["data_kib"] - afters[1]["data_kib"],
        "settled": after["threads"] <= before["threads"] and after["fds"] <= before["fds"],
        "settle_s": settle_s}


def churn_round(server: ServerProcess, pool: WorkerPool, senders: list[str], number: int,
                p: ChurnParams) -> dict[str, Any]:
    """The steady senders chat for p.duration_s while churn clients come and go."""
    lines_each = max(1, round(p.rate * p.duration_s / len(senders)))
    churners = round(p.churn_rate * p.duration_s)
    first = number * churners  # every churn client has a name of its own
    churn_args = [{"numbers": share, "rate": p.churn_rate / pool.size}
                  for share in pool.share(list(range(first, first + churners)))]
    return deliver(server, pool, senders, lines_each, rate=p.rate, churn=churn_args,
                   deadline_s=p.duration_s + p.idle_s + REPLY_MARGIN_S, idle_s=p.idle_s)


# --- running one -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    run: Callable[[ServerProcess, WorkerPool, Any], dict[str, Any]]
    full: Any  # the parameters of the default comparison
    quick: Any  # run.py --quick: the same shapes, smaller or shorter
    tiny: Any  # the smoke test: seconds in all


SCENARIOS: dict[str, Scenario] = {
    "fanout": Scenario(fanout, FanoutParams(), FanoutParams(lines=100, rounds=3),
                       FanoutParams(clients=5, senders=2, lines=10, rounds=2)),
    "latency": Scenario(latency, LatencyParams(), LatencyParams(duration_s=3.0),
                        LatencyParams(clients=5, rate=50.0, duration_s=0.4)),
    "connections": Scenario(connections, ConnectionsParams(), ConnectionsParams(clients=2000),
                            ConnectionsParams(clients=20, batch=10)),
    "slowconsumer": Scenario(
        slowconsumer, SlowConsumerParams(),
        SlowConsumerParams(fanout=FanoutParams(lines=100, pad=1000), rounds=1),
        SlowConsumerParams(fanout=FanoutParams(clients=5, senders=2, lines=10, pad=100),
                           rounds=2, stall_idle_s=1.0, read_timeout_s=1.0, read_idle_s=0.3,
                           late_timeout_s=1.0, late_idle_s=0.3)),
    "churn": Scenario(churn, ChurnParams(), ChurnParams(duration_s=2.0),
                      ChurnParams(steady=4, senders=2, rate=40.0, duration_s=0.5,
                                  churn_rate=40.0, settle_timeout_s=5.0, resume_wait_s=0.0)),
}


def wait_for_quiet(timeout: float) -> float:
    """Wait up to timeout for the machine to be nearly idle; the CPU cores in use then.

    Called between runs, when nothing of the benchmark is running, so what is
    busy is somebody else: figures taken on a busy machine are noisy.
    """
    deadline = time.monotonic() + timeout
    while True:
        before = machine_busy_s()
        time.sleep(QUIET_SAMPLE_S)
        busy = (machine_busy_s() - before) / QUIET_SAMPLE_S
        if busy <= QUIET_CORES or time.monotonic() >= deadline:
            return round(busy, 2)


def run_scenario(scenario: str, server_name: str, params: Any, *, workers: int,
                 log_dir: Path, command: list[str] | None = None,
                 quiet_wait_s: float = 0.0) -> dict[str, Any]:
    """Start the server, run one scenario against it, stop it; never raises for a failed run.

    The result holds the scenario's figures, or "error"; "server_pid" and "stop"
    (how long SIGTERM took, whether SIGKILL was needed) in any case, and
    "busy_before_cores", what else the machine was doing just before.
    """
    result: dict[str, Any] = {"scenario": scenario, "server": server_name}
    server = ServerProcess(server_name, command or SERVERS[server_name],
                           log_dir / f"{server_name}-{scenario}.log")
    result["busy_before_cores"] = wait_for_quiet(quiet_wait_s)
    started = time.monotonic()
    try:
        server.start()
        result["server_pid"] = server.pid
        with WorkerPool(workers, (HOST, server.port)) as pool:
            result.update(SCENARIOS[scenario].run(server, pool, params))
            result["stop"] = server.stop()  # with the clients still connected
            result["generator_pids"] = pool.pids
    except Exception as exc:  # one failed run must not end the comparison
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        tail = server.log_tail()
        if tail:
            result["server_log_tail"] = tail
    finally:
        result["stop"] = server.stop()
        result["run_s"] = round(time.monotonic() - started, 2)
    return result
