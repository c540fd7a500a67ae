"""The local agent's brain: a rule-based dialog engine driven by a scenario file. Sans-I/O, no audio.

A scenario (TOML) lists intents (example phrases and keywords), the slots an intent needs (a name, a time,
a party size, a date), the prompts that ask for a missing slot, a confirmation, and replies with ``{placeholders}``.
:class:`DialogEngine` is fed what the caller said (text) and returns the :class:`Reply` to speak; it keeps the
conversation history, and :meth:`DialogEngine.heard` cuts the last bot turn down to what the caller heard when
they barged in (an unheard question is not treated as asked).

The default scenario, ``scenarios/receptionist.toml``, is a restaurant front desk: greeting, opening hours,
bookings with name/time/party size (asks for what is missing, confirms), transfer to a person, goodbye.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from rtvoice.agents.local.numbers import ClockTime, parse_party_size, parse_time, tokenize

SLOT_TYPES = ("name", "time", "party_size", "date", "text")
ACTIONS = ("none", "hang_up", "transfer")
_STOPWORDS = frozenset(
    [
        "a", "an", "the", "i", "i'd", "i'm", "me", "my", "we", "we'd", "our", "you", "your", "to",
        "for", "of", "at", "on", "in", "is", "it", "it's", "be", "would", "like", "please", "can",
        "could", "do", "does", "and", "or", "so", "um", "uh", "hi", "hello", "hey", "just", "want",
        "need", "some"
    ]
)
_INTENT_KEYS = frozenset({"name", "examples", "keywords", "reply", "slots", "confirm", "declined", "action"})
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NOT_NAMES = frozenset(
    [
        "yes", "no", "yeah", "yep", "nope", "okay", "ok", "sure", "thanks", "thank", "calling",
        "looking", "hoping", "trying", "booking", "here", "speaking", "it", "not", "a", "the", "for",
        "to", "just"
    ]
)


class ScenarioError(ValueError):
    """A scenario file is invalid. The message names the file and the offending entry."""


@dataclass(frozen=True, slots=True)
class Slot:
    """A piece of information an intent collects."""

    name: str
    type: str
    prompt: str


@dataclass(frozen=True, slots=True)
class Intent:
    """Something a caller may want, with how to recognise it and what to answer."""

    name: str
    examples: tuple[str, ...]
    keywords: tuple[str, ...]
    reply: str
    slots: tuple[str, ...] = ()
    confirm: str = ""
    declined: str = ""
    action: str = "none"


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated scenario."""

    name: str
    greeting: str
    fallback: str
    intents: tuple[Intent, ...]
    slots: Mapping[str, Slot]
    vars: Mapping[str, str]
    yes_words: frozenset[str]
    no_words: frozenset[str]
    assume_pm: bool = True
    max_party_size: int = 20
    vocabulary: tuple[str, ...] = ()
    source: str = "<scenario>"

    def intent(self, name: str) -> Intent:
        for it in self.intents:
            if it.name == name:
                return it
        raise KeyError(name)

    def corpus(self) -> list[str]:
        """Sentences a caller is likely to say: the base of the recogniser's domain language model."""
        lines: list[str] = []
        for it in self.intents:
            lines.extend(it.examples)
            lines.extend(it.keywords)
        lines.extend(sorted(self.yes_words | self.no_words))
        lines.extend(self.vocabulary)
        return lines


def _err(source: str, where: str, msg: str) -> ScenarioError:
    return ScenarioError(f"{source}: {where}: {msg}")


