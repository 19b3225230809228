"""client3.py's window under Xvfb: the defects of issue #12, each shown fixed, and the features.

Real Tk (conftest.py starts Xvfb), real events (wheel notches, clicks, keys typed into whatever
has the focus), and the real server where the server is involved. Each wait has a deadline.
The defect tests say which defect they cover; each failed on the window before it was rebuilt.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import stat
import threading
import time
import tkinter as tk
from collections.abc import Iterator
from pathlib import Path

import pytest
from chat_helpers import WAIT_S, LineClient, running_server
from test_client_features import CountingTk, Windows, lines_tagged, look_away, look_back
from test_client_gui import KEYSYMS, chat_text, press, pump, shows

import client3
from client3 import DARK, LIGHT, ChatWindow, ConnectionEvent, InboxItem, Settings
from protocol import MAX_NAME_CHARS, Message

pytestmark = pytest.mark.gui

ROOT_CLASS = CountingTk  # no real bell rings in these tests
WRAPPING = " ".join(["bamboo"] * 25)  # wraps to two rows in the default window


@pytest.fixture
def opened(root: CountingTk) -> Iterator[Windows]:
    """The windows a test opens (test_client_features.Windows), closed at its end."""
    made = Windows(root)
    yield made
    made.close_all()


def fill(root: tk.Tk, window: ChatWindow, inbox: queue.Queue[InboxItem], count: int,
         text: str = WRAPPING) -> None:
    for n in range(count):
        inbox.put(Message("chat", f"{n} {text}", "Bob"))
    pump(root, lambda: inbox.empty() and window.chat_view.text.yview()[1] == 1.0,
         f"{count} lines, followed", timeout=30)


def settle(root: tk.Tk, seconds: float = 0.2) -> None:
    """Run Tk's loop for a while: poll ticks come and go (for "nothing moves" assertions)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        root.update()
        time.sleep(0.005)  # pacing only


def type_into_focus(root: tk.Tk, text: str) -> None:
    """Type as a person does: each key goes to whatever widget has the focus now."""
    for ch in text:
        widget = root.focus_get()
        assert widget is not None, "nothing has the keyboard focus"
        widget.event_generate("<KeyPress>", keysym={**KEYSYMS, "?": "question"}.get(ch, ch))
        root.update()


def click(widget: tk.Misc, x: int, y: int, button: int = 1) -> None:
    widget.event_generate("<Motion>", x=x, y=y)  # the pointer comes first
    widget.event_generate(f"<ButtonPress-{button}>", x=x, y=y)
    widget.event_generate(f"<ButtonRelease-{button}>", x=x, y=y)
    widget.update()


def bottom_line_in_sight(window: ChatWindow) -> bool:
    text = window.chat_view.text
    info = text.dlineinfo("end-1c")
    return info is not None and info[1] + info[3] <= text.winfo_height()


# --- the defects ---------------------------------------------------------------------------


@pytest.mark.parametrize("notch", ["<Button-4>", "<MouseWheel>"])
def test_1_a_wheel_notch_up_in_a_busy_chat_stays_up(root: tk.Tk, opened: Windows,
                                                    notch: str) -> None:
    window, inbox, _ = opened.seam()
    root.geometry("900x600")
    fill(root, window, inbox, 2000)
    text = window.chat_view.text
    text.focus_force()
    root.update()
    if notch == "<MouseWheel>":  # one notch up, as the wheel sends it
        text.event_generate(notch, x=100, y=100, delta=120)
    else:
        text.event_generate(notch, x=100, y=100)
    root.update()
    assert text.yview()[1] < 1.0, "the notch did not scroll"

    def in_sight() -> str:  # the first line in sight (fractions shift as Tk measures lines)
        return text.get("@0,0 linestart", "@0,0 lineend")

    top = in_sight()
    settle(root)  # several poll ticks with nothing new
    assert in_sight() == top and text.yview()[1] < 1.0, "the view jumped back down"
    assert not window.chat_view.follow
    inbox.put(Message("chat", "one more", "Bob"))
    pump(root, shows(window, "one more$"), "a new line")
    settle(root)
    assert in_sight() == top, "a new line pulled the view down"
    assert window.chat_view.more_below.winfo_ismapped()


