"""The Waker (server3.py, where there is epoll): at most RUNNING_READERS reader threads run at
once, and a panda in the grove with something to say goes before everybody else.

Real sockets (socket pairs) and real threads; no server. Not part of the portable run
(tests/test_portable.py): without epoll there is no Waker, each reader waits on its own socket.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from chat_helpers import WAIT_S

from server3 import CAN_EPOLL, RUNNING_READERS, STALE_TIMERS_KEPT, Sleeper, Waker

pytestmark = pytest.mark.skipif(not CAN_EPOLL, reason="the Waker needs epoll (Linux)")


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_a_few_readers_run_at_once_and_a_panda_in_the_grove_goes_first() -> None:
    waker = Waker()
    waker.start()
    pairs = [socket.socketpair() for _ in range(3 * RUNNING_READERS + 1)]
    running, most, order = 0, 0, []
    count = threading.Lock()

    def reader(index: int, theirs: socket.socket) -> None:
        nonlocal running, most
        sleeper = Sleeper()
        waker.wait(sleeper, theirs.fileno(), WAIT_S, urgent=index == 0)
        with count:
            running += 1
            most = max(most, running)
            order.append(index)
        time.sleep(0.01)  # a reader's work, while it holds its turn
        with count:
            running -= 1
        waker.done(sleeper, theirs.fileno())

    threads = [threading.Thread(target=reader, args=(index, theirs), daemon=True)
               for index, (_, theirs) in enumerate(pairs)]
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: waker.waiting() == len(pairs) - 1, "the unnamed readers wait")
    for ours, _ in pairs[1:]:
        ours.send(b"x")  # everybody's data at once...
    threads[0].start()  # ...then a panda in the grove's, last
    wait_until(lambda: waker.waiting() >= 1 and 0 not in order and any(order),
               "the panda waits while the others are being worked through")
    pairs[0][0].send(b"hello")
    for thread in threads:
        thread.join(WAIT_S)
    assert sorted(order) == list(range(len(pairs)))
    assert most <= RUNNING_READERS
    assert order.index(0) <= 2 * RUNNING_READERS, order  # not behind all 3 x 8 others
    for ours, theirs in pairs:
        ours.close()
        theirs.close()


def test_a_timer_wakes_a_reader_without_data() -> None:
    waker = Waker()
    waker.start()
    ours, theirs = socket.socketpair()
    start = time.monotonic()
    assert waker.wait(Sleeper(), theirs.fileno(), 0.05) is False  # no data: the timer woke it
    assert time.monotonic() - start >= 0.05
    ours.send(b"x")
    assert waker.wait(Sleeper(), theirs.fileno(), WAIT_S) is True
    ours.close()
    theirs.close()


def test_timers_of_waits_that_ended_early_do_not_pile_up() -> None:
    """Every connection's name wait has a 60 s timer, and data ends the wait long
    before: those timers are swept out, not kept for their minute."""
    waker = Waker()
    waker.start()
    ours, theirs = socket.socketpair()
    ours.send(b"x")  # readable throughout: every wait ends at once, by the socket
    sleeper = Sleeper()
    waits = 4 * STALE_TIMERS_KEPT
    for _ in range(waits):
        assert waker.wait(sleeper, theirs.fileno(), 60.0) is True
    kept = len(waker._timers)
    assert kept <= STALE_TIMERS_KEPT + 1, f"{kept} timers kept after {waits} waits"
    assert waker.wait(Sleeper(), None, 0.05) is False  # and a live timer still runs out
    waker.done(sleeper, theirs.fileno())
    ours.close()
    theirs.close()
