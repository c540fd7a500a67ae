"""Outbound calls through Twilio's REST API: ``python -m rtvoice call +1555…``, ``POST /calls``, and hang-up.

Twilio places the call and, when it is answered, requests rtvoice's own voice webhook (``/incoming-call``) with
``Direction=outbound-api``; from there the call is like any inbound one (TwiML, Media Stream, agent). The choice
of profile / agent / prompt for that call travels in the webhook URL's query string (``?profile=…&agent=…``),
which Twilio sends back verbatim and signs, so any worker can serve the call without shared state.

The twilio SDK's default HTTP client (``requests``) blocks, so every SDK call here runs in a worker thread
(``asyncio.to_thread``); the event loop never waits on Twilio. The REST base URL comes from
``TWILIO_API_BASE_URL`` (tests point it at :mod:`rtvoice.sim.twilio_rest`); region and edge are left unset so
the SDK does not rewrite the host.

``POST /calls`` (JSON ``{"to": "+1…", "profile": "…", "agent": "…", "prompt": "…"}``) needs
``Authorization: Bearer $RTVOICE_API_TOKEN``. Without ``RTVOICE_API_TOKEN`` the route answers **404** with a
message saying how to enable it: an unauthenticated call-placing endpoint must not exist by default, and a
404 does not advertise it to scanners. A bad token gets 401; bad input 400; Twilio refusing the call 502 with
Twilio's code and message; missing Twilio credentials 503; a worker that is full, overloaded or draining
(:mod:`rtvoice.call.admission`) 503 with ``Retry-After`` before anything is dialled.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from rtvoice.call.registry import refusal
from rtvoice.config import AGENT_MODES, ConfigError, Settings
from rtvoice.server.api import App, Request, Response

log = logging.getLogger("rtvoice.twilio.outbound")

E164_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
PROFILE_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
#: The prompt rides in the webhook URL; keep it well inside what proxies accept in a request line.
MAX_PROMPT_CHARS = 2000
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
CALLS_PATH = "/calls"
#: ``Retry-After`` (seconds) of a 503 from ``POST /calls`` when the worker is full or overloaded.
REFUSED_RETRY_AFTER_S = 5


class OutboundError(Exception):
    """Twilio refused a REST request (``status`` is the HTTP status, ``code`` Twilio's error code)."""

    def __init__(self, message: str, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def check_credentials(settings: Settings) -> None:
    """Raise :class:`ConfigError` naming the first Twilio setting outbound calls need but lack."""
    for var, value in (
        ("TWILIO_ACCOUNT_SID", settings.twilio_account_sid),
        ("TWILIO_AUTH_TOKEN", settings.twilio_auth_token),
        ("TWILIO_PHONE_NUMBER", settings.twilio_phone_number),
    ):
        if not value:
            raise ConfigError(f"outbound calls need {var}: set it in the environment or .env")


def make_client(settings: Settings) -> Any:
    """A twilio ``Client`` for ``settings``' account whose API requests go to ``TWILIO_API_BASE_URL``."""
    from twilio.rest import Client

    # environment={}: never pick up TWILIO_REGION / TWILIO_EDGE, which would rewrite the host.
    client = Client(settings.twilio_account_sid, settings.twilio_auth_token, environment={})
    client.api.base_url = settings.twilio_api_base_url
    return client


def webhook_url(settings: Settings, *, profile: str | None = None, agent: str | None = None,
                prompt: str | None = None) -> str:
    """The voice webhook URL Twilio requests when the callee answers (with the per-call choices)."""
    query = {k: v for k, v in (("profile", profile), ("agent", agent), ("prompt", prompt)) if v}
    url = f"{settings.effective_public_base_url}/incoming-call"
    return f"{url}?{urlencode(query)}" if query else url


@dataclass(frozen=True, slots=True)
class CallRequest:
    """A validated request to place a call."""

    to: str
    profile: str | None = None
    agent: str | None = None
    prompt: str | None = None

    @classmethod
    def parse(cls, data: Any) -> CallRequest:
        """Validate a ``POST /calls`` JSON body (or CLI arguments); ``ValueError`` says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError('the body must be a JSON object like {"to": "+15551234567"}')
        unknown = set(data) - {"to", "profile", "agent", "prompt"}
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        to = data.get("to")
        if not isinstance(to, str) or not E164_RE.match(to):
            raise ValueError(f'"to" must be an E.164 number like +15551234567, got {to!r}')
        profile, agent, prompt = data.get("profile"), data.get("agent"), data.get("prompt")
        if profile is not None and (not isinstance(profile, str) or not PROFILE_NAME_RE.match(profile)):
            raise ValueError(f'"profile" must be a profile name (letters, digits, _ . -), got {profile!r}')
        if agent is not None and agent not in AGENT_MODES:
            raise ValueError(f'"agent" must be one of {", ".join(AGENT_MODES)}, got {agent!r}')
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise ValueError('"prompt" must be a non-empty string')
        if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f'"prompt" is longer than {MAX_PROMPT_CHARS} characters')
        return cls(to=to, profile=profile, agent=agent, prompt=prompt)


def _create_sync(client: Any, settings: Settings, req: CallRequest, twiml: str | None) -> str:
    from twilio.base.exceptions import TwilioRestException

    base = settings.effective_public_base_url
    kwargs: dict[str, Any] = {
        "to": req.to,
        "from_": settings.twilio_phone_number,
        "status_callback": f"{base}/call-status",
        "status_callback_event": list(STATUS_EVENTS),
        "status_callback_method": "POST",
    }
    if twiml is not None:
        kwargs["twiml"] = twiml
    else:
        kwargs["url"] = webhook_url(settings, profile=req.profile, agent=req.agent, prompt=req.prompt)
        kwargs["method"] = "POST"
    try:
        call = client.calls.create(**kwargs)
    except TwilioRestException as exc:
        raise OutboundError(f"Twilio refused the call: {exc.msg}", exc.status, exc.code) from None
    except OSError as exc:  # requests' ConnectionError is an OSError
        raise OutboundError(f"cannot reach Twilio at {settings.twilio_api_base_url}: {exc}") from None
    return str(call.sid)


async def place_call(
    settings: Settings,
    to: str,
    profile: str | None = None,
    *,
    agent: str | None = None,
    prompt: str | None = None,
    twiml: str | None = None,
    client: Any = None,
) -> str:
    """Place an outbound call to ``to`` from ``TWILIO_PHONE_NUMBER``; returns the new CallSid.

    By default Twilio fetches rtvoice's ``/incoming-call`` when the callee answers; ``twiml`` sends a fixed
    TwiML document instead. Raises ``ValueError`` (bad arguments), :class:`ConfigError` (missing Twilio
    settings) or :class:`OutboundError` (Twilio refused or was unreachable).
    """
    req = CallRequest.parse({k: v for k, v in (("to", to), ("profile", profile), ("agent", agent),
                                               ("prompt", prompt)) if v is not None})
    check_credentials(settings)
    client = client if client is not None else make_client(settings)
    sid = await asyncio.to_thread(_create_sync, client, settings, req, twiml)
    log.info("placed outbound call %s to %s", sid, req.to, extra={"call_sid": sid, "profile": req.profile})
    return sid


def _update_sync(client: Any, sid: str, kwargs: dict[str, Any]) -> bool:
    from twilio.base.exceptions import TwilioRestException

    try:
        client.calls(sid).update(**kwargs)
    except TwilioRestException as exc:
        if exc.status == 404 or exc.code == 20404:
            return False
        raise OutboundError(f"Twilio refused to update call {sid}: {exc.msg}", exc.status, exc.code) from None
    except OSError as exc:
        raise OutboundError(f"cannot reach Twilio: {exc}") from None
    return True


async def update_call(settings: Settings, call_sid: str, client: Any = None, **kwargs: Any) -> bool:
    """``calls(sid).update(**kwargs)`` off the loop; False when Twilio no longer knows the call (404)."""
    check_credentials(settings)
    client = client if client is not None else make_client(settings)
    return await asyncio.to_thread(_update_sync, client, call_sid, kwargs)


async def hang_up(settings: Settings, call_sid: str, client: Any = None) -> bool:
    """End a live call (``Status=completed``). False when it had already ended (Twilio's 404 / 20404)."""
    ended = await update_call(settings, call_sid, client, status="completed")
    log.info("hung up call %s", call_sid, extra={"call_sid": call_sid, "was_live": ended})
    return ended


# --- POST /calls
# ---------------------------------------------------------------------------------------------


def _json(status: int, obj: dict[str, Any], headers: list[tuple[str, str]] | None = None) -> Response:
    resp = Response.json(status, json.dumps(obj).encode())
    if headers:
        resp.headers.extend(headers)
    return resp


class CallsEndpoint:
    """``POST /calls``: place an outbound call (bearer token)."""

    def __init__(self, settings: Settings, registry: Any = None, client: Any = None,
                 profiles: Any = None) -> None:
        self.settings = settings
        self.registry = registry
        self.client = client
        #: Anything with ``names()`` (a :class:`rtvoice.profiles.Profiles`); None: profile names not checked.
        self.profiles = profiles

    def _authorized(self, request: Request) -> bool:
        header = request.header("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        return hmac.compare_digest(token.strip().encode(), self.settings.api_token.encode())

    def _refused(self) -> Response | None:
        """503 with ``Retry-After`` when this worker is full, overloaded or draining
        (:mod:`rtvoice.call.admission`), before anything is dialled: once the callee answers, the call's
        webhook no longer refuses it."""
        verdict = refusal(self.registry)
        if verdict is None:
            return None
        log.warning("refused POST /calls: %s", verdict.value, extra={"refusal": verdict.value})
        return _json(
            503,
            {"error": f"not taking calls now ({verdict.value}): retry later", "reason": verdict.value},
            [("Retry-After", str(REFUSED_RETRY_AFTER_S))],
        )

    async def handle(self, request: Request) -> Response:
        if not self.settings.api_token:
            return _json(404, {"error": "POST /calls is disabled: set RTVOICE_API_TOKEN to enable it"})
        if not self._authorized(request):
            log.warning("refused POST /calls: missing or wrong bearer token", extra={"peer": request.peer})
            return _json(401, {"error": "missing or invalid bearer token"},
                         [("WWW-Authenticate", 'Bearer realm="rtvoice"')])
        try:
            data = json.loads(request.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _json(400, {"error": f"the body is not valid JSON: {exc}"})
        try:
            req = CallRequest.parse(data)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        if req.profile is not None and self.profiles is not None and req.profile not in self.profiles.names():
            return _json(400, {"error": f"unknown profile {req.profile!r}"})
        refused = self._refused()
        if refused is not None:
            return refused
        try:
            sid = await place_call(self.settings, req.to, req.profile, agent=req.agent, prompt=req.prompt,
                                   client=self.client)
        except ConfigError as exc:
            return _json(503, {"error": str(exc)})
        except OutboundError as exc:
            body: dict[str, Any] = {"error": str(exc)}
            if exc.code is not None:
                body["twilio_code"] = exc.code
            return _json(502, body)
        dialled = getattr(self.registry, "dialled", None)
        if dialled is not None:  # it counts against the worker's capacity while it rings
            dialled(sid)
        return _json(201, {"call_sid": sid, "to": req.to, "profile": req.profile, "status": "queued"})


def register(app: App, settings: Settings, registry: Any = None) -> None:
    """Add ``POST /calls`` to ``app``."""
    profiles = getattr(registry, "profiles", None)
    if profiles is None and settings.profiles_path:
        from rtvoice.profiles import load_from_settings

        profiles = load_from_settings(settings)  # validated now: a bad file stops startup with file:line
    endpoint = CallsEndpoint(settings, registry, profiles=profiles)
    if not settings.api_token:
        log.info("POST /calls is disabled (set RTVOICE_API_TOKEN to enable outbound calls over HTTP)")
    app.route("POST", CALLS_PATH, endpoint.handle)


# --- python -m rtvoice call
# ------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("to", help="the number to call, E.164 (e.g. +15551234567)")
    parser.add_argument("--profile", help="agent profile for the call (from RTVOICE_PROFILES)")
    parser.add_argument("--agent", choices=AGENT_MODES, help="agent mode for the call")
    parser.add_argument("--prompt", help="instructions for this call (overrides the profile's)")
    parser.add_argument("--twiml", help="send this TwiML instead of connecting the call to rtvoice")


def run(args: argparse.Namespace) -> int:
    from rtvoice.logs import configure_logging

    settings = Settings.from_env()
    configure_logging(settings)
    if args.profile and getattr(settings, "profiles_path", ""):
        from rtvoice.profiles import load_profiles

        names = load_profiles(settings.profiles_path).names()
        if args.profile not in names:
            print(f"rtvoice call: unknown profile {args.profile!r} (have: {', '.join(sorted(names))})")
            return 2
    try:
        sid = asyncio.run(
            place_call(
                settings, args.to, args.profile, agent=args.agent, prompt=args.prompt, twiml=args.twiml
            )
        )
    except ValueError as exc:
        print(f"rtvoice call: {exc}")
        return 2
    except OutboundError as exc:
        print(f"rtvoice call: {exc}")
        return 1
    print(sid)
    return 0
