"""ASCII-art pandas for Panda Chat: the welcome banner and a small goodbye panda.

Data with one tiny accessor. The server sends each line of `banner_lines()` to a
new client as "* art: <line>"; the Tk client shows system lines in a monospace
font, and `nc` users see them in their terminal, so the art is pure ASCII, at
most 8 lines of at most 40 columns, with no tabs and no trailing spaces.

    >>> from ascii_art import banner_lines
    >>> for line in banner_lines():
    ...     print("* art:", line)

Nothing to run or stop: `python3 ascii_art.py` only prints the art to look at.
"""

from __future__ import annotations

from typing import Final

# Raw strings, so a backslash is a backslash. The leading and trailing newline
# only make the source readable; they are stripped, not part of the art.
PANDA: Final[str] = r"""
   .--.             .--.
  (    `-._______.-'    )
  `-./   _       _   \.-'
     |  (@)     (@)  |
     |       ^       |
      \    `---'    /
       `-._______.-'
""".strip("\n")

GOODBYE_PANDA: Final[str] = r"""
 .-.   .-.
(  (@ @)  )  bye!
 `-\ v /-'
    `-'
""".strip("\n")


def banner_lines() -> list[str]:
    """Return PANDA's lines, without newlines, in order from top to bottom."""
    return PANDA.splitlines()


def goodbye_lines() -> list[str]:
    """Return GOODBYE_PANDA's lines, without newlines."""
    return GOODBYE_PANDA.splitlines()


if __name__ == "__main__":
    print(PANDA)
    print()
    print(GOODBYE_PANDA)
