"""rtvoice: a low-level asyncio server with a compiled audio core for AI phone calls over Twilio Media Streams."""

__version__ = "0.1.0"
