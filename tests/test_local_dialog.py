"""The local agent's rule-based dialog engine and scenario validation (rtvoice.agents.local.dialog)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtvoice.agents.local.dialog import (
    DialogEngine,
    ScenarioError,
    load_scenario,
    match_intent,
    parse_name,
    parse_scenario,
)
from rtvoice.agents.local.numbers import ClockTime, number_to_words


@pytest.fixture(scope="module")
def scenario():  # type: ignore[no-untyped-def]
    return load_scenario()


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("Hi, what are your opening hours?", "hours"),
        ("when do you close on sunday", "hours"),
        ("I would like to book a table for four at seven thirty", "booking"),
        ("can I make a reservation", "booking"),
        ("could I speak to the manager", "transfer"),
        ("Thank you, goodbye", "goodbye"),
        ("the weather is nice", None),
        ("", None),
    ],
)
def test_match_intent(scenario, text: str, intent: str | None) -> None:  # type: ignore[no-untyped-def]
    assert match_intent(scenario, text) == intent


@given(st.text(max_size=200))
def test_match_intent_never_crashes(text: str) -> None:
    match_intent(load_scenario(), text)


def test_full_booking_in_few_turns(scenario) -> None:  # type: ignore[no-untyped-def]
    e = DialogEngine(scenario)
    assert "Riverside Bistro" in e.greeting().text
    r = e.respond("I would like to book a table for four at seven thirty")
    assert r.asks == "slot:name"
    r = e.respond("My name is Alice")
    assert r.asks == "confirm"
    assert "4" in r.text and "7:30 pm" in r.text and "Alice" in r.text
    r = e.respond("Yes please")
    assert r.intent == "booking" and "booked" in r.text and r.asks == ""
    r = e.respond("Thank you, goodbye")
    assert r.action == "hang_up" and e.finished
    assert [t.role for t in e.history] == ["bot"] + ["caller", "bot"] * 4


def test_asks_for_each_missing_slot_and_takes_bare_answers(scenario) -> None:  # type: ignore[no-untyped-def]
    e = DialogEngine(scenario)
    e.greeting()
    assert e.respond("can I make a reservation").asks == "slot:party_size"
    assert e.respond("four").asks == "slot:time"
    assert e.respond("seven thirty").asks == "slot:name"
    assert e.respond("alice").asks == "confirm"
    assert e.slots == {"party_size": 4, "time": ClockTime(7, 30), "name": "Alice"}


@given(st.integers(min_value=1, max_value=12), st.sampled_from([0, 15, 30, 45]), st.integers(1, 20))
def test_any_spelling_of_the_time_books_the_same(h: int, m: int, n: int) -> None:
    spoken = number_to_words(h) + ("" if m == 0 else " " + number_to_words(m))
    texts = (f"book a table for {number_to_words(n)} at {spoken}", f"book a table for {n} at {h}:{m:02d}")
    for text in texts:
        e = DialogEngine(load_scenario())
        e.respond(text)
        assert e.slots.get("party_size") == n, text
        assert e.slots.get("time") == ClockTime(h, m), text


def test_no_then_change(scenario) -> None:  # type: ignore[no-untyped-def]
    e = DialogEngine(scenario)
    e.respond("a table for two at eight under the name Bob")
    assert e.respond("no").asks == "change"
    r = e.respond("make it nine")
    assert r.asks == "confirm" and "9 pm" in r.text
    r = e.respond("no, for three people")
    assert r.asks == "confirm" and "for 3" in r.text


def test_side_question_keeps_the_booking(scenario) -> None:  # type: ignore[no-untyped-def]
    e = DialogEngine(scenario)
    e.respond("I want to book a table")
    r = e.respond("what are your opening hours")
    assert r.intent == "hours" and r.asks == "slot:party_size" and "How many" in r.text


def test_goodbye_and_transfer_take_over(scenario) -> None:  # type: ignore[no-untyped-def]
    e = DialogEngine(scenario)
    e.respond("book a table")
    assert e.respond("actually put me through to a person").action == "transfer"
    e = DialogEngine(scenario)
    e.respond("book a table")
    assert e.respond("never mind, goodbye").action == "hang_up"


def test_fallback(scenario) -> None:  # type: ignore[no-untyped-def]
    r = DialogEngine(scenario).respond("purple elephants")
    assert r.intent is None and r.text.startswith("Sorry")


def test_barge_in_cuts_history_and_unasks_the_question(scenario) -> None:  # type: ignore[no-untyped-def]
    e = DialogEngine(scenario)
    e.respond("a table for two at eight")
    r = e.respond("under the name Bob")
    assert r.asks == "confirm"
    e.heard("So that is a table for 2")  # cut before "Shall I book it?"
    assert e.history[-1].text == "So that is a table for 2"
    r = e.respond("yes")
    assert r.asks == "confirm"  # the question was asked again, not taken as answered
    assert e.respond("yes").text.startswith("Done")


@pytest.mark.parametrize(
    ("text", "bare", "name"),
    [
        ("my name is alice", False, "Alice"),
        ("it's under smith please", False, "Smith"),
        ("this is Bob Jones", False, "Bob Jones"),
        ("alice", True, "Alice"),
        ("alice", False, None),
        ("yes please", True, None),
        ("I would like to book a table", True, None),
    ],
)
def test_parse_name(text: str, bare: bool, name: str | None) -> None:
    assert parse_name(text, bare=bare) == name


BASE = {
    "scenario": {"name": "x", "greeting": "hi", "fallback": "what?"},
    "intent": [{"name": "a", "keywords": ["a"], "reply": "ok"}],
}


def _with(**changes):  # type: ignore[no-untyped-def]
    import copy

    d = copy.deepcopy(BASE)
    for k, v in changes.items():
        d[k] = v
    return d


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"intent": BASE["intent"]}, "[scenario]"),
        (_with(scenario={"name": "x", "greeting": "", "fallback": "f"}), "scenario.greeting"),
        (_with(intent=[]), "[[intent]]"),
        (_with(intent=[{"name": "a", "reply": "ok"}]), "intent[0] (a): needs examples or keywords"),
        (_with(intent=[{"name": "a", "keywords": ["a"], "reply": "at {time}"}]), "placeholder(s) {time}"),
        (_with(intent=[{"name": "a", "keywords": ["a"], "reply": "x", "slots": ["time"]}]), "slot 'time'"),
        (_with(intent=[{"name": "a", "keywords": ["a"], "reply": "x", "action": "boom"}]), "(a).action"),
        (_with(intent=[{"name": "a", "keywords": ["a"], "reply": "x", "colour": 1}]), "unknown key(s)"),
        (_with(slots={"t": {"type": "colour", "prompt": "?"}}), "slots.t.type"),
        (_with(extra={}), "extra: unknown section"),
        (_with(intent=[{"name": "a", "keywords": "a", "reply": "x"}]), "intent[0] (a).keywords"),
    ],
)
def test_scenario_errors_point_at_the_problem(doc, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ScenarioError) as info:
        parse_scenario(doc, "my.toml")
    assert str(info.value).startswith("my.toml: ")
    assert message in str(info.value)


def test_load_scenario_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nname = "x"\ngreeting = \n')
    with pytest.raises(ScenarioError, match=r"bad.toml: not valid TOML: .*line 3"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")


def test_user_scenario_file(tmp_path: Path) -> None:
    p = tmp_path / "dentist.toml"
    p.write_text(
        '[scenario]\nname = "Dentist"\ngreeting = "Smile Dental, hello."\nfallback = "Pardon?"\n'
        '[slots.when]\ntype = "time"\nprompt = "What time suits you?"\n'
        '[[intent]]\nname = "appointment"\nkeywords = ["appointment"]\nslots = ["when"]\n'
        'reply = "See you at {when}."\n'
    )
    e = DialogEngine(load_scenario(p))
    assert e.greeting().text == "Smile Dental, hello."
    assert e.respond("I need an appointment").text == "What time suits you?"
    assert e.respond("half past three").text == "See you at 3:30 pm."
