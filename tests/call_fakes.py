"""Shared helpers for the call tests: caller audio the real webrtcvad accepts, a model of Twilio's playout
buffer, and a small in-test Agent (our own interface, not a mocked vendor)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import numpy as np

from rtvoice.agents.base import Agent, AgentSink, CallInfo, Heard
from rtvoice.audio import ulaw_encode
from rtvoice.call.call import Call
from rtvoice.twilio.media import Mark, Media, Start, Stop

FRAME = 160
SILENCE = b"\xff" * FRAME


def voiced(ms: int, f0: float = 130.0, seed: int = 0) -> bytes:
    """A voiced-speech-like μ-law signal (harmonic series with a syllable-rate envelope) that webrtcvad calls
    speech on every 20 ms frame."""
    n = ms * 8
    t = np.arange(n) / 8000.0
    sig = sum((1.0 / k) * np.sin(2 * np.pi * f0 * k * t + k * seed) for k in range(1, 25))
    sig = sig * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    pcm = (sig / np.abs(sig).max() * 8000).astype(np.int16)
    return bytes(ulaw_encode(pcm))


def frames(audio: bytes) -> list[bytes]:
    return [audio[i : i + FRAME] for i in range(0, len(audio) - FRAME + 1, FRAME)]


def start_event(call_sid: str = "CA" + "0" * 32, stream_sid: str = "MZ" + "1" * 32) -> Start:
    return Start(
        stream_sid=stream_sid,
        call_sid=call_sid,
        account_sid="AC" + "2" * 32,
        tracks=("inbound",),
        custom_parameters={
            "from": "+15550001111", "to": "+15550002222", "direction": "inbound", "token": "t"
        },
        encoding="audio/x-mulaw",
        sample_rate=8000,
        channels=1,
        sequence_number=1,
    )


class NullSink:
    """An AgentSink that ignores everything: subclass it and override only what a test records."""

    def bot_audio(self, item_id: str, ulaw: bytes) -> None: ...
    def bot_audio_done(self, item_id: str) -> None: ...
    def bot_text(self, item_id: str, text: str, final: bool) -> None: ...
    def caller_text(self, text: str, final: bool) -> None: ...
    def speech_started(self) -> None: ...
    def interrupt(self) -> None: ...
    def hang_up(self, reason: str) -> None: ...
    def fault(self, kind: str, message: str, fatal: bool) -> None: ...


class RecordingAgent(Agent):
    """Records what the call tells it; the test plays the vendor by calling the sink itself."""

    name = "recording"

    def __init__(self) -> None:
        self.sink: AgentSink | None = None
        self.info: CallInfo | None = None
        self.audio_frames = 0
        self.audio_bytes = bytearray()
        self.barge_ins: list[Heard | None] = []
        self.playbacks: list[tuple[str, int]] = []
        self.dtmf: list[str] = []
        self.closed = False

    async def start(self, call: CallInfo, sink: AgentSink) -> None:
        self.info, self.sink = call, sink

    def send_audio(self, ulaw: bytes, pcm: memoryview) -> None:
        assert len(pcm) == len(ulaw)  # one int16 sample per μ-law byte
        self.audio_frames += 1
        self.audio_bytes += ulaw

    def send_dtmf(self, digit: str) -> None:
        self.dtmf.append(digit)

    def barge_in(self, heard: Heard | None) -> None:
        self.barge_ins.append(heard)

    def playback(self, item_id: str, played_ms: int) -> None:
        self.playbacks.append((item_id, played_ms))

    async def close(self) -> None:
        self.closed = True


@dataclass
class FakeTwilio:
    """Twilio's side of a bidirectional stream, modelled on the documented behaviour: outbound media is
    buffered
    and played in order in real time from when it arrives; a mark is echoed once the audio before it has
    played
    (immediately if nothing is buffered); ``clear`` empties the buffer and echoes every pending mark at once.

    Times are stream ms. Tracks the true play position (bytes of bot audio played) for comparison with the
    ledger.
    """

    played: int = 0  # bytes of bot audio played so far (since the stream began)
    received: int = 0  # bytes of bot audio received
    clock: int = 0
    marks: list[tuple[str, int]] = field(default_factory=list)  # (name, position it follows)
    echoes: list[str] = field(default_factory=list)  # marks to deliver to the call
    discarded: list[str] = field(default_factory=list)
    clears: int = 0
    clear_times: list[int] = field(default_factory=list)
    heard_at_clear: list[int] = field(default_factory=list)
    max_queued_ms: float = 0.0
    messages: list[dict[str, object]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)

    def advance(self, t: int) -> None:
        """Play until stream time ``t``."""
        if t <= self.clock:
            return
        self.played = min(self.received, self.played + (t - self.clock) * 8)
        self.clock = t
        self._echo()

    def _echo(self) -> None:
        while self.marks and self.marks[0][1] <= self.played:
            self.echoes.append(self.marks.pop(0)[0])

    def deliver(self, texts: list[str]) -> None:
        """Messages the call sent at the current clock."""
        for text in texts:
            msg = json.loads(text)
            self.messages.append(msg)
            ev = msg["event"]
            if ev == "media":
                payload = base64.b64decode(msg["media"]["payload"])
                self.received += len(payload)
                self.audio += payload
                self.max_queued_ms = max(self.max_queued_ms, (self.received - self.played) / 8)
            elif ev == "mark":
                self.marks.append((msg["mark"]["name"], self.received))
                self._echo()
            elif ev == "clear":
                self.clears += 1
                self.clear_times.append(self.clock)
                self.heard_at_clear.append(self.played)
                self.received = self.played
                del self.audio[self.played :]
                for name, _ in self.marks:
                    self.echoes.append(name)
                    self.discarded.append(name)
                self.marks.clear()
            else:
                raise AssertionError(f"unexpected event {ev}")


class Driver:
    """Runs a Call against FakeTwilio, one 20 ms tick at a time, with inbound caller frames."""

    def __init__(self, call: Call, twilio: FakeTwilio | None = None, marks_first: bool = False) -> None:
        self.call = call
        #: Twilio's echoes and the inbound frame of the same instant can arrive in either order.
        self.marks_first = marks_first
        self.twilio = twilio if twilio is not None else FakeTwilio()
        self.chunk = 1
        self.t = 0  # start of the next inbound frame
        self.seq = 2

    def flush(self) -> None:
        out = list(self.call.outbox)
        self.call.outbox.clear()
        self.twilio.deliver(out)

    def tick(self, frame: bytes = SILENCE) -> None:
        """One 20 ms inbound frame covering [t, t+20): Twilio plays until t+20, echoes marks, sends the
        frame."""
        end = self.t + 20
        self.twilio.advance(end)
        self.flush()
        if self.marks_first:
            self._echoes()
        self.call.on_media(Media("MZ", self.seq, "inbound", self.chunk, self.t, frame))
        self.seq += 1
        self.chunk += 1
        self.t = end
        self.flush()
        # Marks played by now (or returned by a clear) come back.
        self._echoes()

    def _echoes(self) -> None:
        echoes, self.twilio.echoes = self.twilio.echoes, []
        for name in echoes:
            self.call.on_mark(Mark("MZ", self.seq, name))
            self.seq += 1
            self.flush()

    def run(self, audio: bytes) -> None:
        for f in frames(audio):
            self.tick(f)

    def stop(self) -> None:
        self.call.on_stop(Stop("MZ", self.seq, "CA", "AC"))
