# Sourced by every bench script but compare.sh and scaling.sh: build, a fresh bench folder, the
# Rust provider (on CPU $PROVIDER_CPU, by default the broker's) and the broker pinned to CPU
# $SERVER_CPU, consents seeded, runs from CPU $CLIENT_CPU, the broker's histogram means.
# compare.sh predates it and keeps its own copy of these steps; scaling.sh runs where there is
# no cargo. All three share bench/procs.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
# The provider shares the broker's CPU, as in compare.sh, unless told otherwise.
PROVIDER_CPU=${PROVIDER_CPU:-$SERVER_CPU}
# Below Linux's ephemeral range (32768 to 60999): a port there may be taken by an outgoing
# connection (a standby's, the load's) when a server starts.
BROKER_PORT=${BROKER_PORT:-22051}
OPS_PORT=${OPS_PORT:-22451}
PROVIDER_PORT=${PROVIDER_PORT:-22061}
BENCH=$CARGO_TARGET_DIR/release/unefois-bench
UNEFOIS=${UNEFOIS:-$CARGO_TARGET_DIR/release/unefois}
source bench/procs.sh

for tool in jq curl; do
  command -v "$tool" >/dev/null || { apt-get install -y "$tool" >/dev/null || { apt-get update >/dev/null && apt-get install -y "$tool" >/dev/null; }; }
done
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building release binaries"
  # Two commands: a target flag (--example) would restrict the first to that target alone.
  cargo build --release -p unefois-cli -p unefois-bench
  cargo build --release -p broker --example fill_log
fi

# bench_env DIR: a fresh bench folder (PKI, registry on the grpc adapter, dev-idp) in DIR.
# REGISTRY_DROP removes lines from its registry (below). BENCH_ADAPTER=static serves every type from the sample datasets inside the broker instead (the
# `static` adapter, copied into DIR/data): the broker without its second TLS hop.
bench_env() {
  BENCH_DIR=$1
  PKI=$BENCH_DIR/home/pki
  rm -rf "$BENCH_DIR"
  mkdir -p "$BENCH_DIR"
  "$BENCH" env --dir "$BENCH_DIR" --provider "127.0.0.1:$PROVIDER_PORT" \
    --registry-template bench/registry.toml --repo "$ROOT" >&2
  if [ "${BENCH_ADAPTER:-grpc}" = static ]; then
    cp -r examples/data "$BENCH_DIR/data"
    python3 - "$BENCH_DIR/registry.toml" <<'PY'
import re, sys
lines, kind = [], None
for line in open(sys.argv[1]).read().splitlines():
    kind = (re.match(r'id = "(.+)"', line) or [None, kind])[1]
    if line.startswith('adapter = { kind = "grpc"'):
        line = f'adapter = {{ kind = "static", dataset = "data/{kind}.json" }}'
    lines.append(line)
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
    if grep -q '^adapter = { kind = "grpc"' "$BENCH_DIR/registry.toml"; then
      echo "a grpc adapter is left in $BENCH_DIR/registry.toml" >&2
      exit 1
    fi
  fi
  # REGISTRY_DROP: a regex; the registry's lines that match it go (an older binary refuses
  # settings it does not know: REGISTRY_DROP='^(default_rate_limit|max_acts_per_token) ').
  if [ -n "${REGISTRY_DROP:-}" ]; then
    grep -vE "$REGISTRY_DROP" "$BENCH_DIR/registry.toml" >"$BENCH_DIR/registry.dropped"
    mv "$BENCH_DIR/registry.dropped" "$BENCH_DIR/registry.toml"
  fi
}

start_provider() {
  taskset -c "$PROVIDER_CPU" "$BENCH" provider --listen "127.0.0.1:$PROVIDER_PORT" --pki "$PKI" \
    --data examples/data >"$BENCH_DIR/provider.out" 2>&1 &
  PROVIDER_PID=$!; PIDS+=("$PROVIDER_PID")
  wait_listening "$BENCH_DIR/provider.out"
}

# start_broker: the broker on CPU $SERVER_CPU, run through $BROKER_WRAPPER when set (a command
# that execs its arguments, such as eatmydata), its consents seeded. Its home is
# $BROKER_HOME (default $BENCH_DIR/home), its output $BENCH_DIR/broker$BROKER_TAG.{out,log}.
start_broker() {
  local wrapper=()
  [ -n "${BROKER_WRAPPER:-}" ] && wrapper=("$BROKER_WRAPPER")
  taskset -c "$SERVER_CPU" "${wrapper[@]}" "$UNEFOIS" serve --home "${BROKER_HOME:-$BENCH_DIR/home}" \
    --registry "${BENCH_REGISTRY:-$BENCH_DIR/registry.toml}" --listen "127.0.0.1:$BROKER_PORT" \
    --ops-listen "127.0.0.1:$OPS_PORT" --log-format json \
    >"$BENCH_DIR/broker${BROKER_TAG:-}.out" 2>"$BENCH_DIR/broker${BROKER_TAG:-}.log" &
  BROKER_PID=$!; PIDS+=("$BROKER_PID")
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$OPS_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$OPS_PORT/readyz" >/dev/null || { tail "$BENCH_DIR/broker${BROKER_TAG:-}.log" >&2; exit 1; }
  "$BENCH" seed --target "127.0.0.1:$BROKER_PORT" --pki "$PKI" --broker-bin "$UNEFOIS" \
    --idp-key examples/dev-idp/dev-signing-key.json >&2
}

stop_broker() {
  kill -TERM "$BROKER_PID"
  wait "$BROKER_PID" 2>/dev/null || true
}

# load DURATION [run flags...]: one measured run against the broker, its JSON on stdout.
load() {
  local duration=$1; shift
  taskset -c "$CLIENT_CPU" "$BENCH" run --target "127.0.0.1:$BROKER_PORT" --pki "$PKI" \
    --broker-bin "$UNEFOIS" --idp-key examples/dev-idp/dev-signing-key.json \
    --duration "$duration" --warmup 1 --server-pid "$BROKER_PID" --aux-pid "$PROVIDER_PID" \
    --json "$@"
}

# metric_totals NAME: a histogram's _sum and _count since the broker started, read from the
# broker's /metrics, as "SUM COUNT" (0 0 before the first sample).
metric_totals() {
  curl -s "http://127.0.0.1:$OPS_PORT/metrics" |
    awk -v name="$1" '$1 == name "_sum" { s = $2 } $1 == name "_count" { n = $2 }
         END { print s + 0, n + 0 }'
}

# metric_mean NAME [SCALE]: a histogram's mean since the broker started (its _sum over its _count,
# times SCALE); "none" before the first sample.
metric_mean() {
  metric_totals "$1" |
    awk -v scale="${2:-1}" '{ if ($2 > 0) printf "%.2f", scale * $1 / $2; else print "none" }'
}

summary() {
  jq -r '"\(.rps | floor) req/s, p50 \(.latency_us.p50 / 1000) ms, p99 \(.latency_us.p99 / 1000) ms, \(.errors) errors, \(.server.cpu_us_per_request // 0 | floor) µs/req, peak RSS \(.server.peak_rss_mib // 0 | floor) MiB, other load \(.other_busy_cores * 100 | round / 100) cores"'
}
