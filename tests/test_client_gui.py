"""client3.py's window in a real Tk (under Xvfb, see conftest.py), against a real server.

Most tests run the window in this process against running_server() and LineClients on real
sockets; they pump Tk's loop with root.update() until a condition holds, always with a deadline.
A few drive the window through its seams (an injected inbox and send) where no server is needed
to make the point. One test runs client3.py as its own process and types into it with xdotool.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tkinter as tk
from collections.abc import Callable, Iterator
from pathlib import Path
from tkinter import font as tkfont
from typing import Any

import pytest
from chat_helpers import WAIT_S, Cable, LineClient, running_server

import client3
from ascii_art import banner_lines
from client3 import ChatWindow, Connection, ConnectionEvent, InboxItem
from protocol import Message

pytestmark = pytest.mark.gui

CLIENT = Path(__file__).resolve().parent.parent / "client3.py"
# Tk keysyms of the punctuation the tests type.
KEYSYMS = {" ": "space", "@": "at", "!": "exclam", ":": "colon", ".": "period", ",": "comma"}


# --- helpers -----------------------------------------------------------------------



def pump(root: tk.Tk, condition: Callable[[], object], what: str,
         timeout: float = WAIT_S) -> None:
    """Run Tk's loop until condition() holds; fail after timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        root.update()
        time.sleep(0.002)  # pacing the loop only; condition() is what is waited for


def status_text(window: ChatWindow) -> str:
    return str(window.status_bar.label.cget("text"))


def chat_text(window: ChatWindow) -> str:
    return window.chat_view.text.get("1.0", "end-1c")


def shows(window: ChatWindow, pattern: str) -> Callable[[], bool]:
    return lambda: re.search(pattern, chat_text(window), re.MULTILINE) is not None


def listed(window: ChatWindow) -> list[str]:
    return [str(item).strip() for item in window.user_list.listbox.get(0, "end")]


def type_keys(widget: tk.Misc, text: str) -> None:
    """Type text into widget with key events, as a person would."""
    widget.focus_force()
    widget.update()
    for ch in text:
        widget.event_generate("<KeyPress>", keysym=KEYSYMS.get(ch, ch))
    widget.update()


def press(widget: tk.Misc, key: str) -> None:
    widget.focus_force()
    widget.update()
    widget.event_generate(f"<{key}>")
    widget.update()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Windows:
    """Opens client windows on the test's root; closes their connections at the end."""

    def __init__(self, root: tk.Tk) -> None:
        self.root = root
        self.connections: list[Connection] = []

    def open(self, address: tuple[str, int], name: str | None = None) -> ChatWindow:
        window, connection = client3.open_chat(self.root, address[0], address[1], name)
        self.connections.append(connection)
        self.root.update()
        return window

    def joined(self, address: tuple[str, int], name: str) -> ChatWindow:
        window = self.open(address, name)
        pump(self.root, lambda: window.session.phase == "chatting", f"{name}'s welcome")
        return window


@pytest.fixture
def windows(root: tk.Tk) -> Iterator[Windows]:
    opened = Windows(root)
    yield opened
    for connection in opened.connections:
        connection.close()


def seam_window(root: tk.Tk, name: str = "Alice", **options: Any
                ) -> tuple[ChatWindow, queue.Queue[InboxItem], list[str]]:
    """A window on an injected inbox and send, already welcomed: no network at all. options
    go to ChatWindow."""
    inbox: queue.Queue[InboxItem] = queue.Queue()
    sent: list[str] = []

    def send(text: str) -> bool:
        sent.append(text)
        return True

    window = ChatWindow(root, inbox, send=send, name=name, **options)
    inbox.put(ConnectionEvent("connected"))
    inbox.put(Message("welcome", f"Welcome to the grove, {name}!"))
    pump(root, lambda: window.session.phase == "chatting", "the welcome")
    assert sent == [name]
    sent.clear()
    return window, inbox, sent


