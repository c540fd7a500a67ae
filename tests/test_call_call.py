"""The Call state machine, sans-I/O: fake clock (Twilio timestamps), a model of Twilio's playout buffer, the
real webrtcvad, and a small in-test agent."""

from __future__ import annotations

import json

import pytest

from call_fakes import SILENCE, Driver, FakeTwilio, RecordingAgent, start_event, voiced
from rtvoice.agents.base import Heard
from rtvoice.call.call import Call, CallError, CallState, Outcome, TurnLatency
from rtvoice.config import Settings
from rtvoice.twilio.media import Dtmf, Mark, Media

SETTINGS = Settings(vad_onset_frames=3, vad_hangover_frames=10, max_queued_ms=200, mark_interval_ms=60)


class Observer:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def call_started(self, info: object) -> None:
        self.events.append(("started", info))

    def turn(self, role: str, text: str, start_ms: int, end_ms: int) -> None:
        self.events.append(("turn", (role, text, start_ms, end_ms)))

    def barge_in(self, heard: Heard | None, reaction_ms: int) -> None:
        self.events.append(("barge_in", (heard, reaction_ms)))

    def latency(self, turn: TurnLatency) -> None:
        self.events.append(("latency", turn))

    def call_ended(self, outcome: str) -> None:
        self.events.append(("ended", outcome))


def make(
    settings: Settings = SETTINGS, marks_first: bool = False
) -> tuple[Call, RecordingAgent, Driver, Observer]:
    """A started call wired straight to a FakeTwilio: what the call sends reaches Twilio at the same
    instant."""
    agent = RecordingAgent()
    obs = Observer()
    twilio = FakeTwilio()
    call = Call(settings, agent, send=lambda text: twilio.deliver([text]), observer=obs)
    call.on_start(start_event())
    call.on_agent_ready()
    return call, agent, Driver(call, twilio, marks_first=marks_first), obs


def bot_speech(ms: int) -> bytes:
    return voiced(ms, f0=210.0, seed=5)


def test_nothing_is_sent_before_start_and_media_before_start_is_refused() -> None:
    agent = RecordingAgent()
    call = Call(SETTINGS, agent)
    call.bot_audio("early", bot_speech(200))  # an eager greeting before the stream is up
    assert call.outbox == []
    with pytest.raises(CallError) as exc:
        call.on_media(Media("MZ", 2, "inbound", 1, 0, SILENCE))
    assert exc.value.reason == "media_before_start"
    assert call.outbox == []
    call.on_start(start_event())
    assert call.state is CallState.STREAMING
    assert call.outbox and json.loads(call.outbox[0])["event"] == "media"  # the greeting goes out at start


def test_inbound_audio_decoded_once_and_forwarded_with_early_frames_kept() -> None:
    agent = RecordingAgent()
    call = Call(SETTINGS, agent)
    info = call.on_start(start_event())
    assert (info.from_number, info.to_number) == ("+15550001111", "+15550002222")
    assert "token" not in info.custom_parameters
    d = Driver(call)
    for _ in range(5):
        d.tick(SILENCE)  # agent still starting: frames are kept
    assert agent.audio_frames == 0
    call.on_agent_ready()
    assert agent.audio_frames == 5
    d.tick(voiced(20))
    assert agent.audio_frames == 6
    assert bytes(agent.audio_bytes[-160:]) == voiced(20)


def test_dtmf_forwarded() -> None:
    call, agent, _d, _ = make()
    call.on_dtmf(Dtmf("MZ", 3, "inbound_track", "5"))
    assert agent.dtmf == ["5"]


