"""telchat: a multi-room telnet chat server."""

__version__ = "0.1.0"