# --- joining -------------------------------------------------------------------------


def test_name_form_asks_in_the_window_and_joins(root: tk.Tk, windows: Windows) -> None:
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        window = windows.open(server.address)
        pump(root, lambda: window.session.phase == "naming", "the connection")
        assert window.name_form.frame.winfo_ismapped(), "the name form is not shown"
        assert not window.input.frame.winfo_ismapped()
        assert "panda name" in window.name_form.prompt.cget("text")

        type_keys(window.name_form.entry, "Alice")
        press(window.name_form.entry, "Return")
        pump(root, lambda: window.session.phase == "chatting", "the welcome")

        bob.expect(r"^\* join: Alice joined")
        assert window.input.frame.winfo_ismapped() and not window.name_form.frame.winfo_ismapped()
        assert status_text(window) == f"Connected to 127.0.0.1:{server.address[1]} as Alice"
        pump(root, lambda: listed(window) == ["Alice (you)", "Bob"], "the user list")
        assert root.focus_get() is window.input.entry


def test_the_panda_art_is_shown_in_a_monospace_font(root: tk.Tk, windows: Windows) -> None:
    with running_server() as server:
        window = windows.joined(server.address, "Alice")
        art = banner_lines()
        text = chat_text(window)
        for line in art:
            assert line in text
        start = window.chat_view.text.search(art[3], "1.0")
        assert "art" in window.chat_view.text.tag_names(start)
        font_name = str(window.chat_view.text.tag_cget("art", "font"))
        font = tkfont.Font(root, name=font_name, exists=True)
        assert font.measure("iiiiii") == font.measure("WWWWWW"), f"{font.actual()} is not monospace"


def test_a_refused_name_shows_the_servers_reason_and_asks_again(root: tk.Tk,
                                                                windows: Windows) -> None:
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        window = windows.open(server.address)
        pump(root, lambda: window.session.phase == "naming", "the connection")

        for refused, reason in (("bob", "The name Bob is taken; pick another."),
                                ("@bad", "A name cannot start with @")):
            window.name_form.entry.delete(0, "end")
            type_keys(window.name_form.entry, refused)
            press(window.name_form.entry, "Return")
            pump(root, lambda: window.name_form.error.cget("text"), f"the refusal of {refused}")
            assert window.name_form.error.cget("text").startswith(reason)
            assert window.name_form.frame.winfo_ismapped() and window.session.phase == "naming"
            assert window.name_form.entry.get() == refused, "the refused name is kept to edit"
            assert not bob.eof
            assert window.name_form.join_button.instate(["!disabled"])
            window.name_form.error.configure(text="")

        window.name_form.entry.delete(0, "end")
        type_keys(window.name_form.entry, "Alice")
        press(window.name_form.entry, "Return")
        pump(root, lambda: window.session.phase == "chatting", "the welcome")
        assert window.session.name == "Alice"


def test_a_name_given_on_the_command_line_joins_at_once(root: tk.Tk, windows: Windows) -> None:
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        window = windows.joined(server.address, "Carol")
        bob.expect(r"^\* join: Carol joined")
        assert not window.name_form.frame.winfo_ismapped()


def test_a_refused_command_line_name_opens_the_form_with_the_reason(root: tk.Tk,
                                                                    windows: Windows) -> None:
    with running_server() as server:
        window = windows.open(server.address, "two words")
        pump(root, lambda: window.name_form.error.cget("text"), "the refusal")
        assert window.name_form.error.cget("text") == "A name cannot contain spaces."
        assert window.name_form.frame.winfo_ismapped() and window.session.phase == "naming"
        assert window.name_form.entry.get() == "two words"


