"""Compare Panda Chat with the baseline servers under load: one command, one table.

    python3 bench/run.py                  # every scenario x server x 3 repeats: ~15 min
    python3 bench/run.py --quick          # smaller scenarios, once: about a minute
    python3 bench/run.py --scenarios fanout,latency --servers panda,textbook --repeats 5

Servers: panda (server3.py), textbook (bench/baseline_textbook.py) and asyncio
(bench/baseline_asyncio.py). Scenarios: see bench/scenarios.py. Only 127.0.0.1
is ever a target.

Each server runs alone, a fresh process per scenario and repeat, on a free port;
within a repeat the servers take turns, so that drift of the machine touches
them alike. The table shows medians over the repeats (for yes/no figures, in how
many repeats it was yes) and, for rates and latencies, the ratio to the textbook
server. Every figure of every run is written as JSON to bench/results/ (or
--json PATH); server logs go to bench/results/logs/. Ctrl+C or SIGTERM stops
the run and the server under test. Linux only (figures come from /proc).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the "bench" package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scenarios import SCENARIOS, run_scenario
from bench.servers import DEFAULT_SERVERS, SERVERS

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
BASELINES = [REPO / "bench" / "baseline_textbook.py", REPO / "bench" / "baseline_asyncio.py"]
# The server the ratios are taken against: the one everybody writes first.
REFERENCE = "textbook"
# Two workers on a 2-core machine: the generator can use the core the server
# leaves, and its share is reported so that a reader can tell if it was the limit.
DEFAULT_WORKERS = 2
DEFAULT_REPEATS = 3


@dataclass(frozen=True)
class Figure:
    """One row of the table: a result key of a scenario, and how to show it."""

    scenario: str
    key: str
    label: str
    ratio: bool = False  # show the ratio to the reference server


FIGURES = [
    Figure("fanout", "deliveries_per_s", "deliveries/s", ratio=True),
    Figure("fanout", "lost", "lost deliveries"),
    Figure("fanout", "order_violations", "order violations"),
    Figure("fanout", "latency_p50_ms", "latency p50 ms", ratio=True),
    Figure("fanout", "latency_p99_ms", "latency p99 ms", ratio=True),
    Figure("fanout", "server_cores", "server CPU, cores"),
    Figure("fanout", "generator_cores", "generator CPU, cores"),
    Figure("fanout", "other_cores", "other CPU use, cores"),
    Figure("latency", "latency_p50_ms", "latency p50 ms", ratio=True),
    Figure("latency", "latency_p99_ms", "latency p99 ms", ratio=True),
    Figure("latency", "latency_max_ms", "latency max ms", ratio=True),
    Figure("latency", "lost", "lost deliveries"),
    Figure("latency", "generator_cores", "generator CPU, cores"),
    Figure("latency", "other_cores", "other CPU use, cores"),
    Figure("connections", "registered", "clients registered"),
    Figure("connections", "register_s", "time to register all, s", ratio=True),
    Figure("connections", "kib_per_connection", "server KiB per connection", ratio=True),
    Figure("connections", "broadcast_reached", "broadcast reached"),
    Figure("connections", "broadcast_all_ms", "broadcast to all, ms", ratio=True),
    Figure("connections", "shutdown_s", "SIGTERM to exit, s"),
    Figure("connections", "clients_closed", "clients closed by shutdown"),
    Figure("slowconsumer", "control_deliveries_per_s", "deliveries/s, no slow client",
           ratio=True),
    Figure("slowconsumer", "healthy_deliveries_per_s", "deliveries/s, slow client",
           ratio=True),
    Figure("slowconsumer", "healthy_ratio", "healthy rate / without"),
    Figure("slowconsumer", "stalled", "stalled (no progress 3 s)"),
    Figure("slowconsumer", "healthy_lost", "healthy deliveries lost"),
    Figure("slowconsumer", "slow_dropped", "slow client dropped"),
    Figure("slowconsumer", "peak_rss_kib", "server peak RSS KiB", ratio=True),
    Figure("churn", "steady_lost", "steady deliveries lost"),
    Figure("churn", "churn_failed", "churn clients failed"),
    Figure("churn", "threads_before", "threads before"),
    Figure("churn", "threads_after", "threads after"),
    Figure("churn", "fds_before", "fds before"),
    Figure("churn", "fds_after", "fds after"),
    Figure("churn", "rss_first_round_kib", "RSS kept by round 1, KiB"),
    Figure("churn", "rss_growth_kib", "RSS growth in later rounds, KiB"),
    Figure("churn", "data_growth_kib", "VmData growth in later rounds, KiB"),
    Figure("churn", "settled", "threads+fds back"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated (default: all of %(default)s)")
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                        help=f"comma-separated, from: {', '.join(SERVERS)} "
                             "(default %(default)s)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"runs of each scenario per server (default {DEFAULT_REPEATS}, "
                             "1 with --quick)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="smaller scenarios (2,000 connections, shorter runs), one repeat")
    size.add_argument("--tiny", action="store_true",
                      help="a handful of clients, one repeat: seconds in all (the smoke test)")
    parser.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                        help="before each run, wait up to S seconds for the machine to be "
                             "idle (for a shared machine; default %(default)g)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="load generator processes (default %(default)s)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="where to write every figure, - for standard output "
                             "(default bench/results/run-TIME.json)")
    args = parser.parse_args(argv)
    args.scenarios = _choose(parser, args.scenarios, SCENARIOS, "scenario")
    args.servers = _choose(parser, args.servers, SERVERS, "server")
    if args.repeats is None:
        args.repeats = 1 if args.quick or args.tiny else DEFAULT_REPEATS
    return args


def _choose(parser: argparse.ArgumentParser, text: str, known: dict[str, Any],
            what: str) -> list[str]:
    chosen = [word.strip() for word in text.split(",") if word.strip()]
    for word in chosen:
        if word not in known:
            parser.error(f"unknown {what} {word!r}; known: {', '.join(known)}")
    return chosen


def machine() -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "system": platform.platform(), "nofile": [soft, hard]}


def code_version() -> dict[str, str]:
    """Which code was measured: the git commit, and a hash of each server's file
    (which also shows whether a file changed during the run)."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    files = {"server3.py": REPO / "server3.py", **{path.name: path for path in BASELINES}}
    hashes = {name: hashlib.sha256(path.read_bytes()).hexdigest()[:12]
              for name, path in files.items() if path.exists()}
    return {"commit": commit, **hashes}


