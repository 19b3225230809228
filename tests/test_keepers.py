"""Keepers: the teacher (or the host) moderates the grove; and @me and @nick for everybody.

The real server in a thread on port 0 with a known keeper code, and real sockets. The pupil
whose address is banned connects from 127.0.0.2, the keeper from 127.0.0.1.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from typing import Any

import pytest
from chat_helpers import LineClient, pandas, running_server, sync

from server3 import ChatServer, parse_args

CODE = "sesame-123"


def keeper(server: ChatServer, name: str = "Teacher") -> LineClient:
    """A panda that became a keeper."""
    (client,) = pandas(server, name)
    client.send(f"@keeper {CODE}")
    client.expect(r"^\* keeper: You are a keeper of this grove\. @help lists")
    return client


def class_of(server: ChatServer) -> tuple[LineClient, LineClient, LineClient]:
    """Alice and Bob, pupils, and Teacher, their keeper."""
    alice, bob = pandas(server, "Alice", "Bob")
    return alice, bob, keeper(server)


def keeping(**options: Any) -> AbstractContextManager[ChatServer]:
    return running_server(keeper_code=CODE, **options)


# --- becoming a keeper ------------------------------------------------------------------


def test_the_right_code_makes_a_keeper_and_everybody_is_told() -> None:
    with keeping() as server:
        (alice,) = pandas(server, "Alice")
        _teacher = keeper(server)
        alice.expect(r"^\* keeper: Teacher is now a keeper\.$")
        alice.send("@grove")
        alice.expect(r"^\* grove: 2 pandas here: Alice @Teacher$")


def test_wrong_codes_are_errors_and_five_close_the_connection() -> None:
    with keeping() as server:
        (guesser,) = pandas(server, "Guesser")
        for attempt in range(4):
            guesser.send(f"@keeper guess{attempt}")
            guesser.expect(r"^\* error: That is not the keeper code\.$")
        guesser.send("@keeper guess4")
        lines = guesser.read_until_eof()
        assert lines[-1] == "* bye: Too many wrong keeper codes; goodbye.", lines


def test_no_keeper_code_means_no_keepers() -> None:
    with running_server() as server:
        (alice,) = pandas(server, "Alice")
        alice.send("@keeper anything")
        alice.expect(r"^\* error: This grove has no keepers\.$")


def test_help_lists_keeper_commands_to_keepers_only() -> None:
    with keeping() as server:
        (alice,) = pandas(server, "Alice")
        teacher = keeper(server)
        for client, sees in ((alice, False), (teacher, True)):
            client.send("@help")
            helps = [line for line in sync(client) if line.startswith("* help: ")]
            assert any(line.startswith("* help: @whisper") for line in helps), helps
            assert any(line.startswith("* help: @kick") for line in helps) is sees, helps


def test_a_panda_that_is_no_keeper_is_told_so() -> None:
    with keeping() as server:
        alice, bob = pandas(server, "Alice", "Bob")
        for command in ("@kick Bob", "@mute Bob", "@ban Bob", "@lock", "@hush", "@slowmode 5",
                        "@announce hi", "@bans", "@unban 127.0.0.2", "@unmute Bob", "@unlock",
                        "@unhush"):
            alice.send(command)
            word = command.split()[0]
            alice.expect(rf"^\* error: Only keepers can use {word}\.$")
        bob.send("still here")
        alice.expect(r"^Bob: still here$")


# --- kick, ban ----------------------------------------------------------------------------


def test_kick_removes_with_the_reason_and_no_resume() -> None:
    with keeping(resume_window=60) as server:
        bob = LineClient(server.address, "Bob")
        code = re.match(r"^\* resume: (\S+)", bob.next_line() or "")
        assert code
        (alice,) = pandas(server, "Alice")
        teacher = keeper(server)
        teacher.send("@kick Bob too rude")
        lines = bob.read_until_eof()
        assert "* kick: You were removed from the grove by Teacher (too rude)." in lines, lines
        alice.expect(r"^\* leave: Bob left the grove \(removed by Teacher: too rude\)\.$")
        back = LineClient(server.address)
        back.expect(r"^\* name: ")
        back.send(f"@resume {code.group(1)}")
        back.expect(r"^\* error: That resume code is wrong or has expired")


@pytest.mark.parametrize("command, error", [
    ("@kick Nobody", r"There is no panda called Nobody here"),
    ("@kick", r"Type: @kick NAME"),
    ("@kick Teacher", r"You cannot kick yourself"),
    ("@kick Helper", r"Keepers cannot kick keepers"),
    ("@mute Helper", r"Keepers cannot mute keepers"),
    ("@ban Helper", r"Keepers cannot ban keepers"),
    ("@mute Alice soon", r"soon is not a number of minutes"),
    ("@mute Alice -1", r"-1 is not a number of minutes"),
    ("@ban Alice nan", r"nan is not a number of minutes"),
    ("@unmute Alice", r"Alice is not muted"),
    ("@unban 10.9.9.9", r"10\.9\.9\.9 is not banned"),
    ("@slowmode fast", r"fast is not a number of seconds"),
    ("@slowmode", r"Type: @slowmode SECONDS"),
    ("@slowmode 99999", r"99999 is not a number of seconds"),
    ("@announce", r"Type: @announce TEXT"),
    ("@unlock", r"The grove is not locked already"),
])
def test_every_bad_keeper_command_gets_a_clear_error(command: str, error: str) -> None:
    with keeping() as server:
        (alice,) = pandas(server, "Alice")
        teacher = keeper(server)
        _helper = keeper(server, "Helper")  # kept: a closed client would leave
        teacher.send(command)
        teacher.expect(rf"^\* error: {error}")
        alice.send("@grove")
        alice.expect(r"^\* grove: 3 pandas here: Alice @Helper @Teacher$")


def test_ban_keeps_the_address_out_until_unbanned() -> None:
    with keeping() as server:
        (alice,) = pandas(server, "Alice")
        teacher = keeper(server)
        pupil = LineClient(server.address, "Pupil", source="127.0.0.2")
        alice.expect(r"^\* join: Pupil joined")
        teacher.send("@ban Pupil 0.5")
        assert any(line.startswith("* kick: You were removed from the grove by Teacher")
                   for line in pupil.read_until_eof())
        alice.expect(r"^\* leave: Pupil left the grove \(removed by Teacher: banned for 0\.5 "
                     r"minutes\)\.$")
        again = LineClient(server.address, source="127.0.0.2")
        lines = again.read_until_eof()
        assert lines and re.match(r"^\* full: You are banned from this grove by Teacher \(0\.\d "
                                  r"minutes left\)", lines[-1]), lines
        LineClient(server.address, "Other", source="127.0.0.3")  # other addresses: welcome
        teacher.send("@bans")
        teacher.expect(r"^\* ban: 127\.0\.0\.2 Pupil \(0\.\d minutes left\), by Teacher$")
        teacher.send("@unban 127.0.0.2")
        teacher.expect(r"^\* ban: The ban on 127\.0\.0\.2 is lifted\.$")
        teacher.send("@bans")
        teacher.expect(r"^\* ban: No bans\.$")
        LineClient(server.address, "Pupil", source="127.0.0.2")


def test_a_ban_without_minutes_lasts_until_the_server_stops() -> None:
    with keeping() as server:
        teacher = keeper(server)
        _pupil = LineClient(server.address, "Pupil", source="127.0.0.2")
        teacher.send("@ban Pupil")
        teacher.send("@bans")
        teacher.expect(r"^\* ban: 127\.0\.0\.2 Pupil \(until the server stops\), by Teacher$")


# --- mute, hush, slow mode, lock -----------------------------------------------------------


def test_mute_refuses_chat_whispers_and_actions_but_not_whispers_to_keepers() -> None:
    with keeping() as server:
        alice, bob, teacher = class_of(server)
        teacher.send("@mute Bob 0.5")
        alice.expect(r"^\* mute: Bob was muted by Teacher for 0\.5 minutes\.$")
        for line in ("can I talk?", "@whisper Alice psst", "@me waves"):
            bob.send(line)
            bob.expect(r"^\* error: You are muted for 0\.\d more minutes")
        bob.send("@whisper Teacher sorry")
        teacher.expect(r"^\* whisper: Bob: sorry$")
        teacher.send("@unmute Bob")
        alice.expect(r"^\* unmute: Bob can talk again\.$")
        bob.send("thank you")
        alice.expect(r"^Bob: thank you$")
        assert not any("can I talk" in line or "psst" in line or "waves" in line
                       for line in alice.seen), alice.seen


def test_a_mute_ends_by_itself_when_its_minutes_pass() -> None:
    with keeping() as server:
        alice, bob, teacher = class_of(server)
        teacher.send("@mute Bob 0.01")  # 0.6 s
        alice.expect(r"^\* mute: Bob was muted")
        alice.expect(r"^\* unmute: Bob can talk again\.$")
        bob.send("back")
        alice.expect(r"^Bob: back$")


def test_hush_lets_only_keepers_talk() -> None:
    with keeping() as server:
        alice, bob, teacher = class_of(server)
        teacher.send("@hush")
        alice.expect(r"^\* hush: Only keepers can talk for now")
        bob.send("noise")
        bob.expect(r"^\* error: The grove is hushed")
        teacher.send("read page 12")
        alice.expect(r"^Teacher: read page 12$")
        late = LineClient(server.address, "Late")
        late.expect(r"^\* hush: Only keepers can talk for now\.$")  # a newcomer is told
        teacher.send("@unhush")
        alice.expect(r"^\* unhush: Everybody can talk again")
        bob.send("finally")
        alice.expect(r"^Bob: finally$")
        assert not any("noise" in line for line in alice.seen)


def test_slow_mode_allows_one_line_per_seconds_each_but_not_to_keepers() -> None:
    with keeping() as server:
        alice, bob, teacher = class_of(server)
        teacher.send("@slowmode 30")
        alice.expect(r"^\* slowmode: Teacher started slow mode: one line every 30 seconds")
        bob.send("first")
        bob.send("second")
        bob.expect(r"^\* error: Slow mode: wait (29|30) more seconds before your next line\.$")
        alice.expect(r"^Bob: first$")
        teacher.send("one")
        teacher.send("two")
        alice.expect(r"^Teacher: two$")
        teacher.send("@slowmode 0")
        alice.expect(r"^\* slowmode: Teacher ended slow mode\.$")
        bob.send("third")
        alice.expect(r"^Bob: third$")
        assert "Bob: second" not in alice.seen


def test_lock_keeps_newcomers_out_but_lets_resumes_back() -> None:
    with keeping(resume_window=60) as server:
        bob = LineClient(server.address, "Bob")
        code = re.match(r"^\* resume: (\S+)", bob.next_line() or "")
        assert code
        (alice,) = pandas(server, "Alice")
        teacher = keeper(server)
        teacher.send("@lock")
        alice.expect(r"^\* lock: Teacher locked the grove: no newcomers for now\.$")
        newcomer = LineClient(server.address)
        newcomer.expect(r"^\* name: ")
        newcomer.send("Carol")
        lines = newcomer.read_until_eof()
        assert lines[-1].startswith("* full: The grove is locked"), lines
        bob.abort()
        alice.expect(r"^\* lost: Bob ")
        back = LineClient(server.address)
        back.expect(r"^\* name: ")
        back.send(f"@resume {code.group(1)}")
        back.expect(r"^\* welcome: Welcome back to the grove, Bob!")
        teacher.send("@unlock")
        alice.expect(r"^\* unlock: Teacher unlocked the grove")
        LineClient(server.address, "Carol")


def test_announce_stands_out_for_everybody() -> None:
    with keeping() as server:
        (alice,) = pandas(server, "Alice")
        teacher = keeper(server)
        teacher.send("@announce Tests start in 5 minutes")
        for client in (alice, teacher):
            client.expect(r"^\* announce: Teacher: Tests start in 5 minutes$")


def test_keeper_actions_are_logged_with_who_did_them(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="panda-chat")
    with keeping() as server:
        _alice = pandas(server, "Alice")  # kept: a closed client would leave
        teacher = keeper(server)
        for command in ("@mute Alice 1", "@unmute Alice", "@lock", "@unlock", "@hush", "@unhush",
                        "@slowmode 2", "@announce hello", "@kick Alice"):
            teacher.send(command)
        sync(teacher)
    said = "\n".join(record.getMessage() for record in caplog.records)
    for expected in ("keeper Teacher", "mute Alice for 1 minutes by Teacher",
                     "unmute Alice by Teacher", "lock by Teacher", "unlock by Teacher",
                     "hush by Teacher", "unhush by Teacher", "slowmode 2 s by Teacher",
                     "announce by Teacher", "kick Alice (removed by Teacher)"):
        assert expected in said, said


# --- for everybody -------------------------------------------------------------------------


def test_me_sends_an_action_to_everybody_else() -> None:
    with running_server() as server:
        alice, bob = pandas(server, "Alice", "Bob")
        alice.send("@me waves at everybody")
        bob.expect(r"^\* action: Alice waves at everybody$")
        alice.send("@me")
        alice.expect(r"^\* error: To act, type: @me")


def test_nick_renames_under_the_name_rules_once_a_minute() -> None:
    with running_server() as server:
        alice, bob = pandas(server, "Alice", "Bob")
        alice.send("@nick Bob")
        alice.expect(r"^\* error: The name Bob is taken")
        alice.send("@nick Воb")  # mixed Cyrillic and Latin
        alice.expect(r"^\* error: A name cannot mix")
        alice.send("@nick Alicia")
        for client in (alice, bob):
            client.expect(r"^\* nick: Alice is now Alicia\.$")
        alice.send("hello")
        bob.expect(r"^Alicia: hello$")
        bob.send("@whisper Alicia hi")
        alice.expect(r"^\* whisper: Bob: hi$")
        alice.send("@nick Ally")
        alice.expect(r"^\* error: You can change your name once a minute; wait \d+ more")
        (carol,) = pandas(server, "Alice")  # the old name is free again
        carol.send("@grove")
        carol.expect(r"^\* grove: 3 pandas here: Alice Alicia Bob$")


def test_the_command_line_makes_a_keeper_code_or_takes_one() -> None:
    assert parse_args([]).keeper_code is None  # main() then makes a random one
    assert parse_args(["--keeper-code", "x"]).keeper_code == "x"
    assert parse_args(["--keeper-code", ""]).keeper_code == ""
