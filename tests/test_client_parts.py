"""client3.py's pure parts, without a display: Session, render, InputHistory, Completer,
Placeholders, the display text (tk_safe, escaping, bidi), Reconnector, Notifier, Settings.

No Tk root is made here: these run where no display can be had. The Session talks to a
RecordingView instead of a window, and its Reconnector runs on a FakeClock.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import client3
from client3 import (
    BELL_GAP_S,
    Completer,
    ConnectionEvent,
    InputHistory,
    Notifier,
    Placeholders,
    Reconnector,
    Session,
    Settings,
    bidi_display,
    for_display,
    mention_pattern,
    render,
    tk_safe,
    wire_line,
)
from protocol import Member, Message, format_grove_listing, format_lost, format_resume, parse_line


class FakeClock:
    """after/after_cancel on a clock the test moves with advance()."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: dict[str, tuple[float, Callable[[], None]]] = {}
        self._ids = 0

    def after(self, ms: int, callback: Callable[[], None]) -> str:
        self._ids += 1
        timer = f"after#{self._ids}"
        self.timers[timer] = (self.now + ms / 1000, callback)
        return timer

    def after_cancel(self, timer: str) -> None:
        del self.timers[timer]

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while due := sorted((at, t) for t, (at, _) in self.timers.items() if at <= end):
            at, timer = due[0]
            self.now = at
            _, callback = self.timers.pop(timer)
            callback()
        self.now = end


class RecordingView:
    """A SessionView that keeps what it was asked to do."""

    def __init__(self) -> None:
        self.shown: list[tuple[Message, bool]] = []
        self.notes: list[str] = []
        self.status = ""
        self.offline = ""
        self.prompt = ""
        self.name_error = ""
        self.refused: list[str] = []
        self.countdown = ""
        self.welcomes = 0
        self.rule_changes = 0
        self.renames = 0

    def show(self, msg: Message, *, own: bool = False) -> None:
        self.shown.append((msg, own))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def set_status(self, text: str) -> None:
        self.status = text

    def set_offline_reason(self, text: str) -> None:
        self.offline = text

    def set_name_prompt(self, text: str) -> None:
        self.prompt = text

    def set_name_error(self, text: str) -> None:
        self.name_error = text

    def name_refused(self, name: str) -> None:
        self.refused.append(name)

    def welcomed(self) -> None:
        self.welcomes += 1

    def users_changed(self) -> None:
        pass

    def phase_changed(self) -> None:
        pass

    def show_countdown(self, text: str) -> None:
        self.countdown = text

    def rules_changed(self) -> None:
        self.rule_changes += 1

    def name_changed(self) -> None:
        self.renames += 1


def session(name: str | None = "Alice", delays: tuple[float, ...] = (1.0, 2.0)
            ) -> tuple[Session, RecordingView, list[str], FakeClock]:
    view, sent, clock = RecordingView(), [], FakeClock()
    connects: list[int] = []

    def send(text: str) -> bool:
        sent.append(text)
        return True

    s = Session(view, send=send, connect=lambda: connects.append(1), address="h:1", name=name,
                after=clock.after, after_cancel=clock.after_cancel, retry_delays=delays,
                clock=lambda: clock.now)
    s.start()
    return s, view, sent, clock


def welcomed(name: str = "Alice") -> tuple[Session, RecordingView, list[str], FakeClock]:
    s, view, sent, clock = session(name)
    s.on_event(ConnectionEvent("connected"))
    s.on_message(Message("welcome", f"Welcome to the grove, {name}!"))
    assert s.phase == "chatting" and sent == [name]
    sent.clear()
    return s, view, sent, clock


def is_keeper(s: Session) -> bool:
    """s.keeper, read afresh (as phase_of)."""
    return s.keeper


def phase_of(s: Session) -> str:
    """s.phase, read afresh (mypy would keep it narrowed from an earlier assert)."""
    return s.phase


# --- Session ---------------------------------------------------------------------------


def test_every_kind_in_the_table_is_a_function_of_the_session() -> None:
    _s, *_ = session()
    for kind, handler in Session.KINDS.items():
        assert callable(handler), kind
    assert {"welcome", "error", "grove", "more", "lost", "resume"} <= Session.KINDS.keys()


