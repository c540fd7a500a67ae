"""``python -m rtvoice bench load``: how many concurrent calls one core carries.

Three kinds of processes, pinned with ``os.sched_setaffinity``:

- the server, ``python -m rtvoice serve --workers 1`` with ``RTVOICE_LOAD_PROBE=1``, alone on core 0
  (``--server-core``);
- behind it, for the ``openai`` modes, the OpenAI Realtime emulator (``python -m rtvoice emulate openai``) on
  the other core; the ``echo`` mode needs no vendor;
- the load generator(s) (this module's ``gen`` entry point), also on the other core.

The generator is the simulated Twilio reduced to its media pump, so that one process can drive hundreds of
calls: each call does what :class:`rtvoice.sim.twilio.SimulatedCall` does on the wire (the signed-off webhook
POST with :class:`rtvoice.sim.twilio._Http`, the TwiML parsed with
:func:`rtvoice.twilio.twiml.parse_stream_twiml`, the upgrade with Twilio's headers, ``connected``, ``start``
with the TwiML's ``<Parameter>``s, one ``media`` message every 20 ms, ``mark`` echoed once the audio queued
before it has played, every pending mark returned on ``clear``, ``stop`` at the end), but all calls of a
process share one asyncio ``Protocol`` class and one ticker: no task per call, no websockets client, media
messages built with ``bytes %`` from base64 precomputed once, client frames masked with the all-zero key
(legal in RFC 6455 and free to apply). The calls are spread evenly over the 20 ms frame period (one slot per
millisecond), as real Twilio streams are, so the server sees a steady rate, not bursts. Each caller loops a
fixture utterance and silence from a random offset, so VAD, barge-in and replies all run.

Per step of the ramp (N calls) the driver connects the calls, lets them settle, then over a measurement
window reads: the server's latency probe (:mod:`rtvoice.server.loadprobe`: event-loop wait + per-frame processing),
the server's CPU time and RSS from ``/proc``, the generator's own lateness, and afterwards the server's frame
counters: every frame the generators sent must have been received (``rtvoice_frames_in_total``), and
``rtvoice_frames_dropped_total`` / ``rtvoice_frames_late_total`` must not move. A step passes when the p99 of
server-added latency is <= ``--budget-ms`` (5) with no drops and no lost connection. A step where the
generator itself fell behind (its send lateness p99 over 5 ms) is reported as generator-limited, not as a
server result. The figure per mode is the largest passing N.

Output (``--out``, default ``bench-load/``): ``load.md`` (the table), ``load.png`` (latency percentiles and
CPU against calls), ``load.json`` (all rows).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

FRAME_S = 0.020
SLOTS = 20  # one slot per ms of the 20 ms frame period
MODES = ("echo", "pcmu", "pcm")
MODE_ENV: dict[str, dict[str, str]] = {
    "echo": {"RTVOICE_AGENT": "echo"},
    "pcmu": {"RTVOICE_AGENT": "openai", "OPENAI_AUDIO_FORMAT": "pcmu"},
    "pcm": {"RTVOICE_AGENT": "openai", "OPENAI_AUDIO_FORMAT": "pcm"},
}
MODE_TITLE = {
    "echo": "echo agent",
    "pcmu": "openai, pcmu pass-through + local VAD",
    "pcm": "openai, pcm 24 kHz (transcoding + VAD)",
}
AUTH_TOKEN = "loadbench-auth-token"
ACCOUNT_SID = "AC" + "0" * 32
#: Generator send lateness (p99, ms) above which a failed step is called generator-limited (a frame period).
GEN_LATE_LIMIT_MS = 20.0
#: Share of the window the server spent waiting for its core (other processes on it) above which a failed,
#: unsaturated step is blamed on the machine.
RUNQ_LIMIT_PCT = 2.0


# --- the generator (runs in its own process) ---------------------------------------------------------------


def _client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One client WebSocket frame, FIN set, masked with the zero key (masking is then the identity)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


#: Line noise under the caller's audio, RMS in int16 units (~-62 dBFS): a real line is never digitally silent
#: (an all-zero frame lets the echo canceller and the VAD skip work a real call makes them do).
LINE_NOISE_RMS = 25.0


def _caller_loop() -> list[bytes]:
    """Base64 of each 20 ms frame of the caller's loop: a fixture utterance, then 3 s of silence, all over
    low-level line noise (seeded, so every run sends the same audio)."""
    from importlib import resources

    import numpy as np

    from rtvoice.audio import ulaw_decode, ulaw_encode

    try:
        speech = resources.files("rtvoice").joinpath("fixtures/book.ulaw").read_bytes()
    except OSError:
        speech = b""
    codes = speech + b"\xff" * 24000
    codes += b"\xff" * (-len(codes) % 160)
    pcm = np.zeros(len(codes), dtype=np.int16)
    ulaw_decode(codes, pcm)
    noise = np.random.default_rng(7).normal(0.0, LINE_NOISE_RMS, len(codes))
    mixed = np.clip(pcm.astype(np.float64) + noise, -32768, 32767).astype(np.int16)
    audio = bytearray(len(codes))
    ulaw_encode(mixed, audio)
    return [base64.b64encode(bytes(audio[i : i + 160])) for i in range(0, len(audio), 160)]


MEDIA_FMT = (
    b'{"event":"media","sequenceNumber":"%d","streamSid":"%s","media":{"track":"inbound",'
    b'"chunk":"%d","timestamp":"%d","payload":"%s"}}'
)
MARK_FMT = b'{"event":"mark","sequenceNumber":"%d","streamSid":"%s","mark":{"name":"%s"}}'


@dataclass
class GenStats:
    """What one generator process saw during the measurement window (and in total)."""

    calls: int = 0
    connected: int = 0
    connect_failed: int = 0
    #: Calls the server refused at the webhook (``<Reject>``: RTVOICE_MAX_CALLS or overload).
    refused: int = 0
    frames_sent_total: int = 0
    frames_sent: int = 0
    late_frames: int = 0
    lag_samples: list[float] = field(default_factory=list)
    media_received: int = 0
    marks_echoed: int = 0
    clears: int = 0
    lost: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)


class LoadCall(asyncio.Protocol):
    """One call's Media Stream, from the caller's side (see the module docstring)."""

    def __init__(self, gen: Generator, stream_sid: bytes, offset: int) -> None:
        self.gen = gen
        self.sid = stream_sid
        self.frame = offset  # index into the caller loop
        self.chunk = 0
        self.seq = 0
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.handshake = asyncio.get_running_loop().create_future()
        self.upgraded = False
        self.play_end = 0.0
        self.pending: deque[tuple[float, bytes]] = deque()
        self.closed = False
        self.stopping = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed and not self.stopping:
            self.gen.stats.lost += 1
        self.closed = True
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("closed during the handshake"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            if self.handshake.done():  # the connect already timed out: the late answer changes nothing
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.handshake.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1")))
                return
            self.upgraded = True
            self.handshake.set_result(None)
        stats = self.gen.stats
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1] & 0x7F
            hl = 2
            if b1 == 126:
                if n - pos < 4:
                    break
                b1 = (buf[pos + 2] << 8) | buf[pos + 3]
                hl = 4
            elif b1 == 127:
                if n - pos < 10:
                    break
                b1 = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hl = 10
            if n - pos < hl + b1:
                break
            start = pos + hl
            pos = start + b1
            opcode = b0 & 0x0F
            if opcode == 0x1:
                # rtvoice's messages start with {"event":"media"|"mark"|"clear" (fixed templates)
                kind = buf[start + 10 : start + 14]
                if kind == b"medi":
                    stats.media_received += 1
                    now = self.gen.now()
                    self.play_end = (self.play_end if self.play_end > now else now) + FRAME_S
                elif kind == b"mark":
                    body = bytes(buf[start:pos])
                    i = body.find(b'"name":"') + 8
                    self.pending.append((self.play_end, body[i : body.index(b'"', i)]))
                elif kind == b"clea":
                    stats.clears += 1
                    self.play_end = self.gen.now()
                    while self.pending:
                        self._echo(self.pending.popleft()[1])
            elif opcode == 0x8:
                code = str((buf[start] << 8) | buf[start + 1]) if b1 >= 2 else "none"
                stats.close_codes[code] = stats.close_codes.get(code, 0) + 1
                if not self.stopping:
                    stats.lost += 1
                self.closed = True
                if self.transport is not None:
                    self.transport.close()
                break
        del buf[:pos]

    # --- sending
    def _echo(self, name: bytes) -> None:
        self.seq += 1
        self._send(MARK_FMT % (self.seq, self.sid, name))
        self.gen.stats.marks_echoed += 1

    def _send(self, payload: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(_client_frame(payload))

    def tick(self, now: float) -> None:
        """Send this call's next media frame and echo the marks whose audio has played by now."""
        pending = self.pending
        while pending and pending[0][0] <= now:
            self._echo(pending.popleft()[1])
        loop_frames = self.gen.frames
        self.seq += 1
        self.chunk += 1
        payload = loop_frames[self.frame % len(loop_frames)]
        self.frame += 1
        self._send(MEDIA_FMT % (self.seq, self.sid, self.chunk, (self.chunk - 1) * 20, payload))


