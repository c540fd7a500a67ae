"""TwiML for an incoming call: an optional ``<Say>`` greeting, then a bidirectional ``<Connect><Stream>``.

Built with ``twilio.twiml.voice_response`` (ElementTree does the XML escaping). ``parse_stream_twiml``
reads it back the way Twilio does, for the simulated Twilio and for tests.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from twilio.twiml.voice_response import Connect, VoiceResponse

__all__ = [
    "MAX_PARAMETER_CHARS",
    "REJECT_REASONS",
    "StreamTwiml",
    "TwimlError",
    "connect_stream_twiml",
    "first_verb",
    "hangup_twiml",
    "parse_stream_twiml",
    "reject_twiml",
    "response_root",
]

#: Twilio's limit on one <Parameter>: name and value together must be *under* 500 characters.
MAX_PARAMETER_CHARS = 500


class TwimlError(ValueError):
    """TwiML that Twilio would refuse (or that does not open a bidirectional stream)."""


def _check_stream_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("wss", "ws") or not parts.netloc:
        raise TwimlError(f"stream url must be an absolute wss:// URL, got {url!r}")
    if parts.query or "?" in url:
        # Twilio drops query strings from stream URLs (and lists them as a handshake-failure cause, 31920).
        raise TwimlError("stream url must not carry a query string; pass data as <Parameter>s")


def connect_stream_twiml(
    stream_url: str,
    parameters: Mapping[str, str],
    *,
    greeting: str = "",
    stream_name: str | None = None,
) -> str:
    """The ``<Response>`` that (optionally) says ``greeting`` then connects the call to ``stream_url``.

    ``parameters`` become ``<Parameter name value>`` children, which Twilio passes back in
    ``start.customParameters``. Raises :class:`TwimlError` for a URL with a query string, a non-ws scheme,
    or a parameter whose name and value reach Twilio's 500-character limit.
    """
    _check_stream_url(stream_url)
    response = VoiceResponse()
    if greeting:
        response.say(greeting)
    connect = Connect()
    kwargs = {"url": stream_url}
    if stream_name:
        kwargs["name"] = stream_name
    stream = connect.stream(**kwargs)
    for name, value in parameters.items():
        if not name:
            raise TwimlError("a <Parameter> needs a name")
        if len(name) + len(value) >= MAX_PARAMETER_CHARS:
            raise TwimlError(f"<Parameter name={name!r}>: name + value must be under {MAX_PARAMETER_CHARS}")
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response.to_xml(xml_declaration=True))


#: ``<Reject reason>`` values: ``busy`` plays a busy tone (the call ends ``busy``), ``rejected`` a
#: not-in-service message (the call ends ``no-answer``).
REJECT_REASONS = ("busy", "rejected")


def reject_twiml(reason: str = "busy") -> str:
    """A ``<Response><Reject reason/></Response>``: Twilio does not answer (or bill) the incoming call. Only
    meaningful for an incoming call that has not been answered; for an answered one use :func:`hangup_twiml`."""
    if reason not in REJECT_REASONS:
        raise TwimlError(f"<Reject reason> must be one of {', '.join(REJECT_REASONS)}, got {reason!r}")
    response = VoiceResponse()
    response.reject(reason=reason)
    return str(response.to_xml(xml_declaration=True))


def hangup_twiml() -> str:
    """A ``<Response><Hangup/></Response>``: end an answered call (an outbound call Twilio placed for us)."""
    response = VoiceResponse()
    response.hangup()
    return str(response.to_xml(xml_declaration=True))


def response_root(xml: str | bytes) -> ET.Element:
    """The ``<Response>`` root of a TwiML document; :class:`TwimlError` if it is not one."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise TwimlError(f"not XML: {exc}") from None
    if root.tag != "Response":
        raise TwimlError(f"root element must be <Response>, got <{root.tag}>")
    return root


def first_verb(xml: str | bytes) -> tuple[str, dict[str, str]]:
    """The first verb of a TwiML document and its attributes (``("Reject", {"reason": "busy"})``);
    :class:`TwimlError` if it is not a ``<Response>`` with at least one verb."""
    for verb in response_root(xml):
        return verb.tag, dict(verb.attrib)
    raise TwimlError("an empty <Response>")


@dataclass(slots=True)
class StreamTwiml:
    """What a ``<Connect><Stream>`` response asks Twilio to do."""

    stream_url: str
    parameters: dict[str, str] = field(default_factory=dict)
    stream_name: str | None = None
    #: Text of the <Say> verbs before <Connect>, in order.
    says: list[str] = field(default_factory=list)
    #: Verbs after </Connect> (run only once the server closes the WebSocket).
    after: list[str] = field(default_factory=list)


def parse_stream_twiml(xml: str | bytes) -> StreamTwiml:
    """Read the ``<Connect><Stream>`` of a TwiML document; :class:`TwimlError` if there is none or it is
    invalid (a ``<Start><Stream>`` is unidirectional: the bot would never be heard)."""
    root = response_root(xml)
    says: list[str] = []
    after: list[str] = []
    found: StreamTwiml | None = None
    for verb in root:
        if found is not None:
            after.append(verb.tag)
            continue
        if verb.tag == "Say":
            says.append(verb.text or "")
        elif verb.tag == "Connect":
            streams = [child for child in verb if child.tag == "Stream"]
            if len(streams) != 1:
                raise TwimlError("<Connect> must hold exactly one <Stream>")
            stream = streams[0]
            url = stream.get("url", "")
            _check_stream_url(url)
            params: dict[str, str] = {}
            for p in stream:
                if p.tag == "Parameter":
                    name, value = p.get("name", ""), p.get("value", "")
                    if not name or len(name) + len(value) >= MAX_PARAMETER_CHARS:
                        raise TwimlError(f"bad <Parameter name={name!r}>")
                    params[name] = value
            found = StreamTwiml(url, params, stream.get("name"), says)
    if found is None:
        raise TwimlError("no <Connect><Stream> in the TwiML")
    found.after = after
    return found
