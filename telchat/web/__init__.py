"""The web door: a page with a terminal, and telnet over a WebSocket (door.py, transport.py)."""
