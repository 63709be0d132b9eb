"""Command-line and environment configuration.

Every option is declared once in OPTIONS; argparse flags, `TELCHAT_<OPTION>` environment
defaults and the `Config` fields all come from that table, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from telchat import __version__


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "0.0.0.0"
    port: int = 2323
    history_replay: int = 20
    history_keep: int = 1000
    announce_nicks: str = "all"
    log_format: str = "auto"
    log_level: str = "info"
    max_line_bytes: int = 1024
    max_unterminated_bytes: int = 8192
    sendq_bytes: int = 131072
    connect_maxwait: float = 0.25
    shutdown_grace: float = 2.0
    flood_burst: int = 5
    flood_rate: float = 2.0
    max_connections: int = 10000
    max_conns_per_ip: int = 10
    conn_rate_per_ip: float = 1.0
    conn_burst_per_ip: int = 20
    limit_loopback: bool = False
    max_subneg_bytes: int = 8192
    telnet_rate: int = 16384


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    kind: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "TELCHAT_" + self.name.upper()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535, got {value}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word not in _BOOLEANS:
        raise argparse.ArgumentTypeError(f"must be yes or no, got {text!r}")
    return _BOOLEANS[word]


_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


OPTIONS: tuple[Option, ...] = (
    Option("host", str, "address to listen on"),
    Option("port", _port, "TCP port for telnet (0 picks a free one)"),
    Option("history_replay", _non_negative_int, "lines of room history shown on join"),
    Option("history_keep", _positive_int, "lines of history kept per room"),
    Option(
        "announce_nicks",
        str,
        "who sees nick changes: everyone connected, or only those sharing a room",
        ("all", "rooms"),
    ),
    Option(
        "log_format",
        str,
        "log rendering: json lines, console, or auto (console on a TTY, else json)",
        ("auto", "json", "console"),
    ),
    Option(
        "log_level",
        str,
        "lowest level logged",
        ("debug", "info", "warning", "error"),
    ),
    Option("max_line_bytes", _positive_int, "longest line relayed, in bytes"),
    Option(
        "max_unterminated_bytes",
        _positive_int,
        "input without a newline that disconnects the client, in bytes",
    ),
    Option(
        "sendq_bytes",
        _positive_int,
        "output queued for one client before it is disconnected as too slow",
    ),
    Option(
        "connect_maxwait",
        _seconds,
        "seconds to wait for telnet negotiation before greeting a client",
    ),
    Option("shutdown_grace", _seconds, "seconds to flush goodbyes on SIGTERM/SIGINT"),
    Option("flood_burst", _positive_int, "lines a client may send at once before fakelag delays them"),
    Option("flood_rate", _rate, "lines per second a client may send past the burst (0: no flood control)"),
    Option("max_connections", _positive_int, "connections the server accepts at once"),
    Option("max_conns_per_ip", _non_negative_int, "connections at once from one address (0: no limit)"),
    Option("conn_rate_per_ip", _rate, "new connections per second from one address, past the burst (0: no limit)"),
    Option("conn_burst_per_ip", _positive_int, "new connections from one address at once before the rate applies"),
    Option("limit_loopback", _boolean, "apply the per-address limits to loopback clients too (yes/no)"),
    Option("max_subneg_bytes", _positive_int, "telnet subnegotiation bytes buffered before disconnecting"),
    Option(
        "telnet_rate",
        _non_negative_int,
        "bytes per second of telnet commands processed per client; excess waits (0: no limit)",
    ),
)


def _env_default(option: Option, default: Any, environ: Mapping[str, str]) -> Any:
    raw = environ.get(option.env)
    if raw is None:
        return default
    try:
        value = option.kind(raw)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise SystemExit(f"telchat: error: {option.env}={raw!r}: {exc}") from exc
    if option.choices and value not in option.choices:
        raise SystemExit(f"telchat: error: {option.env}={raw!r}: choose from {option.choices}")
    return value


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="telchat",
        description="A multi-room telnet chat server. Every option can also be set "
        "through the environment variable TELCHAT_<OPTION>, e.g. TELCHAT_PORT=2323.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = Config()
    for option in OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.name,
            type=option.kind,
            choices=option.choices,
            default=_env_default(option, getattr(defaults, option.name), env),
            help=f"{option.help} [env {option.env}]",
        )
    parser.add_argument("--version", action="version", version=f"telchat {__version__}")
    return parser


def parse_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    namespace = build_parser(environ).parse_args(argv)
    return Config(**{f.name: getattr(namespace, f.name) for f in fields(Config)})