def test_the_session_joins_keeps_the_users_and_the_resume_code() -> None:
    s, view, _sent, _ = welcomed()
    s.on_message(Message("resume", format_resume("c0de", 30)))
    assert s.resume_code == "c0de"
    for kind, text in format_grove_listing(["Alice", "Bob", "Carol", "Dave"], 10, {"Bob"}):
        s.on_message(Message(kind, text))
    assert s.user_names() == ["Alice", "Bob", "Carol", "Dave"]
    assert s.users["bob"] == Member("Bob", keeper=True)
    s.on_message(Message("lost", format_lost("Carol", "connection reset")))
    assert s.away == {"carol"}
    s.on_message(Message("leave", "Carol left the grove (did not come back)."))
    assert "carol" not in s.users and s.away == set()
    shown_kinds = [m.kind for m, _ in view.shown]
    assert "resume" not in shown_kinds, "the code is the client's business"
    assert shown_kinds.count("more") == 1


def test_a_refused_name_asks_again_and_a_stale_resume_code_joins_afresh() -> None:
    s, view, sent, _ = session()
    s.on_event(ConnectionEvent("connected"))
    s.on_message(Message("error", "The name Alice is taken; pick another."))
    assert view.refused == ["Alice"] and s.asking_name and s.wanted_name is None
    assert view.name_error.startswith("The name Alice is taken")
    s.submit_name("Alicia")
    assert sent[-1] == "Alicia"

    s, view, sent, _ = welcomed()
    s.on_message(Message("resume", format_resume("old", 30)))
    s.on_event(ConnectionEvent("lost", "reset"))
    s.reconnect()
    s.on_event(ConnectionEvent("connected"))
    assert sent[-1] == "@resume old" and s.resuming
    s.on_message(Message("error", "That resume code is wrong or has expired"))
    assert sent[-1] == "Alice" and s.resume_code is None
    assert not any("resume code" in m.text for m, _ in view.shown)


def test_a_drop_reconnects_on_the_reconnectors_clock() -> None:
    s, view, _sent, clock = welcomed()
    connects_before = len(clock.timers)
    s.on_event(ConnectionEvent("lost", "the connection was reset"))
    assert s.phase == "offline" and s.retry.attempt_no == 1
    assert view.countdown == "Reconnecting in 1 s\u2026 (attempt 1)"
    clock.advance(1.0)
    assert phase_of(s) == "connecting" and view.countdown == "Reconnecting\u2026 (attempt 1)"
    s.on_event(ConnectionEvent("failed", "connection refused"))
    assert view.countdown == "Reconnecting in 2 s\u2026 (attempt 2)"
    s.cancel_retry()
    assert not clock.timers and view.countdown == "" and s.retry.attempt_no == 0
    assert connects_before == 0


def test_lines_written_offline_go_out_in_order_on_the_next_welcome() -> None:
    s, _view, sent, _ = welcomed()
    s.on_event(ConnectionEvent("lost", "reset"))
    assert s.submit("one") and s.submit("@bamboo") and not s.submit("   ")
    assert sent == [] and s.outbox == ["one", "@bamboo"]
    s.reconnect()
    s.on_event(ConnectionEvent("connected"))
    s.on_message(Message("welcome", "Welcome to the grove, Alice!"))
    assert sent == ["Alice", "one", "@bamboo"] and s.outbox == []


def test_at_a_present_pandas_name_is_a_mention_not_a_command() -> None:
    # Defect 11: "@bob hi" was refused by the server as an unknown command.
    s, view, sent, _ = welcomed()
    s.on_message(Message("grove", "2 pandas here: Alice Bob"))
    for text in ("@bob are you there?", "@help", "@ww", "@whisper Bob psst"):
        s.submit(text)
    assert sent == [" @bob are you there?", "@help", "@ww", "@whisper Bob psst"]
    own = [(m.kind, m.text) for m, mine in view.shown if mine]
    assert own[0] == ("chat", "@bob are you there?"), "shown as the chat line it is"