def test_2_the_offline_banner_keeps_the_newest_line_in_sight(root: tk.Tk, opened: Windows) -> None:
    window, inbox, _ = opened.seam()
    root.geometry("900x600")
    fill(root, window, inbox, 200)
    inbox.put(Message("shutdown", "The server is shutting down. Goodbye!"))
    inbox.put(ConnectionEvent("lost", "the server closed the connection"))
    pump(root, lambda: window.banner.frame.winfo_ismapped(), "the banner")
    settle(root)
    assert bottom_line_in_sight(window), "the shutdown line is hidden under the banner"
    assert window.chat_view.follow
    assert chat_text(window).endswith("The server is shutting down. Goodbye!")

    inbox.put(ConnectionEvent("connected"))
    inbox.put(Message("welcome", "Welcome to the grove, Alice!"))
    pump(root, lambda: not window.banner.frame.winfo_ismapped(), "the banner to go")
    inbox.put(Message("chat", "back again", "Bob"))
    pump(root, shows(window, "back again$"), "a line after reconnecting")
    settle(root)
    assert bottom_line_in_sight(window) and window.chat_view.text.yview()[1] == 1.0


def test_3_after_a_button_or_a_selection_the_keys_go_to_the_input(root: tk.Tk,
                                                                   opened: Windows) -> None:
    window, inbox, sent = opened.seam()
    fill(root, window, inbox, 5, "hello \u05e9\u05dc\u05d5\u05dd there")
    window.input.entry.focus_force()
    root.update()
    button = window.command_buttons["@help"]
    click(button, 10, 5)
    assert sent == ["@help"]
    type_into_focus(root, "typed after button")
    assert window.input.entry.get() == "typed after button"
    assert sent == ["@help"], "a space pressed the button again"

    window.input.entry.delete(0, "end")
    text = window.chat_view.text
    first = text.bbox("2.0")
    assert first is not None
    text.event_generate("<ButtonPress-1>", x=first[0], y=first[1] + 2)
    text.event_generate("<B1-Motion>", x=text.winfo_width() - 20, y=first[1] + 2)
    text.event_generate("<ButtonRelease-1>", x=text.winfo_width() - 20, y=first[1] + 2)
    root.update()
    assert text.tag_ranges("sel"), "no selection made"
    type_into_focus(root, "still here")
    assert window.input.entry.get() == "still here"

    # Ctrl+C copies the chat's selection, right-to-left words in the order they were typed
    # (defect 6: shown reordered, never copied reordered).
    window.input.entry.event_generate("<<Copy>>")
    copied = root.clipboard_get()
    assert "\u05e9\u05dc\u05d5\u05dd" in copied, copied
    assert "\u05e9\u05dc\u05d5\u05dd"[::-1] in text.get("2.0", "2.end"), "not reordered to show"


