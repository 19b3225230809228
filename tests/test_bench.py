"""Smoke test of the benchmark instrument in bench/ (not a benchmark: no figure is judged).

Each scenario runs at a tiny size against server3.py and must report every
figure that bench/run.py shows, and leave no server or generator process behind;
bench/abuse.py likewise, for two of its scenarios.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.abuse import PER_ADDRESS, source_address
from bench.run import FIGURES, median, table
from bench.scenarios import SCENARIOS, run_scenario

REPO = Path(__file__).resolve().parent.parent
WORKERS = 2  # as in the real runs: the coordination across workers is what can break


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_each_scenario_reports_its_figures_and_stops_its_server(scenario: str,
                                                               tmp_path: Path) -> None:
    result = run_scenario(scenario, "panda", SCENARIOS[scenario].tiny, workers=WORKERS,
                          log_dir=tmp_path)
    assert "error" not in result, result.get("traceback", result)
    wanted = {figure.key for figure in FIGURES if figure.scenario == scenario}
    assert wanted <= result.keys(), f"missing: {sorted(wanted - result.keys())}"
    assert result["stop"]["exit_code"] is not None
    assert not alive(result["server_pid"]), "the server is still running"
    assert not any(alive(pid) for pid in result["generator_pids"]), "a generator worker lives on"


@pytest.mark.parametrize("server", ["textbook", "asyncio"])
def test_the_baselines_speak_the_protocol(server: str, tmp_path: Path) -> None:
    result = run_scenario("fanout", server, SCENARIOS["fanout"].tiny, workers=WORKERS,
                          log_dir=tmp_path)
    assert "error" not in result, result.get("traceback", result)
    assert result["outcome"] == "complete"
    assert result["stop"] == {"stop_s": result["stop"]["stop_s"], "killed": False,
                              "exit_code": 0}, "SIGTERM must stop a baseline cleanly"


def test_run_py_prints_one_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--tiny", "--scenarios", "fanout",
         "--servers", "panda,textbook", "--json", str(out)],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "deliveries/s" in done.stdout
    report = json.loads(out.read_text())
    assert set(report["medians"]["fanout"]) == {"panda", "textbook"}
    assert len(report["runs"]) == 2


def test_medians_count_yes_and_the_table_shows_ratios_to_textbook() -> None:
    assert median([True, False, True]) == "2/3"
    assert median([3, None, 1, 2]) == 2
    assert median([None]) is None
    summary = {"fanout": {"panda": {"deliveries_per_s": 300, "runs": 1, "errors": 0},
                          "textbook": {"deliveries_per_s": 100, "runs": 1, "errors": 0},
                          "asyncio": {"runs": 1, "errors": 1}}}
    text = table(summary, ["panda", "textbook", "asyncio"])
    assert "300 (3.00x)" in text
    assert "error" in text


def test_abuse_py_runs_a_mass_close_and_a_flood_and_stops_every_process(tmp_path: Path) -> None:
    out = tmp_path / "abuse.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "abuse.py"), "--tiny",
         "--scenarios", "mass_fin,resume_flood", "--json", str(out)],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "| mass_fin |" in done.stdout and "| resume_flood |" in done.stdout
    runs = json.loads(out.read_text())["runs"]
    assert [(run["scenario"], run["mode"]) for run in runs] == [
        ("mass_fin", "digest"), ("mass_fin", "sigterm"),
        ("resume_flood", "digest"), ("resume_flood", "sigterm")]
    for run in runs:
        assert "error" not in run, run.get("traceback", run)
        assert run["attackers_open"] == run["attackers"]
        assert run["probe_sent"] > 0
        assert run["exit_code"] is not None
        assert not alive(run["server_pid"]), "the server is still running"
        assert not any(alive(pid) for pid in run["attacker_pids"]), "an attacker lives on"
    flood = runs[2]
    assert flood["attack_bytes_sent"] > 0 and flood["server_read"] > 0
    assert runs[0]["closed"] == runs[0]["attackers"]
    assert "sigterm_after_attack_s" in runs[1] and "sigterm_after_attack_s" in runs[3]


def test_attackers_spread_over_loopback_addresses_16_each() -> None:
    addresses = [source_address(index) for index in range(10_000)]
    assert all(address.startswith("127.0.") and not address.startswith("127.0.0.")
               for address in addresses)
    assert max(addresses.count(address) for address in set(addresses[:64])) == PER_ADDRESS
    assert len(set(addresses)) == 10_000 // PER_ADDRESS
