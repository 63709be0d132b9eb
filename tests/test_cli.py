"""The command line: options, environment, entry points, signals, exit codes."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from telchat.cli import LoopUnavailable, loop_runner
from telchat.config import OPTIONS, Config, parse_config
from tests.clients import RawClient, TelnetClient
from tests.procs import ROOT, ServerProcess


def test_every_option_is_in_help_with_its_env_var() -> None:
    out = subprocess.run(
        [sys.executable, "server.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    flat = " ".join(out.split())
    for option in OPTIONS:
        assert option.flag in flat
        assert option.env in flat


@pytest.mark.parametrize("entry", [["-m", "telchat"], [str(Path(sys.executable).parent / "telchat")]])
def test_other_entry_points_take_same_options(entry: list[str]) -> None:
    cmd = entry if not entry[0].startswith("-") else [sys.executable, *entry]
    out = subprocess.run([*cmd, "--help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "--history-replay" in out


def test_env_vars_set_defaults_and_flags_win() -> None:
    env = {"TELCHAT_PORT": "4000", "TELCHAT_HISTORY_REPLAY": "5", "TELCHAT_ANNOUNCE_NICKS": "rooms"}
    config = parse_config([], env)
    assert (config.port, config.history_replay, config.announce_nicks) == (4000, 5, "rooms")
    assert parse_config(["--port=4001"], env).port == 4001
    assert parse_config([], {}) == Config()


@pytest.mark.parametrize(
    ("env", "argv"),
    [
        ({"TELCHAT_PORT": "nope"}, []),
        ({"TELCHAT_LOG_FORMAT": "xml"}, []),
        ({}, ["--port=70000"]),
        ({}, ["--sendq-bytes=0"]),
    ],
)
def test_bad_values_are_refused(env: dict[str, str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config(argv, env)
    assert exc.value.code != 0


def test_port_in_use_exits_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "server.py", "--host", "127.0.0.1", f"--port={port}", "--log-format=json"],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert result.returncode == 2
    assert "telchat: cannot listen:" in result.stderr
    assert f"('127.0.0.1', {port})" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_says_goodbye_and_exits_zero(sig: signal.Signals) -> None:
    server = ServerProcess()
    try:
        raw = await RawClient.connect(server.port)
        tel = await TelnetClient.connect(server.port)
        await raw.login("bob")
        await raw.join("one", "bob")
        await tel.login("ann")
        await asyncio.sleep(0.1)
        started = time.monotonic()
        server.proc.send_signal(sig)
        for client in (raw, tel):
            lines = (await client.wait_closed(timeout=8)).split(b"\r\n")
            assert b"*** have a nice day ***" in lines
        code = await asyncio.to_thread(server.proc.wait, 8)
        assert code == 0
        assert time.monotonic() - started < 8
    finally:
        server.kill()


async def test_seed_run_command_works() -> None:
    """`python server.py --port=N`, exactly as the seed runs it, then a telnet session."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "server.py", f"--port={port}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        for _ in range(100):
            try:
                client = await TelnetClient.connect(port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("server did not start")
        await client.send("login frank")
        await client.expect("*** User change nick anonymous --> frank")
        client.writer.close()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_loop_option_serves(loop: str) -> None:
    server = ServerProcess(f"--loop={loop}")
    try:
        assert server.wait_event("listening")["loop"] == loop
        client = await RawClient.connect(server.port)
        await client.login("bob")
        await client.close()
        assert server.stop() == 0
    finally:
        server.kill()


def test_default_loop_is_uvloop_when_installed() -> None:
    server = ServerProcess()
    try:
        assert server.wait_event("listening")["loop"] == "uvloop"
    finally:
        server.kill()


def test_loop_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    assert loop_runner("auto") is asyncio.run
    with pytest.raises(LoopUnavailable, match="uvloop is not installed"):
        loop_runner("uvloop")
