"""The simulated Twilio against a tiny local rtvoice stand-in on loopback.

The stand-in is an h11 webhook server (validating the signature with rtvoice's own code and answering TwiML
built by rtvoice's own builder) plus a ``websockets`` asyncio server whose per-test handler plays the rtvoice
side of the Media Stream.
"""

from __future__ import annotations

import asyncio
import base64
import json
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

from rtvoice.config import Settings
from rtvoice.sim.twilio import CallScript, Faults, SimulatedTwilio
from rtvoice.twilio import signature
from rtvoice.twilio.media import Media, MessageWriter, Start, parse
from rtvoice.twilio.twiml import connect_stream_twiml

TOKEN = "sim-test-token"
TIMEOUT = 60.0  # wall seconds: generous, the machine is shared

Handler = Callable[[ServerConnection, "Side"], Awaitable[None]]


@dataclass
class Side:
    """What the stand-in observed."""

    http_port: int = 0
    ws_port: int = 0
    webhook_forms: list[dict[str, list[str]]] = field(default_factory=list)
    webhook_signature_ok: list[bool] = field(default_factory=list)
    upgrade_headers: list[dict[str, str]] = field(default_factory=list)
    ws_signature_ok: list[bool] = field(default_factory=list)
    received: list[str | bytes] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return Settings(twilio_auth_token=TOKEN, public_base_url=f"http://127.0.0.1:{self.http_port}")