def test_pacing_keeps_at_most_max_queued_ms_at_twilio() -> None:
    call, agent, d, _ = make()
    d.tick()
    call.bot_audio("item1", bot_speech(3000))  # a whole answer at once
    call.bot_audio_done("item1")
    assert d.twilio.received == 200 * 8  # sent at once up to the limit, no waiting for a tick
    for _ in range(200):
        d.tick()
        assert d.twilio.received - d.twilio.played <= 200 * 8
    assert d.twilio.max_queued_ms <= 200
    assert bytes(d.twilio.audio) == bot_speech(3000)  # everything played, in order, unchanged
    assert call.ledger.marks_played == call.ledger.marks_sent
    assert agent.playbacks[-1] == ("item1", 3000)
    assert call.transcript[-1].role == "bot" and not call.transcript[-1].interrupted


def test_first_chunk_goes_out_immediately_whatever_its_size() -> None:
    call, _, d, _ = make()
    d.tick()
    call.bot_audio("i", bot_speech(100)[:88])  # 11 ms
    assert [m["event"] for m in d.twilio.messages] == ["media", "mark"]  # the item's first mark follows it
    assert d.twilio.received == 88


def run_barge_in(
    onset_after_ms: int, first_piece: int, marks_first: bool = False
) -> tuple[Call, RecordingAgent, Driver, int]:
    """Bot audio streams for 4 s; the caller talks from ``onset_after_ms`` on. Returns the stream time of the
    caller's first frame too. No echo on this line: the caller's voice only."""
    call, agent, d, _ = make(marks_first=marks_first)
    for _ in range(3):
        d.tick()
    audio = bot_speech(4000)
    # The vendor streams in uneven pieces, so chunk and mark boundaries fall between ticks.
    call.bot_audio("resp1", audio[:first_piece])
    pos = first_piece
    ticks = 0
    onset = -1
    while d.twilio.clears == 0 and ticks < 400:
        if pos < len(audio):
            call.bot_audio("resp1", audio[pos : pos + 777])
            pos += 777
        frame = SILENCE if ticks * 20 < onset_after_ms else voiced(20 * (ticks + 1))[-160:]
        if onset < 0 and frame is not SILENCE:
            onset = d.t  # the frame's stream time
        d.tick(frame)
        ticks += 1
    return call, agent, d, onset


@pytest.mark.parametrize("marks_first", [False, True])
@pytest.mark.parametrize(("onset", "first_piece"), [(700, 100), (1230, 333), (2000, 160), (410, 1000)])
def test_barge_in_during_playout_clears_and_reports_what_was_heard(
    onset: int, first_piece: int, marks_first: bool
) -> None:
    call, agent, d, caller_onset = run_barge_in(onset, first_piece, marks_first)
    assert d.twilio.clears == 1
    assert len(agent.barge_ins) == 1
    heard = agent.barge_ins[0]
    assert heard is not None and heard.item_id == "resp1"
    truth_ms = d.twilio.heard_at_clear[0] / 8  # what the caller had heard when the clear reached Twilio
    assert abs(heard.audio_end_ms - truth_ms) <= 20, (heard, truth_ms)
    decision, _ = call.barge_ins[0]
    assert decision.source == "vad"
    assert decision.reaction_ms <= 80  # 3 onset frames + the frame in hand
    # ... measured from the caller's real first frame, not from whenever the VAD's run began: a gate that
    # took the caller for echo of the bot (no echo on this line; the canceller had not converged) muted them
    # until the bot's 4 s had played, and the clear came late with the reaction above still "60 ms"
    assert abs(decision.onset_ms - caller_onset) <= 20, (decision, caller_onset)
    assert decision.decided_at - caller_onset <= 120, (decision, caller_onset)
    # The rest of the item is gone: late vendor audio for it is dropped, nothing more is sent.
    sent = d.twilio.received
    call.bot_audio("resp1", bot_speech(500))
    for _ in range(20):
        d.tick(SILENCE)
    assert d.twilio.received == sent
    entry = call.transcript[-1]
    assert entry.role == "bot" and entry.interrupted


