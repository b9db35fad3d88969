"""The HTTP/WebSocket north side: raw ASGI hot routes in front of a Quart app."""