def test_the_status_says_connecting_until_the_connection_is_made(root: tk.Tk) -> None:
    inbox: queue.Queue[InboxItem] = queue.Queue()
    window = ChatWindow(root, inbox, address=("192.0.2.1", 4321))
    root.update()
    assert status_text(window) == "Connecting to 192.0.2.1:4321\u2026"
    assert window.command_buttons["@bamboo"].instate(["disabled"])
    assert not window.banner.frame.winfo_ismapped()
    inbox.put(ConnectionEvent("connected"))
    pump(root, lambda: window.session.phase == "naming", "the connection")
    assert status_text(window) == "Connected to 192.0.2.1:4321; choose a panda name"


def test_a_full_grove_says_so(root: tk.Tk, windows: Windows) -> None:
    with running_server(max_clients=1) as server:
        bob = LineClient(server.address, "Bob")
        window = windows.open(server.address, "Alice")
        pump(root, lambda: window.session.phase == "offline", "the refusal")
        assert status_text(window) == (f"Disconnected from 127.0.0.1:{server.address[1]}: "
                                              "The grove is full (1 panda). Please try again "
                                              "later.")
        assert window.banner.retry_button.winfo_ismapped()
        bob.close()


# --- chatting ------------------------------------------------------------------------


def test_enter_sends_and_ones_own_line_shows_at_once(root: tk.Tk, windows: Windows) -> None:
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        window = windows.joined(server.address, "Alice")
        type_keys(window.input.entry, "hello grove!")
        press(window.input.entry, "Return")
        # Shown before any answer: the server does not echo one's own lines.
        assert re.search(r"^\d\d:\d\d Alice \(you\): hello grove!$", chat_text(window), re.M)
        start = window.chat_view.text.search("hello grove!", "1.0")
        assert "own" in window.chat_view.text.tag_names(start)
        assert window.input.entry.get() == ""
        bob.expect(r"^Alice: hello grove!$")


def test_empty_input_sends_nothing(root: tk.Tk) -> None:
    window, _, sent = seam_window(root)
    before = chat_text(window)
    for blank in ("", "   "):
        window.input.entry.delete(0, "end")
        window.input.entry.insert(0, blank)
        press(window.input.entry, "Return")
    window.input.send_button.invoke()
    assert sent == [] and window.input.history.entries == []
    assert chat_text(window) == before


def test_lines_from_others_show_with_a_time_and_a_colour_per_name(root: tk.Tk,
                                                                  windows: Windows) -> None:
    with running_server() as server:
        window = windows.joined(server.address, "Alice")
        bob = LineClient(server.address, "Bob")
        carol = LineClient(server.address, "Carol")
        bob.send("hi Alice")
        carol.send("hello from Carol")
        bob.send("bamboo anyone?")
        pump(root, shows(window, r"Bob: bamboo anyone\?$"), "Bob's lines")
        assert re.search(r"^\d\d:\d\d Bob: hi Alice$", chat_text(window), re.M)

        def name_tags(name: str) -> set[str]:
            found: set[str] = set()
            index = "1.0"
            while index := window.chat_view.text.search(f"{name}: ", index, stopindex="end"):
                found |= {t for t in window.chat_view.text.tag_names(index) if t.startswith("name")}
                index = window.chat_view.text.index(f"{index} lineend")
            return found

        bob_tags, carol_tags = name_tags("Bob"), name_tags("Carol")
        assert len(bob_tags) == 1 and len(carol_tags) == 1, (bob_tags, carol_tags)
        bob_colour = window.chat_view.text.tag_cget(bob_tags.pop(), "foreground")
        carol_colour = window.chat_view.text.tag_cget(carol_tags.pop(), "foreground")
        assert bob_colour == client3.name_colour("Bob") == client3.name_colour("BOB")
        assert carol_colour == client3.name_colour("Carol")
        assert bob_colour != carol_colour  # these two names differ in colour
        sys_start = window.chat_view.text.search("Bob joined the grove.", "1.0")
        assert "system" in window.chat_view.text.tag_names(sys_start), "system lines stand apart"