def test_4_a_flood_of_long_lines_is_shown_in_short_ticks(root: tk.Tk, opened: Windows) -> None:
    window, inbox, _ = opened.seam()
    assert window.poll_id is not None
    root.after_cancel(window.poll_id)
    for n in range(50):
        inbox.put(Message("chat", f"{n} " + "y" * 4000, "Bob"))
    window.poll()
    assert inbox.qsize() >= 50 - (client3.POLL_BUDGET_CHARS // 4000 + 1), \
        "one tick took more than its budget of characters"
    pump(root, inbox.empty, "the rest")


def test_5_a_panda_with_an_emoji_is_whispered_to_completed_and_recalled(root: tk.Tk,
                                                                        opened: Windows) -> None:
    # The server's names are letters and digits (names.py), so no emoji: an ideograph of
    # CJK Extension B is above U+FFFF too, which Tk 8.6 cannot draw either.
    wide = "\u7f8e\U0002000b"
    shown = "\u7f8e[cjk unified ideograph-2000b]"
    with running_server() as server:
        mei = LineClient(server.address, wide)
        window = opened.joined(server.address, "Alice")
        pump(root, lambda: len(window.user_list.listed) == 2, "the listing")
        row = [m.name for m in window.user_list.listed].index(wide)
        box = window.user_list.listbox.bbox(row)
        assert box is not None
        for _ in range(2):
            click(window.user_list.listbox, box[0] + 3, box[1] + 3)
        assert window.input.entry.get() == f"@whisper {shown} "
        type_into_focus(root, "hi")
        press(window.input.entry, "Return")
        mei.expect(r"^\* whisper: Alice: hi$")

        press(window.input.entry, "Up")  # the whisper again, from history
        assert window.input.entry.get() == f"@whisper {shown} hi"
        press(window.input.entry, "Return")
        mei.expect(r"^\* whisper: Alice: hi$")

        window.input.entry.insert("end", "\u7f8e")  # no keysym for it: as an input method puts it
        press(window.input.entry, "Tab")
        type_into_focus(root, "hello")
        press(window.input.entry, "Return")
        mei.expect(f"^Alice: {wide} hello$")


def test_8_the_user_list_keeps_rows_and_whole_names_at_the_least_size(root: tk.Tk,
                                                                      opened: Windows) -> None:
    window, inbox, _ = opened.seam()
    long_name = "BambooBuddyTheThird1"
    assert len(long_name) == MAX_NAME_CHARS
    inbox.put(Message("grove", f"3 pandas here: Alice Bob {long_name}"))
    pump(root, lambda: len(window.user_list.listed) == 3, "the listing")
    root.update_idletasks()
    root.geometry(f"{root.minsize()[0]}x{root.minsize()[1]}")
    settle(root, 0.1)
    box = window.user_list.listbox
    line = window.ui_fonts.line()
    assert box.winfo_height() >= 3 * line, f"{box.winfo_height()} px: not three rows"
    row = box.bbox(2)
    assert row is not None and row[1] + row[3] <= box.winfo_height()
    needed = window.ui_fonts.body.measure(long_name + " (away)")
    assert needed <= box.winfo_width(), f"{needed} px of name in a {box.winfo_width()} px list"


def test_9_at_192_dpi_sizes_come_from_the_fonts(root: tk.Tk, opened: Windows) -> None:
    root.tk.call("tk", "scaling", 192 / 72)  # pixels per point on a 192 dpi screen
    window, inbox, _ = opened.seam()
    root.geometry("1200x800")
    inbox.put(Message("chat", WRAPPING, "Bob"))
    pump(root, shows(window, "bamboo$"), "a wrapping line")
    text = window.chat_view.text
    text.see("end")
    settle(root, 0.1)
    indent = int(text.tag_cget("line", "lmargin2"))
    assert indent == window.chat_fonts.small.measure("00:00 ") > 54  # 54 px fitted 96 dpi
    after_time = text.bbox("end-1c linestart + 6c")
    second_row = text.bbox("end-1c linestart + 1 display lines")
    assert after_time is not None and second_row is not None
    assert abs(second_row[0] - after_time[0]) <= 2, "wrapped rows start left of the text"


def test_10_control_characters_from_a_foreign_server_are_escaped(root: tk.Tk,
                                                                 opened: Windows) -> None:
    window, inbox, _ = opened.seam()
    inbox.put(Message("chat", "ring\x07 esc\x1b[2J nul\x00 and after", "Eve"))
    pump(root, shows(window, "and after$"), "the whole line")
    assert chat_text(window).endswith("Eve: ring\\x07 esc\\x1b[2J nul\\x00 and after")


def test_11_at_a_present_name_is_sent_as_a_mention(root: tk.Tk, opened: Windows) -> None:
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        window = opened.joined(server.address, "Alice")
        pump(root, lambda: len(window.user_list.listed) == 2, "the listing")
        window.input.entry.focus_force()
        type_into_focus(root, "@bob are you there?")
        press(window.input.entry, "Return")
        bob.expect(r"^Alice:  ?@bob are you there\?$")
        type_into_focus(root, "@help")
        press(window.input.entry, "Return")
        pump(root, shows(window, r"@leaves - "), "the help")
        assert "Unknown command" not in chat_text(window)


def test_11_closing_while_the_server_is_frozen_does_not_block(root: tk.Tk) -> None:
    frozen = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(frozen.accept()[0]), daemon=True).start()
    window, connection = client3.open_chat(root, "127.0.0.1", frozen.getsockname()[1], "Alice",
                                           retry_delays=())
    try:
        pump(root, lambda: window.session.phase == "naming", "the connection")
        started = time.monotonic()
        window.on_close()
        took = time.monotonic() - started
        # Waiting for the goodbye took LINGER_S (1 s) on Tk's thread; now none of it is there.
        assert took < client3.LINGER_S * 0.9, f"closing took {took:.2f} s"
        connection.join_closers()  # the linger, in its own thread, ends by itself
    finally:
        connection.close()
        for sock in (*accepted, frozen):
            sock.close()


