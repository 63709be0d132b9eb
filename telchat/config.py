"""Command-line and environment configuration.

Every option is declared once in OPTIONS; argparse flags, `TELCHAT_<OPTION>` environment
defaults and the `Config` fields all come from that table, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
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
    max_rooms_per_user: int = 50
    catchup_max: int = 50
    mail_max: int = 100
    mail_per_sender: int = 20
    marker_flush: float = 30.0
    announce_nicks: str = "auto"
    log_format: str = "auto"
    log_level: str = "info"
    max_line_bytes: int = 1024
    max_unterminated_bytes: int = 8192
    sendq_bytes: int = 131072
    connect_maxwait: float = 0.25
    shutdown_grace: float = 2.0
    store: str = "sqlite:///telchat.db"
    node_ttl: float = 15.0
    workers: int = 1
    idle_ping: float = 90.0
    idle_timeout: float = 60.0
    tls_port: int | None = None
    tls_cert: str = ""
    tls_key: str = ""
    tls_handshake_timeout: float = 5.0
    server_name: str = "telchat"
    operators: str = ""
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19456
    argon2_parallelism: int = 1
    hash_concurrency: int = 2
    login_failures: int = 3
    flood_burst: int = 5
    flood_rate: float = 2.0
    max_connections: int = 10000
    max_conns_per_ip: int = 10
    conn_rate_per_ip: float = 1.0
    conn_burst_per_ip: int = 20
    limit_loopback: bool = False
    max_subneg_bytes: int = 8192
    telnet_rate: int = 16384
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    log_messages: bool = True
    loop: str = "auto"
    backlog: int | None = None
    max_sndbuf: int = 131072
    web_port: int | None = None
    web_origins: str = ""
    web_trusted_proxies: str = ""
    web_tls_cert: str = ""
    web_tls_key: str = ""
    web_max_frame_bytes: int = 16384
    ssh_port: int | None = None
    ssh_host_key: str = "ssh_host_ed25519_key"


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


def _number(name: str, convert: Callable[[str], float], low: float, high: float | None = None) -> Callable[[str], Any]:
    """An argparse type: `convert`, then check the range. Its name is what errors show."""

    def parse(text: str) -> Any:
        value = convert(text)
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            limit = f"{low}-{high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {limit}, got {value}")
        return value

    parse.__name__ = name
    return parse


count = _number("count", int, 1)
lines = _number("lines", int, 0)
port = _number("port", int, 0, 65535)
seconds = _number("seconds", float, 0)
argon2_memory = _number("argon2_memory", int, 8)
ttl = _number("ttl", float, 1)
rate = _number("rate", float, 0)


def boolean(text: str) -> bool:
    word = text.strip().lower()
    if word not in _BOOLEANS:
        raise argparse.ArgumentTypeError(f"must be yes or no, got {text!r}")
    return _BOOLEANS[word]


def networks(text: str) -> str:
    """Comma-separated addresses or CIDR networks, checked here and parsed where used."""
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}


OPTIONS: tuple[Option, ...] = (
    Option("host", str, "address to listen on"),
    Option("port", port, "TCP port for telnet (0 picks a free one)"),
    Option("history_replay", lines, "lines of room history shown on join"),
    Option("history_keep", count, "lines of history kept per room"),
    Option("catchup_max", lines, "missed lines shown per room when a registered user logs in"),
    Option("mail_max", count, "messages that may wait for one offline registered user"),
    Option("mail_per_sender", count, "of those, messages from one sender"),
    Option("marker_flush", seconds, "how often the rooms and read markers of online users are saved"),
    Option(
        "announce_nicks",
        str,
        "who sees nick changes: everyone connected, only those sharing a room, or auto "
        "(everyone while at most ANNOUNCE_ALL_UP_TO users are online, else rooms)",
        ("auto", "all", "rooms"),
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
    Option("max_line_bytes", count, "longest line relayed, in bytes"),
    Option(
        "max_unterminated_bytes",
        count,
        "input without a newline that disconnects the client, in bytes",
    ),
    Option(
        "sendq_bytes",
        count,
        "output queued for one client before it is disconnected as too slow",
    ),
    Option(
        "connect_maxwait",
        seconds,
        "seconds to wait for telnet negotiation before greeting a client",
    ),
    Option("shutdown_grace", seconds, "seconds to flush goodbyes on SIGTERM/SIGINT"),
    Option("store", str, "history store: sqlite:///PATH, memory:// or redis://HOST:PORT/DB"),
    Option(
        "node_ttl",
        ttl,
        "Redis store: seconds without a heartbeat before a node's users are removed by the others",
    ),
    Option("workers", count, "processes sharing the port (SO_REUSEPORT); more than 1 needs a Redis store"),
    Option(
        "idle_ping",
        seconds,
        "seconds of silence before a telnet client gets a TIMING-MARK ping (0: never)",
    ),
    Option("idle_timeout", seconds, "seconds a pinged telnet client has to answer before it is dropped"),
    Option("tls_port", port, "TCP port for telnet over TLS (telnets, usually 992); unset: no TLS listener"),
    Option("tls_cert", str, "PEM certificate (chain) file for the TLS listener"),
    Option("tls_key", str, "PEM private key file for the TLS listener"),
    Option("tls_handshake_timeout", seconds, "seconds a TLS client has to finish its handshake"),
    Option("server_name", str, "the server's name, as MSSP crawlers are told"),
    Option("operators", str, "comma-separated nicks whose registered accounts are operators"),
    Option("argon2_time_cost", count, "argon2id passes per password hash"),
    Option("argon2_memory_kib", argon2_memory, "argon2id memory per password hash, in KiB (at least 8)"),
    Option("argon2_parallelism", count, "argon2id lanes per password hash"),
    Option("hash_concurrency", count, "password hashes computed at once, in worker threads"),
    Option("login_failures", count, "failed logins allowed per minute, per address and per address and nick"),
    Option("max_rooms_per_user", count, "rooms one connection may be in at once"),
    Option("flood_burst", count, "lines a client may send at once before fakelag delays them"),
    Option("flood_rate", rate, "lines per second a client may send past the burst (0: no flood control)"),
    Option("max_connections", count, "connections the server accepts at once"),
    Option("max_conns_per_ip", lines, "connections at once from one address (0: no limit)"),
    Option("conn_rate_per_ip", rate, "new connections per second from one address, past the burst (0: no limit)"),
    Option("conn_burst_per_ip", count, "new connections from one address at once before the rate applies"),
    Option("limit_loopback", boolean, "apply the per-address limits to loopback clients too (yes/no)"),
    Option("max_subneg_bytes", count, "telnet subnegotiation bytes buffered before disconnecting"),
    Option(
        "telnet_rate",
        lines,
        "bytes per second of telnet commands processed per client; excess waits (0: no limit)",
    ),
    Option("metrics_port", port, "HTTP port for Prometheus /metrics and /healthz; unset: no metrics listener"),
    Option("metrics_host", str, "address the metrics listener binds to"),
    Option("log_messages", boolean, "put chat text in message log events (yes/no; --no-log-messages)"),
    Option(
        "loop",
        str,
        "event loop: uvloop (faster), asyncio, or auto (uvloop when it is installed)",
        ("auto", "asyncio", "uvloop"),
    ),
    Option("backlog", count, "listen backlog of every listener; unset: the kernel's somaxconn"),
    Option(
        "max_sndbuf",
        count,
        "kernel send buffer per client socket (SO_SNDBUF), in bytes: what the kernel may hold beyond the sendq",
    ),
    Option("web_port", port, "HTTP port for the web page (telnet over a WebSocket); unset: no web door"),
    Option("web_origins", str, "comma-separated extra origins whose pages may open the WebSocket (https://host)"),
    Option(
        "web_trusted_proxies",
        networks,
        "comma-separated addresses or networks of reverse proxies whose X-Forwarded-For is believed",
    ),
    Option("web_tls_cert", str, "PEM certificate (chain) file: serve the web door over HTTPS"),
    Option("web_tls_key", str, "PEM private key file for --web-tls-cert"),
    Option("web_max_frame_bytes", count, "largest WebSocket message accepted from a browser, in bytes"),
    Option("ssh_port", port, "TCP port for SSH (ssh -p PORT nick@host); unset: no SSH door"),
    Option("ssh_host_key", str, "the SSH host key file, made on the first start if missing"),
)


def _env_default(option: Option, default: Any, environ: Mapping[str, str]) -> Any:
    """The raw environment string, if set: argparse converts and checks a string default
    exactly like a flag's value (and only when the flag is not given)."""
    raw = environ.get(option.env)
    # An empty value means "not set": the only way to unset an option the image sets.
    return default if raw is None or (raw == "" and default is None) else raw


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
        # A yes/no option may also stand alone (--log-messages) or be negated (--no-log-messages).
        switch = {"nargs": "?", "const": True} if option.kind is boolean else {}
        parser.add_argument(
            option.flag,
            dest=option.name,
            type=option.kind,
            choices=option.choices,
            default=_env_default(option, getattr(defaults, option.name), env),
            help=f"{option.help} [env {option.env}]",
            **switch,  # type: ignore[arg-type]
        )
        if option.kind is boolean:
            parser.add_argument("--no-" + option.flag[2:], dest=option.name, action="store_false", help="")
    parser.add_argument("--version", action="version", version=f"telchat {__version__}")
    return parser


def parse_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    parser = build_parser(environ)
    namespace = parser.parse_args(argv)
    for option in OPTIONS:
        # argparse checks choices for flags, not for defaults taken from the environment.
        value = getattr(namespace, option.name)
        if option.choices and value not in option.choices:
            parser.error(f"{option.env}={value!r}: choose from {', '.join(option.choices)}")
    if namespace.tls_port is not None and not (namespace.tls_cert and namespace.tls_key):
        parser.error("--tls-port needs --tls-cert and --tls-key")
    if bool(namespace.web_tls_cert) != bool(namespace.web_tls_key):
        parser.error("--web-tls-cert and --web-tls-key go together")
    if namespace.argon2_memory_kib < 8 * namespace.argon2_parallelism:
        parser.error("--argon2-memory-kib must be at least 8 times --argon2-parallelism")
    return Config(**{f.name: getattr(namespace, f.name) for f in fields(Config)})
