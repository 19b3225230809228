"""The window's part of issue #11 (keepers), under Xvfb, end to end with the real server.

The server runs in a thread with a known keeper code (chat_helpers.running_server); the other
pandas are LineClients, so each test sees both what the window sends and what the server does
with it. The keepers' dialogs are driven two ways: the real AskDialog (typed into, its OK
button clicked) and the ChatWindow's `ask` seam answering at once. Every wait has a deadline.
"""

from __future__ import annotations

import functools
import re
import tkinter as tk
from collections.abc import Callable, Iterator

import pytest
from chat_helpers import LineClient, pandas, running_server, sync
from test_client_features import QUIET_S, CountingTk, Windows, lines_tagged, tags_of
from test_client_gui import chat_text, press, pump, shows
from test_client_window import click, settle, type_into_focus

import client3
from client3 import AskDialog, ChatWindow, ConnectionEvent, Question
from protocol import Message
from server3 import ChatServer

pytestmark = pytest.mark.gui

ROOT_CLASS = CountingTk  # no real bell rings in these tests
CODE = "sesame-123"


@pytest.fixture
def opened(root: CountingTk) -> Iterator[Windows]:
    made = Windows(root)
    yield made
    made.close_all()


def become_keeper(root: tk.Tk, window: ChatWindow) -> None:
    """Type @keeper CODE into the window, as the teacher does."""
    window.input.entry.focus_force()
    window.input.put(f"@keeper {CODE}")
    press(window.input.entry, "Return")
    pump(root, lambda: window.session.keeper, "the window to be a keeper")


def keeper_client(server: ChatServer, name: str = "Teacher") -> LineClient:
    (client,) = pandas(server, name)
    client.send(f"@keeper {CODE}")
    client.expect(r"^\* keeper: You are a keeper of this grove\.")
    return client


def open_menu_on(root: tk.Tk, window: ChatWindow, name: str) -> tk.Menu:
    """Right-click name in the user list; the menu that opens."""
    pump(root, lambda: name in [m.name for m in window.user_list.listed], f"{name} listed")
    row = [m.name for m in window.user_list.listed].index(name)
    box = window.user_list.listbox.bbox(row)
    assert box is not None
    click(window.user_list.listbox, box[0] + 3, box[1] + 3, button=3)
    return window.user_list.menu


def labels(menu: tk.Menu) -> list[str]:
    end = menu.index("end")
    return [str(menu.entrycget(i, "label")) for i in range(0 if end is None else end + 1)
            if menu.type(i) != "separator"]


def choose(menu: tk.Menu, label: str) -> None:
    """Choose the entry labelled label (exactly) from menu, which closes it."""
    try:
        menu.invoke(row_of(menu, label))
    finally:
        close_menu(menu)


def close_menu(menu: tk.Menu) -> None:
    """Unpost menu and end its grab, as a person's choice does (tk_popup grabs the pointer:
    the next click elsewhere would otherwise never arrive)."""
    menu.unpost()
    menu.grab_release()


def row_of(menu: tk.Menu, label: str) -> int:
    end = menu.index("end")
    for i in range(0 if end is None else end + 1):
        if menu.type(i) != "separator" and menu.entrycget(i, "label") == label:
            return i
    raise AssertionError(f"no {label!r} in the menu: {labels(menu)}")


def grove_menu(window: ChatWindow) -> tk.Menu:
    assert window.grove_menu_shown(), "no Grove menu"
    menu = window.root.nametowidget(window.menubar.entrycget("Grove", "menu"))
    assert isinstance(menu, tk.Menu)
    return menu


def states(window: ChatWindow) -> str:
    label = window.status_bar.states_label
    return str(label.cget("text")) if label.winfo_ismapped() else ""


def showing(window: ChatWindow, shown: str) -> bool:
    return states(window) == shown


def answering(answers: dict[str, str], asked: list[str]
              ) -> Callable[[Question, Callable[[str], None]], None]:
    """The `ask` seam: answers a question by its title at once."""
    def ask(question: Question, on_answer: Callable[[str], None]) -> None:
        asked.append(question.title)
        on_answer(answers[question.title])
    return ask


def dialog_of(root: tk.Tk, window: ChatWindow) -> AskDialog:
    pump(root, lambda: window.dialog is not None and window.dialog.exists(), "the dialog")
    assert window.dialog is not None
    return window.dialog


def type_into_dialog(root: tk.Tk, dialog: AskDialog, text: str) -> None:
    dialog.entry.focus_force()
    pump(root, lambda: root.focus_get() is dialog.entry, "the dialog's entry to have the keys")
    dialog.entry.delete(0, "end")
    type_into_focus(root, text)