class Generator:
    """Many :class:`LoadCall` s, one ticker (see the module docstring)."""

    def __init__(self, base_url: str, n_calls: int, connect_concurrency: int = 32) -> None:
        self.base_url = base_url.rstrip("/")
        self.n_calls = n_calls
        self.connect_concurrency = connect_concurrency
        self.frames = _caller_loop()
        self.stats = GenStats(calls=n_calls)
        self.slots: list[list[LoadCall]] = [[] for _ in range(SLOTS)]
        self.calls: list[LoadCall] = []
        self.measuring = False
        self._stop = False
        self.now = time.monotonic

    async def _open_call(self, index: int, sem: asyncio.Semaphore) -> None:
        from rtvoice.sim.twilio import _Http
        from rtvoice.twilio.twiml import first_verb, parse_stream_twiml

        async with sem:
            call_sid = "CA" + secrets.token_hex(16)
            form = {
                "AccountSid": ACCOUNT_SID,
                "ApiVersion": "2010-04-01",
                "CallSid": call_sid,
                "CallStatus": "ringing",
                "Called": "+15557654321",
                "Caller": "+15551234567",
                "Direction": "inbound",
                "From": "+15551234567",
                "To": "+15557654321",
            }
            try:
                status, body = await _Http.post_form(self.base_url + "/incoming-call", form, [], 30.0)
                if status != 200:
                    raise ConnectionError(f"webhook {status}")
                if first_verb(body)[0] == "Reject":  # admission control said busy: not a failure
                    self.stats.refused += 1
                    return
                twiml = parse_stream_twiml(body)
                parts = urlsplit(twiml.stream_url)
                target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                base = urlsplit(self.base_url)
                host, port = base.hostname or "127.0.0.1", base.port or 80
                loop = asyncio.get_running_loop()
                sid = ("MZ" + secrets.token_hex(16)).encode()
                call = LoadCall(self, sid, random.randrange(len(self.frames)))
                await loop.create_connection(lambda: call, host, port)
                key = base64.b64encode(secrets.token_bytes(16)).decode()
                assert call.transport is not None
                call.transport.write(
                    (
                        f"GET {target} HTTP/1.1\r\nHost: {base.netloc}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                        "User-Agent: Twilio.TmeWs/1.0\r\n\r\n"
                    ).encode()
                )
                await asyncio.wait_for(call.handshake, 30.0)
            except Exception as exc:
                self.stats.connect_failed += 1
                print(f"gen: call {index} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                return
            call._send(b'{"event":"connected","protocol":"Call","version":"1.0.0"}')
            call.seq = 1
            start = {
                "event": "start",
                "sequenceNumber": "1",
                "start": {
                    "accountSid": ACCOUNT_SID,
                    "streamSid": sid.decode(),
                    "callSid": call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": dict(twiml.parameters),
                },
                "streamSid": sid.decode(),
            }
            call._send(json.dumps(start, separators=(",", ":")).encode())
            self.calls.append(call)
            self.slots[index % SLOTS].append(call)
            self.stats.connected += 1

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        stats = self.stats
        t0 = time.monotonic()
        k = 0
        while not self._stop:
            due = t0 + k * (FRAME_S / SLOTS)
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
                now = time.monotonic()
            lag = now - due
            if lag > 0.5:  # hopelessly behind (e.g. the machine stalled): resync rather than burst
                t0 += lag
            group = self.slots[k % SLOTS]
            for call in group:
                call.tick(now)
            sent = len(group)
            stats.frames_sent_total += sent
            if self.measuring and sent:
                stats.frames_sent += sent
                stats.lag_samples.append(lag * 1000)
                if lag > FRAME_S:
                    stats.late_frames += sent
            k += 1
            if k % 2000 == 0:
                await asyncio.sleep(0)
        del loop

    async def run(self, commands: asyncio.Queue[str]) -> None:
        sem = asyncio.Semaphore(self.connect_concurrency)
        ticker = asyncio.create_task(self._ticker())
        await asyncio.gather(*(self._open_call(i, sem) for i in range(self.n_calls)))
        _emit(
            {
                "ready": True,
                "connected": self.stats.connected,
                "failed": self.stats.connect_failed,
                "refused": self.stats.refused,
            }
        )
        while True:
            cmd = await commands.get()
            if cmd == "measure":
                self.stats.lag_samples.clear()
                self.stats.frames_sent = self.stats.late_frames = 0
                self.stats.media_received = self.stats.marks_echoed = 0
                self.measuring = True
            elif cmd == "window":
                self.measuring = False
                _emit({"window": self._window()})
            elif cmd == "stop":
                break
        self._stop = True
        await ticker
        for call in self.calls:
            call.stopping = True
            call.seq += 1
            call._send(
                b'{"event":"stop","sequenceNumber":"%d","streamSid":"%s","stop":{"accountSid":"%s",'
                b'"callSid":"CA0"}}' % (call.seq, call.sid, ACCOUNT_SID.encode())
            )
            if call.transport is not None and not call.closed:
                call.transport.write(_close_payload())
        await asyncio.sleep(1.0)
        for call in self.calls:
            if call.transport is not None:
                call.transport.close()
        _emit({"done": {"frames_sent_total": self.stats.frames_sent_total, "lost": self.stats.lost}})

    def _window(self) -> dict[str, Any]:
        s = self.stats
        lags = sorted(s.lag_samples)
        return {
            "frames_sent": s.frames_sent,
            "late_frames": s.late_frames,
            "lag_p99_ms": lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
            "lag_max_ms": lags[-1] if lags else 0.0,
            "media_received": s.media_received,
            "marks_echoed": s.marks_echoed,
            "clears": s.clears,
            "lost": s.lost,
            "connected": s.connected,
            "close_codes": s.close_codes,
        }


def _close_payload() -> bytes:
    # a close frame (opcode 8) with code 1000, masked with the zero key
    return b"\x88\x82\0\0\0\0\x03\xe8"


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _gen_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m rtvoice.bench.load gen")
    p.add_argument("--url", required=True)
    p.add_argument("--calls", type=int, required=True)
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[str] = asyncio.Queue()

        def on_stdin() -> None:
            line = sys.stdin.readline()
            commands.put_nowait(line.strip() or "stop")

        loop.add_reader(sys.stdin.fileno(), on_stdin)
        gen = Generator(args.url, args.calls)
        await gen.run(commands)

    asyncio.run(main())
    return 0


# --- the driver ---------------------------------------------------------------------------------------------


def _pin(core: int | None) -> Any:
    if core is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {core})

    return pin


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _proc_runq_s(pid: int) -> float:
    """Seconds the process's main thread (the event loop) spent runnable but waiting for a CPU
    (``/proc/PID/schedstat``): on a shared machine, mostly the time other processes held the server's core."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def _http_get(url: str, timeout: float = 20.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only
        data: bytes = resp.read()
        return data


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _counters(base: str) -> dict[str, float]:
    text = _http_get(base + "/metrics").decode()
    return {
        k: _metric(text, "rtvoice_" + k)
        for k in ("frames_in_total", "frames_out_total", "frames_dropped_total", "frames_late_total",
                  "active_calls")
    }


@dataclass
class Row:
    """One step of the ramp."""

    mode: str
    calls: int
    connected: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    wait_p99_ms: float
    proc_p99_ms: float
    frames_sent: int
    dropped: int
    late: int
    lost: int
    cpu_pct: float
    rss_mb: float
    rss_per_call_kb: float
    vendor_cpu_pct: float
    gen_cpu_pct: float
    gen_lag_p99_ms: float
    gc_max_ms: float
    runq_pct: float
    media_out: int
    marks: int
    limit: str
    passed: bool
    #: Server CPU per inbound frame of the window (µs).
    us_per_frame: float = 0.0
    #: Calls the server refused (admission control, ``--max-calls`` / ``--overload-lag-ms``).
    refused: int = 0
    #: The vendor -> Twilio direction: p99 / max of wait + vendor-message processing (ms), messages measured.
    out_p99_ms: float = 0.0
    out_max_ms: float = 0.0
    vendor_msgs: int = 0
    #: Collections in the window per generation (young, middle, old).
    gc_counts: tuple[int, int, int] = (0, 0, 0)
    #: Loop-lag samples over 5 ms in the window, and the share of them a GC pause overlapped (%).
    late_samples: int = 0
    late_gc_pct: float = 0.0
    #: The socket floor at the same call count (:func:`measure_floor`, µs per frame); 0 = not measured.
    floor_us_per_frame: float = 0.0

    @classmethod
    def failed(cls, mode: str, calls: int, limit: str) -> Row:
        """A step that could not be measured (e.g. the server stopped answering)."""
        inf = float("inf")
        return cls(
            mode=mode, calls=calls, connected=0, p50_ms=inf, p99_ms=inf, max_ms=inf, wait_p99_ms=inf,
            proc_p99_ms=inf, frames_sent=0, dropped=-1, late=-1, lost=-1, cpu_pct=0.0, rss_mb=0.0,
            rss_per_call_kb=0.0, vendor_cpu_pct=0.0, gen_cpu_pct=0.0, gen_lag_p99_ms=0.0, gc_max_ms=0.0,
            runq_pct=0.0, media_out=0, marks=0, limit=limit, passed=False,
        )


class _Proc:
    def __init__(self, cmd: list[str], env: dict[str, str], core: int | None, pipe: bool = False) -> None:
        self.p = subprocess.Popen(
            cmd,
            env=env,
            preexec_fn=_pin(core),
            stdin=subprocess.PIPE if pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe else subprocess.DEVNULL,
            stderr=None if pipe else subprocess.DEVNULL,
            text=True,
        )

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def read(self, key: str, timeout: float) -> dict[str, Any]:
        assert self.p.stdout is not None
        import select

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r, _, _ = select.select([self.p.stdout], [], [], max(0.0, end - time.monotonic()))
            if not r:
                break
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"generator exited (rc={self.p.poll()})")
            msg: dict[str, Any] = json.loads(line)
            if key in msg:
                return msg
        raise TimeoutError(f"no {key!r} from the generator in {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


# --- the socket floor (runs in its own processes) -----------------------------------------------------------
#
# What the syscalls alone cost on this host: a process pinned to the server's core that does nothing but what
# rtvoice's media path must do per frame at the socket level, at the same call count and frame rate: read one
# Twilio-sized WebSocket frame per call every 20 ms (the calls spread over the 20 one-millisecond slots, as
# the generator does) and write one vendor-sized append (2 frames of audio, masked text frame) per call every
# second frame to a reader on the other core. No parsing, no audio, no JSON: the bytes are precomputed. Its
# CPU per inbound frame is the floor any server pays here (loopback TCP: the kernel's receive side of each
# send is partly charged to the sender). The reader parses each append as JSON (a vendor does at least that).
# Each append is written as its frame is read, as rtvoice does.


def _floor_frames(mode: str) -> tuple[bytes, bytes]:
    """(Twilio media frame as the server receives it, vendor append as the server sends it) for ``mode``."""
    payload = base64.b64encode(b"\xff" * 160)
    media = _client_frame(MEDIA_FMT % (12345, b"MZ" + b"0" * 32, 12344, 246880, payload))
    audio = b"\0" * (320 if mode != "pcm" else 1920)  # 2 frames: μ-law 8 kHz, or 16-bit PCM 24 kHz
    append = b'{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(audio) + b'"}'
    return media, _client_frame(append)


def _floor_server_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m rtvoice.bench.load floor-server")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sink-port", type=int, required=True)
    p.add_argument("--mode", default="pcmu")
    args = p.parse_args(argv)
    import resource

    import uvloop

    media, append = _floor_frames(args.mode)
    flen = len(media)
    state = {"frames": 0}
    class Sink(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

    class Call(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = 0
            self.n = 0
            self.vendor: Any = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            loop = asyncio.get_running_loop()

            async def dial() -> None:
                _, sink = await loop.create_connection(Sink, "127.0.0.1", args.sink_port)
                self.vendor = sink.transport

            self.dialing = loop.create_task(dial())

        def data_received(self, data: bytes) -> None:
            self.buf += len(data)
            while self.buf >= flen:
                self.buf -= flen
                self.n += 1
                state["frames"] += 1
                if self.n & 1 == 0 and self.vendor is not None:
                    self.vendor.write(append)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Call, "127.0.0.1", args.port, backlog=4096)

        def on_stdin() -> None:
            line = sys.stdin.readline().strip()
            if line == "mark":
                ru = resource.getrusage(resource.RUSAGE_SELF)
                _emit({"mark": {"frames": state["frames"], "cpu_s": ru.ru_utime + ru.ru_stime}})
            elif not line or line == "stop":
                server.close()
                stop.set_result(None)

        stop: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sys.stdin.fileno(), on_stdin)
        _emit({"ready": True})
        await stop

    uvloop.run(main())
    return 0


def _floor_peer_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m rtvoice.bench.load floor-peer")
    p.add_argument("--sink-port", type=int, required=True)
    p.add_argument("--mode", default="pcmu")
    args = p.parse_args(argv)
    import uvloop

    media, append = _floor_frames(args.mode)
    alen = len(append)
    hlen = 2 + (2 if append[1] & 0x7F == 126 else 8 if append[1] & 0x7F == 127 else 0) + 4  # header + key

    class Sink(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data
            while len(buf) >= alen:
                json.loads(buf[hlen:alen])  # the zero key: the payload is plain JSON
                buf = buf[alen:]
            self.buf = buf

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(Sink, "127.0.0.1", args.sink_port, backlog=4096)
        _emit({"ready": True})
        calls: list[list[asyncio.Transport]] = [[] for _ in range(SLOTS)]
        ticker: asyncio.Task[None] | None = None

        async def tick() -> None:
            t = loop.time()
            k = 0
            while True:
                t += FRAME_S / SLOTS
                await asyncio.sleep(max(0.0, t - loop.time()))
                for tr in calls[k % SLOTS]:
                    if not tr.is_closing():  # the server side goes first at the end
                        tr.write(media)
                k += 1

        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            cmd = line.split()
            if not cmd or cmd[0] == "stop":
                return
            if cmd[0] == "connect":
                port, n = int(cmd[1]), int(cmd[2])
                for i in range(n):
                    tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
                    calls[i % SLOTS].append(tr)
                if ticker is None:
                    ticker = loop.create_task(tick())
                _emit({"connected": n})

    uvloop.run(main())
    return 0


def measure_floor(mode: str, n_calls: int, args: argparse.Namespace) -> dict[str, float]:
    """The socket floor at ``n_calls`` (see the section comment): server-core CPU µs per inbound frame."""
    sink_port, port = _free_port(), _free_port()
    mod = [sys.executable, "-m", "rtvoice.bench.load"]
    peer = _Proc([*mod, "floor-peer", "--sink-port", str(sink_port), "--mode", mode], dict(os.environ),
                 args.other_core, pipe=True)
    server: _Proc | None = None
    try:
        peer.read("ready", 30)
        server = _Proc([*mod, "floor-server", "--port", str(port), "--sink-port", str(sink_port), "--mode", mode],
                       dict(os.environ), args.server_core,
                       pipe=True)
        server.read("ready", 30)
        peer.send(f"connect {port} {n_calls}")
        peer.read("connected", 60 + n_calls / 10)
        time.sleep(min(2.0, args.warmup))
        server.send("mark")
        m0 = server.read("mark", 10)["mark"]
        runq0 = _proc_runq_s(server.p.pid)
        t0 = time.monotonic()
        time.sleep(max(1.0, min(5.0, args.duration)))
        server.send("mark")
        m1 = server.read("mark", 10)["mark"]
        wall = time.monotonic() - t0
        runq1 = _proc_runq_s(server.p.pid)
    finally:
        for proc in (server, peer):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.send("stop")
                proc.stop()
    frames = max(1, m1["frames"] - m0["frames"])
    cpu = m1["cpu_s"] - m0["cpu_s"]
    return {
        "us_per_frame": round(cpu / frames * 1e6, 2),
        "cpu_pct": round(100 * cpu / wall, 1),
        "frames_per_s": round(frames / wall, 0),
        "runq_pct": round(100 * (runq1 - runq0) / wall, 1),
    }


def _wait_http(url: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            _http_get(url, 2.0)
            return
        except Exception:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def _latency(snapshot: dict[str, Any]) -> tuple[float, float, float, float, float]:
    from rtvoice.server import loadprobe as lp

    lag = {int(k): v for k, v in snapshot["loop_lag"]["buckets"].items()}
    proc = {int(k): v for k, v in snapshot["frame"]["buckets"].items()}
    dist = lp.convolve(lag, proc)
    p50 = lp.quantile_us(dist, 0.50) / 1000
    p99 = lp.quantile_us(dist, 0.99) / 1000
    mx = (snapshot["loop_lag"]["max_ns"] + snapshot["frame"]["max_ns"]) / 1e6
    return p50, p99, mx, lp.percentile_us(lag, 0.99) / 1000, lp.percentile_us(proc, 0.99) / 1000


def _latency_out(snapshot: dict[str, Any]) -> tuple[float, float, int]:
    """The vendor -> Twilio direction: p99 and max (ms) of wait + vendor-message processing, and how many
    vendor messages were measured (0 in echo mode: no vendor; then p99 and max are 0)."""
    from rtvoice.server import loadprobe as lp

    vendor = snapshot.get("vendor") or {"buckets": {}, "max_ns": 0, "count": 0}
    if not vendor["count"]:
        return 0.0, 0.0, 0
    lag = {int(k): v for k, v in snapshot["loop_lag"]["buckets"].items()}
    dist = lp.convolve(lag, {int(k): v for k, v in vendor["buckets"].items()})
    mx = (snapshot["loop_lag"]["max_ns"] + vendor["max_ns"]) / 1e6
    return lp.quantile_us(dist, 0.99) / 1000, mx, int(vendor["count"])


class Scenario:
    """One mode: a server (and emulator) started once, then the ramp."""

    def __init__(self, mode: str, args: argparse.Namespace, workdir: Path) -> None:
        self.mode = mode
        self.args = args
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update(MODE_ENV[mode])
        env.update(
            {
                "RTVOICE_LOAD_PROBE": "1",
                "RTVOICE_VALIDATE_SIGNATURES": "0",
                "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                "RTVOICE_LOG_LEVEL": "WARNING",
                "RTVOICE_MAX_CONNECTIONS": "100000",
                "RTVOICE_DB_PATH": str(workdir / f"calls-{mode}.db"),
                "PYTHONUNBUFFERED": "1",
                "RTVOICE_FASTPATH": "0" if args.no_fastpath else "1",
                # admission control: off unless asked for, so that the ramp measures what the core carries
                "RTVOICE_MAX_CALLS": str(getattr(args, "max_calls", 0) or 0),
                "RTVOICE_OVERLOAD_LAG_MS": str(getattr(args, "overload_lag_ms", 0.0) or 0),
            }
        )
        for item in getattr(args, "server_env", None) or []:
            name, _, value = item.partition("=")
            env[name] = value
        baseline = getattr(args, "server_pythonpath", None)
        if baseline:
            # --ab-baseline: this server runs another source tree (e.g. ``git archive`` of an older commit)
            env["PYTHONPATH"] = baseline + os.pathsep + env.get("PYTHONPATH", "")
        self.vendor: _Proc | None = None
        self.profiles: list[Path] = []
        if mode != "echo":
            vport = _free_port()
            env["OPENAI_API_KEY"] = "sk-loadbench"
            env["OPENAI_WEBSOCKET_BASE_URL"] = f"ws://127.0.0.1:{vport}/v1"
            env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{vport}/v1"
            self.vendor = _Proc(
                [sys.executable, "-m", "rtvoice", "emulate", "openai", "--port", str(vport)],
                dict(os.environ),
                args.other_core,
            )
        self.server = _Proc(
            [sys.executable, "-m", "rtvoice", "serve", "--workers", "1", "--host", "127.0.0.1",
             "--port", str(self.port)],
            env,
            args.server_core,
        )
        _wait_http(self.base + "/healthz")
        _http_get(self.base + "/debug/latency?reset=1")  # arms the loop-lag timer
        time.sleep(0.5)
        self.rss_idle = _proc_rss_mb(self.server.p.pid)

    def close(self) -> None:
        self.server.stop()
        if self.vendor is not None:
            self.vendor.stop()

    def _start_profile(self, n_calls: int) -> subprocess.Popen[bytes] | None:
        if n_calls not in self.args.profile_at:
            return None
        variant = "-nofast" if getattr(self.args, "no_fastpath", False) else ""
        if getattr(self.args, "server_pythonpath", None):
            variant = "-baseline"
        elif getattr(self.args, "ab_env", None) and not getattr(self.args, "server_env", None):
            variant = "-without-env"
        path = Path(self.args.out) / f"profile-{self.mode}-{n_calls}{variant}.txt"
        # blocking sampling (py-spy pauses the server ~0.1 ms per sample): consistent stacks, ~2 % overhead
        cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw",
               "-r", "200", "-d", str(max(1, int(self.args.duration) - 1)), "-o", str(path),
               "-p", str(self.server.p.pid)]
        if self.args.native:
            cmd.insert(2, "--native")
        if self.args.threads:
            cmd.insert(2, "--threads")
        self.profiles.append(path)
        return subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_pin(self.args.other_core)
        )

    def step(self, n_calls: int) -> Row:
        args = self.args
        per = max(1, args.calls_per_generator)
        sizes = [per] * (n_calls // per) + ([n_calls % per] if n_calls % per else [])
        before = _counters(self.base)
        gens = [
            _Proc(
                [sys.executable, "-m", "rtvoice.bench.load", "gen", "--url", self.base, "--calls", str(n)],
                dict(os.environ),
                args.other_core,
                pipe=True,
            )
            for n in sizes
        ]
        try:
            ready = [g.read("ready", 60 + n_calls / 10) for g in gens]
            connected = sum(int(r["connected"]) for r in ready)
            refused = sum(int(r.get("refused", 0)) for r in ready)
            time.sleep(args.warmup)
            gen_cpu0 = sum(_proc_cpu_s(g.p.pid) for g in gens)
            vend_cpu0 = _proc_cpu_s(self.vendor.p.pid) if self.vendor else 0.0
            cpu0, t0 = _proc_cpu_s(self.server.p.pid), time.monotonic()
            runq0 = _proc_runq_s(self.server.p.pid)
            _http_get(self.base + "/debug/latency?reset=1")
            for g in gens:
                g.send("measure")
            spy = self._start_profile(n_calls)
            time.sleep(args.duration)
            if spy is not None:
                spy.wait(args.duration + 30)
            snap = json.loads(_http_get(self.base + "/debug/latency?reset=1"))
            cpu1, t1 = _proc_cpu_s(self.server.p.pid), time.monotonic()
            runq1 = _proc_runq_s(self.server.p.pid)
            vend_cpu1 = _proc_cpu_s(self.vendor.p.pid) if self.vendor else 0.0
            gen_cpu1 = sum(_proc_cpu_s(g.p.pid) for g in gens)
            rss = _proc_rss_mb(self.server.p.pid)
            for g in gens:
                g.send("window")
            windows = [g.read("window", 30)["window"] for g in gens]
            for g in gens:
                g.send("stop")
            done = [g.read("done", 60)["done"] for g in gens]
        finally:
            for g in gens:
                g.stop()
        # let the server finish the calls, then count what arrived
        end = time.monotonic() + 30
        after = _counters(self.base)
        while after["active_calls"] > 0 and time.monotonic() < end:
            time.sleep(0.5)
            after = _counters(self.base)
        time.sleep(0.5)
        after = _counters(self.base)
        sent_total = sum(int(d["frames_sent_total"]) for d in done)
        received = int(after["frames_in_total"] - before["frames_in_total"])
        dropped = max(0, sent_total - received) + int(
            after["frames_dropped_total"] - before["frames_dropped_total"]
        )
        late = int(after["frames_late_total"] - before["frames_late_total"])
        lost = sum(int(w["lost"]) for w in windows) + (n_calls - connected - refused)
        p50, p99, mx, wait99, proc99 = _latency(snap)
        out99, out_mx, vendor_msgs = _latency_out(snap)
        wall = t1 - t0
        gen_lag = max((float(w["lag_p99_ms"]) for w in windows), default=0.0)
        row = Row(
            mode=self.mode,
            calls=n_calls,
            connected=connected,
            p50_ms=round(p50, 3),
            p99_ms=round(p99, 3),
            max_ms=round(mx, 3),
            wait_p99_ms=round(wait99, 3),
            proc_p99_ms=round(proc99, 3),
            frames_sent=sum(int(w["frames_sent"]) for w in windows),
            dropped=dropped,
            late=late,
            lost=lost,
            cpu_pct=round(100 * (cpu1 - cpu0) / wall, 1),
            rss_mb=round(rss, 1),
            rss_per_call_kb=round(1024 * (rss - self.rss_idle) / max(1, connected), 1),
            vendor_cpu_pct=round(100 * (vend_cpu1 - vend_cpu0) / wall, 1),
            gen_cpu_pct=round(100 * (gen_cpu1 - gen_cpu0) / wall, 1),
            gen_lag_p99_ms=round(gen_lag, 2),
            gc_max_ms=round(snap["gc_pause"]["max_ns"] / 1e6, 2),
            runq_pct=round(100 * (runq1 - runq0) / wall, 1),
            media_out=sum(int(w["media_received"]) for w in windows),
            marks=sum(int(w["marks_echoed"]) for w in windows),
            limit="",
            passed=False,
            us_per_frame=round(1e6 * (cpu1 - cpu0) / max(1, sum(int(w["frames_sent"]) for w in windows)), 1),
            refused=refused,
            out_p99_ms=round(out99, 3),
            out_max_ms=round(out_mx, 3),
            vendor_msgs=vendor_msgs,
            gc_counts=tuple(int(g[0]) for g in snap.get("gc_by_gen", [[0], [0], [0]])),  # type: ignore[arg-type]
            late_samples=int(snap.get("late_samples", 0)),
            late_gc_pct=round(100 * int(snap.get("late_samples_gc", 0)) / max(1, int(snap.get("late_samples", 0))), 0),
        )
        ok_server = (
            row.p99_ms <= args.budget_ms and row.out_p99_ms <= args.budget_ms
            and row.dropped == 0 and row.lost == 0 and row.late == 0
        )
        # A failed step is blamed on whichever process could not keep up: the generator when its own sends
        # ran a frame period late, the vendor emulator when it used its whole core, else the server. A step
        # that passes while the generator lagged still counts: a late generator only makes the input burstier.
        if not ok_server:
            if gen_lag > GEN_LATE_LIMIT_MS and row.cpu_pct < 90:
                row.limit = "generator"
            elif row.vendor_cpu_pct > 90 and row.cpu_pct < 90:
                row.limit = "vendor"
            elif row.runq_pct > RUNQ_LIMIT_PCT and row.cpu_pct < 90:
                row.limit = "machine"  # other processes held the server's core
            else:
                row.limit = "server"
        row.passed = ok_server
        return row


def profile_top(path: Path, n: int = 15) -> str:
    """Top functions of a py-spy ``raw`` (collapsed stacks) profile: self % and total % of samples.

    Samples of idle helper threads are left out (the records writer parked in ``Condition.wait`` or in its
    gathering ``sleep``, which py-spy shows as ``_writer`` itself): they cost no CPU and would dilute every
    share. The writer's real work (``_apply``, SQLite) stays in."""
    self_: dict[str, int] = {}
    total_: dict[str, int] = {}
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        if leaf.startswith(("Condition.wait ", "CallRecords._writer ")):
            continue
        c = int(count)
        samples += c
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        self_[frames[-1]] = self_.get(frames[-1], 0) + c
        for f in set(frames):
            total_[f] = total_.get(f, 0) + c
    if not samples:
        return "(no samples)\n"
    out = [f"{samples} samples", "| self % | total % | function |", "|---:|---:|---|"]
    for name, c in sorted(self_.items(), key=lambda kv: -kv[1])[:n]:
        out.append(f"| {100 * c / samples:.1f} | {100 * total_[name] / samples:.1f} | `{name}` |")
    return "\n".join(out) + "\n"


