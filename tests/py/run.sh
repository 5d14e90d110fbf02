#!/usr/bin/env bash
# Run the py-consul compatibility tests against a fresh `tribune agent -dev`, then again
# against a follower of a real three-server cluster (127.0.4.1-3, default ports, fjall data
# in a temp dir): writes go through the follower to the leader, reads are linearizable.
# Creates target/venv (python3 -m venv; pip install py-consul pytest) on first use,
# builds the release binary, starts the agents, runs pytest, stops the agents.
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
servers=()
cluster_dir=$(mktemp -d)
cleanup() {
  kill "$agent" "${servers[@]}" 2>/dev/null || true
  wait "$agent" "${servers[@]}" 2>/dev/null || true
  rm -rf "$log" "$cluster_dir"
}
trap cleanup EXIT

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

echo "-- py-consul against a dev agent"
CONSUL_HTTP_ADDR="127.0.0.1:$port" "$venv/bin/pytest" -q tests/py "$@"

echo "-- py-consul against a follower of a three-server cluster"
for i in 1 2 3; do
  mkdir -p "$cluster_dir/s$i/config"
  cat >"$cluster_dir/s$i/config/config.json" <<JSON
{"bootstrap_expect": 3, "bind_addr": "127.0.4.$i", "client_addr": "127.0.4.$i", "server": true,
 "datacenter": "dc1", "data_dir": "$cluster_dir/s$i/data", "log_level": "WARN",
 "retry_join": ["127.0.4.1", "127.0.4.2", "127.0.4.3"], "ports": {"dns": -1}}
JSON
  "$bin" agent -node="s$i" -config-dir="$cluster_dir/s$i/config" >"$cluster_dir/s$i.log" 2>&1 &
  servers+=($!)
done
leader=""
for _ in $(seq 1 200); do
  leader=$("$venv/bin/python" -c "import urllib.request; print(urllib.request.urlopen('http://127.0.4.1:8500/v1/status/leader').read().decode().strip('\"'))" 2>/dev/null || true)
  [ -n "$leader" ] && break
  sleep 0.1
done
if [ -z "$leader" ]; then
  echo "the cluster elected no leader:" >&2; cat "$cluster_dir"/s*.log >&2; exit 1
fi
follower=127.0.4.1
[ "${leader%:*}" = 127.0.4.1 ] && follower=127.0.4.2
echo "leader $leader; testing through $follower"
CONSUL_HTTP_ADDR="$follower:8500" "$venv/bin/pytest" -q tests/py "$@"