def test_user_list_follows_joins_and_leaves(root: tk.Tk, windows: Windows) -> None:
    with running_server() as server:
        window = windows.joined(server.address, "Alice")
        pump(root, lambda: listed(window) == ["Alice (you)"], "the first listing")
        bob = LineClient(server.address, "Bob")
        carol = LineClient(server.address, "Carol")
        pump(root, lambda: listed(window) == ["Alice (you)", "Bob", "Carol"], "two joins")
        assert window.user_list.header.cget("text").endswith("3")
        carol.send("@leaves")
        pump(root, lambda: listed(window) == ["Alice (you)", "Bob"], "Carol's leave")
        bob.abort()
        pump(root, lambda: listed(window) == ["Alice (you)"], "Bob's lost connection")
        dave = LineClient(server.address, "Dave")
        window.command_buttons["@grove"].invoke()
        pump(root, shows(window, r"2 pandas here: Alice Dave$"), "the @grove reply")
        assert listed(window) == ["Alice (you)", "Dave"]
        dave.close()


def test_a_quiet_grove_is_shown_honestly_and_grove_still_refreshes(root: tk.Tk) -> None:
    # Through the seam: the server goes quiet past 200 pandas; its own tests cover that.
    window, inbox, sent = seam_window(root)
    inbox.put(Message("grove", "2 pandas here: Alice Bob"))
    inbox.put(Message("quiet", "Over 200 pandas are here, so joins and leaves are no longer "
                               "announced. @grove lists everybody."))
    pump(root, lambda: window.user_list.quiet_label.cget("text"), "the quiet note")
    assert "no longer announced" in window.user_list.quiet_label.cget("text")
    assert "Who's here" in window.user_list.quiet_label.cget("text")
    window.command_buttons["@grove"].invoke()
    assert sent == ["@grove"]
    inbox.put(Message("grove", "3 pandas here: Alice Bob Carol"))
    inbox.put(Message("more", "Dave"))
    pump(root, lambda: len(listed(window)) == 4, "the refreshed list")
    assert listed(window) == ["Alice (you)", "Bob", "Carol", "Dave"]
    assert window.user_list.header.cget("text").endswith("4")


def test_the_buttons_send_the_commands(root: tk.Tk, windows: Windows) -> None:
    with running_server() as server:
        window = windows.joined(server.address, "Alice")
        window.command_buttons["@bamboo"].invoke()
        pump(root, shows(window, r"Bamboo fact: \S"), "the fact")
        window.command_buttons["@help"].invoke()
        pump(root, shows(window, r"@leaves - "), "the help")
        window.command_buttons["@leaves"].invoke()
        pump(root, lambda: window.session.phase == "offline", "the goodbye")
        assert status_text(window) == "You left the grove."
        assert window.banner.retry_button.winfo_ismapped()


def test_an_unknown_command_gets_a_clear_line(root: tk.Tk, windows: Windows) -> None:
    with running_server() as server:
        window = windows.joined(server.address, "Alice")
        type_keys(window.input.entry, "@ww")
        press(window.input.entry, "Return")
        pump(root, shows(window, r"Unknown command @ww"), "the error")
        start = window.chat_view.text.search("Unknown command @ww", "1.0")
        assert "error" in window.chat_view.text.tag_names(start)
        assert window.session.phase == "chatting"


# --- the input line ----------------------------------------------------------------


def test_up_and_down_walk_the_sent_history(root: tk.Tk, windows: Windows) -> None:
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        window = windows.joined(server.address, "Alice")
        for text in ("one", "two"):
            type_keys(window.input.entry, text)
            press(window.input.entry, "Return")
            bob.expect(f"^Alice: {text}$")
        type_keys(window.input.entry, "draft")
        seen = []
        for key in ("Up", "Up", "Up", "Down", "Down", "Down"):
            press(window.input.entry, key)
            seen.append(window.input.entry.get())
        assert seen == ["two", "one", "one", "two", "draft", "draft"]
        press(window.input.entry, "Up")
        press(window.input.entry, "Return")
        bob.expect("^Alice: two$")


