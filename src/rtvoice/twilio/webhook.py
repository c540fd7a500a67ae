"""Twilio's HTTP callbacks: ``/incoming-call`` (answers TwiML that opens the Media Stream) and
``/call-status``.

Both are validated with ``X-Twilio-Signature`` over the URL rebuilt from ``PUBLIC_BASE_URL`` (never the Host
header) and all form fields. An invalid or missing signature gets 403 and a log line, and nothing else
happens: no registry call, no token. Malformed bodies are answered, never raised.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from typing import Any
from urllib.parse import parse_qs

from rtvoice.call.admission import Verdict
from rtvoice.call.registry import refusal
from rtvoice.config import Settings
from rtvoice.server.api import App, Request, Response
from rtvoice.twilio import signature
from rtvoice.twilio.stream_token import StreamTokens
from rtvoice.twilio.twiml import TwimlError, connect_stream_twiml, hangup_twiml, reject_twiml

__all__ = ["INCOMING_CALL_PATH", "STATUS_PATH", "WebhookHandlers", "register"]

log = logging.getLogger("rtvoice.twilio.webhook")

INCOMING_CALL_PATH = "/incoming-call"
STATUS_PATH = "/call-status"
_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
#: Twilio's documented CallStatus values (for the log line; unknown ones are still recorded).
CALL_STATUSES = frozenset(
    ("queued", "ringing", "in-progress", "completed", "busy", "failed", "no-answer", "canceled")
)


def _first(fields: dict[str, list[str]], name: str) -> str:
    values = fields.get(name)
    return values[0] if values else ""


def _form(request: Request) -> dict[str, list[str]] | None:
    try:
        return request.form()
    except (ValueError, UnicodeError):
        log.warning("malformed form body on %s %s", request.method, request.path)
        return None


class WebhookHandlers:
    """The route handlers, bound to the settings, the call registry and the stream-token issuer."""

    def __init__(self, settings: Settings, registry: Any = None, tokens: StreamTokens | None = None) -> None:
        self.settings = settings
        self.registry = registry
        if tokens is None:
            tokens = getattr(registry, "stream_tokens", None)
        if not isinstance(tokens, StreamTokens):
            tokens = StreamTokens.from_settings(settings)
        self.tokens: StreamTokens = tokens
        # Keeps background prepare() tasks alive until they finish (the loop holds only weak references).
        self._background: set[asyncio.Future[Any]] = set()

    def _signed(self, request: Request, fields: dict[str, list[str]]) -> bool:
        """True when the request carries Twilio's valid signature (or validation is switched off)."""
        if not self.settings.validate_signatures:
            return True
        url = signature.public_url(self.settings, request.path, request.query)
        # POST: Twilio signs URL + every form field; GET: the parameters are already in the signed URL.
        params = fields if request.method == "POST" else {}
        if signature.validate(self.settings, url, params, request.header("x-twilio-signature")):
            return True
        log.warning(
            "refused %s %s: %s X-Twilio-Signature (checked against %s)",
            request.method,
            request.path,
            "missing" if request.header("x-twilio-signature") is None else "invalid",
            url,
            extra={"call_sid": _first(fields, "CallSid"), "peer": request.peer},
        )
        return False

    def _signed_form(self, request: Request) -> dict[str, list[str]] | Response:
        """The webhook's form fields, or the error response: 400 for a malformed body, 403 for a bad signature."""
        fields = _form(request)
        if fields is None:
            return Response.text(400, "malformed form body\n")
        if not self._signed(request, fields):
            return Response.text(403, "invalid Twilio signature\n")
        return fields

    async def incoming_call(self, request: Request) -> Response:
        """Answer an incoming (or outbound-api) call with TwiML that connects it to the Media Stream."""
        fields = self._signed_form(request)
        if isinstance(fields, Response):
            return fields
        call_sid = _first(fields, "CallSid")
        if not _CALL_SID.fullmatch(call_sid):
            log.warning("incoming-call without a valid CallSid: %r", call_sid[:64])
            return Response.text(400, "missing or malformed CallSid\n")
        from_number = _first(fields, "From")
        to_number = _first(fields, "To")
        direction = _first(fields, "Direction") or "inbound"
        refused = self._admission_refusal(call_sid, direction)
        if refused is not None:
            return refused
        # An outbound call's ?profile=&agent=&prompt= (set by place_call; covered by the signature).
        query = parse_qs(request.query, keep_blank_values=False) if request.query else {}
        requested = {k: _first(query, k) or None for k in ("profile", "agent", "prompt")}
        call_settings, profile = self.settings, None
        resolve = getattr(self.registry, "call_settings", None)
        if resolve is not None:
            try:
                call_settings, profile = resolve(call_sid, from_number, to_number, direction, **requested)
            except (KeyError, ValueError) as exc:
                log.warning("cannot answer call: %s", exc, extra={"call_sid": call_sid})
                return Response.text(400, f"{exc}\n")
        elif requested["profile"]:
            log.warning("?profile= ignored: no registry resolves profiles", extra={"call_sid": call_sid})
        parameters = {
            "token": self.tokens.issue(call_sid),
            "from": from_number,
            "to": to_number,
            "direction": direction,
        }
        # The stream (and its call record) learn the profile from here, even on another worker.
        if profile is not None:
            parameters["profile"] = str(profile.name)
        if requested["agent"]:
            parameters["agent"] = str(requested["agent"])
        try:
            twiml = connect_stream_twiml(
                self.settings.media_stream_url, parameters, greeting=call_settings.twiml_greeting
            )
        except TwimlError as exc:
            log.warning("cannot answer call: %s", exc, extra={"call_sid": call_sid})
            return Response.text(400, f"{exc}\n")
        log.info(
            "incoming call %s from %s to %s (%s)",
            call_sid,
            from_number,
            to_number,
            direction,
            extra={"call_sid": call_sid},
        )
        extra = {"settings": call_settings, "profile": profile} if resolve is not None else {}
        self._prepare(call_sid, from_number, to_number, direction, extra)
        return Response.xml(twiml)

    def _admission_refusal(self, call_sid: str, direction: str) -> Response | None:
        """None when this worker takes the call (:mod:`rtvoice.call.admission`); else the TwiML that refuses
        it: ``<Reject reason="busy"/>`` for an incoming call (not answered, not billed, the caller hears a
        busy tone). An outbound call's webhook comes once the callee has answered; it was admitted when it was
        dialled, so only a draining worker refuses it, with ``<Hangup/>`` (``<Reject>`` only applies to
        unanswered incoming calls)."""
        outbound = direction.startswith("outbound")
        verdict = refusal(self.registry, answered_outbound=outbound)
        if verdict is None:
            return None
        admission = getattr(self.registry, "admission", None)
        if verdict is Verdict.FULL:
            why = f"at capacity ({self.settings.max_calls} calls, RTVOICE_MAX_CALLS)"
        elif verdict is Verdict.OVERLOADED:
            lag_ms = 1000.0 * getattr(admission, "lag_s", 0.0)
            why = (
                f"overloaded (event loop {lag_ms:.0f} ms late on average, limit "
                f"{self.settings.overload_lag_ms:g} ms, RTVOICE_OVERLOAD_LAG_MS)"
            )
        else:
            why = "shutting down"
        log.warning(
            "refused %s call %s: %s",
            "outbound" if outbound else "incoming",
            call_sid,
            why,
            extra={"call_sid": call_sid, "refusal": verdict.value},
        )
        return Response.xml(hangup_twiml() if outbound else reject_twiml("busy"))

    def _prepare(
        self, call_sid: str, from_number: str, to_number: str, direction: str, extra: dict[str, Any]
    ) -> None:
        """Let the registry pre-open the agent while Twilio sets up the stream; never delays the answer."""
        prepare = getattr(self.registry, "prepare", None)
        if prepare is None:
            return
        try:
            result = prepare(call_sid, from_number, to_number, direction, **extra)
        except Exception:
            log.exception("registry.prepare failed", extra={"call_sid": call_sid})
            return
        if inspect.isawaitable(result):
            future = asyncio.ensure_future(result)
            self._background.add(future)
            future.add_done_callback(self._background_done)

    def _background_done(self, future: asyncio.Future[Any]) -> None:
        self._background.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("registry.prepare failed", exc_info=future.exception())

    async def call_status(self, request: Request) -> Response:
        """Record a call lifecycle event (Twilio's status callback); answers 204."""
        fields = self._signed_form(request)
        if isinstance(fields, Response):
            return fields
        call_sid = _first(fields, "CallSid")
        status = _first(fields, "CallStatus")
        log.info(
            "call %s status %s%s",
            call_sid or "?",
            status or "?",
            f" after {_first(fields, 'CallDuration')} s" if _first(fields, "CallDuration") else "",
            extra={"call_sid": call_sid, "call_status": status},
        )
        if status and status not in CALL_STATUSES:
            log.warning("unknown CallStatus %r", status[:64], extra={"call_sid": call_sid})
        hook = getattr(self.registry, "call_status", None)
        if hook is not None and call_sid:
            try:
                result = hook(call_sid, status, {k: v[0] for k, v in fields.items() if v})
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("registry.call_status failed", extra={"call_sid": call_sid})
        return Response(204)


def register(app: App, settings: Settings, registry: Any = None, tokens: StreamTokens | None = None) -> None:
    """Add ``GET|POST /incoming-call`` and ``POST /call-status`` to ``app``."""
    if not settings.validate_signatures:
        log.warning(
            "!!! X-Twilio-Signature validation is DISABLED (RTVOICE_VALIDATE_SIGNATURES=0): anyone who can "
            "reach this server can place calls on it. Use this only for local development. !!!"
        )
    elif not settings.twilio_auth_token:
        log.warning(
            "TWILIO_AUTH_TOKEN is not set: every Twilio webhook will be refused with 403 "
            "(set it, or RTVOICE_VALIDATE_SIGNATURES=0 for local development)"
        )
    handlers = WebhookHandlers(settings, registry, tokens)
    app.route("POST", INCOMING_CALL_PATH, handlers.incoming_call)
    app.route("GET", INCOMING_CALL_PATH, handlers.incoming_call)
    app.route("POST", STATUS_PATH, handlers.call_status)
