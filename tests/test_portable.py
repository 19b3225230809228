"""The server's portable path, proven on Linux: the server test suite again, with the
POSIX-only names hidden (tests/portable/sitecustomize.py: no resource module, no
socket.MSG_DONTWAIT, no select.poll or select.epoll), as on Windows.

That run includes the signal tests of tests/test_server_process.py, whose server
subprocesses inherit the same hiding: Ctrl+C (SIGINT) ends the server within 2 s
there too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTABLE = ROOT / "tests" / "portable"
# The tests that exercise server3.py; each runs again in the portable mode.
SERVER_SUITE = ["tests/test_server.py", "tests/test_grove_life.py", "tests/test_resume_tls.py",
                "tests/test_server_process.py", "tests/test_defences.py", "tests/test_keepers.py"]
# The suite takes about 30 s here; a loaded CI machine gets slack.
SUITE_TIMEOUT_S = 240


def portable_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PORTABLE), env.get("PYTHONPATH")]))
    return env


def test_the_hiding_works_and_the_server_takes_the_portable_path() -> None:
    probe = ("import select, selectors, socket, server3\n"
             "assert not hasattr(select, 'poll') and not hasattr(select, 'epoll')\n"
             "assert not hasattr(socket, 'MSG_DONTWAIT')\n"
             "assert selectors.DefaultSelector is selectors.SelectSelector\n"
             "assert server3.resource is None and not server3.CAN_POLL\n"
             "print(server3.raise_descriptor_limit())\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=portable_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "no file-descriptor limit" in done.stdout


def test_the_server_suite_passes_with_the_posix_only_names_hidden() -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *SERVER_SUITE], cwd=ROOT, env=portable_env(), capture_output=True,
                          text=True, timeout=SUITE_TIMEOUT_S)
    tail = "\n".join(done.stdout.splitlines()[-40:])
    assert done.returncode == 0, f"the portable run failed:\n{tail}\n{done.stderr[-2000:]}"
    assert " passed" in tail and "skipped" not in tail, tail
