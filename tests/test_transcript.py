"""The transcript (--transcript FILE): what the whole grove sees, with its date
and time; never a whisper; written within a second and at shutdown; rotated to
FILE.1; read back into the history after a restart; and its errors.

Real servers on 127.0.0.1 (in a thread, or as a process), real files. Files are
polled until a line is there, with a deadline; nothing waits on a bare sleep.
"""

from __future__ import annotations

import logging
import re
import signal
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from chat_helpers import WAIT_S, LineClient, pandas, running_server, sync
from test_server_process import START_S, STOP_S, ServerProcess, free_port, joined

from server3 import (
    TRANSCRIPT_QUEUE_BYTES,
    ChatServer,
    Transcript,
    TranscriptError,
    parse_args,
)

try:
    import resource
except ImportError:  # not POSIX
    resource = None  # type: ignore[assignment]

STAMPED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (.*)$")
HISTORY = re.compile(r"^\* history: \[(\d\d:\d\d)\] (.*)$")
# The transcript promises each line within a second; a loaded machine gets slack.
WRITTEN_WITHIN_S = 1.0 + 0.5


def stamped_lines(path: Path) -> list[tuple[str, str]]:
    """(date and time, line) for every line of the transcript at path; every
    line must have its stamp."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = STAMPED.match(line)
        assert match, f"a line without its date and time: {line!r}"
        out.append((match.group(1), match.group(2)))
    return out


def said(path: Path) -> list[str]:
    """The lines of the transcript at path, without their stamps."""
    return [line for _, line in stamped_lines(path)]


def wait_for_line(path: Path, line: str, timeout: float = WAIT_S) -> list[str]:
    """The transcript's lines once line is among them; fails after timeout."""
    deadline = time.monotonic() + timeout
    while line not in (lines := said(path)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{line!r} not in {path} within {timeout} s: {lines[-10:]}")
        time.sleep(0.02)  # polling a file: nothing to wait on
    return lines


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "grove.txt"


# --- what is written ------------------------------------------------------------------


def test_the_grove_lines_are_written_with_their_local_date_and_time(path: Path) -> None:
    before = datetime.now().replace(microsecond=0)
    with running_server(transcript=path) as server:
        alice, bob = pandas(server, "Alice", "Bob")
        alice.send("hello, Zoë 🐼 \x1b[31mred")
        heard = bob.expect(r"^Alice: hello")
        bob.close()
        alice.expect(r"^\* leave: Bob left")
        lines = wait_for_line(path, "* leave: Bob left the grove (connection closed).")
    after = datetime.now()
    assert lines[:4] == ["* join: Alice joined the grove.", "* join: Bob joined the grove.",
                         heard, "* leave: Bob left the grove (connection closed)."], lines
    assert heard == "Alice: hello, Zoë 🐼 \\x1b[31mred"  # escaped once, as the grove got it
    for stamp, line in stamped_lines(path):
        assert before <= datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S") <= after, (stamp, line)


def test_whispers_and_answers_are_never_written(path: Path) -> None:
    with running_server(transcript=path) as server:
        alice, bob = pandas(server, "Alice", "Bob")
        alice.send("@whisper Bob a secret")
        bob.expect(r"^\* whisper: Alice: a secret$")
        for command in ("@grove", "@help", "@bamboo", "@nonsense"):
            alice.send(command)
        sync(alice)
        alice.send("said aloud")
        lines = wait_for_line(path, "Alice: said aloud")
    assert not [line for line in lines if "secret" in line or re.match(
        r"\* (grove|help|fact|error|whisper|whispered|welcome|resume):", line)], lines


def test_keepers_actions_and_moderation_are_written_but_not_what_one_panda_is_told(
        path: Path) -> None:
    with running_server(transcript=path, keeper_code="sesame") as server:
        alice, bob, teacher = pandas(server, "Alice", "Bob", "Teacher")
        teacher.send("@keeper sesame")
        teacher.expect(r"^\* keeper: You are a keeper")
        for command in ("@me waves", "@nick Alicia"):
            alice.send(command)
        sync(alice)  # in the transcript before what the teacher says next
        teacher.send("@announce Quiet now, please")
        teacher.send("@mute Bob 1")
        teacher.send("@kick Bob too loud")
        assert "* kick: You were removed from the grove by Teacher (too loud)." in (
            bob.read_until_eof())
        lines = wait_for_line(path, "* leave: Bob left the grove (removed by Teacher: too loud).")
    assert lines[3:] == [
        "* keeper: Teacher is now a keeper.",
        "* action: Alice waves",
        "* nick: Alice is now Alicia.",
        "* announce: Teacher: Quiet now, please",
        "* mute: Bob was muted by Teacher for 1 minutes.",
        "* leave: Bob left the grove (removed by Teacher: too loud).",
    ], lines


def test_a_line_is_written_within_a_second_without_a_shutdown(path: Path) -> None:
    with running_server(transcript=path) as server:
        alice, bob = pandas(server, "Alice", "Bob")
        wait_for_line(path, "* join: Bob joined the grove.")  # the writer is idle now
        alice.send("written soon")
        bob.expect(r"^Alice: written soon$")
        wait_for_line(path, "Alice: written soon", timeout=WRITTEN_WITHIN_S)
        alice.send("still chatting")
        bob.expect(r"^Alice: still chatting$")


def test_the_transcript_is_appended_to_and_shows_the_shutdown(path: Path) -> None:
    path.write_text("2026-11-30 09:00:00 Old: from yesterday\n", encoding="utf-8")
    with running_server(transcript=path) as server:
        (alice,) = pandas(server, "Alice")
        alice.send("today")
        sync(alice)
    lines = said(path)  # close() has written everything
    assert lines[0] == "Old: from yesterday" and "today" not in lines
    assert lines[-1] == "* shutdown: The server is shutting down. Goodbye!", lines


# --- rotation --------------------------------------------------------------------------


def test_past_its_size_the_transcript_becomes_file_1_and_a_new_one_begins(path: Path) -> None:
    max_bytes = 200
    old = path.with_name(path.name + ".1")
    texts = [f"line {n:02d} of the lesson" for n in range(1, 16)]  # 48 bytes stamped
    with running_server(transcript=path, transcript_max_bytes=max_bytes) as server:
        alice, bob = pandas(server, "Alice", "Bob")
        for text in texts:  # one at a time, so each write is small
            alice.send(text)
            bob.expect(f"^Alice: {text}$")
            wait_for_line(path, f"Alice: {text}")
    for file in (path, old):
        assert 0 < file.stat().st_size <= max_bytes, file
    lines = said(old) + said(path)  # whole lines only: said() checks every stamp
    chat = [line.removeprefix("Alice: ") for line in lines if line.startswith("Alice: ")]
    assert chat == texts[-len(chat):], lines  # in order, the newest last, no gap
    assert texts[0] not in chat, "the first FILE.1 should have been replaced since"
    assert lines[-1] == "* shutdown: The server is shutting down. Goodbye!", lines


def test_the_command_line_takes_the_size_in_mb_a_fraction_too(path: Path) -> None:
    assert parse_args([]).transcript is None  # off unless asked for
    assert parse_args(["--transcript-max-mb", "0.5"]).transcript_max_mb == 0.5
    for bad in ("0", "-1", "lots"):
        with pytest.raises(SystemExit):
            parse_args(["--transcript-max-mb", bad])
    port = free_port()
    server = ServerProcess("--port", str(port), "--transcript", str(path),
                           "--transcript-max-mb", "0.0002")  # 200 bytes
    try:
        server.wait_for_stderr(rf"listening on .*\b{port}\b")
        alice = joined(("127.0.0.1", port), "Alice")
        for n in range(6):
            alice.send(f"line {n} of the lesson")
            wait_for_line(path, f"Alice: line {n} of the lesson")
        server.wait_for_stderr(r"transcript: .* is full \(\d+ bytes\); it is .*\.1 now")
    finally:
        server.kill()
    assert path.stat().st_size <= 200
    assert 0 < Path(f"{path}.1").stat().st_size <= 200


def test_a_line_longer_than_the_whole_size_gets_a_file_of_its_own(path: Path) -> None:
    with running_server(transcript=path, transcript_max_bytes=100) as server:
        alice, bob = pandas(server, "Alice", "Bob")
        long = "x" * 300
        alice.send(long)
        bob.expect(r"^Alice: x+$")
        wait_for_line(path, f"Alice: {long}")
        alice.send("short")
        bob.expect(r"^Alice: short$")
        wait_for_line(path, "Alice: short")
        assert said(path.with_name(path.name + ".1")) == [f"Alice: {long}"]


# --- read back after a restart ----------------------------------------------------------


def test_after_a_restart_newcomers_get_the_last_chat_lines_back(path: Path) -> None:
    with running_server(transcript=path, history=3) as server:
        alice, bob = pandas(server, "Alice", "Bob")
        for n in range(1, 6):
            alice.send(f"line {n}")
        alice.send("@whisper Bob not for the history")
        sync(alice)
        bob.close()  # a system line after the last chat line
        alice.expect(r"^\* leave: Bob")
    stamps = {line: stamp[11:16] for stamp, line in stamped_lines(path)}
    with running_server(transcript=path, history=3) as server:
        carol = LineClient(server.address, "Carol")
        history = carol.lines_until(r"^\* grove: ")[:-1]
    got = [match.groups() for match in map(HISTORY.match, history) if match]
    assert len(got) == len(history), history
    assert got == [(stamps[f"Alice: line {n}"], f"Alice: line {n}") for n in (3, 4, 5)], history


def test_the_history_read_back_continues_into_file_1(tmp_path: Path) -> None:
    path = tmp_path / "grove.txt"
    Path(f"{path}.1").write_text("2026-11-30 09:00:00 Ann: one\n"
                                 "2026-11-30 09:01:00 Ann: two\n", encoding="utf-8")
    path.write_text("2026-11-30 09:02:00 * join: Ben joined the grove.\n"
                    "2026-11-30 09:03:00 Ben: three\n"
                    "2026-11-30 09:04:00 * leave: Ben left the grove (said goodbye).\n",
                    encoding="utf-8")
    assert Transcript.chat_history(path, 2) == ["[09:01] Ann: two", "[09:03] Ben: three"]
    assert Transcript.chat_history(path, 9) == ["[09:00] Ann: one", "[09:01] Ann: two",
                                                "[09:03] Ben: three"]
    assert Transcript.chat_history(path, 0) == []
    assert Transcript.chat_history(tmp_path / "none.txt", 5) == []


def test_a_line_edited_into_the_file_is_escaped_when_read_back(path: Path) -> None:
    path.write_bytes(b"2026-11-30 09:00:00 Eve: \x1b[2J\xff\n"
                     b"not a transcript line\n"
                     b"2026-11-30 09:01:00 Eve: fine")  # no newline at the end
    assert Transcript.chat_history(path, 5) == ["[09:00] Eve: \\x1b[2J\ufffd",
                                                "[09:01] Eve: fine"]


def test_only_the_tail_of_a_big_transcript_is_read(path: Path) -> None:
    big = 100_000_000
    with path.open("wb") as file:
        file.truncate(big)  # 100 MB (sparse where the file system can)
        file.seek(big)
        file.write(b"\n2026-11-30 09:00:00 Ann: the last word\n")
    tracemalloc.start()
    try:
        history = Transcript.chat_history(path, 50)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert history == ["[09:00] Ann: the last word"]
    assert peak < 20_000_000, f"read back took {peak} bytes: more than the tail was read"


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_a_transcript_that_cannot_be_opened_is_one_line_and_exit_1(tmp_path: Path,
                                                                   where: str) -> None:
    bad = tmp_path / "missing" / "grove.txt" if where == "missing folder" else tmp_path
    server = ServerProcess("--port", "0", "--transcript", str(bad))
    try:
        code = server.wait(START_S)
    finally:
        server.kill()
    assert code == 1
    lines = [line for line in server.stderr if line.strip()]
    assert len(lines) == 1, lines
    assert re.match(rf"server3.py: cannot (read|write) the transcript {re.escape(str(bad))}: "
                    r"\w", lines[0]), lines


def test_the_class_raises_and_frees_the_port(tmp_path: Path) -> None:
    with pytest.raises(TranscriptError, match="cannot read the transcript"):
        ChatServer("127.0.0.1", 0, transcript=tmp_path)  # a folder: no history in it
    with pytest.raises(TranscriptError, match="cannot write the transcript"):
        ChatServer("127.0.0.1", 0, transcript=tmp_path, history=0)
    port = free_port()
    with pytest.raises(TranscriptError):
        ChatServer("127.0.0.1", port, transcript=tmp_path)
    ChatServer("127.0.0.1", port).close()  # the listener was closed: the port is free


def test_lines_over_the_queue_bound_drop_the_oldest_and_say_so(
        path: Path, caplog: pytest.LogCaptureFixture) -> None:
    transcript = Transcript(path, max_bytes=100_000_000)  # its writer stalled: not started
    line = b"Ann: " + b"w" * 995 + b"\n"  # 1,001 bytes
    count = TRANSCRIPT_QUEUE_BYTES // len(line) + 100
    for n in range(count):
        transcript.record(b"Ann: %d\n" % n + line)
    kept = TRANSCRIPT_QUEUE_BYTES // (len(line) + len(b"Ann: 99999\n"))
    with caplog.at_level(logging.WARNING, logger="panda-chat"):
        transcript.stop(WAIT_S)
    warnings = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1, warnings
    match = re.search(r"(\d+) lines were dropped", warnings[0])
    assert match, warnings
    dropped = int(match.group(1))
    lines = said(path)
    assert dropped + len(lines) == 2 * count
    assert len(lines) >= 2 * kept
    assert lines[-2] == f"Ann: {count - 1}"  # the newest are kept
    assert lines[0].startswith("Ann: ") and lines[0] == f"Ann: {count - len(lines) // 2}"


@pytest.fixture
def file_size_limit() -> Iterator[Callable[[int, int], None]]:
    """limit(pid, bytes): files that process writes may not grow past bytes
    (writes past it fail with EFBIG, as on a full disk); limit(pid, -1) lifts it."""
    if resource is None or not hasattr(resource, "prlimit"):
        pytest.skip("needs resource.prlimit (Linux) to make a real write fail")
    limited: list[int] = []

    def limit(pid: int, size: int) -> None:
        hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard if size < 0 else size, hard))
        limited.append(pid)

    yield limit


