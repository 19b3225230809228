"""A chat server under test: started on a free loopback port, watched, stopped by its PID.

Not run by itself; bench/run.py and bench/scenarios.py use it:

    with ServerProcess("panda", SERVERS["panda"], log_path) as server:
        ...                       # server.port, server.pid, server.status(), server.fds()
        stop = server.stop()      # SIGTERM, then SIGKILL after STOP_GRACE_S

SERVERS holds the command of each server the benchmark knows. Linux only: what is
watched comes from /proc/PID (VmRSS, VmHWM, Threads, fd, stat).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from bench.loadgen import HOST

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent

PANDA = [sys.executable, str(REPO / "server3.py"), "--host", "{host}", "--port", "{port}",
         "--log-level", "WARNING"]
# Each server's command; {host} and {port} are filled in. Panda Chat logs at
# WARNING so that its per-connection INFO lines (which the baselines do not
# write) are not part of what is measured. "panda" runs without flood control
# (--rate-limit 0): the scenarios flood on purpose, to measure the relay, and
# the baselines have none. Its resume window is 2 s instead of 120 s, so that
# churn can see the pandas that vanished without @leaves expire and their
# memory come back within a round (ChurnParams.resume_wait_s). "panda-defaults"
# has Panda Chat's own settings (flood control at 10 lines/s per client:
# fanout then measures the limiter). Every client of the benchmark comes from
# 127.0.0.1, so the per-address limit is off (--max-per-address 0) for all.
# "panda-portable" is "panda" with the POSIX-only names hidden
# (tests/portable/sitecustomize.py): the path the server takes on Windows.
PANDA_BENCH = [*PANDA, "--max-per-address", "0", "--rate-limit", "0", "--resume-window", "2"]
SERVERS: dict[str, list[str]] = {
    "panda": PANDA_BENCH,
    "panda-portable": ["env", f"PYTHONPATH={REPO / 'tests' / 'portable'}", *PANDA_BENCH],
    "panda-defaults": [*PANDA, "--max-per-address", "0"],
    "textbook": [sys.executable, str(BENCH / "baseline_textbook.py"),
                 "--host", "{host}", "--port", "{port}"],
    "asyncio": [sys.executable, str(BENCH / "baseline_asyncio.py"),
                "--host", "{host}", "--port", "{port}"],
}
DEFAULT_SERVERS = ["panda", "textbook", "asyncio"]

# A Python server is up in well under a second; 15 s allows for a loaded machine.
READY_TIMEOUT_S = 15.0
# Between two probes of whether the server accepts yet.
READY_POLL_S = 0.05
# How long SIGTERM gets before SIGKILL. Panda Chat's own goal is 2 s.
STOP_GRACE_S = 10.0
# A port found free can be taken before the server binds it; try again that often.
START_ATTEMPTS = 3
# How often the memory sampler reads VmRSS: often enough to catch a peak of a
# phase lasting seconds, rarely enough to cost the machine nothing.
SAMPLE_S = 0.05
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ServerFailed(RuntimeError):
    """The server did not start accepting connections."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """One run of one server. start() blocks until it accepts; stop() ends it, bounded."""

    def __init__(self, name: str, command: list[str], log_path: Path) -> None:
        self.name = name
        self.command = command
        self.log_path = log_path
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped: dict[str, Any] | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_bytes(b"")
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            self._log = self.log_path.open("ab")
            argv = [part.format(host=HOST, port=self.port) for part in self.command]
            self.process = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                            stdout=self._log, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # Ctrl+C is ours to handle
            if self._wait_ready():
                return
            self.stop()
            self.stopped = None
        raise ServerFailed(f"{self.name} did not accept connections on {HOST}:{self.port} "
                           f"within {READY_TIMEOUT_S:g} s; see {self.log_path}")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0):
                    return True
            except OSError:
                time.sleep(READY_POLL_S)
        return False

    def stop(self, grace: float = STOP_GRACE_S) -> dict[str, Any]:
        """SIGTERM, wait up to grace, then SIGKILL; how long it took and how it ended."""
        if self.stopped is not None:
            return self.stopped
        if self.process is None:
            return {"stop_s": 0.0, "killed": False, "exit_code": None}
        started = time.monotonic()
        killed = False
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                killed = True
        self.stopped = {"stop_s": round(time.monotonic() - started, 3), "killed": killed,
                        "exit_code": self.process.returncode}
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.stopped

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # --- what /proc says ---------------------------------------------------------------

    def status(self) -> dict[str, int]:
        """VmRSS, VmHWM and VmData (memory mapped for data, touched or not) in
        KiB, and Threads, from /proc/PID/status."""
        wanted = {"VmRSS": "rss_kib", "VmHWM": "hwm_kib", "VmData": "data_kib",
                  "Threads": "threads"}
        found = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in wanted:
                    found[wanted[key]] = int(value.split()[0])
        return found

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_s(self) -> float:
        """User plus system CPU seconds of the server so far (all its threads)."""
        return process_cpu_s(self.pid)


def process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


class MemorySampler:
    """Reads a server's VmRSS every SAMPLE_S in a thread; peak_kib is the highest seen."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, self.server.status()["rss_kib"])
            except (OSError, KeyError):
                return  # the server is gone
            self._stop.wait(SAMPLE_S)
