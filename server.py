"""Entry point kept at the root so that `python server.py --port=2323` works."""

from telchat.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