def click_ok(root: tk.Tk, dialog: AskDialog) -> None:
    button = dialog.ok_button
    pump(root, button.winfo_ismapped, "the OK button")
    click(button, button.winfo_width() // 2, button.winfo_height() // 2)
    root.update()


# --- the user list's menu ----------------------------------------------------------------


def test_the_menu_kicks_with_the_real_dialog_mutes_and_unmutes(root: tk.Tk,
                                                                opened: Windows) -> None:
    with running_server(keeper_code=CODE) as server:
        bob, carol = pandas(server, "Bob", "Carol")
        window = opened.joined(server.address, "Teacher")
        menu = open_menu_on(root, window, "Bob")
        close_menu(menu)
        assert labels(menu) == ["Whisper"], "a pupil's menu has no keeper actions"
        become_keeper(root, window)
        bob.expect(r"^\* keeper: Teacher is now a keeper\.$")
        assert "\u2605 Teacher (you)" in window.user_list.listbox.get(0, "end")
        assert "sesame" not in chat_text(window), "the keeper code on the screen"

        menu = open_menu_on(root, window, "Bob")
        assert labels(menu) == ["Whisper", "Kick\u2026", "Mute 10 minutes", "Unmute", "Ban\u2026"]
        choose(menu, "Mute 10 minutes")
        bob.expect(r"^\* mute: Bob was muted by Teacher for 10 minutes\.$")
        bob.send("can I still talk?")
        bob.expect(r"^\* error: You are muted for ")
        choose(open_menu_on(root, window, "Bob"), "Unmute")
        bob.expect(r"^\* unmute: Bob can talk again\.$")

        choose(open_menu_on(root, window, "Carol"), "Kick\u2026")
        dialog = dialog_of(root, window)
        assert "Carol" in str(dialog.ok_button.cget("text"))
        type_into_dialog(root, dialog, "too loud")
        click_ok(root, dialog)
        assert not dialog.exists()
        carol.expect(r"^\* kick: You were removed from the grove by Teacher \(too loud\)\.$")
        assert carol.read_until_eof() == []
        bob.expect(r"^\* leave: Carol left the grove \(removed by Teacher: too loud\)\.$")
        pump(root, lambda: "Carol" not in [m.name for m in window.user_list.listed],
             "Carol gone from the list")


def test_the_menu_bans_after_the_dialog_takes_a_number_of_minutes(root: tk.Tk,
                                                                   opened: Windows) -> None:
    with running_server(keeper_code=CODE) as server:
        pupil = LineClient(server.address, "Pupil", source="127.0.0.2")
        window = opened.joined(server.address, "Teacher")
        become_keeper(root, window)
        choose(open_menu_on(root, window, "Pupil"), "Ban\u2026")
        dialog = dialog_of(root, window)
        type_into_dialog(root, dialog, "soon")
        click_ok(root, dialog)
        assert dialog.exists() and "minutes" in str(dialog.error.cget("text"))
        sync(pupil)  # nothing was sent: the pupil is still here
        type_into_dialog(root, dialog, "0.5")
        press(dialog.entry, "Return")
        assert not dialog.exists()
        pupil.expect(r"^\* kick: You were removed from the grove by Teacher \(banned for 0\.5 "
                     r"minutes\)\.$")
        again = LineClient(server.address, source="127.0.0.2")
        assert re.match(r"^\* full: You are banned from this grove by Teacher",
                        again.read_until_eof()[-1])


# --- the Grove menu ----------------------------------------------------------------------


def test_the_grove_menu_locks_hushes_slows_and_announces(root: tk.Tk, opened: Windows) -> None:
    asked: list[str] = []
    with running_server(keeper_code=CODE) as server:
        (bob,) = pandas(server, "Bob")
        window = opened.joined(server.address, "Teacher", ask=answering(
            {"Slow mode": "5", "Announce": "Quiet now, please"}, asked))
        assert not window.grove_menu_shown(), "a pupil has no Grove menu"
        become_keeper(root, window)
        menu = grove_menu(window)
        menubar = [str(window.menubar.entrycget(i, "label"))
                   for i in range((window.menubar.index("end") or 0) + 1)
                   if window.menubar.type(i) == "cascade"]
        assert menubar == ["Chat", "View", "Grove", "Help"]

        choose(menu, "Lock the grove (no newcomers)")
        bob.expect(r"^\* lock: Teacher locked the grove: no newcomers for now\.$")
        newcomer = LineClient(server.address)
        newcomer.send("Newcomer")
        assert newcomer.read_until_eof()[-1].startswith("* full: The grove is locked")
        pump(root, lambda: "Locked" in states(window), "Locked in the status bar")
        choose(menu, "Unlock the grove")
        bob.expect(r"^\* unlock: ")
        pump(root, lambda: "Locked" not in states(window), "Locked gone")

        choose(menu, "Hush (only keepers talk)")
        bob.expect(r"^\* hush: Only keepers can talk for now")
        bob.send("hi")
        bob.expect(r"^\* error: The grove is hushed")
        pump(root, lambda: "Hushed" in states(window), "Hushed in the status bar")
        assert not window.input.reason.winfo_ismapped(), "a keeper can talk in a hush"
        choose(menu, "Unhush (everybody talks)")
        bob.expect(r"^\* unhush: Everybody can talk again")

        choose(menu, "Slow mode\u2026")
        bob.expect(r"^\* slowmode: Teacher started slow mode: one line every 5 seconds each\.$")
        pump(root, lambda: states(window) == "Slow mode: one line every 5 s", "slow mode shown")
        choose(menu, "Announce\u2026")
        bob.expect(r"^\* announce: Teacher: Quiet now, please$")
        pump(root, shows(window, "Announcement from Teacher: Quiet now, please$"), "the banner")
        assert asked == ["Slow mode", "Announce"]


# --- what a pupil's window shows -----------------------------------------------------------


def test_the_status_bar_and_the_input_tell_a_pupil_the_rules(root: tk.Tk,
                                                             opened: Windows) -> None:
    with running_server(keeper_code=CODE) as server:
        window = opened.joined(server.address, "Alice")
        teacher = keeper_client(server)  # "* keeper: Teacher is now a keeper." marks it
        pump(root, lambda: "\u2605 Teacher" in window.user_list.listbox.get(0, "end"),
             "Teacher marked a keeper in the list")
        reason = window.input.reason
        for command, shown in (("@lock", "Locked: no newcomers"),
                               ("@hush", "Locked: no newcomers \u00b7 Hushed: only keepers talk"),
                               ("@slowmode 5", "Locked: no newcomers \u00b7 Hushed: only keepers "
                                               "talk \u00b7 Slow mode: one line every 5 s")):
            teacher.send(command)
            pump(root, functools.partial(showing, window, shown), shown)
        assert reason.winfo_ismapped() and "hushed" in str(reason.cget("text"))
        teacher.send("@mute Alice 10")
        pump(root, lambda: states(window).endswith("You are muted (10 min)"), "the mute")
        assert str(reason.cget("text")).startswith("You are muted")
        window.input.entry.focus_force()
        type_into_focus(root, "hello")
        press(window.input.entry, "Return")
        pump(root, shows(window, r"You are muted for [\d.]+ more minutes"), "the refusal")

        for command in ("@unmute Alice", "@unhush", "@unlock", "@slowmode 0"):
            teacher.send(command)
        pump(root, lambda: states(window) == "", "every state gone")
        assert not reason.winfo_ismapped()
        window.input.entry.focus_force()
        type_into_focus(root, "free again")
        press(window.input.entry, "Return")
        teacher.expect(r"^Alice: free again$")


def test_a_newcomer_sees_the_hush_and_slow_mode_it_joins_into(root: tk.Tk,
                                                             opened: Windows) -> None:
    with running_server(keeper_code=CODE) as server:
        teacher = keeper_client(server)
        teacher.send("@hush")
        teacher.send("@slowmode 2.5")
        sync(teacher)
        window = opened.joined(server.address, "Alice")
        pump(root, lambda: states(window) == "Hushed: only keepers talk \u00b7 Slow mode: one "
                                              "line every 2.5 s", "the rules after the welcome")
        assert window.input.reason.winfo_ismapped()


def test_a_kicked_window_says_why_and_does_not_reconnect(root: tk.Tk, opened: Windows) -> None:
    with running_server(keeper_code=CODE) as server:
        teacher = keeper_client(server)
        window = opened.joined(server.address, "Alice")  # retries every 50 ms when dropped
        teacher.send("@kick Alice spamming")
        pump(root, lambda: window.session.phase == "offline", "the kick")
        banner = str(window.banner.label.cget("text"))
        assert "You were removed from the grove by Teacher (spamming)." in banner, banner
        settle(root, QUIET_S)  # twenty retries' worth of waiting
        assert window.session.phase == "offline", "it reconnected by itself"
        assert window.session.retry.attempt_no == 0
        assert not window.status_bar.retry_label.winfo_ismapped()
        assert window.banner.frame.winfo_ismapped()

        click(window.banner.retry_button, 5, 5)  # the person may come back
        pump(root, lambda: window.session.phase == "chatting", "the window back")
        teacher.expect(r"^\* join: Alice joined the grove\.$")

        teacher.send("@ban Alice")
        pump(root, lambda: window.session.phase == "offline", "the ban")
        click(window.banner.retry_button, 5, 5)
        pump(root, shows(window, "You are banned from this grove by Teacher"), "the refusal")
        pump(root, lambda: window.session.phase == "offline", "offline again")
        settle(root, QUIET_S)
        assert window.session.phase == "offline" and window.session.retry.attempt_no == 0
        assert "You are banned" in str(window.banner.label.cget("text"))


def test_an_announcement_and_an_action_stand_out(root: tk.Tk, opened: Windows) -> None:
    with running_server(keeper_code=CODE) as server:
        teacher = keeper_client(server)
        window = opened.joined(server.address, "Alice")
        (bob,) = pandas(server, "Bob")
        bob.send("@me waves")
        teacher.send("@announce Pencils down")
        pump(root, shows(window, "Announcement from Teacher: Pencils down$"), "the announcement")
        pump(root, shows(window, r"\* Bob waves$"), "the action")
        banner = lines_tagged(window, "announce_line")
        assert len(banner) == 1 and banner[0].endswith("Announcement from Teacher: Pencils down")
        assert "announce" in tags_of(window, "Pencils down")
        background = window.chat_view.text.tag_cget("announce_line", "background")
        assert background and background != window.chat_view.text.cget("background")
        assert "action" in tags_of(window, " waves")
        assert "action_name" in tags_of(window, "Bob waves")
        font = window.chat_view.text.tag_cget("action", "font")
        assert root.tk.call("font", "actual", font, "-slant") == "italic"


def test_nick_changes_the_windows_own_name_everywhere(root: tk.Tk, opened: Windows) -> None:
    with running_server() as server:
        (bob,) = pandas(server, "Bob")
        window = opened.joined(server.address, "Alice")
        assert root.title() == "Panda Chat \u2014 Alice"
        window.input.entry.focus_force()
        type_into_focus(root, "@nick Alicia")
        press(window.input.entry, "Return")
        bob.expect(r"^\* nick: Alice is now Alicia\.$")
        pump(root, lambda: root.title() == "Panda Chat \u2014 Alicia", "the new title")
        assert "Alicia (you)" in window.user_list.listbox.get(0, "end")
        assert window.session.wanted_name == "Alicia", "a reconnection joins as Alicia"
        bob.send("hey alicia")
        pump(root, shows(window, "hey alicia$"), "Bob's line")
        assert lines_tagged(window, "mention")[-1].endswith("Bob: hey alicia")
        window.input.put("Ali")
        press(window.input.entry, "Tab")
        assert window.input.entry.get() == "Ali", "completed our own name"


def test_tab_completes_the_keepers_commands_only_for_a_keeper(root: tk.Tk,
                                                             opened: Windows) -> None:
    with running_server(keeper_code=CODE) as server:
        window = opened.joined(server.address, "Teacher")
        entry = window.input.entry

        def completed(typed: str) -> str:
            window.input.put(typed)
            press(entry, "Tab")
            return str(entry.get())

        assert completed("@ki") == "@ki", "a pupil completed a keeper's command"
        assert completed("@ni") == "@nick "
        assert completed("@m") == "@me "
        assert completed("@kee") == "@keeper "
        become_keeper(root, window)
        assert completed("@ki") == "@kick "
        assert completed("@slo") == "@slowmode "
        assert completed("@unh") == "@unhush "


def test_a_fresh_join_takes_the_keepers_menus_away(root: tk.Tk, opened: Windows) -> None:
    window, inbox, sent = opened.seam("Teacher")
    inbox.put(Message("grove", "2 pandas here: Bob Teacher"))
    inbox.put(Message("keeper", "You are a keeper of this grove. @help lists what keepers "
                                "can do."))
    pump(root, window.grove_menu_shown, "the Grove menu")
    menu = open_menu_on(root, window, "Bob")
    close_menu(menu)
    assert "Kick\u2026" in labels(menu)
    inbox.put(ConnectionEvent("lost", "the connection was reset"))
    inbox.put(ConnectionEvent("connected"))  # no resume code: a new panda, no keeper
    inbox.put(Message("welcome", "Welcome to the grove, Teacher!"))
    pump(root, lambda: not window.grove_menu_shown(), "the Grove menu to go")
    assert labels(window.user_list.menu) == ["Whisper"]
    assert window.input.completer.commands == client3.COMMANDS
    assert sent == ["Teacher"]
