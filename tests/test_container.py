"""The Dockerfile and docker-compose.yml, checked without a Docker engine (there is none here).

Static: base images pinned, a non-root numeric USER, exec-form HEALTHCHECK and CMD, the
image's settings accepted by the real CLI, every TELCHAT_* a real option. Live: the
HEALTHCHECK's module against a real server process.
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from telchat.config import OPTIONS, Config, parse_config
from tests.procs import ROOT, ServerProcess

KNOWN_ENV = {option.env for option in OPTIONS}
# A tag naming a patch release (3.11.14-slim-bookworm, 7.2.11-alpine, 0.1.0), or a digest;
# `3.11-slim` or `7-alpine` move under you like `latest` does.
PINNED = re.compile(r"^[^@\s]+:\d+\.\d+\.\d+[\w.-]*$|@sha256:[0-9a-f]{64}$")


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the final stage"
        return found[-1]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) pairs: continuations joined, comments dropped, as BuildKit reads it."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comment lines inside a continuation are skipped too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    return out


def parse_dockerfile() -> tuple[list[Stage], dict[str, str]]:
    """Stages with their base images (global ARGs substituted) and the final image's ENV."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, args in dockerfile_instructions((ROOT / "Dockerfile").read_text()):
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), ""), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    env: dict[str, str] = {}
    for args in stages[-1].all("ENV"):
        words = shlex.split(args)
        if "=" not in words[0]:  # the legacy `ENV KEY value with spaces` form
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return stages, env


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form instruction; a shell-form one fails here."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"not exec form (a JSON array): {args}")
    assert isinstance(value, list) and value and all(isinstance(v, str) for v in value), args
    return value


def assert_pinned(image: str) -> None:
    assert PINNED.search(image), f"image {image!r} is not pinned to a version tag or digest"
    assert not image.endswith(":latest")


def service_env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):  # the `- KEY=value` form
        return dict(item.partition("=")[::2] for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[Stage], dict[str, str]]:
    return parse_dockerfile()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # safe_load resolves the `<<: *telchat` merge keys the way Compose does.
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def image_config(env: dict[str, str], args: list[str]) -> Config:
    try:
        return parse_config(args, environ=env)
    except SystemExit as exc:  # argparse rejects by exiting; say which setting
        pytest.fail(f"the CLI rejects {args} with {sorted(k for k in env if k.startswith('TELCHAT_'))}: exit {exc}")


def test_base_images_are_pinned(dockerfile: tuple[list[Stage], dict[str, str]]) -> None:
    stages, _ = dockerfile
    assert len(stages) >= 2, "multi-stage: the build tools stay out of the image"
    names = {stage.name for stage in stages}
    for stage in stages:
        if stage.image not in names:  # `FROM build` continues a stage, it pulls nothing
            assert_pinned(stage.image)


def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: tuple[list[Stage], dict[str, str]]) -> None:
    user = dockerfile[0][-1].last("USER").split(":")[0]
    assert user.isdigit(), f"USER {user!r}: a numeric uid lets runAsNonRoot verify it"
    assert int(user) != 0


def test_healthcheck_cmd_and_stop(dockerfile: tuple[list[Stage], dict[str, str]]) -> None:
    final = dockerfile[0][-1]
    check = final.last("HEALTHCHECK")
    options, _, command = check.partition("CMD ")
    assert all(word.startswith("--") for word in options.split()), check
    assert exec_form(command) == ["python", "-m", "telchat.healthcheck"]
    assert final.last("STOPSIGNAL") == "SIGTERM"
    assert exec_form(final.last("CMD"))[0] == "telchat"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "telchat" in scripts, "the CMD runs the console script pyproject.toml installs"