# --- summing up -------------------------------------------------------------------------------


def median(values: list[Any]) -> Any:
    """The median of numbers; for yes/no, "k/n" (how many were yes); None when nothing."""
    present = [value for value in values if value is not None]
    if not present:
        return None
    if all(isinstance(value, bool) for value in present):
        return f"{sum(present)}/{len(present)}"
    if all(isinstance(value, (int, float)) for value in present):
        middle = statistics.median(present)
        return round(middle, 3) if isinstance(middle, float) else middle
    return Counter(map(str, present)).most_common(1)[0][0]


def medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """scenario -> server -> key -> median over the runs without an error."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["scenario"], run["server"]), []).append(run)
    for (scenario, server), group in groups.items():
        good = [run for run in group if "error" not in run]
        keys = {key for run in good for key, value in run.items()
                if isinstance(value, (int, float, bool)) or value is None}
        figures = {key: median([run.get(key) for run in good]) for key in sorted(keys)}
        figures["runs"] = len(group)
        figures["errors"] = len(group) - len(good)
        out.setdefault(scenario, {})[server] = figures
    return out


def show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def cell(figure: Figure, value: Any, reference: Any, errors: int) -> str:
    text = show(value)
    if (figure.ratio and isinstance(value, (int, float)) and isinstance(reference, (int, float))
            and reference):
        text += f" ({value / reference:.2f}x)"
    if errors:
        text += f" [{errors} err]"
    return text


def table(summary: dict[str, dict[str, dict[str, Any]]], servers: list[str]) -> str:
    rows = [["scenario", "figure", *servers]]
    for figure in FIGURES:
        by_server = summary.get(figure.scenario)
        if not by_server:
            continue
        reference = by_server.get(REFERENCE, {}).get(figure.key)
        row = [figure.scenario, figure.label]
        for server in servers:
            figures = by_server.get(server)
            if figures is None:
                row.append("")
            elif figures["errors"] == figures["runs"]:
                row.append("error")
            else:
                row.append(cell(figure, figures.get(figure.key), reference, figures["errors"]))
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


# --- running -------------------------------------------------------------------------------


def progress(run: dict[str, Any], done: int, total: int) -> str:
    status = run.get("error", "ok")
    return (f"[{done}/{total}] {run['scenario']:<12} {run['server']:<9} "
            f"{run['run_s']:6.1f} s  (machine busy before: {run['busy_before_cores']} cores)  "
            f"{status}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Stopped by kill as by Ctrl+C: the server under test is stopped, the runs
    # so far are reported, and nothing is left running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    params = {name: getattr(SCENARIOS[name], size) for name in args.scenarios}
    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    version = code_version()
    runs: list[dict[str, Any]] = []
    total = args.repeats * len(args.scenarios) * len(args.servers)
    try:
        for repeat in range(args.repeats):
            for scenario in args.scenarios:
                for server in args.servers:
                    run = run_scenario(scenario, server, params[scenario],
                                       workers=args.workers, log_dir=RESULTS / "logs",
                                       quiet_wait_s=args.quiet_wait)
                    run["repeat"] = repeat
                    runs.append(run)
                    print(progress(run, len(runs), total), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("Interrupted: the table shows the runs done so far.", file=sys.stderr)
    summary = medians(runs)
    elapsed = time.monotonic() - started
    if code_version() != version:
        print("Warning: a server's code changed during the run; the figures mix versions.",
              file=sys.stderr)
    report = {"started": stamp, "argv": sys.argv, "machine": machine(), "code": version,
              "workers": args.workers, "repeats": args.repeats, "size": size,
              "elapsed_s": round(elapsed, 1),
              "params": {name: asdict(value) for name, value in params.items()},
              "medians": summary, "runs": runs}
    print(f"\nMedians of {args.repeats} run(s); (Nx) = ratio to {REFERENCE}; "
          f"{elapsed / 60:.1f} min in all; commit {version['commit'] or '?'}, "
          f"server3.py {version.get('server3.py', '?')}.\n")
    print(table(summary, args.servers))
    text = json.dumps(report, indent=1, default=str)
    if args.json == "-":
        print(text)
        return 0
    path = Path(args.json) if args.json else RESULTS / f"run-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"\nEvery figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
