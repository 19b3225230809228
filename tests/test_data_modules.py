"""Tests for the data modules: panda_facts.py (@bamboo) and ascii_art.py (the banner).

Both are sent over the wire one protocol line at a time, so these tests hold them to
what a line may be: one line, printable, short enough; the art also pure ASCII and
small enough for the chat window's monospace font.
"""

from __future__ import annotations

import random
import unicodedata

import pytest

import ascii_art
from ascii_art import GOODBYE_PANDA, PANDA, banner_lines
from panda_facts import FACTS, random_fact

MAX_FACT_CHARS = 200  # a fact is one or two sentences in one chat line
MAX_ART_LINES = 8  # the banner must not push the welcome text off a small window
MAX_ART_COLUMNS = 40  # fits the chat pane at its default width


def has_control_characters(text: str) -> bool:
    return any(unicodedata.category(ch).startswith("C") for ch in text)


# --- panda_facts -----------------------------------------------------------------------


def test_facts_has_at_least_30_distinct_entries() -> None:
    assert isinstance(FACTS, tuple)
    assert len(set(FACTS)) >= 30
    assert len(set(FACTS)) == len(FACTS), "a fact is listed twice"


@pytest.mark.parametrize("fact", FACTS)
def test_each_fact_is_one_short_clean_line(fact: str) -> None:
    assert isinstance(fact, str)
    assert fact.strip(), "empty fact"
    assert fact == fact.strip(), "leading or trailing whitespace"
    assert "\n" not in fact and "\r" not in fact
    assert len(fact) < MAX_FACT_CHARS
    assert not has_control_characters(fact), repr(fact)


def test_random_fact_with_seeded_rng_returns_a_member() -> None:
    assert random_fact(random.Random(1)) in FACTS


def test_random_fact_is_repeatable_with_the_same_seed() -> None:
    rng_a, rng_b = random.Random(42), random.Random(42)
    assert [random_fact(rng_a) for _ in range(20)] == [random_fact(rng_b) for _ in range(20)]


def test_random_fact_covers_many_facts_over_many_draws() -> None:
    rng = random.Random(2024)
    seen = {random_fact(rng) for _ in range(2000)}
    assert seen <= set(FACTS)
    # 2000 uniform draws from >= 30 facts miss a given fact with probability < 1e-28.
    assert seen == set(FACTS)


def test_random_fact_without_rng_uses_the_random_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(random, "choice", lambda seq: seq[-1])
    assert random_fact() == FACTS[-1]


# --- ascii_art -------------------------------------------------------------------------


def test_banner_lines_are_panda_lines_without_newlines() -> None:
    lines = banner_lines()
    assert lines == PANDA.splitlines()
    assert lines, "the banner is empty"
    assert all("\n" not in line and "\r" not in line for line in lines)
    assert lines[0].strip() and lines[-1].strip(), "blank first or last line"


def test_banner_lines_returns_a_fresh_list() -> None:
    banner_lines().append("scribble")
    assert "scribble" not in banner_lines()


@pytest.mark.parametrize("name", ["PANDA", "GOODBYE_PANDA"])
def test_art_fits_the_chat_window(name: str) -> None:
    art: str = getattr(ascii_art, name)
    lines = art.splitlines()
    assert art.isascii()
    assert "\t" not in art
    assert len(lines) <= MAX_ART_LINES
    for line in lines:
        assert len(line) <= MAX_ART_COLUMNS, repr(line)
        assert line == line.rstrip(), f"trailing whitespace in {line!r}"
        assert all(ch.isprintable() for ch in line), repr(line)


def test_goodbye_panda_is_smaller_than_the_banner() -> None:
    assert len(GOODBYE_PANDA.splitlines()) < len(PANDA.splitlines())