def test_11_new_messages_never_covers_the_chat_and_the_selected_name_keeps_its_colour(
        root: tk.Tk, opened: Windows) -> None:
    window, inbox, _ = opened.seam()
    root.geometry("900x600")
    fill(root, window, inbox, 100)
    window.chat_view.text.yview_moveto(0.0)
    settle(root, 0.1)
    inbox.put(Message("chat", "below", "Bob"))
    pump(root, lambda: window.chat_view.more_below.winfo_ismapped(), "New messages")
    root.update()
    text, button = window.chat_view.text, window.chat_view.more_below
    assert button.winfo_rooty() >= text.winfo_rooty() + text.winfo_height(), "it covers a line"

    inbox.put(Message("grove", "2 pandas here: Alice Bob"))
    pump(root, lambda: len(window.user_list.listed) == 2, "the listing")
    box = window.user_list.listbox
    box.selection_set(1)
    assert box.itemcget(1, "selectforeground") == client3.name_colour("Bob")


# --- the features ------------------------------------------------------------------------


def test_links_are_underlined_and_open_on_a_click(root: tk.Tk, opened: Windows) -> None:
    opened_urls: list[str] = []
    window, inbox, _ = opened.seam(open_url=opened_urls.append)
    inbox.put(Message("chat", "look: https://example.org/pandas?x=1, nice", "Bob"))
    pump(root, shows(window, "nice$"), "the line")
    text = window.chat_view.text
    start = text.search("https://", "1.0")
    assert "link" in text.tag_names(start) and text.tag_cget("link", "underline") in ("1", 1)
    box = text.bbox(f"{start} + 3c")
    assert box is not None
    click(text, box[0] + 1, box[1] + 2)
    assert opened_urls == ["https://example.org/pandas?x=1"]


def test_ctrl_f_finds_highlights_and_steps_through_matches(root: tk.Tk, opened: Windows) -> None:
    window, inbox, _ = opened.seam()
    for text in ("a needle here", "nothing", "NEEDLE again", "last needle"):
        inbox.put(Message("chat", text, "Bob"))
    pump(root, shows(window, "last needle$"), "the lines")
    press(window.input.entry, "Control-f")
    find = window.find_bar
    assert find.frame.winfo_ismapped() and root.focus_get() is find.entry
    type_into_focus(root, "needle")
    chat = window.chat_view.text
    assert len(chat.tag_ranges("found")) == 6  # three matches, any case
    press(find.entry, "Return")
    assert chat.get(*chat.tag_ranges("found_current")) == "needle"
    assert find.count.cget("text") == "1 of 3 found"
    press(find.entry, "Return")
    assert chat.get(*chat.tag_ranges("found_current")) == "NEEDLE"
    press(find.entry, "Shift-Return")
    assert find.count.cget("text") == "1 of 3 found"
    press(find.entry, "Escape")
    assert not find.frame.winfo_ismapped() and not chat.tag_ranges("found")
    assert root.focus_get() is window.input.entry


def test_zoom_with_ctrl_plus_minus_and_zero_is_remembered(root: tk.Tk, opened: Windows,
                                                          tmp_path: Path) -> None:
    settings_file = tmp_path / "zoom.json"
    window, _, _ = opened.seam(settings=Settings(settings_file))
    assert window.chat_fonts.size == client3.FONT_SIZE
    press(window.input.entry, "Control-plus")
    press(window.input.entry, "Control-plus")
    assert window.chat_fonts.size == client3.FONT_SIZE + 2
    assert int(window.chat_fonts.body.cget("size")) == client3.FONT_SIZE + 2
    press(window.input.entry, "Control-minus")
    assert json.loads(settings_file.read_text())["font_size"] == client3.FONT_SIZE + 1
    window.close()
    again, _, _ = opened.seam(settings=Settings(settings_file))
    assert again.chat_fonts.size == client3.FONT_SIZE + 1, "the size was not remembered"
    press(again.input.entry, "Control-0")
    assert again.chat_fonts.size == client3.FONT_SIZE


