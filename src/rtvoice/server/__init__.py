"""Server: hand-rolled HTTP/1.1 (h11) and WebSocket (websockets sans-I/O) on uvloop."""
