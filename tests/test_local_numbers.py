"""Number, time and party-size normalisation of the local agent (rtvoice.agents.local.numbers)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtvoice.agents.local.numbers import (
    ClockTime,
    normalize_numbers,
    number_to_words,
    parse_party_size,
    parse_time,
    words_to_number,
)


@given(st.integers(min_value=0, max_value=999_999_999))
def test_words_round_trip(n: int) -> None:
    assert words_to_number(number_to_words(n).split()) == n


@given(st.integers(min_value=0, max_value=999_999))
def test_normalize_turns_spelled_number_into_one_int(n: int) -> None:
    assert normalize_numbers(f"about {number_to_words(n)} things") == ["about", n, "things"]


@pytest.mark.parametrize(
    "words", [["seven", "thirty"], ["four", "four"], ["thirty", "twelve"], ["and", "one"], ["hundred"]]
)
def test_invalid_cardinals(words: list[str]) -> None:
    assert words_to_number(words) is None


def _spoken_minute(m: int) -> str:
    return f"oh {number_to_words(m)}" if 0 < m < 10 else number_to_words(m)


@given(st.integers(min_value=1, max_value=12), st.integers(min_value=1, max_value=59))
def test_time_spellings_agree(h: int, m: int) -> None:
    expected = ClockTime(h, m)
    assert parse_time(f"at {number_to_words(h)} {_spoken_minute(m)}") == expected
    assert parse_time(f"at {h}:{m:02d}") == expected
    assert parse_time(f"at {h}{m:02d}") == expected


@given(st.integers(min_value=1, max_value=12), st.sampled_from(["pm", "p m", "in the evening", "tonight"]))
def test_pm_times_resolve(h: int, pm: str) -> None:
    t = parse_time(f"{number_to_words(h)} {pm}")
    assert t is not None and t.meridiem == "pm" and t.minute == 0
    assert t.resolved(assume_pm=False).hour == (12 if h == 12 else h + 12)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("seven thirty", ClockTime(7, 30)),
        ("730", ClockTime(7, 30)),
        ("7:30", ClockTime(7, 30)),
        ("half past seven", ClockTime(7, 30)),
        ("quarter to eight", ClockTime(7, 45)),
        ("quarter past six", ClockTime(6, 15)),
        ("eight o'clock", ClockTime(8, 0)),
        ("at noon", ClockTime(12, 0, "pm")),
        ("a table for four at seven", ClockTime(7, 0)),
        ("make it eight", ClockTime(8, 0)),
        ("for four people", None),
        ("hello there", None),
    ],
)
def test_parse_time(text: str, expected: ClockTime | None) -> None:
    assert parse_time(text) == expected


def test_bare_time_only_when_asked() -> None:
    assert parse_time("seven") is None
    assert parse_time("seven", bare=True) == ClockTime(7, 0)


def test_resolved_and_spoken() -> None:
    assert ClockTime(7, 30).resolved(assume_pm=True).spoken() == "7:30 pm"
    assert ClockTime(7, 30, "am").resolved(assume_pm=True).spoken() == "7:30 am"
    assert ClockTime(12, 0, "pm").resolved(assume_pm=True).spoken() == "noon"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a party of four", 4),
        ("party of 4", 4),
        ("a table for four at seven thirty", 4),
        ("four people", 4),
        ("there will be six of us", 6),
        ("table for 2 please", 2),
        ("just me", 1),
        ("a table for seven thirty", None),
        ("at eight pm", None),
        ("my name is alice", None),
    ],
)
def test_parse_party_size(text: str, expected: int | None) -> None:
    assert parse_party_size(text) == expected


@given(st.integers(min_value=1, max_value=20))
def test_party_of_n_equals_n(n: int) -> None:
    assert parse_party_size(f"party of {number_to_words(n)}") == n == parse_party_size(f"party of {n}")
    assert parse_party_size(number_to_words(n), bare=True) == n


def test_party_size_limit() -> None:
    assert parse_party_size("party of 500", max_size=20) is None