def test_the_dark_theme_from_the_view_menu_is_remembered(root: tk.Tk, opened: Windows,
                                                         tmp_path: Path) -> None:
    settings_file = tmp_path / "theme.json"
    window, _, _ = opened.seam(settings=Settings(settings_file), prefers_dark=lambda: False)
    assert window.chat_view.text.cget("background") == LIGHT.paper
    view = root.nametowidget(window.menubar.entrycget("View", "menu"))
    view.invoke("Dark theme")
    assert window.chat_view.text.cget("background") == DARK.paper
    assert window.chat_view.text.tag_cget("body", "foreground") == DARK.ink
    assert json.loads(settings_file.read_text())["theme"] == "dark"
    window.close()
    again, _, _ = opened.seam(settings=Settings(settings_file), prefers_dark=lambda: False)
    assert again.chat_view.text.cget("background") == DARK.paper


def test_the_theme_follows_the_system_by_default(root: tk.Tk, opened: Windows,
                                                 tmp_path: Path) -> None:
    window, _, _ = opened.seam(settings=Settings(tmp_path / "new.json"), prefers_dark=lambda: True)
    assert window.settings.theme == "system"
    assert window.chat_view.text.cget("background") == DARK.paper


def test_a_broken_settings_file_is_said_once_and_the_window_opens(
        root: tk.Tk, opened: Windows, _settings_in_a_temporary_folder: Path) -> None:
    path = _settings_in_a_temporary_folder  # where $PANDA_CHAT_SETTINGS points (conftest.py)
    path.write_text("{broken")
    window, _, _ = opened.seam()
    assert chat_text(window).count("Settings: cannot read") == 1
    assert window.chat_fonts.size == client3.FONT_SIZE


def test_ctrl_s_saves_the_chat_with_times_and_names(root: tk.Tk, opened: Windows,
                                                    tmp_path: Path) -> None:
    saved = tmp_path / "chat.txt"
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        window = opened.joined(server.address, "Alice", ask_save_path=lambda: str(saved))
        bob.send("hello Alice")
        pump(root, shows(window, "Bob: hello Alice$"), "Bob's line")
        window.input.put("hi Bob")
        press(window.input.entry, "Return")
        press(window.input.entry, "Control-s")
    lines = saved.read_text(encoding="utf-8").splitlines()
    assert any(re.fullmatch(r"\d\d:\d\d Bob: hello Alice", line) for line in lines), lines
    assert any(re.fullmatch(r"\d\d:\d\d Alice \(you\): hi Bob", line) for line in lines), lines
    assert chat_text(window).endswith(f"Saved the chat to {saved}.")


def test_the_unread_marker_shows_what_came_while_one_looked_away(
        root: CountingTk, opened: Windows, elsewhere: tk.Entry) -> None:
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        window = opened.joined(server.address, "Alice")
        bob.send("seen")
        pump(root, shows(window, "Bob: seen$"), "the first line")
        look_away(root, window, elsewhere)
        bob.send("unseen one")
        bob.send("unseen two")
        pump(root, shows(window, "Bob: unseen two$"), "the lines while away")
        text = chat_text(window)
        marker = client3.ChatView.UNREAD_TEXT
        assert re.search(rf"Bob: seen\n{marker}\n\d\d:\d\d Bob: unseen one", text), text
        look_back(root, window)
        look_away(root, window, elsewhere)
        bob.send("later")
        pump(root, shows(window, "Bob: later$"), "a line on the second time away")
        text = chat_text(window)
        assert text.count(marker) == 1 and re.search(rf"{marker}\n\d\d:\d\d Bob: later$", text)


def test_f1_lists_the_keys(root: tk.Tk, opened: Windows) -> None:
    window, _, _ = opened.seam()
    press(window.input.entry, "F1")
    shortcuts = window.shortcuts
    assert shortcuts is not None and shortcuts.exists()
    for keys, _ in client3.SHORTCUTS:
        assert keys in shortcuts.text()
    press(shortcuts.top, "Escape")
    assert not shortcuts.exists()


