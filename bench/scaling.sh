#!/usr/bin/env bash
# Scaling of issue 7 over cores: the broker (fetch-consent) and the echo floor, each pinned to
# the first N CPUs, for N in $CORES, loaded by the same generator.
#
#   bench/scaling.sh                        # after `cargo build --release -p unefois-cli -p unefois-bench`
#   BIN_DIR=.devbin CORES="1 2 4 8 16" bench/scaling.sh   # the device's 16 cores, carried binaries
#
# While N is at most half the CPUs, the servers get CPUs 0..N-1 and nothing else runs there: the
# provider behind the broker runs on the third quarter of the CPUs and the load generator on the
# last quarter (the echo point, which has no provider, loads from both quarters). Above half,
# everything shares all the CPUs (the point is marked "shared"). Each broker point is followed
# by one paced at half its rate (HALF=0 skips it), for the p99 target at half load, with where
# the time went by the broker's own histograms (bench/metrics-delta.py).
# Needs only bash, taskset and python3 (no package is installed: the device has no network).
# Raw results: $BENCH_DIR/scaling.jsonl; the table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source bench/procs.sh

BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
BENCH=$BIN_DIR/unefois-bench
UNEFOIS=$BIN_DIR/unefois
BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench-scaling}
CORES=${CORES:-"1 2"}
DURATION=${DURATION:-10}
HALF=${HALF:-1}
WARMUP=${WARMUP:-2}
# Ports below Linux's ephemeral range (32768 to 60999), where an outgoing connection may hold one.
BROKER_PORT=${BROKER_PORT:-24051}
OPS_PORT=${OPS_PORT:-24451}
PROVIDER_PORT=${PROVIDER_PORT:-24061}
ECHO_PORT=${ECHO_PORT:-24062}
PKI=$BENCH_DIR/home/pki
RESULTS=$BENCH_DIR/scaling.jsonl
CPUS=$(nproc)

# cpus_for N: the CPU lists (servers, provider, load generator, load generator of the echo) of
# the point at N cores, and 1 when they share CPUs.
cpus_for() {
  local n=$1 half=$((CPUS / 2)) quarter=$((CPUS / 4))
  if [ "$n" -le "$half" ] && [ "$quarter" -ge 1 ]; then
    echo "0-$((n - 1)) $half-$((half + quarter - 1)) $((half + quarter))-$((CPUS - 1)) $half-$((CPUS - 1)) 0"
  else
    echo "0-$((n - 1)) 0-$((CPUS - 1)) 0-$((CPUS - 1)) 0-$((CPUS - 1)) 1"
  fi
}

# threads PID: the CPU seconds of each thread name of PID since it started (the busiest thread
# of each name in brackets): a single thread near the point's duration is a ceiling.
threads() {
  python3 - "$1" <<'PY' >&2
import os, sys
pid, hz, by = sys.argv[1], os.sysconf("SC_CLK_TCK"), {}
for tid in os.listdir(f"/proc/{pid}/task"):
    try:
        stat = open(f"/proc/{pid}/task/{tid}/stat").read()
    except OSError:
        continue
    name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
    seconds = (int(rest[11]) + int(rest[12])) / hz
    total, busiest, count = by.get(name, (0.0, 0.0, 0))
    by[name] = (total + seconds, max(busiest, seconds), count + 1)
print("   threads: " + ", ".join(f"{n} x{c} {t:.1f} s [{b:.1f}]" for n, (t, b, c) in
                                  sorted(by.items(), key=lambda kv: -kv[1][0]) if t >= 0.1))
PY
}

scrape() {
  python3 -c "import urllib.request, sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$OPS_PORT/metrics', timeout=5).read().decode())" >"$1"
}

ready() {
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$OPS_PORT/readyz', timeout=1)" 2>/dev/null
}

# point NAME N LOAD_CPUS PORT SERVER_PID AUX_PID [run flags...]
point() {
  local name=$1 n=$2 load_cpus=$3 port=$4 pid=$5 aux=$6; shift 6
  local aux_args=()
  [ -n "$aux" ] && aux_args=(--aux-pid "$aux")
  taskset -c "$load_cpus" "$BENCH" run --target "127.0.0.1:$port" --pki "$PKI" \
    --broker-bin "$UNEFOIS" --idp-key examples/dev-idp/dev-signing-key.json \
    --duration "$DURATION" --warmup "$WARMUP" --server-pid "$pid" "${aux_args[@]}" --json "$@" |
    python3 -c '
import json, sys
r = json.load(sys.stdin)
r.update(name=sys.argv[1], cores=int(sys.argv[2]), shared=sys.argv[3] == "1")
print(json.dumps(r))
s = r.get("server") or {}
line = "%14s on %2d cores: %9.0f req/s, p99 %.2f ms, %d errors, %.1f us/req" % (
    r["name"], r["cores"], r["rps"], r["latency_us"]["p99"] / 1000, r["errors"],
    s.get("cpu_us_per_request") or 0)
if r.get("pace_lag_us"):
    line += ", sent %.2f ms after due at p99" % (r["pace_lag_us"]["p99"] / 1000)
print(line, file=sys.stderr)
' "$name" "$n" "$SHARED" >>"$RESULTS"
}

