"""A display for the GUI tests (the tests marked gui), started once per session.

The session fixture `display` starts an Xvfb of its own: Xvfb -displayfd picks a free display
number itself, so parallel runs never collide, and a window of the tests never lands on the
screen of whoever runs them. Without Xvfb it uses the $DISPLAY there is. Where neither gives a
working Tk, every GUI test is skipped with the reason (.ci/run installs xvfb, so CI runs them).
"""

from __future__ import annotations

import ctypes
import gc
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tkinter as tk
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

XVFB_START_S = 10.0  # Xvfb is up in well under a second; a loaded CI machine gets slack
SCREEN = "1280x800x24"


def _probe_tk() -> str | None:
    """Why Tk cannot open a window on $DISPLAY, or None when it can."""
    try:
        root = tk.Tk()
    except tk.TclError as exc:
        return str(exc)
    root.destroy()
    return None


def _die_with_parent() -> None:
    """In the Xvfb child, on Linux: get SIGTERM when the test process dies, even when it is
    ended without its fixtures' teardown (pytest-timeout's os._exit), so no Xvfb is left over."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # best effort


def _start_xvfb(xvfb: str, log: int) -> tuple[subprocess.Popen[bytes], str]:
    """Xvfb on a display number of its choosing; the process and ":N" ("" if it failed)."""
    read_fd, write_fd = os.pipe()
    on_start: Callable[[], None] | None = _die_with_parent if sys.platform == "linux" else None
    try:
        process = subprocess.Popen([xvfb, "-displayfd", str(write_fd), "-screen", "0", SCREEN,
                                    "-nolisten", "tcp"], pass_fds=(write_fd,),
                                   stdout=subprocess.DEVNULL, stderr=log, preexec_fn=on_start)
    finally:
        os.close(write_fd)
    try:
        number = _read_line(read_fd, time.monotonic() + XVFB_START_S)
    finally:
        os.close(read_fd)
    return process, f":{number}" if number else ""


def _read_line(fd: int, deadline: float) -> str:
    """Read up to a newline: Xvfb writes the number and the newline apart, and dies when the
    newline finds the pipe closed."""
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 64) if ready else b""
        if not chunk:
            return ""
        data += chunk
    return data.decode().strip()


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(XVFB_START_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    """The X display the GUI tests use; $DISPLAY points to it while the session runs."""
    previous = os.environ.get("DISPLAY")
    reasons: list[str] = []
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        reasons.append("Xvfb is not installed (Debian: apt install xvfb)")
    else:
        with tempfile.TemporaryFile() as log:
            process, name = _start_xvfb(xvfb, log.fileno())
            problem = "Xvfb did not report a display" if not name else None
            if name:
                os.environ["DISPLAY"] = name
                problem = _probe_tk()
            if problem is None:
                try:
                    yield name
                finally:
                    _stop(process)
                    _restore_display(previous)
                return
            _stop(process)
            log.seek(0)
            errors = log.read().decode(errors="replace").strip().splitlines()[-3:]
            reasons.append(f"Xvfb: {problem} {' '.join(errors)}".strip())
    _restore_display(previous)
    if previous:
        problem = _probe_tk()
        if problem is None:
            yield previous
            return
        reasons.append(f"$DISPLAY={previous}: {problem}")
    else:
        reasons.append("$DISPLAY is not set")
    pytest.skip("no display for the GUI tests: " + "; ".join(reasons))


def _restore_display(previous: str | None) -> None:
    if previous is None:
        os.environ.pop("DISPLAY", None)
    else:
        os.environ["DISPLAY"] = previous


@pytest.fixture(autouse=True)
def _display_for_gui_tests(request: pytest.FixtureRequest) -> None:
    """A test marked gui gets the display, or is skipped with the reason there is none."""
    if request.node.get_closest_marker("gui") is not None:
        request.getfixturevalue("display")


@pytest.fixture
def root(display: str, request: pytest.FixtureRequest) -> Iterator[tk.Tk]:
    """One Tk root per test (of the test module's ROOT_CLASS, tk.Tk by default).
    An exception in any Tk callback fails the test."""
    root: tk.Tk = getattr(request.module, "ROOT_CLASS", tk.Tk)()
    errors: list[str] = []

    def report(exc: type[BaseException], value: BaseException, tb: object) -> None:
        errors.append(f"{exc.__name__}: {value}")

    root.report_callback_exception = report
    yield root
    try:
        root.destroy()
    except tk.TclError:
        pass  # the test closed the window itself
    # A window's objects hold each other (callbacks, the session and its view), so only the
    # garbage collector frees them, in whatever thread it happens to run. Freed in a receiver
    # thread of a later test, the last reference to a Tk interpreter deletes it from the wrong
    # thread, and Tcl aborts the process. Collected here, on Tk's thread, they never get there.
    gc.collect()
    assert not errors, f"exceptions in Tk callbacks: {errors}"


@pytest.fixture(autouse=True)
def _settings_in_a_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test's windows read and write their settings (client3.Settings) in a folder of the
    test's own, never in the home folder of whoever runs the tests. The light theme is chosen
    there, so that a desktop set to dark does not change the colours the tests see."""
    path = tmp_path / "panda-chat" / "settings.json"
    path.parent.mkdir()
    path.write_text('{"theme": "light"}\n', encoding="utf-8")
    monkeypatch.setenv("PANDA_CHAT_SETTINGS", str(path))
    return path


@pytest.fixture
def elsewhere(root: tk.Tk) -> Iterator[tk.Entry]:
    """A text field in another Tk application (another X client): focusing it takes the
    keyboard focus away from the chat window, as clicking into another program does."""
    other = tk.Tk()
    other.title("Another program")
    other.geometry("200x40+900+600")
    field = tk.Entry(other)
    field.pack()
    other.update()
    yield field
    other.destroy()
