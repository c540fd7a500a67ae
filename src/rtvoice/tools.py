"""Tools the AI can call during a phone call (OpenAI Realtime function calling), and how to add your own.

The agent asks for the definitions once per session and runs calls as the model makes them::

    from rtvoice import tools
    session_tools = tools.definitions(profile)                 # [{"type": "function", "name": ..., ...}]
    result = await tools.run(name, arguments_json, ctx)        # a JSON-able dict; never raises

``run`` validates the arguments against the tool's JSON schema (types, required, enums, no unknown keys),
returns ``{"error": "..."}`` for bad arguments, unknown tools or a failing handler (the model can then
apologise or retry), and logs the call with its CallSid.

Built-in tools:

* ``end_call(reason?)``: the bot says its last words and the call ends (``ctx.hang_up``: queued audio plays
  first, then rtvoice closes the stream, which ends the call; ``hang_up`` through REST is the fallback).
* ``transfer_call(number?)``: redirects the live call to TwiML ``<Say>…</Say><Dial>number</Dial>`` with
  the REST update ``calls(sid).update(twiml=…)``. ``number`` defaults to the profile's ``transfer_number``;
  when a profile sets ``transfer_number``, the model cannot dial anything else (no toll fraud through prompt
  injection).
* ``send_dtmf(digits)``: plays DTMF tones (``0-9 * # A-D``, ``w`` = 0.5 s pause) into the call, for
  navigating phone menus on outbound calls. In-band (rendered μ-law tones through ``ctx.play_audio``) keeps
  the Media Stream and the conversation; without ``play_audio`` it falls back to Twilio's ``<Play digits>``
  through a REST update followed by ``<Redirect>`` back to the webhook (which starts a new stream).

Your own tool::

    from rtvoice.tools import tool, ToolContext

    @tool("opening_hours", "Tell the caller the opening hours for a day.",
          {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]})
    async def opening_hours(args: dict, ctx: ToolContext) -> dict:
        return {"day": args["day"], "hours": "9:00-17:00"}

Import that module before profiles are loaded (e.g. in your own entry point that then calls
``rtvoice.cli.main()``), and list ``"opening_hours"`` in a profile's ``tools``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("rtvoice.tools")

JsonSchema = dict[str, Any]
Handler = Callable[[dict[str, Any], "ToolContext"], Awaitable[Any]]

E164_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")
DTMF_RE = re.compile(r"^[0-9*#A-Dw]{1,32}$")


class TwilioCalls(Protocol):
    """What tools need from Twilio's REST API (see :class:`RestCalls`)."""

    async def update(self, call_sid: str, **kwargs: Any) -> bool: ...


@dataclass(slots=True)
class ToolContext:
    """What a tool may touch: the call it runs in, and narrow handles to end it or change it."""

    call_sid: str
    #: End the call after the audio already queued has played (the call's ``AgentSink.hang_up``).
    hang_up: Callable[[str], None]
    #: Twilio REST for this account (None: REST-backed tools answer with an error).
    twilio: TwilioCalls | None = None
    #: The call's profile (``rtvoice.profiles.Profile``) or None.
    profile: Any = None
    #: Queue μ-law 8 kHz audio to the caller (in-band DTMF); None when the agent has no such path.
    play_audio: Callable[[bytes], None] | None = None
    #: The public base URL of rtvoice (for ``<Redirect>`` back to the webhook).
    public_base_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolConfig:
    """The tool part of a call's profile, as :meth:`rtvoice.profiles.Profile.apply` leaves it in
    ``Settings.extra`` (``tools``, ``transfer_number``, ``profile``): what an agent needs to offer and run
    tools without holding the profile object (agents are built from settings alone)."""

    tools: tuple[str, ...] = ()
    transfer_number: str | None = None
    name: str = ""

    @classmethod
    def from_settings(cls, settings: Any) -> ToolConfig:
        extra: Mapping[str, str] = getattr(settings, "extra", None) or {}
        names = tuple(t.strip() for t in extra.get("tools", "").split(",") if t.strip())
        return cls(names, extra.get("transfer_number") or None, extra.get("profile", ""))