def test_a_write_error_later_is_one_log_line_and_the_chat_goes_on(
        path: Path, file_size_limit: Callable[[int, int], None]) -> None:
    port = free_port()
    server = ServerProcess("--port", str(port), "--transcript", str(path))
    try:
        server.wait_for_stderr(rf"listening on .*\b{port}\b")
        address = ("127.0.0.1", port)
        alice, bob = joined(address, "Alice"), joined(address, "Bob")
        wait_for_line(path, "* join: Bob joined the grove.")
        file_size_limit(server.proc.pid, path.stat().st_size + 1000)  # the disk is "full"
        alice.send("before")
        wait_for_line(path, "Alice: before")
        big = ["a" * 3000, "b" * 3000, "c" * 3000]  # none fits in what is left
        alice.send(big[0])
        bob.expect(f"^Alice: {big[0]}$")
        server.wait_for_stderr(r"transcript: cannot write .*File too large")
        for text in big[1:]:
            alice.send(text)
            bob.expect(f"^Alice: {text}$")  # the chat goes on
        file_size_limit(server.proc.pid, -1)  # room again
        alice.send("after")
        wait_for_line(path, "Alice: after")
        resumed = server.wait_for_stderr(r"transcript: writing to .* again")
        server.proc.send_signal(signal.SIGINT)
        assert server.wait(STOP_S + 1) == 0
    finally:
        server.kill()
    assert len([line for line in server.stderr if "cannot write" in line]) == 1, server.stderr
    lines = said(path)  # every line whole: what a failed write wrote was cut off
    assert lines.index("Alice: before") < lines.index("Alice: after")
    lost = [text for text in big if f"Alice: {text}" not in lines]
    assert lost[:1] == big[:1], "the line said when the disk was full was written"
    # The big lines the writer took before the room came back were lost, the
    # others written; the log counts exactly those lost.
    assert re.search(rf"after losing {len(lost)} lines?$", resumed), (resumed, len(lost))


def test_sigint_writes_the_last_lines_and_stops_within_2_s(path: Path) -> None:
    port = free_port()
    server = ServerProcess("--port", str(port), "--transcript", str(path))
    try:
        server.wait_for_stderr(rf"listening on .*\b{port}\b")
        address = ("127.0.0.1", port)
        alice, bob = joined(address, "Alice"), joined(address, "Bob")
        alice.send("last words")
        bob.expect(r"^Alice: last words$")
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        assert server.wait(STOP_S + 1) == 0
        assert time.monotonic() - signalled < STOP_S, "the transcript held up the stop"
    finally:
        server.kill()
    lines = said(path)
    assert lines[-2:] == ["Alice: last words",
                          "* shutdown: The server is shutting down. Goodbye!"], lines