async def _http_server(side: Side) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert request is not None
        from urllib.parse import parse_qs

        form = parse_qs(body.decode(), keep_blank_values=True)
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        url = signature.public_url(side.settings, request.target.decode(), "")
        ok = signature.validate(side.settings, url, form, headers.get("x-twilio-signature"))
        side.webhook_forms.append(form)
        side.webhook_signature_ok.append(ok)
        if ok:
            params = {"token": "tok-" + form["CallSid"][0], "from": form["From"][0], "to": form["To"][0]}
            twiml = connect_stream_twiml(f"ws://127.0.0.1:{side.ws_port}/media-stream", params, greeting="Hi")
            status, out = 200, twiml.encode()
        else:
            status, out = 403, b"forbidden"
        writer.write(
            conn.send(h11.Response(status_code=status, headers=[("Content-Length", str(len(out)))]))
            + conn.send(h11.Data(data=out))
            + conn.send(h11.EndOfMessage())
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@asynccontextmanager
async def rtvoice_standin(handler: Handler) -> AsyncIterator[Side]:
    side = Side()

    def process_request(conn: ServerConnection, request: WsRequest) -> WsResponse | None:
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        side.upgrade_headers.append(headers)
        url = f"ws://127.0.0.1:{side.ws_port}{request.path}"
        ok = signature.validate(side.settings, url, {}, headers.get("x-twilio-signature"))
        side.ws_signature_ok.append(ok)
        if not ok:
            return conn.respond(403, "bad signature\n")
        return None

    async def ws_handler(ws: ServerConnection) -> None:
        await handler(ws, side)

    http = await _http_server(side)
    side.http_port = http.sockets[0].getsockname()[1]
    async with serve(ws_handler, "127.0.0.1", 0, process_request=process_request, compression=None) as ws_srv:
        side.ws_port = next(iter(ws_srv.sockets)).getsockname()[1]
        try:
            yield side
        finally:
            http.close()


def twilio_for(side: Side, speed: float = 10.0, **kw: Any) -> SimulatedTwilio:
    return SimulatedTwilio(f"http://127.0.0.1:{side.http_port}", auth_token=TOKEN, speed=speed, **kw)


async def record_all(ws: ServerConnection, side: Side) -> None:
    """A passive rtvoice: records everything and sends nothing."""
    async for msg in ws:
        side.received.append(msg)


async def wait_start(ws: ServerConnection, side: Side) -> Start:
    async for msg in ws:
        side.received.append(msg)
        event = parse(msg)
        if isinstance(event, Start):
            return event
    raise AssertionError("no start")


def tone(ms: int, code: int = 0x10) -> bytes:
    return bytes([code]) * (ms * 8)


async def test_call_looks_exactly_like_twilio() -> None:
    async with rtvoice_standin(record_all) as side:
        audio = bytes(range(256)) * 10  # 2560 bytes = 320 ms, distinctive
        script = CallScript().say(audio, at_ms=100).dtmf("1#", after_ms=40).hangup(after_ms=100)
        result = await twilio_for(side).call(script, from_number="+15551112222", timeout_s=TIMEOUT)
    assert result.outcome == "completed" and result.closed_by == "caller", result.format_summary()
    # the webhook: Twilio's fields, valid signature
    assert side.webhook_signature_ok == [True]
    form = side.webhook_forms[0]
    for name in ("CallSid", "AccountSid", "From", "To", "CallStatus", "ApiVersion", "Direction"):
        assert name in form
    assert form["CallSid"][0].startswith("CA") and len(form["CallSid"][0]) == 34
    assert form["AccountSid"][0].startswith("AC") and len(form["AccountSid"][0]) == 34
    assert result.twiml is not None and result.twiml.says == ["Hi"]
    # the upgrade: Twilio's headers, signature over the ws URL, no subprotocol, no extensions
    headers = side.upgrade_headers[0]
    assert headers["user-agent"] == "Twilio.TmeWs/1.0"
    assert side.ws_signature_ok == [True]
    assert "sec-websocket-protocol" not in headers and "sec-websocket-extensions" not in headers
    assert "origin" not in headers
    # the messages
    texts = [m for m in side.received if isinstance(m, str)]
    assert len(texts) == len(side.received)
    msgs = [json.loads(t) for t in texts]
    assert msgs[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = msgs[1]
    assert start["event"] == "start" and start["sequenceNumber"] == "1"
    assert start["start"]["customParameters"] == {
        "token": "tok-" + result.call_sid,
        "from": "+15551112222",
        "to": result.to_number,
    }
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert start["start"]["tracks"] == ["inbound"]
    assert start["streamSid"] == start["start"]["streamSid"] == result.stream_sid
    assert msgs[-1] == {
        "event": "stop",
        "sequenceNumber": msgs[-1]["sequenceNumber"],
        "streamSid": result.stream_sid,
        "stop": {"accountSid": result.account_sid, "callSid": result.call_sid},
    }
    seqs = [int(m["sequenceNumber"]) for m in msgs[1:]]
    assert seqs == list(range(1, len(seqs) + 1))
    media = [parse(t) for t in texts[2:] if '"media"' in t]
    assert all(isinstance(m, Media) for m in media)
    assert [m.chunk for m in media] == list(range(1, len(media) + 1))  # type: ignore[union-attr]
    assert [m.timestamp for m in media] == [20 * i for i in range(len(media))]  # type: ignore[union-attr]
    assert all(len(m.payload) == 160 for m in media)  # type: ignore[union-attr]
    assert len(media) == result.frames_sent
    sent = b"".join(m.payload for m in media)  # type: ignore[union-attr]
    assert sent == bytes(result.sent)
    (said,) = result.said
    assert said == (100.0, 420.0)
    assert sent[800 : 800 + len(audio)] == audio and sent[:800] == b"\xff" * 800
    dtmf = [m for m in msgs if m["event"] == "dtmf"]
    assert [d["dtmf"] for d in dtmf] == [
        {"track": "inbound_track", "digit": "1"},
        {"track": "inbound_track", "digit": "#"},
    ]
    assert [d for _, d in result.dtmf_sent] == ["1", "#"]
    assert result.violations == []


def bot(send: Callable[[ServerConnection, MessageWriter, Side], Awaitable[None]]) -> Handler:
    """A stand-in that waits for start, runs ``send``, then records until the caller hangs up."""

    async def handler(ws: ServerConnection, side: Side) -> None:
        start = await wait_start(ws, side)
        await send(ws, MessageWriter(start.stream_sid), side)
        await record_all(ws, side)

    return handler


async def test_marks_echo_after_playout_and_heard_timeline() -> None:
    speech = tone(400, 0x11)

    async def send(ws: ServerConnection, w: MessageWriter, side: Side) -> None:
        await ws.send(w.mark("before-audio"))
        await ws.send(w.media(speech[:1600]))
        await ws.send(w.media(speech[1600:]))
        await ws.send(w.mark("m1"))
        await ws.send(w.media(tone(100, 0x22)))
        await ws.send(w.mark("m2"))

    async with rtvoice_standin(bot(send)) as side:
        sim = twilio_for(side, speed=5.0)
        call = sim.start_call(CallScript().hangup(after_bot_silence_ms=200))
        first = await call.wait_first_bot_audio(TIMEOUT)
        m1 = await call.wait_mark("m1", TIMEOUT)
        result = await call.wait_done(TIMEOUT)
    assert result.outcome == "completed", result.format_summary()
    marks = {m.name: m for m in result.marks}
    assert set(marks) == {"before-audio", "m1", "m2"}
    assert marks["before-audio"].echoed_ms == marks["before-audio"].received_ms  # nothing queued: at once
    assert m1.played and marks["m2"].played
    assert m1.echoed_ms is not None and marks["m2"].echoed_ms is not None
    # a mark comes back only once the audio before it has played (stream time: 400 ms, then 100 ms more)
    assert m1.echoed_ms >= first + 400 - 0.5
    assert marks["m2"].echoed_ms >= first + 500 - 0.5
    # the echoes reached the rtvoice side, in order, as Twilio's mark messages
    echoes = [json.loads(m) for m in side.received if isinstance(m, str) and '"mark"' in m]
    assert [e["mark"]["name"] for e in echoes] == ["before-audio", "m1", "m2"]
    assert all(set(e) == {"event", "sequenceNumber", "streamSid", "mark"} for e in echoes)
    # what the caller heard: silence, then exactly the bot audio in order, then silence
    start = int(first * 8)
    assert result.heard[start : start + 4000] == speech + tone(100, 0x22)
    assert set(result.heard[:start]) <= {0xFF}
    assert set(result.heard[start + 4000 :]) <= {0xFF}
    assert result.bot_heard_ms() == pytest.approx(500.0)
    # playback starts when the first media arrives (to within one 0.125 ms sample of the timeline)
    assert result.first_bot_media_received_ms == pytest.approx(first, abs=0.125)
    assert result.violations == []


async def test_clear_flushes_and_returns_pending_marks() -> None:
    async def handler(ws: ServerConnection, side: Side) -> None:
        start = await wait_start(ws, side)
        w = MessageWriter(start.stream_sid)
        await ws.send(w.media(tone(2000, 0x33)))
        await ws.send(w.mark("long"))
        frames = 0
        async for msg in ws:
            side.received.append(msg)
            if isinstance(msg, str) and '"media"' in msg:
                frames += 1
                if frames == 15:  # ~300 ms into the bot's 2 s answer the caller barges in
                    await ws.send(w.clear())
                    await ws.send(w.mark("after-clear"))

    async with rtvoice_standin(handler) as side:
        call = twilio_for(side, speed=5.0).start_call(CallScript().hangup(after_bot_silence_ms=300))
        clear = await call.wait_clear(timeout_s=TIMEOUT)
        result = await call.wait_done(TIMEOUT)
    assert clear.marks_returned == ["long"]
    marks = {m.name: m for m in result.marks}
    assert marks["long"].played is False and marks["long"].echoed_ms == clear.at_ms
    assert marks["after-clear"].played is True  # nothing left to play: returned immediately
    heard = result.bot_heard_ms()
    assert heard + clear.discarded_ms == pytest.approx(2000.0, abs=0.2)
    assert 0 < heard < 2000
    assert result.first_bot_audio_ms is not None
    assert heard == pytest.approx(clear.at_ms - result.first_bot_audio_ms, abs=0.2)
    echoes = [json.loads(m)["mark"]["name"] for m in side.received if isinstance(m, str) and '"mark"' in m]
    assert echoes == ["long", "after-clear"]


async def echo_frames(ws: ServerConnection, side: Side) -> None:
    """An echo line: each caller frame goes straight back as bot audio."""
    start = await wait_start(ws, side)
    w = MessageWriter(start.stream_sid)
    async for msg in ws:
        side.received.append(msg)
        event = parse(msg)
        if isinstance(event, Media):
            await ws.send(w.media(event.payload))


async def test_echo_line_heard_timeline_is_aligned_with_what_was_sent(tmp_path: Path) -> None:
    audio = bytes((i * 7) % 200 for i in range(2400))  # 300 ms, distinctive
    async with rtvoice_standin(echo_frames) as side:
        script = CallScript().say(audio, at_ms=200).hangup(after_bot_silence_ms=200)
        result = await twilio_for(side, speed=5.0).call(script, timeout_s=TIMEOUT)
    assert result.outcome == "completed", result.format_summary()
    sent, heard = bytes(result.sent), bytes(result.heard)
    # Echoed frames arrive one by one; a frame that lands after the previous one finished playing leaves a
    # gap (an underrun, as on a real line). The audio holds no 0xFF (silence) byte, so drop silence to
    # compare.
    assert audio in heard.replace(b"\xff", b""), "the caller must hear its own words back"
    at = heard.find(audio[:160])
    assert at >= 200 * 8  # never heard before it was said
    assert sent.find(audio) == 200 * 8
    # heard_until: at the moment the caller finished speaking, it had not heard all of its echo
    assert audio not in result.heard_until(500)
    result.write_wav(tmp_path / "heard.wav")
    with wave.open(str(tmp_path / "heard.wav")) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 8000, 2)
        assert wav.getnframes() == max(len(sent), len(heard))
    result.write_wav(tmp_path / "mono.wav", stereo=False)
    with wave.open(str(tmp_path / "mono.wav")) as wav:
        assert wav.getnchannels() == 1 and wav.getnframes() == len(heard)


async def test_speed_factor_keeps_the_stream_clock() -> None:
    # How much faster than wall time the call runs is a timing claim: bench/test_bench_sim_speed.py (same-run
    # ratio). Here: at 20x, the stream is still exactly 2 s of 20 ms frames on the stream clock.
    async with rtvoice_standin(record_all) as side:
        result = await twilio_for(side, speed=20.0).call(CallScript().hangup(at_ms=2000), timeout_s=TIMEOUT)
    assert result.frames_sent == 100  # 2 s of 20 ms frames, timestamps 0..1980
    assert result.duration_ms >= 2000
    media = [parse(m) for m in side.received if '"media"' in m]
    assert [m.timestamp for m in media] == [20 * i for i in range(100)]  # type: ignore[union-attr]


async def test_script_triggers_follow_the_bot() -> None:
    async def send(ws: ServerConnection, w: MessageWriter, side: Side) -> None:
        await ws.send(w.media(tone(600, 0x44)))

    async with rtvoice_standin(bot(send)) as side:
        script = (
            CallScript()
            .say(tone(100, 0x55), after_bot_audio_ms=200)  # barge in 200 ms into the bot's answer
            .say(tone(100, 0x66), after_bot_silence_ms=300)  # then wait for the bot to finish
            .hangup(after_ms=100)
        )
        result = await twilio_for(side, speed=5.0).call(script, timeout_s=TIMEOUT)
    first = result.first_bot_audio_ms
    assert first is not None
    (a_start, a_end), (b_start, _) = result.said
    # audio starts with the first frame sent once the trigger time has passed (frames are 20 ms apart)
    assert a_start >= first + 200 - 20
    assert b_start >= first + 600 + 300 - 20
    sent = bytes(result.sent)
    assert sent[int(a_start * 8) : int(a_end * 8)] == tone(100, 0x55)


async def test_rtvoice_protocol_violations_are_reported() -> None:
    async def send(ws: ServerConnection, w: MessageWriter, side: Side) -> None:
        sid = w.stream_sid
        await ws.send(b"\x00binary")
        await ws.send("{not json")
        extra_key = {"event": "media", "streamSid": sid, "media": {"payload": "//8=", "track": "x"}}
        await ws.send(json.dumps(extra_key))
        await ws.send(json.dumps({"event": "media", "streamSid": "MZwrong", "media": {"payload": "//8="}}))
        await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "not base64!"}}))
        await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "x", "extra": 1}}))
        await ws.send(json.dumps({"event": "clear", "streamSid": sid, "now": True}))
        await ws.send(json.dumps({"event": "speak", "streamSid": sid}))
        await ws.send(w.media(b"\x01" * 160))  # one good message

    async with rtvoice_standin(bot(send)) as side:
        result = await twilio_for(side).call(CallScript().hangup(at_ms=400), timeout_s=TIMEOUT)
    assert len(result.violations) == 8, result.violations
    assert "binary" in result.violations[0] and "JSON" in result.violations[1]
    assert result.bot_media_messages == 1 and result.clears == [] and result.marks == []