def test_leaving_never_reconnects() -> None:
    s, view, _sent, clock = welcomed()
    s.submit("@leaves")
    s.on_message(Message("bye", "Goodbye, Alice!"))
    s.on_event(ConnectionEvent("lost", "closed"))
    assert s.phase == "offline" and not clock.timers and s.retry.attempt_no == 0
    assert view.offline.startswith("You left the grove.")


# --- render ------------------------------------------------------------------------


def test_render_a_chat_line_with_a_mention_and_a_link() -> None:
    line = render(Message("chat", "hi alice, see https://example.org/a?b=1.", "Bob"),
                  clock="12:03", me="Alice")
    assert line.plain() == "12:03 Bob: hi alice, see https://example.org/a?b=1."
    assert line.mention and not line.whisper
    assert "mention" in line.line_tags
    links = [text for text, tags in line.pieces if "link" in tags]
    assert links == ["https://example.org/a?b=1"]
    assert line.pieces[1] == ("Bob", (client3.name_tag("Bob"),))


def test_render_history_missed_whispers_and_own_lines() -> None:
    history = render(Message("history", "[03:07] Carol: long ago"), clock="12:00")
    assert history.plain() == "03:07 Carol: long ago" and "history" in history.line_tags
    missed = render(Message("missed", "Bob: psst"), clock="12:00")
    assert missed.plain() == "missed Bob: psst" and "missed" in missed.line_tags
    whisper = render(Message("whisper", "Bob: psst"), clock="12:00", me="Alice")
    assert whisper.plain() == "12:00 Bob whispers to you: psst" and whisper.whisper
    own = render(Message("chat", "hello", "Alice"), clock="12:00", me="Alice", own=True)
    assert own.plain() == "12:00 Alice (you): hello" and "own" in own.line_tags
    assert not own.mention
    error = render(Message("error", "Unknown command @ww."), clock="12:00")
    assert error.pieces[-1] == ("\u2022 Unknown command @ww.", ("error",))


def test_wire_line_writes_what_parse_line_reads() -> None:
    for line in ("Bob: hi", "* join: Bob joined the grove.", "just text"):
        assert wire_line(parse_line(line)) == line


# --- Text for display -------------------------------------------------------------------


def test_tk_safe_names_every_astral_character() -> None:
    assert tk_safe("a\U0001F43Cb") == "a[panda face]b"
    assert tk_safe("\U000E0001") == "[language tag]"
    assert tk_safe("\U0010FFFF") == "[U+10FFFF]"  # no name: the code point
    assert tk_safe("plain é ü ✓") == "plain é ü ✓"


def test_control_characters_are_escaped_for_display_even_if_the_server_did_not() -> None:
    # Defect 10: a foreign server's ESC, BEL and NUL showed as boxes, and a NUL cut the text.
    assert for_display("a\x1b[31mb\x07c\x00d") == "a\\x1b[31mb\\x07c\\x00d"
    assert for_display("tab\there") == "tab here"


def test_rtl_runs_are_reversed_for_display_with_their_numbers_in_order() -> None:
    # Defect 6: Tk 8.6 draws in typing order, so Arabic and Hebrew read backwards.
    hebrew = "\u05e9\u05dc\u05d5\u05dd"  # shalom
    assert bidi_display(f"hi {hebrew}!") == f"hi {hebrew[::-1]}!"
    two_words = "\u05d0\u05d1 \u05d2\u05d3"
    assert bidi_display(two_words) == "\u05d3\u05d2 \u05d1\u05d0"
    assert bidi_display("\u05d0 123 \u05d1") == "\u05d1 123 \u05d0", "numbers read left to right"
    assert bidi_display("\u05d0 (x) \u05d1") == "\u05d0 (x) \u05d1", "a Latin word ends a run"
    assert bidi_display("plain text") == "plain text"


rtl_mix = st.text(st.sampled_from(
    [*list("abc XYZ 0123 ()[]!?.,-"), "א", "ב", "ש", "ا", "ل", "١", "٢", "ً", "«", "»"]))


@given(rtl_mix)
def test_bidi_display_is_its_own_inverse_so_copying_gives_back_what_was_said(text: str) -> None:
    shown = bidi_display(text)
    assert bidi_display(shown) == text
    assert sorted(shown.translate(client3._MIRRORED)) == sorted(text) or len(shown) == len(text)


