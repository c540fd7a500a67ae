"""Per-message server cost of rtvoice's WebSocket path, measured on loopback.

    .venv/bin/python bench/server_echo_cost.py [--messages 20000] [--rounds 3]

Starts ``python -m rtvoice serve --app rtvoice.server.echo_app:build_app`` (uvloop, one worker) in a
subprocess, sends Twilio-sized media messages (a ~330-byte JSON text frame, masked as a client must) in
batches over one WebSocket and reads every echo back. The figure is the *server process's* CPU time (user +
system, from /proc/PID/stat) per message, so the client's own cost does not count: it covers the syscalls,
frame parsing and unmasking, UTF-8 decoding, the handler's ``on_text`` -> ``send_text``, frame serialisation
and the write.

Reference in the same run: the websockets library's own asyncio server (``websockets.asyncio.server.serve``)
on uvloop with the idiomatic ``async for message in ws: await ws.send(message)`` echo. Min over rounds.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from websockets.frames import Frame, Opcode

MEDIA = (
    '{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d","timestamp":"%d",'
    '"payload":"%s"},"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}'
)
REFERENCE_SERVER = textwrap.dedent(
    """
    import asyncio, sys, uvloop
    from websockets.asyncio.server import serve

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        async with serve(echo, "127.0.0.1", int(sys.argv[1]), max_size=65536, compression=None):
            print("ready", flush=True)
            await asyncio.Future()

    uvloop.run(main())
    """
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def run_load(port: int, pid: int, messages: int, batch: int) -> float:
    """Server CPU seconds per message for ``messages`` echoes."""
    sock = handshake(port)
    payload = base64.b64encode(os.urandom(160)).decode()
    frames = [
        Frame(Opcode.TEXT, (MEDIA % (i, i, i * 20, payload)).encode()).serialize(mask=True, extensions=[])
        for i in range(batch)
    ]
    blob = b"".join(frames)
    # Server frames are unmasked with a 2-byte extended length (126..65535 bytes of payload).
    expected = sum(len(f) - 4 for f in frames)  # masked client frame = server frame + 4-byte mask
    # warm up
    sock.sendall(blob)
    got = 0
    while got < expected:
        got += len(sock.recv(1 << 20))
    cpu0 = cpu_seconds(pid)
    for _ in range(messages // batch):
        sock.sendall(blob)
        got = 0
        while got < expected:
            got += len(sock.recv(1 << 20))
    cpu1 = cpu_seconds(pid)
    sock.close()
    return (cpu1 - cpu0) / (messages // batch * batch)


def start(cmd: list[str], ready: str, cwd: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTVOICE_")}
    env["RTVOICE_LOG_LEVEL"] = "WARNING"
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if re.search(ready, line):
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit(f"server did not start: {cmd}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=50, help="messages in flight per round trip")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"rtvoice": [], "websockets": []}
    with tempfile.TemporaryDirectory() as tmp:
        ref_script = Path(tmp, "ref_server.py")
        ref_script.write_text(REFERENCE_SERVER)
        for _ in range(args.rounds):
            for name in results:
                port = free_port()
                if name == "rtvoice":
                    cmd = [sys.executable, "-m", "rtvoice", "serve", "--host", "127.0.0.1"]
                    cmd += ["--port", str(port), "--app", "rtvoice.server.echo_app:build_app"]
                    proc = start(cmd, "serving on", tmp)
                else:
                    proc = start([sys.executable, str(ref_script), str(port)], "ready", tmp)
                try:
                    results[name].append(run_load(port, proc.pid, args.messages, args.batch))
                finally:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    ours, ref = min(results["rtvoice"]), min(results["websockets"])
    print(f"messages per round: {args.messages}, batch {args.batch}, rounds {args.rounds} (min over rounds)")
    print(f"rtvoice server (asyncio.Protocol + ServerProtocol, uvloop): {ours * 1e6:7.2f} µs CPU/message")
    print(f"websockets asyncio server (reference, uvloop):             {ref * 1e6:7.2f} µs CPU/message")
    print(f"ratio reference/rtvoice: {ref / ours:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