async def test_server_close_is_recorded() -> None:
    async def handler(ws: ServerConnection, side: Side) -> None:
        await wait_start(ws, side)
        await ws.close(1008, "stream token replayed")

    async with rtvoice_standin(handler) as side:
        result = await twilio_for(side).call(CallScript(), timeout_s=TIMEOUT)
    assert result.outcome == "closed_by_server" and result.closed_by == "server"
    assert (result.close_code, result.close_reason) == (1008, "stream token replayed")


async def test_faults_signatures_refused() -> None:
    async with rtvoice_standin(record_all) as side:
        sim = twilio_for(side)
        forged = await sim.call(faults=Faults(webhook_signature="forged"), timeout_s=TIMEOUT)
        absent = await sim.call(faults=Faults(webhook_signature="absent"), timeout_s=TIMEOUT)
        ws_forged = await sim.call(faults=Faults(ws_signature="forged"), timeout_s=TIMEOUT)
        ws_absent = await sim.call(faults=Faults(ws_signature="absent"), timeout_s=TIMEOUT)
    assert (forged.outcome, forged.webhook_status) == ("webhook_refused_403", 403)
    assert absent.outcome == "webhook_refused_403"
    assert (ws_forged.outcome, ws_forged.ws_status) == ("ws_refused_403", 403)
    assert ws_absent.outcome == "ws_refused_403"
    assert side.webhook_signature_ok == [False, False, True, True]
    assert side.ws_signature_ok == [False, False]
    assert "x-twilio-signature" not in side.upgrade_headers[1]


