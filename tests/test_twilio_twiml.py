"""TwiML: greeting + <Connect><Stream> with <Parameter>s, and reading it back as Twilio does."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from rtvoice.twilio.twiml import TwimlError, connect_stream_twiml, parse_stream_twiml

URL = "wss://voice.example.com/media-stream"


def test_shape_with_greeting() -> None:
    xml = connect_stream_twiml(URL, {"token": "t", "from": "+15551230000"}, greeting="Hello & welcome")
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?><Response>')
    root = ET.fromstring(xml)
    assert [v.tag for v in root] == ["Say", "Connect"]
    assert root[0].text == "Hello & welcome"
    (stream,) = list(root[1])
    assert stream.tag == "Stream" and stream.attrib == {"url": URL}
    assert [(p.tag, p.attrib) for p in stream] == [
        ("Parameter", {"name": "token", "value": "t"}),
        ("Parameter", {"name": "from", "value": "+15551230000"}),
    ]


def test_no_greeting_no_say_and_escaping_round_trip() -> None:
    params = {"token": 'a"<b>&c', "to": "client:alice"}
    xml = connect_stream_twiml(URL, params, stream_name="s1")
    assert "<Say" not in xml
    parsed = parse_stream_twiml(xml)
    assert parsed.stream_url == URL and parsed.parameters == params and parsed.stream_name == "s1"
    assert parsed.says == [] and parsed.after == []


@pytest.mark.parametrize("url", [URL + "?token=x", "https://voice.example.com/media-stream", "/media-stream"])
def test_refuses_urls_twilio_refuses(url: str) -> None:
    with pytest.raises(TwimlError):
        connect_stream_twiml(url, {})


def test_parameter_length_limit() -> None:
    connect_stream_twiml(URL, {"token": "x" * 494})  # 5 + 494 = 499 < 500
    with pytest.raises(TwimlError):
        connect_stream_twiml(URL, {"token": "x" * 495})


@pytest.mark.parametrize(
    "xml",
    [
        "not xml",
        "<Response/>",
        "<Other><Connect><Stream url='wss://h/x'/></Connect></Other>",
        "<Response><Start><Stream url='wss://h/x'/></Start></Response>",  # unidirectional: bot never heard
        "<Response><Connect><Stream url='wss://h/x?q=1'/></Connect></Response>",
        "<Response><Connect/></Response>",
    ],
)
def test_parse_rejects(xml: str) -> None:
    with pytest.raises(TwimlError):
        parse_stream_twiml(xml)


def test_parse_notes_verbs_after_connect() -> None:
    xml = "<Response><Say>a</Say><Connect><Stream url='wss://h/x'/></Connect><Say>bye</Say><Hangup/></Response>"
    parsed = parse_stream_twiml(xml)
    assert parsed.says == ["a"] and parsed.after == ["Say", "Hangup"]


def test_reject_and_hangup_twiml_read_back() -> None:
    from rtvoice.twilio.twiml import first_verb, hangup_twiml, reject_twiml

    assert first_verb(reject_twiml()) == ("Reject", {"reason": "busy"})
    assert first_verb(reject_twiml("rejected")) == ("Reject", {"reason": "rejected"})
    assert first_verb(hangup_twiml()) == ("Hangup", {})
    with pytest.raises(TwimlError, match="reason"):
        reject_twiml("go-away")
    with pytest.raises(TwimlError, match="empty"):
        first_verb("<Response/>")
    with pytest.raises(TwimlError, match="Response"):
        first_verb("<Foo><Reject/></Foo>")
    with pytest.raises(TwimlError, match="not XML"):
        first_verb("<Response>")
