"""client3.py's window: whispers, history, mentions, and a connection that comes back by itself.

Real Tk under Xvfb (see conftest.py), real servers and real sockets on 127.0.0.1. The tests pump
Tk's loop until a condition holds, always with a deadline (pump() of test_client_gui.py). Windows
reconnect on a schedule of RETRY_S instead of seconds, so every retry test takes a moment; a
Cable between window and server drops the connection while the server stays up.
Focus is real: another Tk application takes the keyboard focus, and the window gets it back
with focus_force(), which is the <FocusIn> a person's click makes.
"""

from __future__ import annotations

import functools
import queue
import re
import time
import tkinter as tk
from collections.abc import Iterator
from typing import Any

import pytest
from chat_helpers import Cable, LineClient, running_server, sync
from test_client_gui import (
    chat_text,
    free_port,
    listed,
    press,
    pump,
    seam_window,
    shows,
    type_keys,
)

import client3
from client3 import ChatWindow, Connection, ConnectionEvent, InboxItem
from protocol import Message

pytestmark = pytest.mark.gui

RETRY_S = (0.05,)  # the tests' retry schedule: an attempt every 50 ms
# How long "nothing happens" is watched for: 20 attempts' worth of the schedule.
QUIET_S = 20 * RETRY_S[0]
ELLIPSIS = "\u2026"


class CountingTk(tk.Tk):
    """A Tk root that counts rings of its bell (and rings no real one)."""

    rings = 0

    def bell(self, displayof: Any = 0) -> None:
        self.rings += 1



ROOT_CLASS = CountingTk  # the root fixture (conftest.py) makes one of these


def look_away(root: tk.Tk, window: ChatWindow, field: tk.Entry) -> None:
    field.focus_force()
    pump(root, lambda: not window.has_focus(), "the focus to leave the window")


def look_back(root: tk.Tk, window: ChatWindow) -> None:
    window.input.entry.focus_force()
    pump(root, window.has_focus, "the focus to come back")


class Windows:
    """Opens client windows on the test's root (retrying on RETRY_S); close_all() at the end.
    options go to ChatWindow (settings, notify_command, open_url...)."""

    def __init__(self, root: tk.Tk) -> None:
        self.root = root
        self.opened: list[tuple[ChatWindow, Connection | None]] = []

    def open(self, address: tuple[str, int], name: str | None = None,
             bell: bool = True, **options: Any) -> ChatWindow:
        window, connection = client3.open_chat(self.root, address[0], address[1], name,
                                               bell=bell, retry_delays=RETRY_S, **options)
        self.opened.append((window, connection))
        self.root.update()
        return window

    def joined(self, address: tuple[str, int], name: str, bell: bool = True,
               **options: Any) -> ChatWindow:
        window = self.open(address, name, bell, **options)
        pump(self.root, lambda: window.session.phase == "chatting", f"{name}'s welcome")
        return window

    def seam(self, name: str = "Alice", **options: Any
             ) -> tuple[ChatWindow, queue.Queue[InboxItem], list[str]]:
        """seam_window() (test_client_gui.py): no network, never reconnecting by itself."""
        window, inbox, sent = seam_window(self.root, name, retry_delays=(), **options)
        self.opened.append((window, None))
        return window, inbox, sent

    def close_all(self) -> None:
        for window, connection in self.opened:
            window.close()
            if connection is not None:
                connection.close()


@pytest.fixture
def windows(root: CountingTk) -> Iterator[Windows]:
    opened = Windows(root)
    yield opened
    opened.close_all()


def lines_tagged(window: ChatWindow, tag: str) -> list[str]:
    """The chat view's lines, as shown, that carry a whole-line tag ("mention", "missed"...)."""
    chat = window.chat_view.text
    last = int(chat.index("end-1c").split(".")[0])
    return [chat.get(f"{n}.0", f"{n}.end") for n in range(1, last + 1)
            if tag in chat.tag_names(f"{n}.0")]


def without_time(lines: list[str]) -> list[str]:
    return [re.sub(r"^\d\d:\d\d ", "", line) for line in lines]


def tags_of(window: ChatWindow, text: str) -> tuple[str, ...]:
    """The tags on the first character of text's first appearance in the chat view."""
    index = window.chat_view.text.search(text, "1.0", stopindex="end")
    assert index, f"{text!r} is not shown"
    return tuple(str(tag) for tag in window.chat_view.text.tag_names(index))


