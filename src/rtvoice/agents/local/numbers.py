"""Numbers, times and party sizes in what callers say (or what a recogniser wrote down).

Callers say "seven thirty", a recogniser may write "730" or "7:30", a typed test says "half past seven": all
of them are :class:`ClockTime(7, 30)`. "a party of four", "for 4 people" and "four of us" are a party size of 4.
Pure functions on text, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {
    "zero": 0, "oh": 0, "o": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90,
}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
    "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19, "twentieth": 20,
    "thirtieth": 30,
}  # fmt: skip
_WORDS_FOR_NUMBERS = {"a couple": 2, "couple": 2, "a dozen": 12, "dozen": 12, "single": 1}

_TOKEN = re.compile(r"\d{1,2}:\d{2}|\d+(?:st|nd|rd|th)?|[a-z]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; digits, ``7:30`` and ``21st`` stay whole; punctuation goes."""
    return _TOKEN.findall(text.lower().replace("o'clock", "oclock").replace("-", " "))


def _is_number_word(tok: str) -> bool:
    return tok in _UNITS or tok in _TENS or tok in _SCALES or tok == "and"


def words_to_number(words: list[str]) -> int | None:
    """The cardinal that ``words`` spell ("two hundred and five" -> 205), or None if not one number."""
    if not words or words[0] in _SCALES or words[0] == "and" or words[-1] == "and":
        return None
    total = 0
    current = 0
    last: str | None = None  # "unit", "teen", "tens", "scale"
    for w in words:
        if w == "and":
            if last != "scale":
                return None
            continue
        if w in _UNITS and w not in ("oh", "o"):
            v = _UNITS[w]
            kind = "unit" if v < 10 else "teen"
            # a unit may follow tens ("thirty five") or a scale, never another unit or teen
            if last in ("unit", "teen") or (last == "tens" and kind == "teen"):
                return None
            current += v
            last = kind
        elif w in _TENS:
            if last in ("unit", "teen", "tens"):
                return None
            current += _TENS[w]
            last = "tens"
        elif w in _SCALES:
            if last in (None, "scale") and current == 0:
                return None
            scale = _SCALES[w]
            if scale == 100:
                if current >= 100 or current == 0:
                    return None
                current *= 100
            else:
                total += current * scale
                current = 0
            last = "scale"
        else:
            return None
    return total + current


