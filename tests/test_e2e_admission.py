"""Call admission end to end: rtvoice's real app on loopback, the simulated Twilio, the echo agent.

A worker at ``max_calls`` answers ``<Reject reason="busy"/>`` (the simulated Twilio ends the call ``busy``
without opening a stream) and ``POST /calls`` 503 with ``Retry-After``, but still takes an outbound call whose
callee has answered; a lagging event loop refuses calls until it recovers; the call already in progress is
never touched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest

from agents_vendor_testutil import wait_until
from e2e_testutil import TOKEN, serving
from rtvoice import metrics
from rtvoice.agents.echo import EchoAgent
from rtvoice.config import Settings
from rtvoice.sim.twilio import CallScript, SimulatedTwilio

TIMEOUT = 60.0
API_TOKEN = "admission-test-token"


def refused(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("rtvoice_calls_refused_total", {"reason": reason}) or 0.0


async def test_full_worker_refuses_new_calls_and_keeps_the_one_it_has(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rtvoice.twilio")
    async with serving(EchoAgent, agent="echo", max_calls=1, api_token=API_TOKEN) as srv:
        twilio = SimulatedTwilio(f"http://127.0.0.1:{srv.port}", auth_token=TOKEN, speed=2.0)
        first = twilio.start_call(CallScript(), max_duration_ms=600_000)
        await first.wait_stream_time(200, timeout_s=TIMEOUT)
        assert srv.registry.active_calls == 1
        before = refused("capacity")

        busy = await twilio.call(CallScript().hangup(at_ms=100), timeout_s=TIMEOUT)
        assert (busy.outcome, busy.webhook_status, busy.ws_status) == ("busy", 200, None)
        assert "refused incoming call" in caplog.text and "RTVOICE_MAX_CALLS" in caplog.text

        # an outbound call's webhook comes once the callee has answered: taken even on a full worker (it was
        # admitted when it was dialled; hanging up on someone who just picked up is worse than being busy)
        answered = await twilio.call(CallScript().hangup(at_ms=100), direction="outbound-api", timeout_s=TIMEOUT)
        assert answered.ws_status == 101 and answered.outcome == "completed"

        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
            http.post(
                f"http://127.0.0.1:{srv.port}/calls",
                data=json.dumps({"to": "+15557654321"}),
                headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
            ) as resp,
        ):
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "5"
            assert json.loads(await resp.text())["reason"] == "capacity"
            async with http.get(f"http://127.0.0.1:{srv.port}/healthz") as health:
                doc = json.loads(await health.text())
        assert refused("capacity") == before + 2  # /healthz asks without counting a refusal
        assert doc["accepting"] == "capacity" and doc["active_calls"] == 1 and doc["loop_lag_ms"] >= 0

        # the call in progress streamed on, untouched, and its end frees the slot
        assert not first.done and first.result.violations == []
        first.hangup()
        result = await first.wait_done(TIMEOUT)
        assert result.outcome == "completed" and result.close_code in (None, 1000)
        await wait_until(lambda: srv.registry.active_calls == 0, TIMEOUT)
        later = await twilio.call(CallScript().hangup(at_ms=200), timeout_s=TIMEOUT)
        assert later.ws_status == 101 and later.outcome == "completed"
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
            http.get(f"http://127.0.0.1:{srv.port}/healthz") as health,
        ):
            assert json.loads(await health.text())["accepting"] == "admit"


async def test_a_lagging_loop_refuses_calls_until_it_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rtvoice.twilio")
    async with serving(EchoAgent, agent="echo", overload_lag_ms=40.0) as srv:
        twilio = SimulatedTwilio(f"http://127.0.0.1:{srv.port}", auth_token=TOKEN, speed=2.0)
        admission = srv.registry.admission
        before = refused("overload")
        # The server shares this test's loop: hold the loop 100 ms at a time (as a saturated worker would)
        # until the averaged lag trips the limit.
        deadline = time.monotonic() + TIMEOUT
        while not admission.overloaded and time.monotonic() < deadline:
            time.sleep(0.1)  # noqa: ASYNC251 - blocking the loop is the point
            await asyncio.sleep(0)
        assert admission.overloaded
        busy = await twilio.call(CallScript().hangup(at_ms=100), timeout_s=TIMEOUT)
        assert busy.outcome == "busy" and busy.ws_status is None
        assert refused("overload") == before + 1
        assert "overloaded (event loop" in caplog.text
        lag = metrics.REGISTRY.get_sample_value("rtvoice_event_loop_lag_seconds")
        assert lag is not None and lag > 0.02
        # the loop runs freely again: the average decays below half the limit and calls are taken again
        await wait_until(lambda: not admission.overloaded, TIMEOUT)
        ok = await twilio.call(CallScript().hangup(at_ms=200), timeout_s=TIMEOUT)
        assert ok.ws_status == 101 and ok.outcome == "completed"


def test_settings_from_env() -> None:
    s = Settings.from_env({"RTVOICE_MAX_CALLS": "300", "RTVOICE_OVERLOAD_LAG_MS": "25"}, dotenv=None)
    assert (s.max_calls, s.overload_lag_ms) == (300, 25.0)
    assert Settings.from_env({}, dotenv=None).max_calls == 0  # no limit unless set
    from rtvoice.config import ConfigError

    with pytest.raises(ConfigError, match="RTVOICE_MAX_CALLS"):
        Settings.from_env({"RTVOICE_MAX_CALLS": "-1"}, dotenv=None)
    with pytest.raises(ConfigError, match="RTVOICE_OVERLOAD_LAG_MS"):
        Settings.from_env({"RTVOICE_OVERLOAD_LAG_MS": "fast"}, dotenv=None)
