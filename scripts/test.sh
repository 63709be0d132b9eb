#!/usr/bin/env bash
# The one test command: sets up a fresh Debian machine (apt packages, venv, pip packages),
# then runs ruff, mypy and the whole pytest suite. Safe to re-run; it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=()
need() { command -v "$1" >/dev/null 2>&1 || APT_PACKAGES+=("$2"); }
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || APT_PACKAGES+=(python3-venv)
need python3 python3
need redis-server redis-server   # tests/test_redis.py runs a real one; it must not skip in CI
need ps procps
# The real clients the terminal tests drive, and what makes their TLS certificate.
need tmux tmux
need telnet inetutils-telnet
need busybox busybox
need kermit ckermit
need nc netcat-openbsd
[ -x /usr/games/tt++ ] || APT_PACKAGES+=(tintin++)
need openssl openssl
# Headless Chromium and its driver: tests/test_web_browser.py loads the web door's page.
need chromium chromium
need chromedriver chromium-driver
# The real OpenSSH client: tests/test_ssh.py logs in through the SSH door with it.
need ssh openssh-client

if [ "${#APT_PACKAGES[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing apt packages: ${APT_PACKAGES[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT_PACKAGES[@]}" >/dev/null
fi

VENV="${TELCHAT_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dev.txt -e .

export PATH="$(cd "$VENV" && pwd)/bin:$PATH"  # $TELCHAT_VENV may be absolute
echo "== ruff check"; ruff check telchat tests scripts server.py
echo "== ruff format --check"; ruff format --check telchat tests scripts server.py
echo "== mypy --strict telchat"; mypy --strict telchat
echo "== pytest"; exec python -m pytest "$@"