def number_to_words(n: int) -> str:
    """English words for 0 <= n < 10**9 (the inverse of :func:`words_to_number`)."""
    if n < 0 or n >= 10**9:
        raise ValueError(f"number out of range: {n}")
    units = {v: k for k, v in _UNITS.items() if k not in ("oh", "o")}
    tens = {v: k for k, v in _TENS.items()}
    if n < 20:
        return units[n]
    if n < 100:
        return tens[n - n % 10] + ("" if n % 10 == 0 else " " + units[n % 10])
    if n < 1000:
        rest = n % 100
        return units[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_to_words(rest))
    for scale_word, scale in (("million", 1_000_000), ("thousand", 1000)):
        if n >= scale:
            rest = n % scale
            head = number_to_words(n // scale) + " " + scale_word
            if rest == 0:
                return head
            return head + (" and " if rest < 100 else " ") + number_to_words(rest)
    raise AssertionError("unreachable")


def normalize_numbers(text: str) -> list[str | int]:
    """Tokens with every run of number words (and digit strings) replaced by ints.

    Runs are split greedily where English would split them: "seven thirty" is 7 then 30 (not a cardinal),
    "thirty seven" is 37, "four at seven" is 4, "at", 7. ``7:30`` stays a string for the time parser.
    """
    toks = tokenize(text)
    out: list[str | int] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.isdigit():
            out.append(int(t))
            i += 1
            continue
        m = re.fullmatch(r"(\d+)(st|nd|rd|th)", t)
        if m:
            out.append(int(m.group(1)))
            i += 1
            continue
        if t in _ORDINALS:
            out.append(_ORDINALS[t])
            i += 1
            continue
        if _is_number_word(t) and t != "and":
            # longest prefix of the run that is a valid cardinal
            j = i
            while j < len(toks) and _is_number_word(toks[j]):
                j += 1
            best_end = None
            for end in range(j, i, -1):
                if words_to_number(toks[i:end]) is not None:
                    best_end = end
                    break
            if best_end is None:
                out.append(t if t in ("oh", "o") else _UNITS.get(t, t))
                i += 1
                continue
            value = words_to_number(toks[i:best_end])
            assert value is not None
            out.append(value)
            i = best_end
            continue
        out.append(t)
        i += 1
    return out


@dataclass(frozen=True, slots=True, order=True)
class ClockTime:
    """A time of day. ``hour`` is 0-23 once am/pm is known; otherwise 1-12 with ``meridiem`` None."""

    hour: int
    minute: int
    meridiem: str | None = None  # "am" / "pm" / None (not said)

    def resolved(self, assume_pm: bool) -> ClockTime:
        """A 24-hour time: unspecified 1-11 become pm when ``assume_pm`` (a restaurant's bookings)."""
        h = self.hour
        if self.meridiem == "pm" and h < 12:
            h += 12
        elif self.meridiem == "am" and h == 12:
            h = 0
        elif self.meridiem is None and assume_pm and 1 <= h <= 11:
            h += 12
        return ClockTime(h, self.minute, "resolved")

    def spoken(self) -> str:
        """How the bot says it: "7:30 pm", "noon", "8 am"."""
        h24 = self.hour if self.meridiem == "resolved" else None
        if h24 is None:
            tail = f" {self.meridiem}" if self.meridiem else ""
            return (f"{self.hour}" if self.minute == 0 else f"{self.hour}:{self.minute:02d}") + tail
        if h24 == 12 and self.minute == 0:
            return "noon"
        if h24 == 0 and self.minute == 0:
            return "midnight"
        h12 = h24 % 12 or 12
        suffix = "am" if h24 < 12 else "pm"
        return (f"{h12}" if self.minute == 0 else f"{h12}:{self.minute:02d}") + f" {suffix}"


_PM = {"pm", "evening", "tonight", "afternoon"}
_AM = {"am", "morning"}


def _meridiem(rest: list[str | int]) -> str | None:
    for tok in rest[:3]:
        if tok in _PM or (tok == "p" and "m" in rest[:3]):
            return "pm"
        if tok in _AM or (tok == "a" and "m" in rest[:3]):
            return "am"
    return None


def _valid(h: int, m: int) -> bool:
    return 0 <= h <= 23 and 0 <= m <= 59


def parse_time(text: str, *, bare: bool = False) -> ClockTime | None:
    """The first time of day in ``text``.

    Recognised: "7:30", "730", "seven thirty", "seven oh five", "half past seven", "quarter to eight",
    "eight o'clock", "8 pm", "noon", "midnight". A lone number ("at seven") counts after "at"/"around"/"by",
    before "o'clock"/"am"/"pm", or anywhere when ``bare`` (the bot just asked for a time).
    """
    toks = normalize_numbers(text)
    for i, tok in enumerate(toks):
        rest = toks[i + 1 :]
        prev = toks[i - 1] if i > 0 else None
        if tok in ("noon", "midday"):
            return ClockTime(12, 0, "pm")
        if tok == "midnight":
            return ClockTime(12, 0, "am")
        if isinstance(tok, str) and re.fullmatch(r"\d{1,2}:\d{2}", tok):
            h, m = (int(x) for x in tok.split(":"))
            if _valid(h, m):
                return ClockTime(h, m, _meridiem(rest))
            continue
        if tok in ("half", "quarter") and len(rest) >= 2 and rest[0] in ("past", "after", "to", "before"):
            target = rest[1]
            if isinstance(target, int) and 1 <= target <= 12:
                delta = 30 if tok == "half" else 15
                if rest[0] in ("past", "after"):
                    return ClockTime(target, delta, _meridiem(rest[2:]))
                if tok == "quarter":
                    return ClockTime(target - 1 or 12, 45, _meridiem(rest[2:]))
            continue
        if not isinstance(tok, int):
            continue
        # "730" / "1930"
        if 100 <= tok <= 2359 and _valid(tok // 100, tok % 100):
            return ClockTime(tok // 100, tok % 100, _meridiem(rest))
        if not 0 <= tok <= 23:
            continue
        # "seven thirty", "seven oh five"
        if rest and rest[0] in ("oh", "o") and len(rest) > 1 and isinstance(rest[1], int) and rest[1] < 10:
            return ClockTime(tok, rest[1], _meridiem(rest[2:]))
        if rest and isinstance(rest[0], int) and 10 <= rest[0] <= 59 and tok <= 12:
            return ClockTime(tok, rest[0], _meridiem(rest[1:]))
        mer = _meridiem(rest)
        if rest and rest[0] == "oclock":
            return ClockTime(tok, 0, _meridiem(rest[1:]))
        if mer is not None and rest and rest[0] in ("pm", "am", "p", "a", "in", "this", "tonight"):
            return ClockTime(tok, 0, mer)
        # "at seven", "make it eight", "change it to nine" (a party size says "people" or "for")
        if prev in ("at", "around", "about", "by", "it", "to") and 1 <= tok <= 12:
            return ClockTime(tok, 0, mer)
        if bare and 1 <= tok <= 12:
            return ClockTime(tok, 0, mer)
    return None


_PEOPLE = {"people", "persons", "guests", "adults", "of", "us", "person", "diners", "seats", "pax"}


def parse_party_size(text: str, *, bare: bool = False, max_size: int = 100) -> int | None:
    """The party size in ``text``: "party of four", "for 4 people", "table for four", "four of us", "just me".

    A number directly followed by a time word ("for seven thirty", "for 8 pm") is a time, not a party. A lone
    number counts when ``bare`` (the bot just asked how many).
    """
    toks = normalize_numbers(text)
    if any(t in ("me", "myself") for t in toks) and ("just" in toks or "only" in toks):
        return 1
    for i, tok in enumerate(toks):
        if not isinstance(tok, int):
            continue
        if tok in (0,) or tok > max_size:
            continue
        prev = toks[i - 1] if i > 0 else None
        prev2 = toks[i - 2] if i > 1 else None
        rest = toks[i + 1 :]
        nxt = rest[0] if rest else None
        looks_like_time = nxt in ("oclock", "pm", "am", "p", "a", "thirty") or (
            isinstance(nxt, int) and 10 <= nxt <= 59
        ) or nxt in ("oh", "o")
        if nxt in _PEOPLE and nxt != "of":
            return tok
        if nxt == "of" and len(rest) > 1 and rest[1] == "us":
            return tok
        if prev == "of" and prev2 == "party":
            return tok
        if prev in ("for", "party", "table") and not looks_like_time and prev2 != "at":
            return tok
        if bare and not looks_like_time and (prev is None or prev in ("be", "we're", "are", "just", "it's")):
            return tok
    if bare:
        ints = [t for t in toks if isinstance(t, int) and 0 < t <= max_size]
        if len(ints) == 1 and parse_time(text) is None:
            return ints[0]
    return None
