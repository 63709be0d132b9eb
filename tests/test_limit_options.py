"""The abuse limits' options and the counters registry, without sockets."""

from __future__ import annotations

import pytest

from telchat.config import Config, parse_config
from telchat.obs.counters import Counters


def test_defaults_match_the_product_brief() -> None:
    config = Config()
    assert (config.flood_burst, config.flood_rate) == (5, 2.0)
    assert (config.max_conns_per_ip, config.max_connections, config.limit_loopback) == (10, 10000, False)
    assert config.sendq_bytes == 128 * 1024


def test_limit_options_from_flags_and_environment() -> None:
    env = {"TELCHAT_FLOOD_RATE": "0", "TELCHAT_LIMIT_LOOPBACK": "yes", "TELCHAT_MAX_CONNS_PER_IP": "3"}
    config = parse_config(["--flood-burst=9", "--conn-rate-per-ip=0.5", "--max-subneg-bytes=512"], env)
    assert (config.flood_rate, config.limit_loopback, config.max_conns_per_ip) == (0.0, True, 3)
    assert (config.flood_burst, config.conn_rate_per_ip, config.max_subneg_bytes) == (9, 0.5, 512)
    assert parse_config(["--limit-loopback=no"], env).limit_loopback is False


@pytest.mark.parametrize(
    "argv",
    [
        ["--flood-rate=-1"],
        ["--flood-rate=nan"],
        ["--flood-rate=inf"],
        ["--flood-burst=0"],
        ["--limit-loopback=maybe"],
        ["--max-connections=0"],
        ["--telnet-rate=-5"],
    ],
)
def test_bad_limit_values_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config(argv, {})
    assert exc.value.code != 0


def test_counters_count_by_name_and_labels() -> None:
    counters = Counters()
    counters.inc("limits", kind="flood")
    counters.inc("limits", 2, kind="flood")
    counters.inc("limits", kind="sendq")
    counters.inc("disconnects", reason="eof")
    assert counters.value("limits", kind="flood") == 3
    assert counters.value("limits", kind="never") == 0
    assert counters[("limits", (("kind", "sendq"),))] == 1
    assert dict(counters) == {
        ("limits", (("kind", "flood"),)): 3,
        ("limits", (("kind", "sendq"),)): 1,
        ("disconnects", (("reason", "eof"),)): 1,
    }
