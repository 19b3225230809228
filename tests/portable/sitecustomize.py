"""Make this Python look like Windows to server3.py: the POSIX-only names it could use are gone.

Put on the path (PYTHONPATH=tests/portable) for a run of the server's tests; Python imports this
module at start-up, before any test or server code, so that server3.py, selectors and everything
else see a `select` without poll/epoll, a `socket` without MSG_DONTWAIT and no `resource` module.
tests/test_portable.py runs the whole server test suite that way.
"""

from __future__ import annotations

import importlib
import select
import socket
import sys

for _name in ("poll", "epoll", "devpoll", "kqueue"):  # selectors then picks SelectSelector
    if hasattr(select, _name):
        delattr(select, _name)
if hasattr(socket, "MSG_DONTWAIT"):
    del socket.MSG_DONTWAIT
sys.modules["resource"] = None  # type: ignore[assignment]  # import resource: ImportError

# A .pth file may have imported selectors already (some site-packages do): choose again.
if "selectors" in sys.modules:
    _selectors = importlib.reload(sys.modules["selectors"])
    for _name in ("PollSelector", "EpollSelector", "DevpollSelector", "KqueueSelector"):
        if hasattr(_selectors, _name):
            delattr(_selectors, _name)