class RestCalls:
    """:class:`TwilioCalls` over the twilio SDK (``rtvoice.twilio.outbound.update_call``: off the loop)."""

    def __init__(self, settings: Any, client: Any = None) -> None:
        self.settings = settings
        self.client = client

    async def update(self, call_sid: str, **kwargs: Any) -> bool:
        from rtvoice.twilio.outbound import update_call

        return await update_call(self.settings, call_sid, self.client, **kwargs)


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: JsonSchema
    handler: Handler

    def definition(self) -> dict[str, Any]:
        """The OpenAI Realtime (GA) session tool entry."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }


_REGISTRY: dict[str, Tool] = {}
_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def tool(
    name: str, description: str, parameters: JsonSchema | None = None, *, replace: bool = False
) -> Callable[[Handler], Handler]:
    """Register an async ``handler(args, ctx) -> JSON-able`` as tool ``name`` (decorator)."""
    if not _NAME_RE.match(name):
        raise ValueError(f"tool name {name!r}: use 1-64 letters, digits, _ or -")
    schema = parameters if parameters is not None else {"type": "object", "properties": {}}
    if schema.get("type") != "object":
        raise ValueError(f"tool {name!r}: parameters must be a JSON schema of type 'object'")

    def register(handler: Handler) -> Handler:
        if name in _REGISTRY and not replace:
            raise ValueError(f"tool {name!r} is already registered (pass replace=True to override it)")
        _REGISTRY[name] = Tool(name, description, schema, handler)
        return handler

    return register


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def names() -> set[str]:
    """Names of every registered tool."""
    return set(_REGISTRY)


def get(name: str) -> Tool:
    return _REGISTRY[name]


def definitions(profile: Any = None, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Tool definitions for a session: the profile's ``tools`` (or ``only``), in that order.

    With neither, no tools (the model then cannot end or transfer calls on its own).
    """
    wanted = list(only) if only is not None else list(getattr(profile, "tools", ()) or ())
    out = []
    for n in wanted:
        if n not in _REGISTRY:
            raise KeyError(f"unknown tool {n!r}; registered: {', '.join(sorted(_REGISTRY))}")
        out.append(_REGISTRY[n].definition())
    return out


