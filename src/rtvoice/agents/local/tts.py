"""Offline speech synthesis with espeak-ng, driven in-process through ctypes.

espeak-ng comes from the ``espeakng-loader`` wheel (the shared library and its data, no system package,
nothing downloaded). It is GPL-3: this module is imported only by :mod:`rtvoice.agents.local` and the fixture script,
never by the core, and the dependency lives in the optional ``local`` extra.

espeak-ng keeps global state, so one process holds one engine; :func:`synthesize` serialises calls with a lock.
The local agent runs it in its worker processes (see :mod:`rtvoice.agents.local.pool`), never on the event loop.
Output is 22050 Hz int16, converted here to what a phone call carries: μ-law at 8 kHz.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

from rtvoice.agents.local.dsp import resample
from rtvoice.audio import ulaw_encode

ESPEAK_RATE = 22050
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_EVENT_WORD = 1
_EVENT_LIST_TERMINATED = 0
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4


class _Event(ctypes.Structure):
    # espeak_EVENT from speak_lib.h; the trailing union is 8 bytes (int / const char* / char[8]).
    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    )


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True, slots=True)
class Voice:
    """An espeak-ng voice setting. ``name`` is an espeak voice (``en-us``, ``en-us+f3``, ...)."""

    name: str = "en-us"
    rate_wpm: int = 165
    pitch: int = 50  # 0..100
    pitch_range: int = 50  # 0..100
    volume: int = 100  # 0..200


#: The bot's voice, and a clearly different one for generated callers (tests and the demo tell them apart).
#: The caller voice is the one pocketsphinx recognised best over the phone path among the espeak-ng variants
#: tried (word accuracy ranged from 44 % to 92 % across variants: see scripts/make_fixtures.py --measure).
BOT_VOICE = Voice("en-us+f3", rate_wpm=170, pitch=55)
CALLER_VOICE = Voice("en-us+m6", rate_wpm=140, pitch=40)


@dataclass(frozen=True, slots=True)
class WordTiming:
    """A word of the synthesised text: its character span and where its audio starts (ms from the start)."""

    start_char: int
    end_char: int
    audio_ms: int


@dataclass(frozen=True, slots=True)
class Speech:
    """Synthesised speech: μ-law 8 kHz bytes and word timings (to cut the text at a barge-in)."""

    text: str
    ulaw: bytes
    words: tuple[WordTiming, ...]

    @property
    def duration_ms(self) -> int:
        return len(self.ulaw) // 8


class EspeakError(RuntimeError):
    """espeak-ng could not be loaded or failed to synthesise."""


class _Engine:
    """The process's espeak-ng instance (synchronous mode: espeak_Synth returns once all audio is out)."""

    def __init__(self) -> None:
        import espeakng_loader

        try:
            self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        except OSError as exc:  # pragma: no cover - depends on the wheel
            raise EspeakError(f"cannot load libespeak-ng: {exc}") from exc
        lib = self._lib
        lib.espeak_Initialize.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = (_Callback,)
        lib.espeak_SetVoiceByName.argtypes = (ctypes.c_char_p,)
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = (
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        )
        lib.espeak_Synth.restype = ctypes.c_int
        data = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if rate != ESPEAK_RATE:
            raise EspeakError(f"espeak_Initialize returned {rate}, expected a {ESPEAK_RATE} Hz engine")
        self._chunks: list[bytes] = []
        self._words: list[tuple[int, int, int]] = []
        # Keep a reference to the callback object: espeak holds the raw pointer.
        self._callback = _Callback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: Voice | None = None
        self.lock = threading.Lock()

    def _on_audio(
        self, wav: ctypes._Pointer[ctypes.c_short], count: int, events: ctypes._Pointer[_Event]
    ) -> int:
        if count > 0:
            self._chunks.append(ctypes.string_at(wav, count * 2))
        i = 0
        while True:
            ev = events[i]
            if ev.type == _EVENT_LIST_TERMINATED:
                break
            if ev.type == _EVENT_WORD:
                self._words.append((ev.text_position, ev.length, ev.audio_position))
            i += 1
        return 0

    def _set_voice(self, voice: Voice) -> None:
        if voice == self._voice:
            return
        lib = self._lib
        if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise EspeakError(f"espeak-ng has no voice {voice.name!r}")
        lib.espeak_SetParameter(_PARAM_RATE, voice.rate_wpm, 0)
        lib.espeak_SetParameter(_PARAM_PITCH, voice.pitch, 0)
        lib.espeak_SetParameter(_PARAM_RANGE, voice.pitch_range, 0)
        lib.espeak_SetParameter(_PARAM_VOLUME, voice.volume, 0)
        self._voice = voice

    def synth_22k(self, text: str, voice: Voice) -> tuple[bytes, list[tuple[int, int, int]]]:
        """int16 22050 Hz audio and (1-based char position, length, audio ms) word events."""
        with self.lock:
            self._set_voice(voice)
            self._chunks = []
            self._words = []
            raw = text.encode("utf-8") + b"\0"
            buf = ctypes.create_string_buffer(raw, len(raw))
            err = self._lib.espeak_Synth(buf, len(raw), 0, 0, 0, _CHARS_UTF8, None, None)
            if err != 0:
                raise EspeakError(f"espeak_Synth failed with code {err}")
            return b"".join(self._chunks), list(self._words)


_engine: _Engine | None = None
_engine_lock = threading.Lock()


def engine() -> _Engine:
    """The process-wide espeak-ng engine, initialised on first use (about 20 ms)."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                _engine = _Engine()
    return _engine


def synthesize(text: str, voice: Voice = BOT_VOICE) -> Speech:
    """Speak ``text`` to μ-law 8 kHz, with word timings. Deterministic for a given text and voice."""
    pcm22, events = engine().synth_22k(text, voice)
    samples = np.frombuffer(pcm22, dtype=np.int16)
    pcm8 = resample(samples, ESPEAK_RATE, 8000)
    # espeak reports 1-based character positions of the input.
    words = tuple(
        WordTiming(max(0, pos - 1), min(len(text), pos - 1 + length), ms)
        for pos, length, ms in events
        if pos > 0
    )
    return Speech(text=text, ulaw=bytes(ulaw_encode(pcm8.tobytes())), words=words)


def heard_text(speech: Speech, heard_ms: int) -> str:
    """The part of ``speech.text`` the caller heard in its first ``heard_ms`` of audio.

    A word counts as heard when its audio started before the cut. Without word events (empty text) the
    proportion of the duration is used.
    """
    if heard_ms >= speech.duration_ms:
        return speech.text
    if heard_ms <= 0:
        return ""
    if not speech.words:
        cut = int(len(speech.text) * heard_ms / max(1, speech.duration_ms))
        return speech.text[:cut].rstrip()
    end = 0
    for w in speech.words:
        if w.audio_ms < heard_ms:
            end = w.end_char
        else:
            break
    return speech.text[:end].rstrip()