def test_marks_returned_by_clear_are_not_counted_as_played() -> None:
    call, agent, d, _ = run_barge_in(900, 320)
    assert d.twilio.discarded, "the clear must have returned pending marks"
    assert call.ledger.marks_discarded == len(d.twilio.discarded)
    played_before = list(agent.playbacks)
    heard = agent.barge_ins[0]
    assert heard is not None
    # No playback report went beyond what was heard, and none came from the discarded marks.
    assert all(ms <= heard.audio_end_ms + 20 for _, ms in played_before)
    assert call.ledger.played_pos(d.t) == call.ledger.sent_pos  # nothing counted as still queued


def test_vad_blip_shorter_than_onset_does_not_clear() -> None:
    call, agent, d, _ = make()
    d.tick()
    call.bot_audio("greeting", bot_speech(2000))
    call.bot_audio_done("greeting")
    for _ in range(10):
        d.tick()
    for _ in range(3):  # a 40 ms blip (2 frames < 3 onset frames), twice
        d.tick(voiced(40)[:160])
        d.tick(voiced(40)[160:])
        for _ in range(10):
            d.tick()
    assert d.twilio.clears == 0
    assert agent.barge_ins == []


def test_no_barge_in_and_no_truncate_when_bot_is_silent() -> None:
    call, agent, d, _ = make()
    d.tick()
    call.bot_audio("a", bot_speech(200))
    call.bot_audio_done("a")
    for _ in range(30):  # fully played
        d.tick()
    d.run(voiced(600))
    assert d.twilio.clears == 0
    assert agent.barge_ins == []
    # A vendor hint now, with nothing playing, changes nothing either.
    call.speech_started()
    call.interrupt()
    assert agent.barge_ins == [] and d.twilio.clears == 0


def test_barge_in_with_nothing_queued_but_item_streaming_truncates_at_what_was_sent() -> None:
    call, agent, d, _ = make()
    d.tick()
    call.bot_audio("r", bot_speech(100))  # 100 ms, then the vendor pauses (item not done)
    for _ in range(20):
        d.tick()
    assert call.ledger.queued_ms(call.now) == 0
    call.speech_started()  # vendor hint while the item is still open
    assert agent.barge_ins == [Heard("r", 100)]


def test_vendor_interrupt_flushes_playback() -> None:
    call, agent, d, _ = make()
    d.tick()
    call.bot_audio("x", bot_speech(1000))
    for _ in range(10):
        d.tick()
    call.interrupt()
    d.flush()
    assert d.twilio.clears == 1
    heard = agent.barge_ins[0]
    assert heard is not None and abs(heard.audio_end_ms - d.twilio.heard_at_clear[0] / 8) <= 20


def test_turn_latency_and_transcript() -> None:
    call, _agent, d, obs = make()
    d.run(SILENCE * 5 + voiced(500) + SILENCE * 12)  # caller speaks, VAD ends the turn
    assert call.vad.speaking is False
    call.caller_text("what time is it", final=True)
    for _ in range(10):
        d.tick()
    call.bot_text("b1", "It is ", final=False)
    call.bot_text("b1", "noon.", final=False)
    call.bot_audio("b1", bot_speech(400))
    call.bot_audio_done("b1")
    for _ in range(40):
        d.tick()
    lat = call.latencies[0]
    assert lat.caller_end_ms == 600
    # 5 + 25 + 12 frames of caller audio, then 10 idle ticks: the bot answered at 1040.
    assert lat.first_audio_sent_ms == 1040 and lat.to_first_audio_ms == 440
    # Its first 40 ms chunk played 1040-1080; the echo is placed within half a frame of that.
    assert lat.first_heard_ms is not None and abs(lat.first_heard_ms - 1080) <= 10
    roles = [(e.role, e.text) for e in call.transcript]
    assert roles == [("caller", "what time is it"), ("bot", "It is noon.")]
    assert any(k == "latency" for k, _ in obs.events)