@given(st.text())
def test_for_display_never_leaves_what_tk_cannot_hold(text: str) -> None:
    shown = for_display(text)
    assert all(ch <= "\uffff" for ch in shown)
    assert "\x00" not in shown and "\x1b" not in shown
    assert not any(unicodedata.category(ch) == "Cc" for ch in shown)


def test_a_mention_is_the_name_as_a_whole_word_in_any_case() -> None:
    bob = mention_pattern("Bob")
    for text in ("Bob", "hi bob!", "BOB?", "@Bob look", "bob's bamboo", "(bob)", "ok,bob,ok"):
        assert bob.search(text), text
    for text in ("Bobby", "bob_x", "xbob", "bob2", "B o b", "kebob", "Bo b"):
        assert not bob.search(text), text
    dotted = mention_pattern("a.b")  # the name is text, not a pattern
    assert dotted.search("hi a.b!") and not dotted.search("hi axb")
    accented = mention_pattern("Zoë")
    assert accented.search("thanks ZOË") and not accented.search("Zoëy")


# --- Input helpers -----------------------------------------------------------------------


def test_input_history_walks_back_and_forth_and_keeps_the_draft() -> None:
    history = InputHistory(limit=3)
    assert history.up("draft") is None
    for text in ("one", "two", "three", "four"):
        history.add(text)
    assert history.entries == ["two", "three", "four"]
    walk = [history.up("draft"), history.up("x"), history.up("x"), history.up("x"),
            history.down(), history.down(), history.down(), history.down()]
    assert walk == ["four", "three", "two", None, "three", "four", "draft", None]


def test_completer_completes_commands_and_names_and_cycles() -> None:
    completer = Completer()
    names = ["Bob", "Bobcat", "Carol"]
    assert completer.complete("hi ca", 5, names) == ("hi Carol ", 9)
    assert completer.complete("@ba", 3, names) == ("@bamboo ", 8)
    first = completer.complete("bo", 2, names)
    assert first == ("Bob ", 4)
    assert completer.complete(*first, names) == ("Bobcat ", 7)
    assert completer.complete("Bobcat ", 7, names) == ("Bob ", 4)
    assert completer.complete("zz", 2, names) is None
    assert completer.complete("", 0, names) is None
    assert completer.complete("bo rest", 2, names) == ("Bob  rest", 4)


def test_placeholders_put_back_the_characters_tk_cannot_hold() -> None:
    # Defect 5: "@whisper Mei[panda face]" was sent instead of the name.
    placeholders = Placeholders()
    shown = placeholders.learn("@whisper Mei\U0001F43C ")
    assert shown == "@whisper Mei[panda face] "
    assert placeholders.restore(shown + "hi") == "@whisper Mei\U0001F43C hi"
    assert Placeholders().restore("[panda face]") == "[panda face]", "only what it put there"


# --- Timers ------------------------------------------------------------------------------


def test_the_reconnector_counts_down_each_second_and_repeats_the_last_wait() -> None:
    clock = FakeClock()
    attempts: list[float] = []
    shown: list[str] = []
    retry = Reconnector(clock.after, clock.after_cancel, (1.0, 2.5), lambda: attempts.append(
        clock.now), shown.append, clock=lambda: clock.now)
    for _ in range(3):
        retry.schedule()
        clock.advance(10)
    assert attempts == [1.0, 12.5, 22.5]
    assert shown[:4] == ["Reconnecting in 1 s\u2026 (attempt 1)", "Reconnecting\u2026 (attempt 1)",
                         "Reconnecting in 3 s\u2026 (attempt 2)",
                         "Reconnecting in 2 s\u2026 (attempt 2)"]
    retry.schedule()
    retry.stop()
    assert not clock.timers and shown[-1] == "" and retry.attempt_no == 0


def test_the_bell_rings_at_most_once_every_few_seconds() -> None:
    # Defect 7: 5,000 mention lines rang the bell 5,000 times.
    now = [0.0]
    rings: list[float] = []
    notifier = Notifier(lambda: rings.append(now[0]), clock=lambda: now[0])
    for step in range(5000):
        now[0] = step * 0.01  # 50 s of mentions, 100 a second
        notifier.notify("Panda Chat", "hi alice")
    assert len(rings) == 50 / BELL_GAP_S
    assert all(b - a >= BELL_GAP_S for a, b in itertools.pairwise(rings))


