"""A simulated Twilio REST API (the ``Calls`` resource), on loopback, for tests and offline trials.

Point the twilio SDK at it with ``client.api.base_url = sim.base_url`` (or ``TWILIO_API_BASE_URL``) and
``client.calls.create(...)`` reaches this server instead of api.twilio.com. Implemented, with Twilio's shapes:

* ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json``: HTTP Basic auth (account SID + auth token), ``To``,
  ``From``, one of ``Url``/``Twiml``/``ApplicationSid`` validated as Twilio does, ``StatusCallback`` +
  ``StatusCallbackEvent`` (repeatable); answers 201 with the call resource JSON.
* ``POST …/Calls/{Sid}.json``: ``Status=completed|canceled`` hangs up; ``Twiml=``/``Url=`` redirects (recorded
  in :attr:`SimCall.updates` for tests to inspect, e.g. a transfer's ``<Dial>``).
* ``GET …/Calls/{Sid}.json``: the call resource.
* Errors: ``{"code", "message", "more_info", "status"}`` with a 4xx, as Twilio sends them.

On a create with a ``Url`` the simulator **dials** like Twilio does for an outbound call: status
callbacks (``initiated``, ``ringing``, ``answered``) signed with ``X-Twilio-Signature``, then the
:data:`Dialer` runs the answered call (by default :func:`webhook_dialer`: the signed voice webhook POST with
``Direction=outbound-api``; tests plug in the simulated caller of :mod:`rtvoice.sim.twilio`, which also opens
the Media Stream), and finally the ``completed`` callback with ``CallDuration``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web
from twilio.request_validator import RequestValidator

from rtvoice.twilio.twiml import TwimlError, response_root

log = logging.getLogger("rtvoice.sim.twilio_rest")

API_VERSION = "2010-04-01"
E164_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
CLIENT_RE = re.compile(r"^client:[A-Za-z0-9_.\-]{1,100}$")
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
#: Twilio's documented cap on the ``Twiml`` parameter.
MAX_TWIML_CHARS = 4000


def _rfc2822(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=False).replace("-0000", "+0000")


@dataclass(slots=True)
class SimCall:
    """One call the simulator knows about."""

    sid: str
    account_sid: str
    to: str
    from_: str
    url: str | None
    method: str
    twiml: str | None
    status_callback: str | None
    status_callback_method: str
    status_events: tuple[str, ...]
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    status: str = "queued"
    start_time: float | None = None
    end_time: float | None = None
    #: Every update POST's form fields, in order (Status, Twiml, Url, ...).
    updates: list[dict[str, str]] = field(default_factory=list)
    #: (event, form fields, HTTP status of rtvoice's answer or None if unreachable) for every status callback.
    callbacks: list[tuple[str, dict[str, str], int | None]] = field(default_factory=list)
    #: What the dialer reported (e.g. the TwiML the webhook answered, or the simulated caller's result).
    dial_result: Any = None
    dial_error: str | None = None
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def duration(self) -> int | None:
        if self.start_time is None or self.end_time is None:
            return None
        return round(self.end_time - self.start_time)

    def resource(self) -> dict[str, Any]:
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.sid}.json"
        return {
            "sid": self.sid,
            "date_created": _rfc2822(self.created),
            "date_updated": _rfc2822(self.updated),
            "parent_call_sid": None,
            "account_sid": self.account_sid,
            "to": self.to,
            "to_formatted": self.to,
            "from": self.from_,
            "from_formatted": self.from_,
            "phone_number_sid": "PN" + "0" * 32,
            "status": self.status,
            "start_time": _rfc2822(self.start_time) if self.start_time else None,
            "end_time": _rfc2822(self.end_time) if self.end_time else None,
            "duration": str(self.duration) if self.duration is not None else None,
            "price": None,
            "price_unit": "USD",
            "direction": "outbound-api",
            "answered_by": None,
            "api_version": API_VERSION,
            "forwarded_from": None,
            "group_sid": None,
            "caller_name": None,
            "queue_time": "0",
            "trunk_sid": None,
            "uri": uri,
            "subresource_uris": {
                "notifications": uri.replace(".json", "/Notifications.json"),
                "recordings": uri.replace(".json", "/Recordings.json"),
                "streams": uri.replace(".json", "/Streams.json"),
            },
        }

    def webhook_params(self) -> dict[str, str]:
        """The form fields Twilio posts to the voice webhook (and, plus extras, to status callbacks)."""
        return {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": self.sid,
            "CallStatus": self.status,
            "Called": self.to,
            "Caller": self.from_,
            "Direction": "outbound-api",
            "From": self.from_,
            "To": self.to,
        }


@dataclass(frozen=True, slots=True)
class DialContext:
    """What a dialer gets: the call, the auth token to sign with, and a shared HTTP client session."""

    call: SimCall
    auth_token: str
    http: ClientSession

    def sign(self, url: str, params: Mapping[str, str]) -> str:
        return str(RequestValidator(self.auth_token).compute_signature(url, dict(params)))


#: Runs an answered call until it ends (return) or is hung up (``ctx.call.hung_up`` is set; the dialer should
#: then stop promptly; it is cancelled otherwise). Its return value is stored in ``SimCall.dial_result``.
Dialer = Callable[[DialContext], Awaitable[Any]]


async def webhook_dialer(ctx: DialContext) -> str:
    """Fetch the call's TwiML the way Twilio does: a signed POST of the call fields to ``Url``; returns the
    TwiML.

    Raises ``RuntimeError`` when the webhook answers non-2xx or with something that is not TwiML (Twilio would
    play its "application error" message and hang up: error 11200 / 12100).
    """
    call = ctx.call
    assert call.url is not None
    params = call.webhook_params()
    headers = {
        "X-Twilio-Signature": ctx.sign(call.url, params),
        "User-Agent": "TwilioProxy/1.1",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    async with ctx.http.request(call.method, call.url, data=params, headers=headers) as resp:
        body = await resp.text()
        if resp.status // 100 != 2:
            raise RuntimeError(f"11200: webhook {call.url} answered HTTP {resp.status}")
    try:
        response_root(body)
    except TwimlError as exc:
        raise RuntimeError(f"12100: webhook answer is not TwiML: {exc}") from None
    return body


def media_stream_dialer(
    rtvoice_base_url: str | None = None,
    *,
    script: Callable[[SimCall], Any] | None = None,
    speed: float = 1.0,
    max_duration_ms: float = 120_000.0,
) -> Dialer:
    """A :data:`Dialer` that answers the call with the simulated caller of :mod:`rtvoice.sim.twilio`.

    It posts the signed webhook to the call's ``Url`` (``Direction=outbound-api``), opens the Media Stream the
    TwiML names and plays ``script(call)`` (a ``CallScript``; default: silence) until the call ends or is hung
    up through REST (then the caller side sends ``stop`` and closes, as Twilio does). ``rtvoice_base_url`` is
    where rtvoice really listens when it differs from the public URL in ``Url``. Returns the ``CallResult``.
    """
    from urllib.parse import urlsplit

    from rtvoice.sim.twilio import SimulatedTwilio

    async def dial(ctx: DialContext) -> Any:
        call = ctx.call
        assert call.url is not None
        parts = urlsplit(call.url)
        public = f"{parts.scheme}://{parts.netloc}"
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        twilio = SimulatedTwilio(
            rtvoice_base_url or public,
            auth_token=ctx.auth_token,
            account_sid=call.account_sid,
            public_base_url=public,
            speed=speed,
            webhook_path=path,
        )
        sim_call = twilio.start_call(
            script(call) if script is not None else None,
            from_number=call.from_,
            to_number=call.to,
            call_sid=call.sid,
            direction="outbound-api",
            max_duration_ms=max_duration_ms,
        )
        hung = asyncio.ensure_future(call.hung_up.wait())
        done = asyncio.ensure_future(sim_call.wait_done(max_duration_ms / 1000 / speed + 60))
        try:
            await asyncio.wait({hung, done}, return_when=asyncio.FIRST_COMPLETED)
            if not done.done():
                return await sim_call.aclose()
            return done.result()
        finally:
            hung.cancel()
            done.cancel()

    return dial


class TwilioRestError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> web.Response:
        body = {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }
        return web.json_response(body, status=self.status)


class TwilioRestSim:
    """The simulated REST API. ``async with TwilioRestSim(sid, token) as sim: ... sim.base_url ...``."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        dialer: Dialer | None = webhook_dialer,
        host: str = "127.0.0.1",
        port: int = 0,
        ring_s: float = 0.0,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.dialer = dialer
        self.host, self.port = host, port
        self.ring_s = ring_s
        self.calls: dict[str, SimCall] = {}
        #: (method, path, status) of every request, for tests.
        self.requests: list[tuple[str, str, int]] = []
        self._runner: web.AppRunner | None = None
        self._http: ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._errors])
        prefix = f"/{API_VERSION}/Accounts/{{account}}/Calls"
        app.router.add_post(prefix + ".json", self._create)
        app.router.add_post(prefix + "/{sid}.json", self._update)
        app.router.add_get(prefix + "/{sid}.json", self._fetch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._http = ClientSession(timeout=ClientTimeout(total=15))

    async def close(self) -> None:
        for call in self.calls.values():
            call.hung_up.set()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> TwilioRestSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- HTTP plumbing
    # ---------------------------------------------------------------------------------------

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            self._authenticate(request)
            resp = await handler(request)
        except TwilioRestError as exc:
            resp = exc.response()
        except web.HTTPNotFound:
            missing = f"The requested resource {request.path} was not found"
            resp = TwilioRestError(404, 20404, missing).response()
        except web.HTTPMethodNotAllowed:
            resp = TwilioRestError(405, 20004, "Method not allowed").response()
        self.requests.append((request.method, request.path, resp.status))
        return resp

    def _authenticate(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        ok = False
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            ok = hmac.compare_digest(user.encode(), self.account_sid.encode()) and hmac.compare_digest(
                password.encode(), self.auth_token.encode()
            )
        if not ok:
            raise TwilioRestError(401, 20003, "Authentication Error - invalid username")
        account = request.match_info.get("account")
        if account is not None and account != self.account_sid:
            raise TwilioRestError(404, 20404, f"The requested resource {request.path} was not found")

    def _call(self, request: web.Request) -> SimCall:
        call = self.calls.get(request.match_info["sid"])
        if call is None:
            raise TwilioRestError(404, 20404, f"The requested resource {request.path} was not found")
        return call

    # --- handlers
    # ----------------------------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        form = await request.post()
        fields: dict[str, str] = {k: str(v) for k, v in form.items()}
        to, from_ = fields.get("To", "").strip(), fields.get("From", "").strip()
        if not to:
            raise TwilioRestError(400, 21201, "No 'To' number is specified")
        if not (E164_RE.match(to) or CLIENT_RE.match(to)):
            raise TwilioRestError(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not from_:
            raise TwilioRestError(400, 21603, "A 'From' phone number is required.")
        if not (E164_RE.match(from_) or CLIENT_RE.match(from_)):
            raise TwilioRestError(400, 21212, f"Invalid 'From' Phone Number: {from_}")
        url, twiml = fields.get("Url"), fields.get("Twiml")
        if not url and not twiml and not fields.get("ApplicationSid"):
            raise TwilioRestError(400, 21205, "Url parameter is required.")
        if url is not None:
            _check_url(url, 21205, "Url")
        if twiml is not None and not url:
            if len(twiml) > MAX_TWIML_CHARS:
                raise TwilioRestError(400, 21232, f"Twiml exceeds {MAX_TWIML_CHARS} characters")
            _check_twiml(twiml)
        status_callback = fields.get("StatusCallback")
        if status_callback is not None:
            _check_url(status_callback, 21609, "StatusCallback")
        events = tuple(str(v).strip() for v in form.getall("StatusCallbackEvent", []))
        for event in events:
            if event not in STATUS_EVENTS:
                raise TwilioRestError(400, 21626, f"Invalid StatusCallbackEvent: {event}")
        method = fields.get("Method", "POST").upper()
        cb_method = fields.get("StatusCallbackMethod", "POST").upper()
        if method not in ("GET", "POST") or cb_method not in ("GET", "POST"):
            raise TwilioRestError(400, 21207, "Method must be GET or POST")
        call = SimCall(
            sid="CA" + secrets.token_hex(16),
            account_sid=self.account_sid,
            to=to,
            from_=from_,
            url=url,
            method=method,
            twiml=twiml if not url else None,
            status_callback=status_callback,
            status_callback_method=cb_method,
            status_events=events or ("completed",),
        )
        self.calls[call.sid] = call
        task = asyncio.create_task(self._run(call), name=f"sim-call-{call.sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(call.resource(), status=201)

    async def _update(self, request: web.Request) -> web.Response:
        call = self._call(request)
        form = await request.post()
        fields = {k: str(v) for k, v in form.items()}
        status = fields.get("Status")
        ended = call.status in ("completed", "canceled", "failed", "busy", "no-answer")
        if status is not None and status not in ("completed", "canceled"):
            raise TwilioRestError(400, 21218, f"Invalid Status: {status}")
        if ended and (status is None or fields.get("Twiml") or fields.get("Url")):
            raise TwilioRestError(400, 21220, "Call is not in-progress. Cannot redirect.")
        if "Url" in fields:
            _check_url(fields["Url"], 21205, "Url")
        if "Twiml" in fields:
            if len(fields["Twiml"]) > MAX_TWIML_CHARS:
                raise TwilioRestError(400, 21232, f"Twiml exceeds {MAX_TWIML_CHARS} characters")
            _check_twiml(fields["Twiml"])
        if status is None and "Url" not in fields and "Twiml" not in fields:
            raise TwilioRestError(400, 20001, "Nothing to update: give Status, Url or Twiml")
        call.updates.append(fields)
        call.updated = time.time()
        if status is not None or "Url" in fields or "Twiml" in fields:
            # A hang-up ends the call; a redirect ends the current TwiML (and so the media stream) too.
            call.hung_up.set()
        return web.json_response(call.resource(), status=200)

    async def _fetch(self, request: web.Request) -> web.Response:
        return web.json_response(self._call(request).resource())

    # --- the call's life
    # -----------------------------------------------------------------------------------------

    async def _callback(self, call: SimCall, event: str) -> None:
        if call.status_callback is None or event not in call.status_events or self._http is None:
            return
        params = call.webhook_params()
        params.update(
            {
                "CallbackSource": "call-progress-events",
                "SequenceNumber": str(len(call.callbacks)),
                "Timestamp": _rfc2822(time.time()),
            }
        )
        if event == "completed" and call.duration is not None:
            params["CallDuration"] = str(call.duration)
            params["Duration"] = str(max(1, (call.duration + 59) // 60))
        url = call.status_callback
        sig = str(RequestValidator(self.auth_token).compute_signature(url, params))
        status: int | None = None
        try:
            if call.status_callback_method == "GET":
                async with self._http.get(url, params=params, headers={"X-Twilio-Signature": sig}) as resp:
                    status = resp.status
            else:
                async with self._http.post(url, data=params, headers={"X-Twilio-Signature": sig}) as resp:
                    status = resp.status
        except Exception as exc:  # Twilio logs a debugger warning and carries on
            log.warning("status callback %s to %s failed: %s", event, url, exc)
        call.callbacks.append((event, params, status))

    def _set_status(self, call: SimCall, status: str) -> None:
        call.status = status
        call.updated = time.time()

    async def _run(self, call: SimCall) -> None:
        try:
            self._set_status(call, "queued")
            await self._callback(call, "initiated")
            self._set_status(call, "ringing")
            await self._callback(call, "ringing")
            if self.ring_s:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(call.hung_up.wait(), self.ring_s)
            if call.hung_up.is_set():
                self._set_status(call, "canceled")
                return
            self._set_status(call, "in-progress")
            call.start_time = time.time()
            await self._callback(call, "answered")
            if call.url is not None and self.dialer is not None and self._http is not None:
                ctx = DialContext(call, self.auth_token, self._http)
                dial = asyncio.ensure_future(self.dialer(ctx))
                hung = asyncio.ensure_future(call.hung_up.wait())
                await asyncio.wait({dial, hung}, return_when=asyncio.FIRST_COMPLETED)
                if not dial.done():
                    # Hung up via REST: give the dialer a moment to close its stream as Twilio would.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait({dial}, timeout=5.0)
                    dial.cancel()
                hung.cancel()
                try:
                    call.dial_result = await dial
                except asyncio.CancelledError:
                    pass
                except Exception as exc:
                    call.dial_error = str(exc)
                    log.warning("simulated call %s failed: %s", call.sid, exc)
            self._set_status(call, "failed" if call.dial_error else "completed")
        finally:
            if call.start_time is not None:
                call.end_time = time.time()
                if call.status == "in-progress":
                    self._set_status(call, "completed")
            with contextlib.suppress(Exception):
                await asyncio.shield(self._callback(call, "completed"))
            call.done.set()

    async def wait_done(self, sid: str, timeout: float = 60.0) -> SimCall:  # noqa: ASYNC109
        """Wait until call ``sid`` has ended and its ``completed`` callback was posted."""
        call = self.calls[sid]
        await asyncio.wait_for(call.done.wait(), timeout)
        return call


def _check_url(url: str, code: int, name: str) -> None:
    if not re.match(r"^https?://[^/\s]+", url):
        raise TwilioRestError(400, code, f"{name} is not a valid URL: {url}")


def _check_twiml(twiml: str) -> None:
    try:
        response_root(twiml)
    except TwimlError as exc:
        raise TwilioRestError(400, 12100, f"Document parse failure: {exc}") from None