def test_a_whisper_or_mention_while_away_is_a_desktop_notification(
        root: CountingTk, opened: Windows, elsewhere: tk.Entry, tmp_path: Path) -> None:
    # A stand-in notify-send: a real program, run the way the real one is, that writes down
    # its arguments instead of showing anything.
    written = tmp_path / "notified.txt"
    notifier = tmp_path / "notify-send"
    notifier.write_text(f"#!/bin/sh\nprintf '%s|' \"$@\" >> {written}\necho >> {written}\n")
    notifier.chmod(notifier.stat().st_mode | stat.S_IXUSR)
    with running_server() as server:
        bob = LineClient(server.address, "Bob")
        window = opened.joined(server.address, "Alice", notify_command=str(notifier))
        look_away(root, window, elsewhere)
        bob.send("@whisper Alice psst")
        bob.send("hi alice")  # within BELL_GAP_S: counted in the title, not notified again
        pump(root, lambda: root.title().startswith("(2)") and written.exists()
             and written.read_text().endswith("\n"), "the notification")
    calls = written.read_text().splitlines()
    assert calls == ["--app-name=Panda Chat|Panda Chat: a whisper|Bob whispers to you: psst|"]
    assert root.rings == 0, "the bell rang beside the notification"
    assert root.title() == "(2) Panda Chat \u2014 Alice"
    assert os.access(notifier, os.X_OK)


def test_the_user_lists_menu_starts_a_whisper(root: tk.Tk, opened: Windows) -> None:
    window, inbox, _ = opened.seam()
    inbox.put(Message("grove", "2 pandas here: Alice Bob"))
    pump(root, lambda: len(window.user_list.listed) == 2, "the listing")
    box = window.user_list.listbox.bbox(1)
    assert box is not None
    click(window.user_list.listbox, box[0] + 3, box[1] + 3, button=3)
    menu = window.user_list.menu
    try:
        menu.invoke("Whisper")
    finally:
        menu.unpost()
    assert window.input.entry.get() == "@whisper Bob "


def test_the_status_bar_shows_the_groves_states(root: tk.Tk, opened: Windows) -> None:
    window, _, _ = opened.seam()
    window.status_bar.set_states({"locked": "Locked", "slow": "Slow mode: 5 s"})
    root.update()
    assert window.status_bar.states_label.winfo_ismapped()
    assert window.status_bar.states_label.cget("text") == "Locked \u00b7 Slow mode: 5 s"
    window.status_bar.set_states({})
    root.update()
    assert not window.status_bar.states_label.winfo_ismapped()


def test_mentions_in_a_flood_ring_the_bell_once(root: CountingTk, opened: Windows,
                                                elsewhere: tk.Entry) -> None:
    window, inbox, _ = opened.seam()
    look_away(root, window, elsewhere)
    started = time.monotonic()
    for n in range(500):
        inbox.put(Message("chat", f"alice {n}", "Bob"))
    pump(root, inbox.empty, "the mentions", timeout=WAIT_S * 4)
    took = time.monotonic() - started  # well under BELL_GAP_S, unless the machine crawls
    assert 1 <= root.rings <= 1 + took // client3.BELL_GAP_S, (root.rings, took)
    assert root.title() == "(500) Panda Chat \u2014 Alice"
    assert len(lines_tagged(window, "mention")) == 500


def test_the_menu_key_opens_the_menu_of_the_selected_name(root: tk.Tk, opened: Windows) -> None:
    window, inbox, _ = opened.seam()
    inbox.put(Message("grove", "2 pandas here: Alice Bob"))
    pump(root, lambda: len(window.user_list.listed) == 2, "the listing")
    window.user_list.listbox.selection_set(1)
    press(window.input.entry, "Shift-F10")
    menu = window.user_list.menu
    try:
        assert menu.winfo_ismapped(), "the menu did not open"
        menu.invoke("Whisper")
    finally:
        menu.unpost()
    assert window.input.entry.get() == "@whisper Bob "


def test_closing_cancels_every_timer_of_the_window(root: tk.Tk) -> None:
    inbox: queue.Queue[InboxItem] = queue.Queue()
    window = ChatWindow(root, inbox, send=lambda text: True, name="Alice", retry_delays=(30.0,))
    inbox.put(ConnectionEvent("connected"))
    inbox.put(Message("welcome", "Welcome to the grove, Alice!"))
    inbox.put(ConnectionEvent("lost", "the connection was reset"))
    pump(root, lambda: window.status_bar.retry_label.winfo_ismapped(), "the countdown")
    pending = set(root.tk.splitlist(root.tk.call("after", "info")))
    assert len(pending) >= 2, "the poll and the countdown"
    window.close()
    left = set(root.tk.splitlist(root.tk.call("after", "info"))) & pending
    assert not left, f"timers left after close: {left}"