def test_tab_completes_names_and_commands(root: tk.Tk, windows: Windows) -> None:
    with running_server() as server:
        window = windows.joined(server.address, "Alice")
        others = [LineClient(server.address, name) for name in ("Bob", "Bobcat", "Carol")]
        pump(root, lambda: len(listed(window)) == 4, "the joins")

        def tab_after(text: str, tabs: int = 1) -> str:
            window.input.entry.delete(0, "end")
            type_keys(window.input.entry, text)
            for _ in range(tabs):
                press(window.input.entry, "Tab")
            return window.input.entry.get()

        assert tab_after("hi ca") == "hi Carol "
        assert tab_after("@ba") == "@bamboo "
        assert tab_after("@le") == "@leaves "
        assert tab_after("bo") == "Bob "
        assert tab_after("bo", tabs=2) == "Bobcat "
        assert tab_after("bo", tabs=3) == "Bob "
        assert tab_after("al") == "al", "one's own name is not offered"
        assert root.focus_get() is window.input.entry, "Tab must not move the focus"
        for other in others:
            other.close()


# --- characters Tk 8.6 cannot show -------------------------------------------------


def test_characters_above_uffff_are_shown_as_names_everywhere(root: tk.Tk,
                                                              windows: Windows) -> None:
    with running_server() as server:
        window = windows.joined(server.address, "Alice")
        # Names are letters and digits (names.py), so the emoji come in the text alone.
        panda = LineClient(server.address, "Pan")
        panda.send("bamboo time \U0001F43C\U0001F38B!")
        pump(root, shows(window, r"bamboo time"), "the emoji line")
        text = chat_text(window)
        assert "Pan: bamboo time [panda face][tanabata tree]!" in text
        shown = [text, *listed(window), status_text(window), root.title()]
        assert all(ch <= "\uffff" for part in shown for ch in part)
        # The window lives on.
        type_keys(window.input.entry, "still here")
        press(window.input.entry, "Return")
        panda.expect(r"^Alice: still here$")


# --- scrolling and floods --------------------------------------------------------------


def test_autoscroll_stops_when_scrolled_up_and_resumes_at_the_bottom(root: tk.Tk) -> None:
    window, inbox, _ = seam_window(root)
    for n in range(100):
        inbox.put(Message("chat", f"line {n}", "Bob"))
    pump(root, lambda: inbox.empty() and window.chat_view.text.yview()[1] == 1.0, "the newest line")

    window.chat_view.text.yview_moveto(0.0)  # the person scrolls up to read
    pump(root, lambda: not window.chat_view.follow, "the scroll")
    for n in range(100, 110):
        inbox.put(Message("chat", f"line {n}", "Bob"))
    pump(root, shows(window, "line 109$"), "more lines")
    root.update()
    assert window.chat_view.text.yview()[0] == 0.0, "new lines pulled the view away from the reader"
    assert window.chat_view.more_below.winfo_ismapped(), "no hint that new lines wait below"

    window.chat_view.more_below.invoke()  # back to the bottom
    pump(root, lambda: window.chat_view.follow, "the bottom")
    inbox.put(Message("chat", "line 110", "Bob"))
    pump(root, shows(window, "line 110$"), "the next line")
    root.update()
    assert window.chat_view.text.yview()[1] == 1.0, "autoscroll did not resume"
    assert not window.chat_view.more_below.winfo_ismapped()


