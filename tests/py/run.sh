#!/usr/bin/env bash
# Run the py-consul compatibility tests against a fresh `tribune agent -dev`.
# Creates target/venv (python3 -m venv; pip install py-consul pytest) on first use,
# builds the release binary, starts it on a free port, runs pytest, stops the agent.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/node}"

venv="$root/target/venv"
if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c 'import consul' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check py-consul pytest
fi

cargo build --release -p tribune
bin="$CARGO_TARGET_DIR/release/tribune"

port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
"$bin" agent -dev -http-port="$port" >"$log" 2>&1 &
agent=$!
trap 'kill "$agent" 2>/dev/null || true; wait "$agent" 2>/dev/null || true; rm -f "$log"' EXIT

for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$port/v1/status/leader" >/dev/null 2>&1 \
     || "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/v1/status/leader')" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$agent" 2>/dev/null; then
    echo "agent exited:" >&2; cat "$log" >&2; exit 1
  fi
  sleep 0.1
done

CONSUL_HTTP_ADDR="127.0.0.1:$port" "$venv/bin/pytest" -q tests/py "$@"