def format_table(rows: list[Row]) -> str:
    head = (
        "| mode | calls | refused | p50 ms | p99 ms | max ms | wait p99 | proc p99 | out p99 ms | out max ms "
        "| dropped | late | lost "
        "| server CPU % | RSS MB | RSS/call KB | vendor CPU % | gen CPU % | gen lag p99 ms "
        "| GC max ms (collections g0/g1/g2) | late samples (GC %) | run-queue wait % | pass | CPU µs/frame "
        "| socket floor µs/frame | floor share |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        "---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n"
    )
    lines = [
        f"| {r.mode} | {r.calls} | {r.refused} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.max_ms:.1f} "
        f"| {r.wait_p99_ms:.2f} "
        f"| {r.proc_p99_ms:.2f} | {_out_cell(r.out_p99_ms, r)} | {_out_cell(r.out_max_ms, r)} "
        f"| {r.dropped} | {r.late} | {r.lost} | {r.cpu_pct:.0f} | {r.rss_mb:.0f} "
        f"| {r.rss_per_call_kb:.0f} | {r.vendor_cpu_pct:.0f} | {r.gen_cpu_pct:.0f} | {r.gen_lag_p99_ms:.1f} "
        f"| {r.gc_max_ms:.1f} ({'/'.join(map(str, r.gc_counts))}) | {r.late_samples} ({r.late_gc_pct:.0f} %) "
        f"| {r.runq_pct:.1f} "
        f"| {'yes' if r.passed else 'no (' + (r.limit or 'budget') + ')'} "
        f"| {r.us_per_frame:.1f} | {_floor_cell(r)} | {_floor_share(r)} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def _out_cell(value: float, r: Row) -> str:
    return f"{value:.2f}" if r.vendor_msgs else "-"


def _floor_cell(r: Row) -> str:
    return f"{r.floor_us_per_frame:.1f}" if r.floor_us_per_frame else "-"


def _floor_share(r: Row) -> str:
    """The floor as a share of the server's CPU per frame: how much of the cost is the syscalls alone."""
    if not r.floor_us_per_frame or not r.us_per_frame:
        return "-"
    return f"{100 * r.floor_us_per_frame / r.us_per_frame:.0f} %"


def calls_per_core(rows: list[Row]) -> dict[str, int]:
    """Per mode, the largest passing call count below the first step the server itself failed (a step failed
    because of the machine or the generator is inconclusive, not a failure); 0 if none passed. Calls the
    server refused (admission control) do not count: only the calls it carried."""
    out: dict[str, int] = {}
    for mode in dict.fromkeys(r.mode for r in rows):
        best = 0
        for r in sorted((r for r in rows if r.mode == mode), key=lambda r: r.calls):
            if r.passed:
                best = max(best, r.calls - r.refused)
            elif r.limit.startswith("server"):
                break
        out[mode] = best
    return out


def cpu_capacity(rows: list[Row]) -> dict[str, int]:
    """Per mode, the calls one core would carry if CPU were the only limit: calls / (server CPU share), the
    median over the steps measured at 20-90 % of a core (independent of latency spikes caused by other
    processes on a shared machine; not a substitute for the latency criterion)."""
    out: dict[str, int] = {}
    for mode in dict.fromkeys(r.mode for r in rows):
        est = sorted((r.calls - r.refused) * 100 / r.cpu_pct for r in rows if r.mode == mode and 20 <= r.cpu_pct <= 90)
        out[mode] = int(est[len(est) // 2]) if est else 0
    return out


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode in MODES:
        rs = [r for r in rows if r.mode == mode and r.connected]  # steps that could not be measured: no point
        if not rs:
            continue
        xs = [r.calls for r in rs]
        (line,) = ax1.plot(xs, [r.p99_ms for r in rs], "o-", label=f"{mode} p99")
        ax1.plot(xs, [r.p50_ms for r in rs], "s--", color=line.get_color(), alpha=0.6, label=f"{mode} p50")
        ax1.plot(xs, [r.max_ms for r in rs], ":", color=line.get_color(), alpha=0.4, label=f"{mode} max")
        if any(r.vendor_msgs for r in rs):  # the vendor -> Twilio direction
            ax1.plot(xs, [r.out_p99_ms for r in rs], "^-.", color=line.get_color(), alpha=0.7,
                     label=f"{mode} p99 vendor->Twilio")
        ax2.plot(xs, [r.cpu_pct for r in rs], "o-", color=line.get_color(), label=f"{mode} server")
    ax1.axhline(5.0, color="red", lw=0.8, label="5 ms budget")
    ax1.set_yscale("log")
    ax1.set_xlabel("concurrent calls (one server core)")
    ax1.set_ylabel("server-added latency per frame, ms")
    ax1.legend(fontsize=7)
    ax2.axhline(100.0, color="gray", lw=0.8)
    ax2.set_xlabel("concurrent calls")
    ax2.set_ylabel("server CPU, % of one core")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_load(args: argparse.Namespace) -> list[Row]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for mode in args.modes:
        ramps: dict[str, list[int]] = (
            args.ramp if isinstance(args.ramp, dict) else {"default": list(args.ramp)}
        )
        ramp = ramps.get(mode, ramps["default"])
        sc = Scenario(mode, args, out)
        server_failures = 0
        try:
            for n in ramp:
                try:
                    row = sc.step(n)
                except (OSError, TimeoutError, RuntimeError) as exc:
                    # an overloaded server stops answering its own /metrics within the timeout: a failed step
                    print(f"{mode} {n} calls: step failed: {type(exc).__name__}: {exc}", flush=True)
                    row = Row.failed(mode, n, "server (unresponsive)")
                    rows.append(row)
                    break
                if getattr(args, "floor", False) and mode != "echo" and row.connected:
                    try:
                        row.floor_us_per_frame = measure_floor(mode, n, args)["us_per_frame"]
                    except (OSError, TimeoutError, RuntimeError) as exc:
                        print(f"{mode} {n} calls: socket floor not measured: {exc}", flush=True)
                rows.append(row)
                print(format_table([row]).splitlines()[-1], flush=True)
                # stop at the server's first failure (or its second with --keep-going); a step the machine
                # or the generator failed is inconclusive and the ramp goes on
                if not row.passed and row.limit.startswith("server"):
                    server_failures += 1
                    if server_failures > (1 if args.keep_going else 0):
                        break
        finally:
            sc.close()
        for path in sc.profiles:
            if path.exists():
                print(f"profile {path.name}:\n" + profile_top(path), flush=True)
    return rows


def write_report(rows: list[Row], args: argparse.Namespace) -> str:
    out = Path(args.out)
    cpc = calls_per_core(rows)
    lines = [
        "# rtvoice load benchmark",
        "",
        f"Server pinned to core {args.server_core}; generators and the vendor emulator on core "
        f"{args.other_core}. "
        f"Window {args.duration:.0f} s after {args.warmup:.0f} s warm-up per step; budget p99 <= "
        f"{args.budget_ms} ms server-added latency, no drops. Machine: {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end of the run (shared machine).",
        "",
        "Calls per core (largest passing step):",
        "",
    ]
    cap = cpu_capacity(rows)
    for mode, n in cpc.items():
        lines.append(
            f"- {MODE_TITLE[mode]}: **{n}** (CPU-bound estimate: {cap.get(mode, 0)} calls at 100 % of a core)"
        )
    lines += ["", format_table(rows)]
    if any(r.floor_us_per_frame for r in rows):
        lines += [
            "Socket floor: a process on the server's core doing only the per-frame syscalls of the openai modes "
            "(read one Twilio-sized frame per call every 20 ms, write one vendor-sized append per call every "
            "second frame to a reader on the other core, each append written as its frame is read), at the "
            "step's call count; floor share = floor / server CPU per frame.",
            "",
        ]
    text = "\n".join(lines)
    (out / "load.md").write_text(text)
    (out / "load.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    plot(rows, out / "load.png")
    return text


def run_ab(args: argparse.Namespace) -> str:
    """``--ab N``: the fast paths on and off, alternating, ``--ab-rounds`` times per mode at N calls, each on
    a fresh server. Interleaving puts both variants under the same machine conditions; the minimum server CPU
    over the rounds is the least-disturbed figure of each."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, bool], list[Row]] = {}
    for mode in args.modes:
        for _ in range(args.ab_rounds):
            for fast in (True, False):
                if args.ab_baseline:
                    # "on" = this tree, "off" = the baseline tree (both with their fast paths on)
                    args.server_pythonpath = None if fast else args.ab_baseline
                elif getattr(args, "ab_env", None):
                    # "on" = the server with these environment variables, "off" = without (fast paths on)
                    args.server_env = args.ab_env if fast else None
                else:
                    args.no_fastpath = not fast
                sc = Scenario(mode, args, out)
                try:
                    row = sc.step(args.ab)
                except (OSError, TimeoutError, RuntimeError) as exc:
                    print(f"{mode} fastpath={fast}: step failed: {exc}", flush=True)
                    continue
                finally:
                    sc.close()
                results.setdefault((mode, fast), []).append(row)
                print(f"{mode} fastpath={'on' if fast else 'off'}: " + format_table([row]).splitlines()[-1],
                      flush=True)
    if args.ab_baseline:
        variants = f"this tree / baseline {args.ab_baseline}"
    elif getattr(args, "ab_env", None):
        variants = f"server with {' '.join(args.ab_env)} / without"
    else:
        variants = "fast paths on / off"
    lines = [
        f"A/B at {args.ab} calls, {args.ab_rounds} interleaved rounds ({variants}), server CPU % "
        "of one core and p99 server-added latency per round:",
        "",
        "| mode | fast paths | CPU % per round | min CPU % | CPU µs per frame (min) | p99 ms per round |",
        "|---|---|---|---:|---:|---|",
    ]
    for (mode, fast), rows in results.items():
        cpus = [r.cpu_pct for r in rows]
        per_frame = min(cpus) / 100 / (args.ab * 50) * 1e6
        lines.append(
            f"| {mode} | {'on' if fast else 'off'} | {', '.join(f'{c:.0f}' for c in cpus)} | {min(cpus):.0f} "
            f"| {per_frame:.1f} | {', '.join(f'{r.p99_ms:.2f}' for r in rows)} |"
        )
    if getattr(args, "floor", False):
        lines.append("")
        for mode in args.modes:
            if mode == "echo":
                continue
            try:
                fl = measure_floor(mode, args.ab, args)
            except (OSError, TimeoutError, RuntimeError) as exc:
                lines.append(f"- {mode}: socket floor not measured ({exc})")
                continue
            best = {fast: min(r.us_per_frame or r.cpu_pct / 100 / (args.ab * 50) * 1e6 for r in rows)
                    for (m, fast), rows in results.items() if m == mode}
            floor_us = fl["us_per_frame"]
            servers = ", ".join(
                f"{'on' if k else 'off'} {v:.1f} µs/frame ({100 * floor_us / v:.0f} % of it is the floor)"
                for k, v in best.items()
            )
            lines.append(
                f"- {mode}: socket floor at {args.ab} calls {floor_us:.1f} µs/frame "
                f"(run-queue wait {fl['runq_pct']:.1f} %); server min {servers}"
            )
    text = "\n".join(lines) + "\n"
    (out / "ab.md").write_text(text)
    (out / "ab.json").write_text(
        json.dumps({f"{m}/{'on' if f else 'off'}": [asdict(r) for r in rs] for (m, f), rs in results.items()})
    )
    return text


def _parse_ramp(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def configure(p: argparse.ArgumentParser) -> None:
    """Options of ``python -m rtvoice bench load``."""
    p.add_argument("--modes", default="echo,pcmu,pcm", help="comma list of echo,pcmu,pcm")
    p.add_argument("--ramp", default=None,
                   help="comma list of call counts (default: echo 100..1200, pcmu 50..1000, pcm 50..600)")
    p.add_argument("--duration", type=float, default=10.0, help="measurement window per step, s")
    p.add_argument("--warmup", type=float, default=3.0, help="settle time after all calls connected, s")
    p.add_argument("--budget-ms", type=float, default=5.0, help="p99 server-added latency budget")
    p.add_argument("--calls-per-generator", type=int, default=400, help="calls per generator process")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--other-core", type=int, default=1)
    p.add_argument("--ab", type=int, default=0, metavar="N",
                   help="instead of the ramp: fast paths on/off alternating at N calls (see --ab-rounds)")
    p.add_argument("--ab-rounds", type=int, default=3, help="rounds of the --ab comparison")
    p.add_argument("--no-fastpath", action="store_true", help="server with RTVOICE_FASTPATH=0 (A/B runs)")
    p.add_argument("--ab-baseline", default="", metavar="SRC",
                   help="--ab compares this tree (on) with the package under SRC (off), e.g. a git archive of "
                        "an older commit's src/ with the built _dsp copied in; the server gets PYTHONPATH=SRC")
    p.add_argument("--ab-env", action="append", default=[], metavar="NAME=VALUE",
                   help="--ab compares the server with these environment variables (on) and without (off), "
                        "e.g. RTVOICE_FASTPATH=0; repeatable")
    p.add_argument("--keep-going", action="store_true",
                   help="stop a mode's ramp at the server's second failure, not its first")
    p.add_argument("--profile-at", default="", help="comma list of call counts to profile with py-spy")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--threads", action="store_true", help="py-spy --threads (thread ids in the stacks)")
    p.add_argument("--floor", action=argparse.BooleanOptionalAction, default=None,
                   help="measure the socket floor at the same call count (a process on the server core doing only "
                        "the per-frame syscalls, ~8 s): after each openai step of the ramp (default on), once per "
                        "mode after an --ab comparison (default off: ~100 s, both ways of writing)")
    p.add_argument("--max-calls", type=int, default=0, metavar="N",
                   help="admission control: the server takes N calls and refuses the rest busy "
                        "(RTVOICE_MAX_CALLS; default 0: the ramp measures what the core carries)")
    p.add_argument("--overload-lag-ms", type=float, default=0.0, metavar="MS",
                   help="admission control: the server refuses calls while its loop lag averages over MS "
                        "(RTVOICE_OVERLOAD_LAG_MS; default 0: off)")
    p.add_argument("--out", default="bench-load", help="output directory (load.md, load.png, load.json)")


def run(args: argparse.Namespace) -> int:
    """Run the ramp for each mode, write the report, print the table."""
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in args.modes:
        if m not in MODES:
            print(f"unknown mode {m!r} (choose from {', '.join(MODES)})", file=sys.stderr)
            return 2
    args.profile_at = set(_parse_ramp(args.profile_at or ""))
    if args.ramp:
        args.ramp = _parse_ramp(args.ramp)
    else:
        args.ramp = {
            "default": [100, 200, 300, 400, 500, 600, 800, 1000, 1200],
            "pcmu": [50, 100, 150, 200, 300, 400, 600, 800, 1000],
            "pcm": [50, 100, 150, 200, 300, 400, 500, 600],
        }
    cores = os.cpu_count() or 1
    if max(args.server_core, args.other_core) >= cores:
        args.server_core, args.other_core = 0, 0
    if args.ab:
        args.floor = bool(args.floor)
        print(run_ab(args))
        return 0
    args.floor = args.floor is None or args.floor
    rows = run_load(args)
    print(write_report(rows, args))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "gen":
        sys.exit(_gen_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "floor-server":
        sys.exit(_floor_server_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "floor-peer":
        sys.exit(_floor_peer_main(sys.argv[2:]))
    parser = argparse.ArgumentParser(prog="python -m rtvoice.bench.load")
    configure(parser)
    sys.exit(run(parser.parse_args()))