def _placeholders(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def _str(source: str, where: str, table: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise _err(source, f"{where}.{key}", f"expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise _err(source, f"{where}.{key}", "missing or empty (a non-empty string is required)")
    return value.strip()


def _str_list(source: str, where: str, table: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _err(source, f"{where}.{key}", "expected a list of non-empty strings")
    return tuple(v.strip() for v in value)


def parse_scenario(data: Mapping[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate a decoded scenario document; raise :class:`ScenarioError` pointing at the problem."""
    known_top = {"scenario", "vars", "slots", "intent", "confirm", "vocabulary"}
    for key in data:
        if key not in known_top:
            raise _err(source, key, f"unknown section (expected one of {', '.join(sorted(known_top))})")
    head = data.get("scenario")
    if not isinstance(head, dict):
        raise _err(source, "[scenario]", "missing table with name, greeting and fallback")
    name = _str(source, "scenario", head, "name")
    greeting = _str(source, "scenario", head, "greeting")
    fallback = _str(source, "scenario", head, "fallback")
    assume_pm = head.get("assume_pm", True)
    if not isinstance(assume_pm, bool):
        raise _err(source, "scenario.assume_pm", "expected true or false")
    max_party = head.get("max_party_size", 20)
    if not isinstance(max_party, int) or isinstance(max_party, bool) or not 1 <= max_party <= 1000:
        raise _err(source, "scenario.max_party_size", "expected a whole number from 1 to 1000")

    raw_vars = data.get("vars", {})
    if not isinstance(raw_vars, dict) or not all(isinstance(v, str) for v in raw_vars.values()):
        raise _err(source, "[vars]", "expected a table of strings")
    variables = dict(raw_vars)

    raw_slots = data.get("slots", {})
    if not isinstance(raw_slots, dict):
        raise _err(source, "[slots]", "expected a table of slot tables")
    slots: dict[str, Slot] = {}
    for sname, sdef in raw_slots.items():
        where = f"slots.{sname}"
        if not isinstance(sdef, dict):
            raise _err(source, where, "expected a table with type and prompt")
        stype = _str(source, where, sdef, "type")
        if stype not in SLOT_TYPES:
            expected = ", ".join(SLOT_TYPES)
            raise _err(source, f"{where}.type", f"unknown slot type {stype!r} (expected one of {expected})")
        slots[sname] = Slot(sname, stype, _str(source, where, sdef, "prompt"))

    raw_intents = data.get("intent")
    if not isinstance(raw_intents, list) or not raw_intents:
        raise _err(source, "[[intent]]", "at least one intent is required")
    intents: list[Intent] = []
    seen: set[str] = set()
    for i, idef in enumerate(raw_intents):
        where = f"intent[{i}]"
        if not isinstance(idef, dict):
            raise _err(source, where, "expected a table")
        iname = _str(source, where, idef, "name")
        where = f"intent[{i}] ({iname})"
        if iname in seen:
            raise _err(source, where, "duplicate intent name")
        seen.add(iname)
        unknown = set(idef) - _INTENT_KEYS
        if unknown:
            raise _err(source, where, f"unknown key(s): {', '.join(sorted(unknown))}")
        examples = _str_list(source, where, idef, "examples")
        keywords = _str_list(source, where, idef, "keywords")
        if not examples and not keywords:
            raise _err(source, where, "needs examples or keywords to be recognised")
        islots = _str_list(source, where, idef, "slots")
        for s in islots:
            if s not in slots:
                raise _err(source, f"{where}.slots", f"slot {s!r} is not defined in [slots]")
        action = idef.get("action", "none")
        if action not in ACTIONS:
            raise _err(source, f"{where}.action", f"expected one of {', '.join(ACTIONS)}, got {action!r}")
        intent = Intent(
            name=iname,
            examples=examples,
            keywords=keywords,
            reply=_str(source, where, idef, "reply"),
            slots=islots,
            confirm=_str(source, where, idef, "confirm", required=False),
            declined=_str(source, where, idef, "declined", required=False),
            action=action,
        )
        allowed = set(variables) | set(islots)
        for key in ("reply", "confirm", "declined"):
            template = getattr(intent, key)
            try:
                names = _placeholders(template)
            except ValueError as exc:
                raise _err(source, f"{where}.{key}", f"bad template: {exc}") from None
            bad = names - allowed
            if bad:
                raise _err(
                    source,
                    f"{where}.{key}",
                    f"unknown placeholder(s) {', '.join('{' + b + '}' for b in sorted(bad))} "
                    f"(known: {', '.join(sorted(allowed)) or 'none'})",
                )
        intents.append(intent)
    for key in ("greeting", "fallback"):
        bad = _placeholders(head[key]) - set(variables)
        if bad:
            raise _err(source, f"scenario.{key}", f"unknown placeholder(s) {', '.join(sorted(bad))}")

    conf = data.get("confirm", {})
    if not isinstance(conf, dict):
        raise _err(source, "[confirm]", "expected a table with yes and no word lists")
    yes = frozenset(w.lower() for w in _str_list(source, "confirm", conf, "yes")) or frozenset(
        {"yes", "yeah", "yep", "sure", "correct", "right", "okay", "ok", "great", "perfect", "please"}
    )
    no = frozenset(w.lower() for w in _str_list(source, "confirm", conf, "no")) or frozenset(
        {"no", "nope", "wrong", "not", "cancel"}
    )
    vocab = data.get("vocabulary", {})
    if not isinstance(vocab, dict):
        raise _err(source, "[vocabulary]", "expected a table with a phrases list")
    return Scenario(
        name=name,
        greeting=greeting,
        fallback=fallback,
        intents=tuple(intents),
        slots=slots,
        vars=variables,
        yes_words=yes,
        no_words=no,
        assume_pm=assume_pm,
        max_party_size=max_party,
        vocabulary=_str_list(source, "vocabulary", vocab, "phrases"),
        source=source,
    )


def load_scenario(path: str | Path | None = None) -> Scenario:
    """Load and validate a scenario file; ``None`` or ``""`` loads the bundled receptionist."""
    if not path:
        ref = resources.files("rtvoice.agents.local") / "scenarios" / "receptionist.toml"
        text = ref.read_text(encoding="utf-8")
        source = "receptionist.toml (bundled)"
    else:
        p = Path(path)
        source = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ScenarioError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    return parse_scenario(data, source)


# --- understanding ----------------------------------------------------------------------------------------


def _content(tokens: list[str]) -> set[str]:
    return {t for t in tokens if t not in _STOPWORDS}


def _contains_phrase(tokens: list[str], phrase: str) -> bool:
    p = tokenize(phrase)
    if not p:
        return False
    n = len(p)
    return any(tokens[i : i + n] == p for i in range(len(tokens) - n + 1))


def intent_scores(scenario: Scenario, text: str) -> dict[str, float]:
    """How well ``text`` matches each intent: 1 per keyword phrase found (capped at 2) plus the best
    content-word overlap (F1) with an example phrase."""
    toks = tokenize(text)
    content = _content(toks)
    scores: dict[str, float] = {}
    for it in scenario.intents:
        kw = min(2, sum(1 for k in it.keywords if _contains_phrase(toks, k)))
        best = 0.0
        for ex in it.examples:
            ex_content = _content(tokenize(ex))
            if not ex_content or not content:
                continue
            common = len(content & ex_content)
            if common:
                precision = common / len(content)
                recall = common / len(ex_content)
                best = max(best, 2 * precision * recall / (precision + recall))
        scores[it.name] = kw + best
    return scores


#: The least score that counts as recognising an intent (one keyword, or a close example).
MATCH_THRESHOLD = 0.6


def match_intent(scenario: Scenario, text: str) -> str | None:
    """The best-matching intent name, or None when nothing matches well enough."""
    scores = intent_scores(scenario, text)
    if not scores:
        return None
    name, score = max(scores.items(), key=lambda kv: kv[1])
    return name if score >= MATCH_THRESHOLD else None


_NAME_CUES = (
    ("my", "name", "is"),
    ("my", "name", "s"),
    ("name", "is"),
    ("name", "s"),
    ("this", "is"),
    ("under", "the", "name"),
    ("under", "the", "name", "of"),
    ("under",),
    ("call", "me"),
    ("i", "am"),
    ("i'm",),
    ("it's",),
    ("it", "is"),
)


def parse_name(text: str, *, bare: bool = False) -> str | None:
    """A caller's name: "my name is Alice", "under Smith", "this is Bob Jones"; a short answer when asked."""
    toks = [t for t in tokenize(text.replace("name's", "name s")) if not t.isdigit()]
    for cue in sorted(_NAME_CUES, key=len, reverse=True):
        n = len(cue)
        for i in range(len(toks) - n + 1):
            if tuple(toks[i : i + n]) == cue:
                rest = toks[i + n :]
                if rest and rest[0] == "of":
                    rest = rest[1:]
                words = []
                for w in rest[:2]:
                    if w in _NOT_NAMES or w in _STOPWORDS or w in ("please", "thanks"):
                        break
                    words.append(w)
                if words:
                    return " ".join(w.capitalize() for w in words)
    if bare:
        words = [t for t in toks if t not in _STOPWORDS and t not in _NOT_NAMES]
        if 1 <= len(words) <= 2 and len(toks) <= 4:
            return " ".join(w.capitalize() for w in words)
    return None


def parse_date(text: str) -> str | None:
    """A booking day: "today"/"tonight", "tomorrow", or a weekday name (kept as words)."""
    toks = tokenize(text)
    for t in toks:
        if t in ("today", "tonight"):
            return "today"
        if t == "tomorrow":
            return "tomorrow"
        if t in _WEEKDAYS:
            return t.capitalize()
    return None


# --- the engine -------------------------------------------------------------------------------------------


Action = Literal["none", "hang_up", "transfer"]


@dataclass(frozen=True, slots=True)
class Reply:
    """What the bot says next, and what should happen after it is spoken."""

    text: str
    intent: str | None = None
    action: str = "none"
    #: "slot:<name>", "confirm" or "" — what the reply asks the caller for.
    asks: str = ""


@dataclass(slots=True)
class Turn:
    role: Literal["caller", "bot"]
    text: str


@dataclass(slots=True)
class _State:
    intent: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    asks: str = ""  # what the last bot reply asked (as heard)
    done: bool = False


class DialogEngine:
    """One conversation. Feed caller text to :meth:`respond`; call :meth:`heard` after a barge-in."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.history: list[Turn] = []
        self._state = _State()

    # The slot values in the form templates use.
    def _format(self, template: str) -> str:
        values: dict[str, str] = dict(self.scenario.vars)
        for k, v in self._state.values.items():
            if isinstance(v, ClockTime):
                values[k] = v.resolved(self.scenario.assume_pm).spoken()
            else:
                values[k] = str(v)
        return template.format(**values)

    def _say(self, reply: Reply) -> Reply:
        self.history.append(Turn("bot", reply.text))
        self._state.asks = reply.asks
        return reply

    @property
    def slots(self) -> dict[str, Any]:
        """Slot values collected so far for the intent in progress."""
        return dict(self._state.values)

    @property
    def finished(self) -> bool:
        """The conversation ended (a hang-up reply was given)."""
        return self._state.done

    def greeting(self) -> Reply:
        """The first thing the bot says."""
        return self._say(Reply(self._format(self.scenario.greeting), asks=""))

    def heard(self, heard_text: str) -> None:
        """The caller barged in: the last bot turn is only what they heard.

        If the question at the end of that turn was cut off, it was never asked: the engine will not take a
        following "yes" as an answer to it.
        """
        for turn in reversed(self.history):
            if turn.role == "bot":
                full = turn.text
                turn.text = heard_text
                if heard_text.strip() != full.strip():
                    self._state.asks = ""
                break

    def _extract(self, slot: Slot, text: str, bare: bool) -> Any:
        if slot.type == "time":
            return parse_time(text, bare=bare)
        if slot.type == "party_size":
            return parse_party_size(text, bare=bare, max_size=self.scenario.max_party_size)
        if slot.type == "name":
            return parse_name(text, bare=bare)
        if slot.type == "date":
            return parse_date(text)
        if slot.type == "text":
            return text.strip() if bare and text.strip() else None
        raise AssertionError(slot.type)

    def _fill(self, intent: Intent, text: str) -> None:
        pending = self._state.asks[5:] if self._state.asks.startswith("slot:") else ""
        for sname in intent.slots:
            slot = self.scenario.slots[sname]
            value = self._extract(slot, text, bare=(sname == pending))
            if value is not None:
                self._state.values[sname] = value

    def _next_step(self, intent: Intent) -> Reply:
        for sname in intent.slots:
            if sname not in self._state.values:
                prompt = self._format(self.scenario.slots[sname].prompt)
                return Reply(prompt, intent.name, asks=f"slot:{sname}")
        if intent.confirm:
            return Reply(self._format(intent.confirm), intent.name, asks="confirm")
        return self._complete(intent)

    def _complete(self, intent: Intent) -> Reply:
        reply = Reply(self._format(intent.reply), intent.name, action=intent.action)
        self._state.intent = None
        self._state.values = {}
        if intent.action == "hang_up":
            self._state.done = True
        return reply

    def _yes_no(self, text: str) -> bool | None:
        toks = tokenize(text)
        if any(t in self.scenario.no_words for t in toks):
            return False
        if any(t in self.scenario.yes_words for t in toks):
            return True
        return None

    def respond(self, text: str) -> Reply:
        """The bot's answer to what the caller said."""
        self.history.append(Turn("caller", text))
        st = self._state
        active = self.scenario.intent(st.intent) if st.intent else None
        scores = intent_scores(self.scenario, text)
        best = max(scores.items(), key=lambda kv: kv[1]) if scores else ("", 0.0)
        other = best[0] if best[1] >= MATCH_THRESHOLD and (active is None or best[0] != active.name) else None

        if active is not None:
            if st.asks == "confirm":
                answer = self._yes_no(text)
                before = dict(st.values)
                self._fill(active, text)
                changed = st.values != before
                if answer is True and not changed:
                    return self._say(self._complete(active))
                if changed:
                    return self._say(self._next_step(active))
                if answer is False:
                    reply = Reply(
                        self._format(active.declined or "No problem. What would you like to change?"),
                        active.name,
                        asks="change",
                    )
                    return self._say(reply)
            # An unrelated request (hours, goodbye, transfer) takes over; a side question keeps the booking.
            if other is not None and self.scenario.intent(other).action != "none":
                st.intent = None
                st.values = {}
                return self._begin(self.scenario.intent(other), text)
            before = dict(st.values)
            self._fill(active, text)
            if st.values != before or other is None:
                return self._say(self._next_step(active))  # progress, or nothing usable: ask again
            side = self.scenario.intent(other)
            if not side.slots:
                # A side question ("when do you close?") is answered, then the booking carries on.
                step = self._next_step(active)
                return self._say(Reply(f"{self._format(side.reply)} {step.text}", other, asks=step.asks))
            st.intent = None
            st.values = {}
            return self._begin(side, text)

        if best[1] >= MATCH_THRESHOLD:
            return self._begin(self.scenario.intent(best[0]), text)
        return self._say(Reply(self._format(self.scenario.fallback), None))

    def _begin(self, intent: Intent, text: str) -> Reply:
        st = self._state
        if not intent.slots:
            return self._say(self._complete(intent))
        st.intent = intent.name
        st.values = {}
        st.asks = ""
        self._fill(intent, text)
        return self._say(self._next_step(intent))