def test_a_notifier_command_is_run_without_waiting_and_the_bell_stays_quiet() -> None:
    spawned: list[list[str]] = []

    class Child:
        def poll(self) -> int:
            return 0

    def spawn(argv: list[str], **kwargs: Any) -> Child:
        spawned.append(argv)
        return Child()

    rings: list[int] = []
    now = [0.0]
    notifier = Notifier(lambda: rings.append(1), "/usr/bin/notify-send", spawn=spawn,
                        clock=lambda: now[0])
    assert notifier.notify("Panda Chat: a whisper", "Bob whispers to you: psst")
    assert spawned == [["/usr/bin/notify-send", "--app-name=Panda Chat",
                        "Panda Chat: a whisper", "Bob whispers to you: psst"]]
    for step in range(1, 1000):  # a flood: one process every BELL_GAP_S, not one a line
        now[0] = step * 0.05
        notifier.notify("Panda Chat: you were named", "alice")
    assert len(spawned) == 50 / BELL_GAP_S
    assert rings == []


# --- Settings ----------------------------------------------------------------------------


def test_settings_are_remembered_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "settings.json"
    settings = Settings(path)
    assert (settings.font_size, settings.theme, settings.warning) == (11, "system", None)
    settings.font_size, settings.theme = 14, "dark"
    settings.save()
    again = Settings(path)
    assert (again.font_size, again.theme) == (14, "dark")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe"])
def test_a_broken_settings_file_gives_the_defaults_and_one_warning(
        tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "settings.json"
    path.write_bytes(content.encode("latin-1"))
    settings = Settings(path)
    assert (settings.font_size, settings.theme) == (11, "system")
    assert settings.warning is not None and str(path) in settings.warning
    assert capsys.readouterr().err.count("Settings:") == 1


def test_odd_values_in_the_settings_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"font_size": 500, "theme": "purple"}))
    settings = Settings(path)
    assert (settings.font_size, settings.theme) == (11, "system")