def test_one_poll_tick_is_bounded_by_characters_not_lines(root: tk.Tk) -> None:
    # Defect 4: 200 lines a tick, whatever their size, made 450 ms ticks of 4,000-character lines.
    window, inbox, _ = seam_window(root)
    assert window.poll_id is not None
    root.after_cancel(window.poll_id)  # tick by hand
    shown = window.lines_shown
    for n in range(100):
        inbox.put(Message("chat", f"line {n} " + "x" * 4000, "Bob"))
    window.poll()
    handled = window.lines_shown - shown
    assert 1 <= handled <= client3.POLL_BUDGET_CHARS // 4000 + 1, handled
    assert inbox.qsize() == 100 - handled
    pump(root, inbox.empty, "the rest, in the next ticks")


def test_a_flood_keeps_the_window_responsive_and_the_scrollback_bounded(root: tk.Tk,
                                                                        windows: Windows) -> None:
    count = 5000
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        window = windows.joined(server.address, "Alice")
        pump(root, lambda: "Alice (you)" in listed(window), "the listing")
        shown = window.lines_shown
        bob.send_raw(b"".join(f"flood line {n}\n".encode() for n in range(count)))
        # The worst case: the whole flood is in the queue before the window's next tick (the
        # receiver thread runs while Tk's loop does not).
        deadline = time.monotonic() + WAIT_S
        while window.inbox.qsize() < count:
            assert time.monotonic() < deadline, f"only {window.inbox.qsize()} lines arrived"
            time.sleep(0.01)  # pacing only; the queue's size is what is waited for
        window.last_tick, window.max_tick_gap, window.max_tick_cpu = None, 0.0, 0.0
        started = time.monotonic()
        pump(root, lambda: window.lines_shown - shown >= count, f"{count} lines", timeout=30)
        took = time.monotonic() - started
        ticks = window.ticks
        pump(root, lambda: window.ticks > ticks, "one more tick")  # it ends the last gap
        gap, cpu = window.max_tick_gap, window.max_tick_cpu
        print(f"flood: {count} lines shown in {took:.3f} s; the longest gap between poll ticks "
              f"{gap * 1000:.0f} ms, {cpu * 1000:.0f} ms of it working")
        root.update()
        text = chat_text(window)
        assert text.endswith(f"Bob: flood line {count - 1}")
        assert "flood line 0\n" not in text, "the scrollback was not trimmed"
        assert window.chat_view.scrollback_lines() == client3.MAX_SCROLLBACK_LINES
        assert window.chat_view.text.yview()[1] == 1.0, "the view did not follow the flood"
        # Draining the queue in one go would make one gap as long as rendering the whole flood
        # (0.2 s of work here, more on a slower machine); bounded batches keep the work between
        # two ticks to one batch (some 20 ms). The work is measured in the CPU time of Tk's thread,
        # which a busy CI machine does not inflate; the clock gap gets a loose bound too.
        assert cpu < 0.06, f"the Tk loop was busy for {cpu:.3f} s without a tick"
        assert gap < 1.0, f"the Tk loop froze for {gap:.3f} s (the flood took {took:.2f} s)"


# --- faults ----------------------------------------------------------------------------


def test_server_not_running_shows_a_message_and_retry_connects(root: tk.Tk,
                                                               windows: Windows) -> None:
    port = free_port()
    window = windows.open(("127.0.0.1", port))
    pump(root, lambda: window.session.phase == "offline", "the failure")
    assert re.search(rf"Cannot reach the server at 127\.0\.0\.1:{port}: connection refused",
                     chat_text(window))
    assert window.banner.retry_button.winfo_ismapped()
    assert window.banner.retry_button.cget("text") == "Retry"
    assert status_text(window) == f"Not connected: cannot reach 127.0.0.1:{port}"
    type_keys(window.name_form.entry, "Alice")  # a name can be typed meanwhile
    press(window.name_form.entry, "Return")
    assert "Press Retry" in window.name_form.error.cget("text")

    with running_server(port) as server:
        window.banner.retry_button.invoke()
        pump(root, lambda: window.session.phase == "chatting", "the welcome after Retry")
        assert window.session.name == "Alice"
        assert not window.banner.frame.winfo_ismapped()
        assert server.grove.names() == ["Alice"]