def test_ports_volume_and_the_cli_accepts_the_image(dockerfile: tuple[list[Stage], dict[str, str]]) -> None:
    final, env = dockerfile[0][-1], dockerfile[1]
    unknown = {key for key in env if key.startswith("TELCHAT_")} - KNOWN_ENV
    assert not unknown, f"Dockerfile ENV names no option: {sorted(unknown)}"
    config = image_config(env, exec_form(final.last("CMD"))[1:])
    assert config.store == "sqlite:////data/telchat.db"
    assert config.host == "0.0.0.0"
    assert config.metrics_port is not None, "metrics on, so the HEALTHCHECK asks /healthz"
    exposed = {port.split("/")[0] for args in final.all("EXPOSE") for port in args.split()}
    assert {"2323", str(config.port), str(config.metrics_port)} <= exposed
    volumes = [v for args in final.all("VOLUME") for v in (json.loads(args) if args.startswith("[") else args.split())]
    assert "/data" in volumes
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "nothing written outside /data (read-only root)"


def test_metrics_can_be_turned_off_in_the_image(dockerfile: tuple[list[Stage], dict[str, str]]) -> None:
    # The image sets TELCHAT_METRICS_PORT; `docker run -e TELCHAT_METRICS_PORT=` is the only
    # way to unset it (docs/OPERATIONS.md), so an empty value must mean "off".
    env = {**dockerfile[1], "TELCHAT_METRICS_PORT": ""}
    assert image_config(env, []).metrics_port is None


def test_compose_services(compose: dict[str, Any], dockerfile: tuple[list[Stage], dict[str, str]]) -> None:
    services = compose["services"]
    assert {"redis", "telchat1", "telchat2"} <= set(services)
    for name, service in services.items():
        assert_pinned(service["image"])
        assert service.get("read_only") is True, f"{name}: read_only"
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendfsync") + 1] == "always"
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    published = set()
    for name in ("telchat1", "telchat2"):
        node = services[name]
        assert node["build"] == "."
        assert node["stop_grace_period"] == "10s"
        assert "redis" in node["depends_on"]
        env = service_env(node)
        unknown = {key for key in env if key.startswith("TELCHAT_")} - KNOWN_ENV
        assert not unknown, f"{name}: environment names no option: {sorted(unknown)}"
        config = image_config({**dockerfile[1], **env}, [])
        assert config.store == "redis://redis:6379/0"
        targets = {str(port).rsplit(":", 1)[1] for port in node["ports"]}
        assert {str(config.port), str(config.metrics_port)} <= targets, f"{name}: publish telnet and metrics"
        published |= {str(port).rsplit(":", 1)[0] for port in node["ports"]}
    assert {"2323", "2324"} <= published


def test_healthcheck_module_is_stdlib_only() -> None:
    tree = ast.parse((ROOT / "telchat" / "healthcheck.py").read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    roots = {module.split(".")[0] for module in modules} - {"__future__"}
    assert roots <= sys.stdlib_module_names, roots - sys.stdlib_module_names


def healthcheck(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TELCHAT_")}
    return subprocess.run(
        [sys.executable, "-m", "telchat.healthcheck"],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess("--store=memory://", "--metrics-port=0", "--metrics-host=127.0.0.1")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def closed_port() -> Iterator[int]:
    # Bound but not listening: connections are refused, and nobody else can take the port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_healthcheck_tcp_probe(server: ServerProcess, closed_port: int) -> None:
    ok = healthcheck(TELCHAT_PORT=str(server.port))
    assert ok.returncode == 0, ok
    down = healthcheck(TELCHAT_PORT=str(closed_port))
    assert down.returncode == 1
    assert len(down.stderr.splitlines()) == 1, down.stderr
    assert "refused" in down.stderr


def test_healthcheck_asks_healthz(server: ServerProcess, closed_port: int) -> None:
    metrics_port = server.wait_event("metrics_listening")["port"]
    # TELCHAT_PORT points nowhere: with metrics on, only /healthz decides.
    ok = healthcheck(TELCHAT_METRICS_PORT=str(metrics_port), TELCHAT_PORT=str(closed_port))
    assert ok.returncode == 0, ok
    assert healthcheck(TELCHAT_METRICS_PORT=str(closed_port)).returncode == 1


def test_healthcheck_fails_on_503() -> None:
    class Unhealthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"store not answering\n")

        def log_message(self, *args: Any) -> None:
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), Unhealthy) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            result = healthcheck(TELCHAT_METRICS_PORT=str(httpd.server_address[1]))
        finally:
            httpd.shutdown()
    assert result.returncode == 1
    assert "HTTP 503 store not answering" in result.stderr
