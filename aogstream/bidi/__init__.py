"""WebSocket sessions: AOG's realtime speech protocol and a generic bidi relay."""