async def test_faults_injected_frames_and_parameters() -> None:
    faults = Faults(
        parameters={"token": "replayed-token"},
        drop_parameters=("from",),
        media_before_start=True,
        inject=[(40, "{bad json"), (60, b"\x01\x02"), (80, '{"event":"bogus","streamSid":"x"}')],
    )
    async with rtvoice_standin(record_all) as side:
        result = await twilio_for(side).call(CallScript().hangup(at_ms=200), faults=faults, timeout_s=TIMEOUT)
    assert result.outcome == "completed"
    first = json.loads(side.received[0])
    assert first["event"] == "media"  # before connected/start
    start = json.loads(side.received[2])
    assert start["event"] == "start"
    assert start["start"]["customParameters"] == {"token": "replayed-token", "to": result.to_number}
    assert "{bad json" in side.received and b"\x01\x02" in side.received
    assert '{"event":"bogus","streamSid":"x"}' in side.received


async def test_many_concurrent_calls_hear_only_themselves() -> None:
    async with rtvoice_standin(echo_frames) as side:
        sim = twilio_for(side, speed=4.0)
        voices = [bytes([0x20 + i]) * 1600 for i in range(6)]
        calls = [
            sim.start_call(CallScript().say(v, at_ms=100).hangup(after_bot_silence_ms=200)) for v in voices
        ]
        results = await asyncio.gather(*(c.wait_done(TIMEOUT) for c in calls))
    assert len({r.call_sid for r in results}) == 6
    for voice, result in zip(voices, results, strict=True):
        assert result.outcome == "completed", result.format_summary()
        heard = set(bytes(result.heard))
        assert voice[0] in heard and heard <= {voice[0], 0xFF}


def test_summary_is_json_serialisable() -> None:
    async def run() -> dict[str, Any]:
        async with rtvoice_standin(echo_frames) as side:
            result = await twilio_for(side).call(
                CallScript().say(tone(100), at_ms=0).hangup(after_bot_silence_ms=100), timeout_s=TIMEOUT
            )
        assert "first bot audio heard" in result.format_summary()
        return result.summary()

    summary = asyncio.run(run())
    json.dumps(summary)
    assert summary["outcome"] == "completed" and summary["frames_sent"] > 0


async def test_pcm_payload_base64_matches_twilio_frame_size() -> None:
    async with rtvoice_standin(record_all) as side:
        await twilio_for(side).call(CallScript().hangup(at_ms=60), timeout_s=TIMEOUT)
    media = [json.loads(m) for m in side.received if isinstance(m, str) and '"media"' in m]
    assert media and all(len(m["media"]["payload"]) == 216 for m in media)  # 160 bytes -> 216 base64 chars
    assert base64.b64decode(media[0]["media"]["payload"]) == b"\xff" * 160