def test_a_lost_connection_says_so_and_what_is_written_meanwhile_goes_out_when_back(
        root: tk.Tk, windows: Windows) -> None:
    # Defect 11: the input was disabled while offline. Now one writes ahead.
    port = free_port()
    with running_server(port) as server:
        window = windows.joined(server.address, "Alice")
        type_keys(window.input.entry, "words not yet sent")
    pump(root, lambda: window.session.phase == "offline", "the loss")  # the server has shut down
    assert re.search(r"^\d\d:\d\d • The server is shutting down\. Goodbye!$",
                     chat_text(window), re.M)
    status = status_text(window)
    assert status == (f"Disconnected from 127.0.0.1:{port}: "
                      "The server is shutting down. Goodbye!")
    assert window.input.entry.instate(["!disabled"]), "one cannot write ahead"
    assert window.command_buttons["@bamboo"].instate(["disabled"])
    assert window.banner.retry_button.winfo_ismapped()
    assert window.banner.retry_button.cget("text") == "Reconnect"

    press(window.input.entry, "Return")  # sending while disconnected: kept to send later
    type_keys(window.input.entry, "and a second")
    press(window.input.entry, "Return")
    assert window.input.entry.get() == ""
    assert window.session.outbox == ["words not yet sent", "and a second"]
    assert "this goes out when you are back: words not yet sent" in chat_text(window)

    with running_server(port) as server:
        bob = LineClient(server.address, "Bob")
        window.banner.retry_button.invoke()
        pump(root, lambda: window.session.phase == "chatting" and not window.session.outbox,
             "the welcome and the lines written ahead")
        bob.expect(r"^Alice: words not yet sent$")
        bob.expect(r"^Alice: and a second$")
        pump(root, shows(window, r"Alice \(you\): and a second$"), "the lines sent")
        assert window.session.outbox == []


def test_reconnect_joins_again_with_the_same_name(root: tk.Tk, windows: Windows) -> None:
    port = free_port()
    with running_server(port) as server:
        window = windows.joined(server.address, "Alice")
    pump(root, lambda: window.session.phase == "offline", "the loss")
    with running_server(port) as server:
        bob = LineClient(server.address, "Bob")
        window.banner.retry_button.invoke()
        pump(root, lambda: window.session.phase == "chatting", "the welcome after Reconnect")
        bob.expect(r"^\* join: Alice joined")
        assert status_text(window) == f"Connected to 127.0.0.1:{port} as Alice"
        assert window.input.entry.instate(["!disabled"])
        pump(root, lambda: listed(window) == ["Alice (you)", "Bob"], "the new listing")


def test_reconnect_after_a_drop_resumes_without_missing_a_line(root: tk.Tk,
                                                                windows: Windows) -> None:
    with running_server(resume_window=30) as server:
        bob = LineClient(server.address, "Bob")
        carol = LineClient(server.address, "Carol")
        cable = Cable(server.address)
        try:
            window = windows.joined(cable.address, "Alice")
            pump(root, lambda: listed(window) == ["Alice (you)", "Bob", "Carol"], "the listing")
            carol.abort()  # Carol's connection drops: she may come back
            pump(root, lambda: "Carol (away)" in listed(window), "Carol marked away")

            cable.cut()
            pump(root, lambda: window.session.phase == "offline", "the drop")
            assert status_text(window).startswith(
                f"Disconnected from 127.0.0.1:{cable.address[1]}: Connection lost: ")
            assert window.banner.retry_button.cget("text") == "Reconnect"
            bob.expect(r"^\* lost: Alice lost connection")
            bob.send("where did Alice go?")  # said while Alice is away

            window.banner.retry_button.invoke()
            pump(root, lambda: window.session.phase == "chatting", "the welcome back")
            bob.expect(r"^\* back: Alice is back\.$")
            pump(root, shows(window, r"Bob: where did Alice go\?$"), "the missed line")
            text = chat_text(window)
            assert "Welcome back to the grove, Alice!" in text
            assert "resume code" not in text, "the code is the client's business"
            assert window.session.name == "Alice"
        finally:
            cable.close()