def double_click(listbox: tk.Listbox, row: int) -> None:
    """A person's double click on a row of listbox."""
    box = listbox.bbox(row)
    assert box is not None, f"row {row} is not shown"
    double_click_at(listbox, box[0] + 3, box[1] + box[3] // 2)


def double_click_at(listbox: tk.Listbox, x: int, y: int) -> None:
    """Two clicks at x, y, quickly: Tk sees a <Double-Button-1>."""
    listbox.focus_force()
    listbox.update()
    for _ in range(2):
        listbox.event_generate("<ButtonPress-1>", x=x, y=y)
        listbox.event_generate("<ButtonRelease-1>", x=x, y=y)
    listbox.update()


def watch_quietly(root: tk.Tk, seconds: float) -> None:
    """Run Tk's loop for seconds: for asserting that something does NOT happen meanwhile."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        root.update()
        time.sleep(0.005)  # pacing only


def countdown(window: ChatWindow) -> str:
    return str(window.status_bar.retry_label.cget("text"))


def retry_countdown(window: ChatWindow) -> int | None:
    """The attempt the status bar counts down to, or None when it shows no countdown."""
    text = countdown(window) if window.status_bar.retry_label.winfo_ismapped() else ""
    shown = re.fullmatch(rf"Reconnecting in \d+ s{ELLIPSIS} \(attempt (\d+)\)", text)
    return int(shown.group(1)) if shown else None


# --- mentions ------------------------------------------------------------------------


def test_mentions_and_whispers_are_counted_in_the_title_and_the_bell_rings_at_most_once(
        root: CountingTk, windows: Windows, elsewhere: tk.Entry) -> None:
    with running_server(history=10) as server:
        bob = LineClient(server.address, "Bob")
        bob.send("alice, are you there?")  # before she comes: replayed as history
        sync(bob)
        elsewhere.focus_force()  # the person is in another program when the window opens
        window = windows.joined(server.address, "Alice")
        look_away(root, window, elsewhere)
        pump(root, shows(window, r"Bob: alice, are you there\?$"), "the history")

        window.input.entry.insert(0, "Alice here, hi Bob")  # one's own line, naming oneself
        window.input.submit()
        bob.expect(r"^Alice: Alice here, hi Bob$")
        for text in ("hi alice!", "Alicex is somebody else", "and so is alice_b", "ALICE?",
                     "@whisper Alice psst, Alice", "@whisper Alice no name in this one",
                     "the end"):
            bob.send(text)
        pump(root, shows(window, r"Bob: the end$"), "Bob's lines")

        assert without_time(lines_tagged(window, "mention")) == [
            "Bob: alice, are you there?",  # highlighted, but said before she came: not counted
            "Bob: hi alice!", "Bob: ALICE?", "Bob whispers to you: psst, Alice"]
        # Three mentions and the whisper without her name; one ring for them all (BELL_GAP_S).
        assert root.title() == "(4) Panda Chat \u2014 Alice"
        assert root.rings == 1
        assert window.chat_view.text.tag_cget("mention", "background") == client3.MENTION_BG

        look_back(root, window)  # a <FocusIn>: the person sees them now
        pump(root, lambda: root.title() == "Panda Chat \u2014 Alice", "the count to clear")
        bob.send("alice, still there?")  # while the window has the focus
        pump(root, shows(window, r"Bob: alice, still there\?$"), "the line")
        assert "mention" in tags_of(window, "alice, still there?")
        assert root.title() == "Panda Chat \u2014 Alice" and root.rings == 1


def test_quiet_counts_mentions_without_the_bell(root: CountingTk, windows: Windows,
                                                elsewhere: tk.Entry) -> None:
    assert client3.parse_args(["--quiet"]).quiet and not client3.parse_args([]).quiet
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        window = windows.joined(server.address, "Alice", bell=False)
        look_away(root, window, elsewhere)
        bob.send("psst alice")
        bob.send("alice!")
        pump(root, lambda: root.title() == "(2) Panda Chat \u2014 Alice", "the count")
        assert root.rings == 0


# --- whispers and history ----------------------------------------------------------------


def test_whispers_stand_out_and_a_double_click_on_a_name_starts_one(
        root: CountingTk, windows: Windows) -> None:
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        carol = LineClient(server.address, "Carol")
        window = windows.joined(server.address, "Alice")
        pump(root, lambda: listed(window) == ["Alice (you)", "Bob", "Carol"], "the listing")
        bob.send("@whisper Alice psst")
        bob.send("plain words")
        pump(root, shows(window, r"Bob: plain words$"), "Bob's lines")
        assert re.search(r"^\d\d:\d\d Bob whispers to you: psst$", chat_text(window), re.M)

        double_click(window.user_list.listbox, 1)  # Bob
        assert window.input.entry.get() == "@whisper Bob "
        assert window.input.entry.index("insert") == len("@whisper Bob ")
        assert root.focus_get() is window.input.entry
        type_keys(window.input.entry, "hi")
        press(window.input.entry, "Return")
        bob.expect(r"^\* whisper: Alice: hi$")
        pump(root, shows(window, r"you whispered to Bob: hi$"), "the whisper's confirmation")

        for label in ("whispers to you", "you whispered to"):
            assert "whisper_label" in tags_of(window, label)
        assert "whisper" in tags_of(window, "psst") and "whisper" in tags_of(window, ": hi")
        assert not {"whisper", "whisper_label"} & set(tags_of(window, ": plain words"))
        chat = window.chat_view.text
        assert chat.tag_cget("whisper", "foreground") == client3.WHISPER_FG
        assert chat.tag_cget("whisper", "foreground") != chat.tag_cget("body", "foreground")
        assert chat.tag_cget("whisper", "font") != chat.tag_cget("body", "font")

        # What is typed stays; a whisper to somebody else changes its name; oneself and the
        # empty space below the names do nothing.
        type_keys(window.input.entry, "see you")
        double_click(window.user_list.listbox, 2)
        assert window.input.entry.get() == "@whisper Carol see you"
        double_click(window.user_list.listbox, 1)
        assert window.input.entry.get() == "@whisper Bob see you"
        double_click(window.user_list.listbox, 0)  # Alice (you)
        double_click_at(window.user_list.listbox, 5, window.user_list.listbox.winfo_height() - 3)
        assert window.input.entry.get() == "@whisper Bob see you"
        carol.close()


def test_history_is_shown_apart_with_the_servers_time(root: CountingTk,
                                                      windows: Windows) -> None:
    with running_server(history=10) as server:
        bob = LineClient(server.address, "Bob")
        bob.send("said before Alice came")
        sync(bob)
        window = windows.joined(server.address, "Alice")
        bob.send("said live")
        pump(root, shows(window, r"Bob: said live$"), "the live line")
    assert without_time(lines_tagged(window, "history")) == ["Bob: said before Alice came"]
    assert "earlier" in tags_of(window, ": said before")
    assert "body" not in tags_of(window, ": said before")
    assert "body" in tags_of(window, ": said live")
    chat = window.chat_view.text
    assert chat.tag_cget("earlier", "foreground") == client3.MUTED
    assert chat.tag_cget("earlier", "foreground") != chat.tag_cget("body", "foreground")

    # The time shown is the server's, from the history line, not when it arrived.
    window.handle(Message("history", "[03:07] Carol: long ago"))
    assert chat_text(window).endswith("\n03:07 Carol: long ago")
    assert "history" in tags_of(window, "03:07 Carol")


# --- reconnecting by itself ----------------------------------------------------------------


def test_a_cut_connection_resumes_by_itself_and_shows_the_missed_lines_once(
        root: CountingTk, windows: Windows) -> None:
    with running_server(resume_window=30) as server:
        bob = LineClient(server.address, "Bob")
        cable = Cable(server.address)
        try:
            window = windows.joined(cable.address, "Alice")
            pump(root, lambda: listed(window) == ["Alice (you)", "Bob"], "the listing")

            cable.unplug()  # each attempt now connects, and is dropped at once
            pump(root, lambda: (retry_countdown(window) or 0) >= 2, "a countdown to a retry")
            assert window.status_bar.cancel_button.winfo_ismapped()
            assert window.session.phase == "offline" and window.banner.retry_button.winfo_ismapped()
            bob.expect(r"^\* lost: Alice lost connection")
            for text in ("one", "two", "three", "@whisper Alice psst"):
                bob.send(text)
            sync(bob)  # the server has kept them all for Alice

            cable.plug()
            pump(root, lambda: window.session.phase == "chatting", "the welcome back")
            bob.expect(r"^\* back: Alice is back\.$")
            bob.send("four")
            pump(root, shows(window, r"Bob: four$"), "a live line")
            # Checked while the server is up: once it stops, the window counts down again.
            assert window.session.name == "Alice" and window.session.retry.attempt_no == 0
            assert not window.status_bar.retry_label.winfo_ismapped()
            assert not window.status_bar.cancel_button.winfo_ismapped()
        finally:
            cable.close()
    text = chat_text(window)
    assert lines_tagged(window, "missed") == [
        "missed Bob: one", "missed Bob: two", "missed Bob: three",
        "missed Bob whispers to you: psst"]
    for said in ("one", "two", "three", "four"):
        assert len(re.findall(rf"Bob: {said}$", text, re.M)) == 1, f"{said} not shown once"
    assert "missed" not in tags_of(window, ": four")
    assert "Welcome back to the grove, Alice!" in text
    assert text.count("Connection lost") == 1, "a note for each failed attempt"


def test_a_restarted_server_is_joined_afresh_with_the_same_name(root: CountingTk,
                                                                windows: Windows) -> None:
    port = free_port()
    with running_server(port, resume_window=30):
        window = windows.joined(("127.0.0.1", port), "Alice")
    pump(root, lambda: window.session.retry.attempt_no >= 2, "attempts at the stopped server")
    assert "The server is shutting down" in chat_text(window)
    with running_server(port, resume_window=30) as server:
        pump(root, lambda: window.session.phase == "chatting", "the welcome from the new server")
        assert server.grove.names() == ["Alice"]
    assert chat_text(window).count("Welcome to the grove, Alice!") == 2


def test_a_resume_code_the_server_forgot_joins_afresh(root: CountingTk,
                                                      windows: Windows) -> None:
    port = free_port()
    with running_server(port, resume_window=30):
        cable = Cable(("127.0.0.1", port))
        try:
            window = windows.joined(cable.address, "Alice")
            assert window.session.resume_code
            cable.unplug()  # the window never hears that the server stops
            pump(root, lambda: window.session.retry.attempt_no >= 2, "attempts")
        except BaseException:
            cable.close()
            raise
    try:
        with running_server(port, resume_window=30) as server:  # it remembers nothing
            bob = LineClient(server.address, "Bob")
            cable.plug()
            pump(root, lambda: window.session.phase == "chatting", "the welcome")
            bob.expect(r"^\* join: Alice joined the grove\.$")
            text = chat_text(window)
            assert text.count("Welcome to the grove, Alice!") == 2
            assert "Welcome back" not in text
            assert "resume code is wrong" not in text, "the refused code is the client's business"
    finally:
        cable.close()


def test_cancel_stops_the_retries_and_reconnect_still_works(root: CountingTk) -> None:
    port = free_port()
    inbox: queue.Queue[InboxItem] = queue.Queue()
    connection = Connection("127.0.0.1", port, inbox)
    attempts: list[float] = []

    def connect() -> None:
        attempts.append(time.monotonic())
        connection.open()

    with running_server(port):
        window = ChatWindow(root, inbox, send=connection.send, connect=connect,
                            disconnect=connection.close, address=("127.0.0.1", port),
                            name="Alice", retry_delays=RETRY_S)
        pump(root, lambda: window.session.phase == "chatting", "the welcome")
    try:
        # The server stopped: each attempt is refused; wait for a countdown, then Cancel.
        pump(root, lambda: (retry_countdown(window) or 0) >= 2, "a countdown")
        window.status_bar.cancel_button.invoke()
        made = len(attempts)
        root.update()
        assert not window.status_bar.retry_label.winfo_ismapped()
        assert not window.status_bar.cancel_button.winfo_ismapped()
        assert window.banner.retry_button.winfo_ismapped(), "Reconnect must stay"
        with running_server(port) as server:
            watch_quietly(root, QUIET_S)  # 20 retry waits: time for many attempts
            assert len(attempts) == made, "attempts after Cancel"
            assert server.grove.names() == [] and window.session.phase == "offline"

            window.banner.retry_button.invoke()
            pump(root, lambda: window.session.phase == "chatting", "the welcome after Reconnect")
            assert server.grove.names() == ["Alice"]
    finally:
        window.close()
        connection.close()


def test_the_waits_grow_to_the_last_which_repeats(root: CountingTk) -> None:
    """Through the seams: the schedule, the countdown's words, Cancel during an attempt, and
    no retries after @leaves."""
    delays = (0.1, 0.2, 0.3)
    inbox: queue.Queue[InboxItem] = queue.Queue()
    attempts: list[float] = []
    disconnects: list[float] = []
    window = ChatWindow(root, inbox, send=lambda text: True,
                        connect=lambda: attempts.append(time.monotonic()),
                        disconnect=lambda: disconnects.append(time.monotonic()),
                        name="Alice", retry_delays=delays)
    try:
        def attempted(count: int) -> bool:
            return len(attempts) == count

        def connected() -> None:
            inbox.put(ConnectionEvent("connected"))
            inbox.put(Message("welcome", "Welcome to the grove, Alice!"))
            pump(root, lambda: window.session.phase == "chatting", "the welcome")

        connected()
        lost_at = time.monotonic()
        inbox.put(ConnectionEvent("lost", "the connection was reset"))
        pump(root, lambda: retry_countdown(window) == 1, "the countdown")
        assert countdown(window) == f"Reconnecting in 1 s{ELLIPSIS} (attempt 1)"
        for attempt, delay in enumerate((*delays, delays[-1]), start=1):
            if attempt > 1:
                lost_at = time.monotonic()
                inbox.put(ConnectionEvent("failed", "connection refused"))
            pump(root, functools.partial(attempted, 1 + attempt), f"attempt {attempt}")
            waited = attempts[-1] - lost_at
            assert delay <= waited < delay + 0.75, (attempt, waited)
            assert window.session.phase == "connecting"
            assert countdown(window) == f"Reconnecting{ELLIPSIS} (attempt {attempt})"
        assert chat_text(window).count("Cannot reach") == 0, "the status bar counts, not the chat"

        window.status_bar.cancel_button.invoke()  # during an attempt: that attempt ends too
        assert len(disconnects) == 1 and window.session.phase == "offline"
        assert window.session.retry.attempt_no == 0

        window.banner.retry_button.invoke()
        connected()
        window.send_command("@leaves")
        inbox.put(Message("bye", "Goodbye, Alice! Come back to the grove soon."))
        inbox.put(ConnectionEvent("lost", "the server closed the connection"))
        pump(root, lambda: window.session.phase == "offline", "the goodbye")
        made = len(attempts)
        watch_quietly(root, 3 * delays[-1])
        assert len(attempts) == made and not window.status_bar.retry_label.winfo_ismapped(), \
            "a retry after @leaves"
    finally:
        window.close()


def test_the_status_bar_counts_the_seconds_down(root: CountingTk) -> None:
    inbox: queue.Queue[InboxItem] = queue.Queue()
    attempts: list[float] = []
    window = ChatWindow(root, inbox, send=lambda text: True,
                        connect=lambda: attempts.append(time.monotonic()),
                        name="Alice", retry_delays=(1.5,))
    try:
        inbox.put(ConnectionEvent("connected"))
        inbox.put(Message("welcome", "Welcome to the grove, Alice!"))
        inbox.put(ConnectionEvent("lost", "the connection was reset"))
        pump(root, lambda: window.status_bar.retry_label.winfo_ismapped(), "the countdown")
        assert countdown(window) == f"Reconnecting in 2 s{ELLIPSIS} (attempt 1)"
        pump(root, lambda: countdown(window) != f"Reconnecting in 2 s{ELLIPSIS} "
                                                                "(attempt 1)", "a second less")
        assert countdown(window) == f"Reconnecting in 1 s{ELLIPSIS} (attempt 1)"
        assert len(attempts) == 1, "only the first connection so far"
        assert window.status_bar.label.cget("text").startswith("Disconnected from 127.0.0.1:12345: "
                                                     "Connection lost: the connection was reset")
    finally:
        window.close()