log "machine: $CPUS CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); load $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
"$BENCH" env --dir "$BENCH_DIR" --provider "127.0.0.1:$PROVIDER_PORT" \
  --registry-template bench/registry.toml --repo "$ROOT" >&2
: >"$RESULTS"

for n in $CORES; do
  [ "$n" -le "$CPUS" ] || { log "skipping $n cores: the machine has $CPUS"; continue; }
  read -r server_cpus provider_cpus load_cpus echo_load_cpus SHARED <<<"$(cpus_for "$n")"
  log "$n cores: servers on $server_cpus, provider on $provider_cpus, load on $load_cpus ($echo_load_cpus for the echo)"
  conns=$((2 * n)); in_flight=$((64 * n))

  taskset -c "$server_cpus" "$BENCH" echo --listen "127.0.0.1:$ECHO_PORT" --pki "$PKI" \
    >"$BENCH_DIR/echo.out" 2>&1 &
  echo_pid=$!; PIDS+=("$echo_pid")
  wait_listening "$BENCH_DIR/echo.out"
  point echo "$n" "$echo_load_cpus" "$ECHO_PORT" "$echo_pid" "" --scenario echo \
    --connections "$conns" --in-flight "$in_flight"
  kill "$echo_pid"; wait "$echo_pid" 2>/dev/null || true

  taskset -c "$provider_cpus" "$BENCH" provider --listen "127.0.0.1:$PROVIDER_PORT" --pki "$PKI" \
    --data examples/data >"$BENCH_DIR/provider.out" 2>&1 &
  provider_pid=$!; PIDS+=("$provider_pid")
  wait_listening "$BENCH_DIR/provider.out"
  taskset -c "$server_cpus" "$UNEFOIS" serve --home "$BENCH_DIR/home" \
    --registry "$BENCH_DIR/registry.toml" --listen "127.0.0.1:$BROKER_PORT" \
    --ops-listen "127.0.0.1:$OPS_PORT" --log-format json \
    >"$BENCH_DIR/broker.out" 2>"$BENCH_DIR/broker.log" &
  broker_pid=$!; PIDS+=("$broker_pid")
  for _ in $(seq 600); do ready && break; sleep 0.1; done
  ready || { tail "$BENCH_DIR/broker.log" >&2; exit 1; }
  "$BENCH" seed --target "127.0.0.1:$BROKER_PORT" --pki "$PKI" --broker-bin "$UNEFOIS" \
    --idp-key examples/dev-idp/dev-signing-key.json >&2
  point fetch-consent "$n" "$load_cpus" "$BROKER_PORT" "$broker_pid" "$provider_pid" \
    --scenario fetch-consent --connections "$conns" --in-flight "$in_flight"
  threads "$broker_pid"
  if [ "$HALF" = 1 ]; then
    rate=$(python3 -c 'import json, sys; print(int(json.loads(sys.stdin.readlines()[-1])["rps"] / 2))' <"$RESULTS")
    scrape "$BENCH_DIR/metrics-before.txt"
    point fetch-consent/half "$n" "$load_cpus" "$BROKER_PORT" "$broker_pid" "$provider_pid" \
      --scenario fetch-consent --connections "$conns" --in-flight "$in_flight" --rate "$rate"
    scrape "$BENCH_DIR/metrics-after.txt"
    python3 bench/metrics-delta.py "$BENCH_DIR/metrics-before.txt" "$BENCH_DIR/metrics-after.txt" |
      sed 's/^/   /' >&2
  fi
  kill -TERM "$broker_pid" "$provider_pid"; wait "$broker_pid" "$provider_pid" 2>/dev/null || true
done

log "results ($CPUS CPUs, ${DURATION}s per point, 2N connections, 64N requests in flight)"
python3 - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
base = {}
print("| point | cores | conns | in flight | req/s | × 1 core | p50 ms | p99 ms | errors | server µs/req | server cores busy | provider µs/req | load generator cores busy | peak RSS MiB |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    s = r.get("server") or {}
    base.setdefault(r["name"], r["rps"])
    busy = s.get("cpu_cores_used", 0)
    client = (r.get("client_cpu_us_per_request") or 0) * r["rps"] / 1e6
    print(f"| {r['name']}{' (shared)' if r['shared'] else ''} | {r['cores']} | {r['connections']} | {r['in_flight']} "
          f"| {r['rps']:,.0f} | {r['rps'] / base[r['name']]:.2f} | {r['latency_us']['p50'] / 1000:.2f} "
          f"| {r['latency_us']['p99'] / 1000:.2f} | {r['errors']} | {s.get('cpu_us_per_request', 0):.1f} "
          f"| {busy:.2f} | {r.get('aux_cpu_us_per_request') or 0:.1f} | {client:.2f} | {s.get('peak_rss_mib', 0):.1f} |")
by = {(r["name"], r["cores"]): r for r in rows}
print()
print("| cores | fetch-consent / echo | p99 at half load (ms) |")
print("| ---: | ---: | ---: |")
for n in sorted({r["cores"] for r in rows}):
    if ("echo", n) in by and ("fetch-consent", n) in by:
        half = by.get(("fetch-consent/half", n))
        p99 = f"{half['latency_us']['p99'] / 1000:.2f}" if half else ""
        print(f"| {n} | {by[('fetch-consent', n)]['rps'] / by[('echo', n)]['rps']:.3f} | {p99} |")
EOF