def test_bot_text_cut_to_what_was_heard() -> None:
    _call, _agent, _d, _ = run_barge_in(1000, 320)
    # run_barge_in sends no text; check the cutting rule directly on a fresh call
    call2, _agent2, d2, _ = make()
    d2.tick()
    call2.bot_text("t", "one two three four five six seven eight nine ten", final=True)
    call2.bot_audio("t", bot_speech(2000))
    call2.bot_audio_done("t")
    for _ in range(50):  # 1000 ms played
        d2.tick()
    call2.interrupt()
    entry = call2.transcript[-1]
    assert entry.interrupted
    assert entry.text.startswith("one two three")
    assert "ten" not in entry.text


def test_hang_up_closes_after_queued_audio_played() -> None:
    closes: list[tuple[int, str]] = []
    agent = RecordingAgent()
    call = Call(SETTINGS, agent, close=lambda c, r: closes.append((c, r)))
    call.on_start(start_event())
    call.on_agent_ready()
    d = Driver(call)
    d.tick()
    call.bot_audio("bye", bot_speech(500))
    call.bot_audio_done("bye")
    call.hang_up("done")
    for _ in range(20):
        d.tick()
    assert closes == []  # 400 ms in: still playing
    for _ in range(10):
        d.tick()
    assert closes == [(1000, "done")]
    assert call.outcome is Outcome.BOT_HANGUP
    assert d.twilio.played == len(bot_speech(500))


def test_fatal_fault_plays_apology_then_closes() -> None:
    closes: list[tuple[int, str]] = []
    agent = RecordingAgent()
    apology = bot_speech(300)
    call = Call(SETTINGS, agent, close=lambda c, r: closes.append((c, r)), apology=apology)
    call.on_start(start_event())
    call.on_agent_ready()
    d = Driver(call)
    d.tick()
    call.bot_audio("r", bot_speech(2000))
    for _ in range(5):
        d.tick()
    call.fault("dropped", "vendor socket closed", fatal=True)
    for _ in range(30):
        d.tick()
    assert d.twilio.clears == 1
    assert bytes(d.twilio.audio).endswith(apology)
    assert closes and closes[0][0] == 1000
    assert call.outcome is Outcome.AGENT_FAULT
    assert agent.barge_ins == []  # the dead agent is not driven any more


def test_stop_ends_the_call_and_reports_outcome() -> None:
    call, _agent, d, obs = make()
    d.tick()
    d.stop()
    assert call.state is CallState.ENDED
    assert obs.events[-1] == ("ended", "completed")
    call.on_mark(Mark("MZ", 9, "m1"))  # after the end: ignored
    d.tick()
    assert call.outbox == []


def test_duplicate_and_gap_frames() -> None:
    call, agent, _d, _ = make()
    call.on_media(Media("MZ", 2, "inbound", 1, 0, SILENCE))
    call.on_media(Media("MZ", 3, "inbound", 1, 0, SILENCE))  # duplicate chunk
    assert call.frames_late == 1
    call.on_media(Media("MZ", 4, "inbound", 5, 80, SILENCE))  # chunks 2-4 lost
    assert call.frames_gap == 3
    assert agent.audio_frames == 1 + 3 + 1  # gap filled with silence for the agent


@pytest.mark.parametrize("marks_first", [False, True])
def test_ledger_estimate_tracks_fake_twilio_over_a_long_reply(marks_first: bool) -> None:
    """The ledger's interpolated play position never drifts more than 20 ms from the model's truth."""
    call, _, d, _ = make(Settings(max_queued_ms=200, mark_interval_ms=100), marks_first=marks_first)
    d.tick()
    call.bot_audio("long", bot_speech(5000))
    call.bot_audio_done("long")
    worst = 0.0
    for _ in range(300):
        d.tick()
        est = call.ledger.played_pos(call.now)
        worst = max(worst, abs(est - d.twilio.played) / 8)
    assert worst <= 20
