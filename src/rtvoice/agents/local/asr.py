"""Offline speech recognition with pocketsphinx and a small domain language model.

pocketsphinx 5 ships a US-English acoustic model (16 kHz) and CMUdict. Its general language model is poor on
phone calls, so the local agent builds a trigram model at startup from the scenario's own phrases
(:meth:`Scenario.corpus` plus generated slot answers) with ``pocketsphinx.lm.ArpaBoLM``, and a pronunciation
dictionary restricted to that vocabulary. Both are written once to a cache folder keyed by the corpus hash.

Utterances arrive as 8 kHz int16 (after the agent's endpointing) and are upsampled to 16 kHz with rtvoice's
own resampler (:mod:`.dsp`): decoding 8 kHz directly with the 16 kHz model fails. Two things bridge the gap
between a phone call and the wideband model: extra pronunciations without a word-initial /s/ or /f/
(:func:`phone_band_variants`: their energy is above 4 kHz, cut by the phone band), and a faint noise floor
(:func:`with_noise_floor`: digital silence and the empty 4-8 kHz band give degenerate features). The domain
model also holds every party size with every time (:func:`slot_phrases`). Accuracy on the committed fixtures:
``scripts/make_fixtures.py --measure-only``. Decoding runs in the worker processes (:mod:`.pool`).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rtvoice.agents.local.dsp import resample
from rtvoice.agents.local.numbers import number_to_words

ASR_RATE = 16000
#: Language-model weight and word insertion penalty, tuned on the committed fixtures (see
# scripts/make_fixtures.py).
LM_WEIGHT = 7.0
WORD_PENALTY = 0.65

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@dataclass(frozen=True, slots=True)
class AsrModel:
    """Paths of a domain language model and its dictionary (picklable: sent to worker processes)."""

    lm_path: str
    dict_path: str
    vocabulary_size: int


def model_dir() -> Path:
    """Acoustic model and CMUdict shipped in the pocketsphinx wheel."""
    import pocketsphinx

    return Path(pocketsphinx.get_model_path()) / "en-us"


def _cache_root() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "rtvoice" / "lm"


def slot_phrases() -> list[str]:
    """Generated answers a caller gives to slot questions: party sizes and times, in words.

    Besides bare answers ("four people", "at seven thirty") it adds the combinations callers say in one
    breath ("a table for four at seven thirty tonight"), every party size with every hour, so that the
    trigrams across the party/time boundary exist for each value alike (a class-based model written out:
    no value is favoured over another).
    """
    lines: list[str] = []
    hours = [number_to_words(h) for h in range(1, 13)]
    minutes = ["", " fifteen", " thirty", " forty five", " o'clock"]
    days = ["", " tonight", " tomorrow"]
    for n in range(1, 13):
        w = number_to_words(n)
        lines += [f"a table for {w}", f"{w} people", f"for {w} people", f"a party of {w}", f"{w}"]
        for i, hw in enumerate(hours):
            # rotate the minute and day forms over the hours so each value meets each form equally often
            minute = minutes[(n + i) % len(minutes)]
            day = days[(n + i) % len(days)]
            lines += [f"a table for {w} at {hw}{minute}{day}", f"for {w} people at {hw}{minute}{day}"]
    for hw in hours:
        lines += [f"at {hw}", f"{hw} o'clock", f"at {hw} pm", f"half past {hw}", f"quarter past {hw}"]
        for m in (15, 30, 45):
            lines.append(f"at {hw} {number_to_words(m)}")
    return lines


#: Phones whose energy lies mostly above 4 kHz. A phone call carries nothing above 4 kHz, so the 16 kHz
#: acoustic model often hears a word-initial /s/ or /f/ as silence ("seven" -> "[sil] even" -> "one").
_HIGH_FRICATIVES = frozenset({"S", "Z", "F", "TH", "SH"})


def phone_band_variants(entries: dict[str, list[list[str]]]) -> list[tuple[str, list[str]]]:
    """Extra pronunciations without a word-initial high fricative, as the 16 kHz model hears a phone call.

    A variant is only added when no other pronunciation in ``entries`` already sounds like it (so "four"
    without its /f/ is not added if "or" is in the vocabulary).
    """
    taken = {tuple(p) for prons in entries.values() for p in prons}
    out: list[tuple[str, list[str]]] = []
    for word, prons in sorted(entries.items()):
        for pron in prons:
            rest = tuple(pron[1:])
            if pron[0] in _HIGH_FRICATIVES and len(rest) >= 2 and rest not in taken:
                taken.add(rest)
                out.append((word, list(rest)))
    return out


def _normalise_line(line: str, known: set[str]) -> str | None:
    words = []
    for raw in line.lower().replace("-", " ").split():
        for w in _WORD.findall(raw):
            if w.isdigit():
                continue
            if w not in known:
                return None  # a phrase with an unpronounceable word would teach the LM a gap
            words.append(w)
    return " ".join(words) if words else None


def _read_cmudict(path: Path) -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            head, _, pron = line.partition(" ")
            base = head.split("(", 1)[0]
            entries.setdefault(base, []).append(f"{head} {pron.strip()}")
    return entries


def build_model(corpus: list[str], cache_dir: Path | None = None) -> AsrModel:
    """Build (or reuse from the cache) the domain LM and dictionary for ``corpus`` sentences."""
    from pocketsphinx.lm import ArpaBoLM

    corpus = list(corpus) + slot_phrases()
    digest = hashlib.sha256(("v3\n" + "\n".join(corpus)).encode()).hexdigest()[:16]
    fallback = Path(tempfile.gettempdir()) / "rtvoice-lm"
    roots = [cache_dir] if cache_dir is not None else [_cache_root(), fallback]
    cmudict = _read_cmudict(model_dir() / "cmudict-en-us.dict")
    known = set(cmudict)
    sentences = sorted({s for line in corpus if (s := _normalise_line(line, known))})
    vocab = sorted({w for s in sentences for w in s.split()})
    last_error: OSError | None = None
    for root in roots:
        folder = root / digest
        lm_path, dict_path = folder / "domain.lm", folder / "domain.dict"
        if lm_path.is_file() and dict_path.is_file():
            return AsrModel(str(lm_path), str(dict_path), len(vocab))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lm = ArpaBoLM(text="\n".join(sentences) + "\n", add_start=True, case="lower")
            lm.compute()
            tmp_lm = folder / f"domain.lm.{os.getpid()}.tmp"
            lm.write_file(str(tmp_lm))
            tmp_dict = folder / f"domain.dict.{os.getpid()}.tmp"
            entries = [line for w in vocab for line in cmudict[w]]
            prons = {w: [line.split()[1:] for line in cmudict[w]] for w in vocab}
            counts = {w: len(p) for w, p in prons.items()}
            for w, pron in phone_band_variants(prons):
                counts[w] += 1
                entries.append(f"{w}({counts[w]}) {' '.join(pron)}")
            tmp_dict.write_text("\n".join(entries) + "\n", encoding="utf-8")
            # rename last, so a concurrent reader never sees half a file
            os.replace(tmp_dict, dict_path)
            os.replace(tmp_lm, lm_path)
            return AsrModel(str(lm_path), str(dict_path), len(vocab))
        except OSError as exc:
            last_error = exc
    raise RuntimeError(f"cannot write the speech model cache: {last_error}")


class Recognizer:
    """A loaded pocketsphinx decoder for one :class:`AsrModel` (one per worker process)."""

    def __init__(self, model: AsrModel) -> None:
        from pocketsphinx import Config, Decoder

        config = Config(
            hmm=str(model_dir() / "en-us"),
            lm=model.lm_path,
            dict=model.dict_path,
            samprate=ASR_RATE,
            lw=LM_WEIGHT,
            wip=WORD_PENALTY,
            loglevel="FATAL",
        )
        self._decoder: Any = Decoder(config)

    def recognize_16k(self, pcm16k: bytes) -> str:
        """The best hypothesis for one whole utterance of 16 kHz int16 audio (lower case, may be empty)."""
        d = self._decoder
        d.start_utt()
        d.process_raw(pcm16k, no_search=False, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        if hyp is None:
            return ""
        words = [w for w in str(hyp.hypstr).split() if not w.startswith("<") and not w.startswith("[")]
        return " ".join(re.sub(r"\(\d+\)$", "", w) for w in words)

    def recognize_8k(self, pcm8k: bytes) -> str:
        """Recognise 8 kHz int16 audio (upsampled to the model's 16 kHz, with a noise floor, first)."""
        samples = np.frombuffer(pcm8k, dtype=np.int16)
        return self.recognize_16k(with_noise_floor(resample(samples, 8000, ASR_RATE)).tobytes())


#: RMS of the white noise floor added before decoding (int16 units: about -60 dBFS).
NOISE_FLOOR_RMS = 30.0


def with_noise_floor(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    """``samples`` plus a faint white noise floor over the whole 0-8 kHz band.

    The acoustic model was trained on recordings that always have some noise. A phone call has none above
    4 kHz, and μ-law digital silence (the pre-roll and end-of-turn silence around every utterance) is exact
    zeros: their log filter-bank energies are degenerate, skew the utterance's cepstral mean and noise
    estimate, and a weak word-initial /s/ then looks like silence ("at seven thirty" -> "at one thirty" with
    silence around it, right without). The noise is seeded, so the same audio always decodes the same way;
    on a real line with its own noise floor it changes nothing.
    """
    noise = np.random.default_rng(0).normal(0.0, NOISE_FLOOR_RMS, samples.size)
    out: npt.NDArray[np.int16] = np.clip(samples + noise, -32768, 32767).astype(np.int16)
    return out


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edit distance, reference word count) between two transcripts, ignoring case and punctuation."""
    ref = _WORD.findall(reference.lower())
    hyp = _WORD.findall(hypothesis.lower())
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1], len(ref)
