"""The SSH door: asyncssh, and an in-process telnet client (shim.py) in front of the telnet stack."""