def test_the_settings_path_is_in_the_users_config_folder(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.delenv(client3.SETTINGS_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    if sys.platform.startswith("linux"):
        assert client3.settings_path() == tmp_path / "panda-chat" / "settings.json"
    monkeypatch.setenv(client3.SETTINGS_ENV, str(tmp_path / "x.json"))
    assert client3.settings_path() == tmp_path / "x.json"


def test_the_systems_dark_theme_is_followed_where_it_can_be_told() -> None:
    assert client3.system_prefers_dark(lambda argv: None, {"GTK_THEME": "Adwaita:dark"})
    if sys.platform.startswith("linux") and shutil.which("gsettings"):
        assert client3.system_prefers_dark(lambda argv: "'prefer-dark'\n", {})
    assert not client3.system_prefers_dark(lambda argv: "'default'\n", {})


# --- Keepers (issue #11): what the Session makes of the keepers' lines -------------------


def test_keepers_are_marked_and_only_a_keeper_completes_the_keepers_commands() -> None:
    s, view, _sent, _ = welcomed()
    s.on_message(Message("grove", "3 pandas here: Alice @Teacher Bob"))
    assert s.users["teacher"] == Member("Teacher", keeper=True) and not s.keeper
    assert s.commands() == client3.COMMANDS and "@kick" not in s.commands()
    s.on_message(Message("keeper", "Bob is now a keeper."))
    assert s.users["bob"].keeper and not is_keeper(s)
    changes = view.rule_changes
    s.on_message(Message("keeper", "You are a keeper of this grove. @help lists what keepers "
                                   "can do."))
    assert is_keeper(s) and s.users["alice"].keeper and view.rule_changes > changes
    assert {"@kick", "@ban", "@mute", "@lock", "@hush", "@slowmode", "@announce",
            "@me", "@nick"} <= set(s.commands())
    assert [m.kind for m, _ in view.shown][-2:] == ["keeper", "keeper"], "both lines are shown"
    # A fresh join is no keeper until told again; a listing without our mark says we are not.
    s.on_message(Message("grove", "3 pandas here: Alice @Teacher Bob"))
    assert not is_keeper(s)


def test_the_groves_rules_come_and_go_in_the_states_in_a_fixed_order() -> None:
    s, _view, _sent, _ = welcomed()
    for kind, text in (("slowmode", "Teacher started slow mode: one line every 5 seconds each."),
                       ("hush", "Only keepers can talk for now (Teacher hushed the grove)."),
                       ("lock", "Teacher locked the grove: no newcomers for now."),
                       ("mute", "Bob was muted by Teacher for 10 minutes.")):
        s.on_message(Message(kind, text))
    assert list(s.states) == ["locked", "hushed", "slowmode"], "Bob's mute is not ours"
    assert s.states["slowmode"] == "Slow mode: one line every 5 s"
    assert s.input_reason().startswith("The grove is hushed")
    s.on_message(Message("mute", "Alice was muted by Teacher for 0.5 minutes."))
    assert s.states["muted"] == "You are muted (0.5 min)"
    assert s.input_reason().startswith("You are muted"), "the mute says more than the hush"
    for kind, text in (("unmute", "Alice can talk again."),
                       ("unhush", "Everybody can talk again (Teacher ended the hush)."),
                       ("unlock", "Teacher unlocked the grove: newcomers are welcome."),
                       ("slowmode", "Teacher ended slow mode.")):
        s.on_message(Message(kind, text))
    assert s.states == {} and s.input_reason() == ""


def test_a_newcomer_learns_the_rules_after_its_welcome_and_an_error_tells_a_mute() -> None:
    s, _view, _sent, _ = welcomed()
    s.on_message(Message("hush", "Only keepers can talk for now."))
    s.on_message(Message("slowmode", "Slow mode: one line every 2.5 seconds each."))
    assert s.states == {"hushed": "Hushed: only keepers talk",
                        "slowmode": "Slow mode: one line every 2.5 s"}
    s.on_message(Message("error", "You are muted for 9.5 more minutes; you can still whisper "
                                  "to a keeper."))
    assert s.states["muted"] == "You are muted"
    # A new join (not a resume) starts with no rules known.
    s.on_event(ConnectionEvent("lost", "reset"))
    s.reconnect()
    s.on_event(ConnectionEvent("connected"))
    s.on_message(Message("welcome", "Welcome to the grove, Alice!"))
    assert s.states == {}


def test_a_keeper_is_above_the_hush_and_the_mute_in_the_input() -> None:
    s, _view, _sent, _ = welcomed()
    s.on_message(Message("hush", "Only keepers can talk for now (Teacher hushed the grove)."))
    assert s.input_reason()
    s.on_message(Message("keeper", "You are a keeper of this grove."))
    assert s.input_reason() == "" and "hushed" in s.states


def test_rules_changed_while_away_hold_after_a_resume() -> None:
    s, _view, sent, _ = welcomed()
    s.on_message(Message("resume", format_resume("c0de", 30)))
    s.on_message(Message("lock", "Teacher locked the grove: no newcomers for now."))
    s.on_event(ConnectionEvent("lost", "reset"))
    s.reconnect()
    s.on_event(ConnectionEvent("connected"))
    assert sent[-1] == "@resume c0de"
    s.on_message(Message("welcome", "Welcome back to the grove, Alice! Here is what you missed."))
    s.on_message(Message("missed", "* hush: Only keepers can talk for now (Teacher hushed)."))
    s.on_message(Message("missed", "* mute: Alice was muted by Teacher for 10 minutes."))
    assert list(s.states) == ["locked", "hushed", "muted"]


def test_a_kick_or_a_ban_never_reconnects_by_itself_but_reconnect_still_works() -> None:
    s, view, sent, clock = welcomed()
    s.on_message(Message("resume", format_resume("c0de", 30)))
    s.on_message(Message("kick", "You were removed from the grove by Teacher (flooding)."))
    s.on_event(ConnectionEvent("lost", "the server closed the connection"))
    assert s.phase == "offline" and not clock.timers and s.retry.attempt_no == 0
    assert "You were removed from the grove by Teacher (flooding)." in view.offline
    assert "Press Reconnect" in view.offline and s.resume_code is None
    clock.advance(60)
    assert phase_of(s) == "offline", "it reconnected by itself"
    s.reconnect()  # the person may
    assert phase_of(s) == "connecting"
    s.on_event(ConnectionEvent("connected"))
    assert sent[-1] == "Alice", "joins afresh: the resume code died with the kick"
    s.on_message(Message("full", "You are banned from this grove by Teacher (until the server "
                                 "stops)."))
    s.on_event(ConnectionEvent("lost", "the server closed the connection"))
    assert not clock.timers and s.retry.attempt_no == 0
    assert "You are banned" in view.offline


def test_a_locked_grove_on_an_automatic_attempt_is_tried_again() -> None:
    s, _view, _sent, clock = welcomed()
    s.on_event(ConnectionEvent("lost", "reset"))
    clock.advance(1.0)
    s.on_event(ConnectionEvent("connected"))
    s.on_message(Message("full", "The grove is locked by its keepers: no newcomers for now. "
                                 "Please try again later."))
    s.on_event(ConnectionEvent("lost", "the server closed the connection"))
    assert s.retry.attempt_no == 2 and clock.timers, "a lock ends; a ban is the keeper's word"


def test_nick_renames_a_panda_and_ourselves() -> None:
    s, view, _sent, _ = welcomed()
    s.on_message(Message("grove", "3 pandas here: Alice @Teacher Bob"))
    s.on_message(Message("nick", "Teacher is now Miss_Li."))
    assert s.user_names() == ["Alice", "Bob", "Miss_Li"] and s.users["miss_li"].keeper
    assert view.renames == 0
    s.on_message(Message("nick", "Alice is now Alicia."))
    assert s.name == "Alicia" and s.wanted_name == "Alicia" and s.is_me("alicia")
    assert view.renames == 1 and view.status.endswith("as Alicia")
    assert s.user_names() == ["Alicia", "Bob", "Miss_Li"]


def test_own_actions_show_as_actions_and_keeper_commands_are_not_mentions() -> None:
    s, view, sent, _ = welcomed()
    s.on_message(Message("grove", "3 pandas here: Alice kick Bob"))
    s.submit("@me waves")
    s.submit("@kick Bob too loud")
    s.submit("@keeper sesame-123")
    assert sent == ["@me waves", "@kick Bob too loud", "@keeper sesame-123"]
    own = [(m.kind, m.text) for m, mine in view.shown if mine]
    assert own == [("action", "Alice waves"), ("command", "@kick Bob too loud"),
                   ("command", "@keeper (the code, not shown)")]


def test_render_an_announcement_as_a_banner_and_an_action_in_italics() -> None:
    banner = render(Message("announce", "Teacher: quiet now, please"), clock="12:00")
    assert banner.plain() == "12:00 \u25b6 Announcement from Teacher: quiet now, please"
    assert "announce_line" in banner.line_tags
    assert all("announce" in tags for _, tags in banner.pieces[1:])
    action = render(Message("action", "Bob waves at alice"), clock="12:00", me="Alice")
    assert action.plain() == "12:00 * Bob waves at alice" and action.mention
    assert action.pieces[2] == ("Bob", (client3.name_tag("Bob"), "action_name"))
    assert all("action" in tags for _, tags in (action.pieces[1], action.pieces[3]))
    for kind in ("lock", "hush", "mute", "slowmode", "nick", "keeper"):
        line = render(Message(kind, "x"), clock="12:00")
        assert line.pieces[-1][1] == ("moderation",), kind
    assert render(Message("kick", "You were removed"), clock="1").pieces[-1][1] == ("alert",)


def test_the_keepers_dialogs_check_their_numbers() -> None:
    assert client3.minutes_problem("") is None, "empty: until the server stops"
    assert client3.minutes_problem("0.5") is None
    assert client3.minutes_problem("soon") and client3.minutes_problem("0")
    assert client3.seconds_problem("0") is None and client3.seconds_problem("10") is None
    assert client3.seconds_problem("") and client3.seconds_problem("3601")
    assert client3.text_problem("  ") and client3.text_problem("hi") is None
