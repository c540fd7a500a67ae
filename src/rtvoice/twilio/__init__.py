"""Twilio: webhook signatures, TwiML, stream tokens, Media Streams messages, REST."""