def test_reconnect_after_the_resume_window_joins_afresh(root: tk.Tk, windows: Windows) -> None:
    with running_server(resume_window=0.2) as server:
        bob = LineClient(server.address, "Bob")
        cable = Cable(server.address)
        try:
            window = windows.joined(cable.address, "Alice")
            cable.cut()
            pump(root, lambda: window.session.phase == "offline", "the drop")
            bob.expect(r"^\* leave: Alice left the grove")  # the window has passed

            window.banner.retry_button.invoke()  # the stale code is refused, then the name is sent
            pump(root, lambda: window.session.phase == "chatting", "the welcome")
            bob.expect(r"^\* join: Alice joined the grove\.$")
            text = chat_text(window)
            assert text.count("Welcome to the grove, Alice!") == 2, "no fresh welcome"
            assert "resume code is wrong" not in text, "the refused code is the client's business"
        finally:
            cable.close()


def test_closing_the_window_says_goodbye_and_stops_polling(root: tk.Tk, windows: Windows) -> None:
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        window = windows.joined(server.address, "Alice")
        bob.expect(r"^\* join: Alice joined")
        poll_id = window.poll_id
        root.tk.eval(root.protocol("WM_DELETE_WINDOW"))  # the window manager's close button
        bob.expect(r"^\* leave: Alice left the grove \(said goodbye\)\.$")
        assert poll_id not in root.tk.splitlist(root.tk.call("after", "info"))
        with pytest.raises(tk.TclError):
            root.winfo_exists()


# --- the real program ------------------------------------------------------------------


def xdotool(*args: str) -> str:
    result = subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=WAIT_S,
                            check=False)
    return result.stdout.strip()


def wait_for_window(title: str, process: subprocess.Popen[str]) -> str:
    """The X id of the client's window once it is mapped and has the keyboard focus.

    Tk names its window before it maps it: keys typed into an unmapped window are lost (CI once
    saw "Zed" arrive as "ed"), so only a visible window counts, and typing waits for the focus."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"client3.py exited: {process.communicate()}"
        found = xdotool("search", "--onlyvisible", "--name", f"^{title}$")  # a regular expression
        if found:
            window = found.split()[0]
            xdotool("windowfocus", "--sync", window)
            if xdotool("getwindowfocus") == window:
                return window
        time.sleep(0.05)  # pacing the polling of X; the window's title is what is waited for
    raise AssertionError(f"no focused window called {title!r} within {WAIT_S} s")


@pytest.mark.skipif(shutil.which("xdotool") is None, reason="xdotool is not installed "
                    "(Debian: apt install xdotool)")
def test_end_to_end_type_a_name_and_a_message_with_xdotool(display: str) -> None:
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        env = {**os.environ, "DISPLAY": display}
        process = subprocess.Popen(
            [sys.executable, str(CLIENT), "--host", "127.0.0.1", "--port",
             str(server.address[1])], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        try:
            wait_for_window("Panda Chat", process)
            xdotool("type", "--delay", "20", "Zed")
            xdotool("key", "Return")
            bob.expect(r"^\* join: Zed joined the grove\.$")
            wait_for_window("Panda Chat .+ Zed", process)  # the input has the focus
            xdotool("type", "--delay", "20", "hello from a real window")
            xdotool("key", "Return")
            bob.expect(r"^Zed: hello from a real window$")
            process.send_signal(signal.SIGTERM)
            bob.expect(r"^\* leave: Zed left the grove \(said goodbye\)\.$")
            _, err = process.communicate(timeout=WAIT_S)
            assert process.returncode == 0, err
            assert "Traceback" not in err, err
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