# --- argument validation (the subset of JSON Schema tool definitions use)
# ---------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def validate(schema: Mapping[str, Any], value: Any, where: str = "arguments") -> None:
    """Raise ``ValueError`` naming the first place ``value`` breaks ``schema``."""
    typ = schema.get("type")
    if isinstance(typ, str):
        expected = _TYPES.get(typ, (object,))
        bad_bool = isinstance(value, bool) and typ in ("integer", "number")
        if not isinstance(value, expected) or bad_bool:
            raise ValueError(f"{where}: expected {typ}, got {type(value).__name__}")
    if "enum" in schema and value not in schema["enum"]:
        raise ValueError(f"{where}: expected one of {schema['enum']}, got {value!r}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise ValueError(f"{where}: {value!r} does not match {schema['pattern']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise ValueError(f"{where}: longer than {schema['maxLength']} characters")
    if isinstance(value, dict):
        props: Mapping[str, Any] = schema.get("properties", {})
        for req in schema.get("required", []):
            if req not in value:
                raise ValueError(f"{where}: missing required {req!r}")
        if schema.get("additionalProperties", False) is False:
            unknown = set(value) - set(props)
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        for key, sub in props.items():
            if key in value:
                validate(sub, value[key], f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(schema["items"], item, f"{where}[{i}]")


async def run(name: str, args: str | Mapping[str, Any] | None, ctx: ToolContext) -> dict[str, Any]:
    """Run tool ``name`` with ``args`` (the model's JSON string, or a dict). Never raises.

    Returns the handler's result as a dict (non-dict results are wrapped as ``{"result": ...}``) or
    ``{"error": "..."}``. Tools outside the profile's list are refused when the context has a profile.
    """
    extra = {"call_sid": ctx.call_sid, "tool": name}
    t = _REGISTRY.get(name)
    allowed = getattr(ctx.profile, "tools", None)
    if t is None or (allowed is not None and name not in allowed):
        log.warning("model called unknown or disallowed tool %r", name, extra=extra)
        return {"error": f"unknown tool {name!r}"}
    try:
        # The model sends "" for a tool without parameters.
        parsed: Any = json.loads(args or "{}") if isinstance(args, str) else dict(args or {})
    except json.JSONDecodeError as exc:
        return {"error": f"arguments are not valid JSON: {exc}"}
    try:
        validate(t.parameters, parsed)
    except ValueError as exc:
        log.info("tool %s: bad arguments: %s", name, exc, extra=extra)
        return {"error": str(exc)}
    try:
        result = await t.handler(parsed, ctx)
    except ToolError as exc:
        log.info("tool %s refused: %s", name, exc, extra=extra)
        return {"error": str(exc)}
    except Exception as exc:
        log.exception("tool %s failed", name, extra=extra)
        return {"error": f"{name} failed: {type(exc).__name__}"}
    log.info("tool %s ran", name, extra=extra)
    return result if isinstance(result, dict) else {"result": result}


class ToolError(Exception):
    """Raised by a handler to answer the model with ``{"error": message}`` (an expected refusal)."""


# --- built-in tools
# ------------------------------------------------------------------------------------------


@tool(
    "end_call",
    "End the phone call. Use it after saying goodbye, when the caller is done or asks to hang up.",
    {
        "type": "object",
        "properties": {"reason": {"type": "string", "maxLength": 200, "description": "why the call ends"}},
    },
)
async def end_call(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    ctx.hang_up(str(args.get("reason") or "end_call tool"))
    return {"ok": True, "ending": True}


def transfer_twiml(number: str, say: str = "Transferring your call now.") -> str:
    """The TwiML that moves a live call to ``number``."""
    from twilio.twiml.voice_response import VoiceResponse

    r = VoiceResponse()
    if say:
        r.say(say)
    r.dial(number)
    return str(r)


@tool(
    "transfer_call",
    "Transfer the caller to a human at another phone number. Tell the caller you are transferring first.",
    {
        "type": "object",
        "properties": {
            "number": {
                "type": "string",
                "pattern": r"^\+[1-9][0-9]{6,14}$",
                "description": "E.164 number to transfer to; omit to use the configured transfer number",
            }
        },
    },
)
async def transfer_call(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    configured = getattr(ctx.profile, "transfer_number", None)
    number = args.get("number") or configured
    if not number:
        raise ToolError("no transfer number: give one, or set transfer_number in the profile")
    if configured and number != configured:
        raise ToolError("transfers may only go to the configured transfer number")
    if not E164_RE.match(number):
        raise ToolError(f"{number!r} is not an E.164 number")
    if ctx.twilio is None:
        raise ToolError("transfers need Twilio REST credentials (TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN)")
    if not await ctx.twilio.update(ctx.call_sid, twiml=transfer_twiml(number)):
        raise ToolError("the call has already ended")
    return {"ok": True, "transferred_to": number}


# DTMF: (low, high) frequency pairs (ITU-T Q.23).
_DTMF_FREQS = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633),
}  # fmt: skip
TONE_MS = 100
GAP_MS = 80
PAUSE_MS = 500


def dtmf_ulaw(digits: str, rate: int = 8000) -> bytes:
    """In-band DTMF for ``digits`` as μ-law 8 kHz: 100 ms tones, 80 ms gaps, ``w`` = 500 ms of silence."""
    import numpy as np

    from rtvoice.audio import ulaw_encode

    if not DTMF_RE.match(digits):
        raise ValueError(f"DTMF digits must match {DTMF_RE.pattern}, got {digits!r}")
    parts = []
    t = np.arange(rate * TONE_MS // 1000) / rate
    gap = np.zeros(rate * GAP_MS // 1000)
    for d in digits:
        if d == "w":
            parts.append(np.zeros(rate * PAUSE_MS // 1000))
            continue
        lo, hi = _DTMF_FREQS[d]
        # Each tone at -9 dBFS so the pair stays well clear of clipping (-3 dBFS peak).
        amp = 32767 * 10 ** (-9 / 20)
        parts.append(amp * (np.sin(2 * math.pi * lo * t) + np.sin(2 * math.pi * hi * t)))
        parts.append(gap)
    pcm = np.concatenate(parts).round().astype(np.int16)
    return bytes(ulaw_encode(pcm))


@tool(
    "send_dtmf",
    "Press keys on the phone keypad (for automated phone menus). Digits 0-9, * and #; w waits half a second.",
    {
        "type": "object",
        "properties": {
            "digits": {"type": "string", "pattern": DTMF_RE.pattern, "description": "keys to press"}
        },
        "required": ["digits"],
    },
)
async def send_dtmf(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    digits = str(args["digits"])
    if ctx.play_audio is not None:
        ctx.play_audio(dtmf_ulaw(digits))
        return {"ok": True, "sent": digits, "method": "in-band"}
    if ctx.twilio is None or not ctx.public_base_url:
        raise ToolError("cannot send DTMF: no audio path and no Twilio REST credentials")
    from twilio.twiml.voice_response import VoiceResponse

    r = VoiceResponse()
    r.play(digits=digits)
    r.redirect(f"{ctx.public_base_url}/incoming-call", method="POST")
    if not await ctx.twilio.update(ctx.call_sid, twiml=str(r)):
        raise ToolError("the call has already ended")
    return {"ok": True, "sent": digits, "method": "twiml"}
