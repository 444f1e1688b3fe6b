#!/usr/bin/env bash
# Baselines of issue 7: the broker against the floor of a gRPC service (echo) and against nginx
# as an mTLS gRPC proxy in front of the same provider, on one core, loaded from the other.
#
#   bench/compare.sh                      # about 5 minutes after the build
#   DURATION=5 WARMUP=1 bench/compare.sh  # quicker, noisier
#   PROFILE=1 bench/compare.sh            # also `perf record` the broker under fetch-consent
#
# Installs nginx (and jq, curl, perf) if missing (apt-get, root), builds the release binaries,
# writes a fresh bench folder (PKI, registry, broker state) in $BENCH_DIR, starts on CPU
# $SERVER_CPU:
#   (a) the echo server, (b) the bench provider and nginx in front of it, (c) the broker with
#   every attestation type on the grpc adapter to that provider;
# runs the load generator on CPU $CLIENT_CPU, prints every result, the ratios and the targets.
# Raw results: $BENCH_DIR/results.jsonl (one JSON object per run, with a "name").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source bench/procs.sh

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DURATION=${DURATION:-10}     # measured seconds per point (a whole number)
WARMUP=${WARMUP:-1}          # unmeasured seconds before each point
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BENCH_DIR=${BENCH_DIR:-$CARGO_TARGET_DIR/bench-env}
PROFILE=${PROFILE:-0}
# Rounds of nginx and the broker alternated after the fetch-consent points: the VM's speed
# drifts by up to 10 % between points minutes apart, as much as the margin of the 0.6 × nginx
# target.
ALTERNATED_ROUNDS=${ALTERNATED_ROUNDS:-3}
# Consents granted to each person fetch-consent asks about before its last point: a fetch must
# not cost more for a person with a long history (BENCHMARKS.md, run I).
HISTORY=${HISTORY:-1000}
# Ports away from the development broker's 50051/9451 and below Linux's ephemeral range
# (32768 to 60999), where an outgoing connection may hold one.
BROKER_PORT=${BROKER_PORT:-21051}
OPS_PORT=${OPS_PORT:-21451}
PROVIDER_PORT=${PROVIDER_PORT:-21061}
ECHO_PORT=${ECHO_PORT:-21062}
NGINX_PORT=${NGINX_PORT:-21063}
NGINX_STOCK_PORT=${NGINX_STOCK_PORT:-21064}
# The pre-fill target: the provider answers test:bob's three types after these delays.
PREFILL_DELAYS=(caf.quotient_familial=2 dgfip.revenu_fiscal_reference=4 mesr.statut_etudiant=6)

BENCH=$CARGO_TARGET_DIR/release/unefois-bench
UNEFOIS=$CARGO_TARGET_DIR/release/unefois
PKI=$BENCH_DIR/home/pki
RESULTS=$BENCH_DIR/results.jsonl

# Debian packages the script needs: nginx, and jq and curl for itself (perf for PROFILE=1).
missing=()
for tool in nginx jq curl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ "$PROFILE" = 1 ] && ! command -v perf >/dev/null && missing+=(linux-perf)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y "${missing[@]}" >/dev/null ||
    { apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null; }
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building release binaries"
  cargo build --release -p unefois-cli -p unefois-bench
fi

# Other work on the machine skews every figure: say what was running.
machine_load() {
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); rustc processes running: $(pgrep -c -x rustc || true)"
}
log "machine: $(nproc) CPUs; $(machine_load)"

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR/nginx/tmp"
"$BENCH" env --dir "$BENCH_DIR" --provider "127.0.0.1:$PROVIDER_PORT" \
  --registry-template bench/registry.toml --repo "$ROOT" >&2
: >"$RESULTS"

log "starting the echo server, the provider and nginx on CPU $SERVER_CPU"
taskset -c "$SERVER_CPU" "$BENCH" echo --listen "127.0.0.1:$ECHO_PORT" --pki "$PKI" \
  >"$BENCH_DIR/echo.out" 2>&1 &
ECHO_PID=$!; PIDS+=("$ECHO_PID")
delay_args=(); for d in "${PREFILL_DELAYS[@]}"; do delay_args+=(--delay "$d"); done
taskset -c "$SERVER_CPU" "$BENCH" provider --listen "127.0.0.1:$PROVIDER_PORT" --pki "$PKI" \
  --data examples/data "${delay_args[@]}" --delay-subject test:bob \
  >"$BENCH_DIR/provider.out" 2>&1 &
PROVIDER_PID=$!; PIDS+=("$PROVIDER_PID")
wait_listening "$BENCH_DIR/echo.out"
wait_listening "$BENCH_DIR/provider.out"

# nginx: mTLS on both sides (clients verified against the federation CA and CRL; the provider
# verified as `localhost`, nginx presenting the broker's client certificate), access log on,
# upstream connections kept alive (nginx does not multiplex gRPC upstream). The first server
# lifts keepalive_requests so that nginx is measured at its best; the second keeps the stock
# 1000, which sends an HTTP/2 GOAWAY every 1000 requests (the load generator must survive it).
nginx_server() {
  cat <<EOF
  server {
    listen 127.0.0.1:$1 ssl http2;
    ssl_protocols TLSv1.3;
    ssl_certificate $PKI/broker.crt;
    ssl_certificate_key $PKI/broker.key;
    ssl_client_certificate $PKI/ca.crt;
    ssl_crl $PKI/crl.pem;
    ssl_verify_client on;
    keepalive_requests $2;
    location / {
      grpc_pass grpcs://provider;
      grpc_ssl_protocols TLSv1.3;
      grpc_ssl_certificate $PKI/unefois-broker.crt;
      grpc_ssl_certificate_key $PKI/unefois-broker.key;
      grpc_ssl_trusted_certificate $PKI/ca.crt;
      grpc_ssl_verify on;
      grpc_ssl_name localhost;
      grpc_ssl_session_reuse on;
    }
  }
EOF
}
cat >"$BENCH_DIR/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $BENCH_DIR/nginx/nginx.pid;
error_log $BENCH_DIR/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log $BENCH_DIR/nginx/access.log;
  client_body_temp_path $BENCH_DIR/nginx/tmp/body;
  proxy_temp_path $BENCH_DIR/nginx/tmp/proxy;
  fastcgi_temp_path $BENCH_DIR/nginx/tmp/fastcgi;
  uwsgi_temp_path $BENCH_DIR/nginx/tmp/uwsgi;
  scgi_temp_path $BENCH_DIR/nginx/tmp/scgi;
  upstream provider {
    server 127.0.0.1:$PROVIDER_PORT;
    keepalive 512;
    keepalive_requests 1000000;
  }
$(nginx_server "$NGINX_PORT" 1000000)
$(nginx_server "$NGINX_STOCK_PORT" 1000)
}
EOF
taskset -c "$SERVER_CPU" nginx -e "$BENCH_DIR/nginx/error.log" -c "$BENCH_DIR/nginx/nginx.conf" &
NGINX_PID=$!; PIDS+=("$NGINX_PID")
for _ in $(seq 50); do
  NGINX_WORKERS=$(pgrep -P "$NGINX_PID" | paste -sd, || true)
  [ -n "$NGINX_WORKERS" ] && break
  sleep 0.1
done
[ -n "$NGINX_WORKERS" ] || { echo "nginx did not start" >&2; cat "$BENCH_DIR/nginx/error.log" >&2; exit 1; }

log "starting the broker on CPU $SERVER_CPU"
taskset -c "$SERVER_CPU" "$UNEFOIS" serve --home "$BENCH_DIR/home" \
  --registry "$BENCH_DIR/registry.toml" --listen "127.0.0.1:$BROKER_PORT" \
  --ops-listen "127.0.0.1:$OPS_PORT" --log-format json \
  >"$BENCH_DIR/broker.out" 2>"$BENCH_DIR/broker.log" &
BROKER_PID=$!; PIDS+=("$BROKER_PID")
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$OPS_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$OPS_PORT/readyz" >/dev/null || { tail "$BENCH_DIR/broker.log" >&2; exit 1; }
"$BENCH" seed --target "127.0.0.1:$BROKER_PORT" --pki "$PKI" --broker-bin "$UNEFOIS" \
  --idp-key examples/dev-idp/dev-signing-key.json >&2

# point NAME PORT SERVER_PIDS AUX_PIDS [run flags...]: one measured run, its JSON appended to
# $RESULTS. SERVER_PIDS: the processes whose CPU per request and peak RSS are reported;
# AUX_PIDS ("" for none): the provider behind the broker, measured apart.
point() {
  local name=$1 port=$2 pids=$3 aux=$4; shift 4
  local aux_args=()
  [ -n "$aux" ] && aux_args=(--aux-pid "$aux")
  printf '%-34s' "$name" >&2
  local json
  json=$(taskset -c "$CLIENT_CPU" "$BENCH" run --target "127.0.0.1:$port" --pki "$PKI" \
    --broker-bin "$UNEFOIS" --idp-key examples/dev-idp/dev-signing-key.json \
    --duration "$DURATION" --warmup "$WARMUP" --server-pid "$pids" "${aux_args[@]}" --json "$@")
  printf '%s\n' "$json" | jq -c --arg name "$name" '{name: $name} + .' >>"$RESULTS"
  printf '%s\n' "$json" | jq -r '"\(.rps | floor) req/s, p99 \(.latency_us.p99) µs, \(.errors) errors, server \(.server.cpu_us_per_request // 0 | floor) µs/req, other load \(.other_busy_cores * 100 | round / 100) cores"' >&2
}
rps_of() { jq -r --arg n "$1" 'select(.name == $n) | .rps' "$RESULTS"; }

log "floor and proxy (1 connection x 64 in flight)"
point echo "$ECHO_PORT" "$ECHO_PID" "" --scenario echo --in-flight 64
point provider-direct "$PROVIDER_PORT" "$PROVIDER_PID" "" --scenario provider-direct --in-flight 64
point nginx "$NGINX_PORT" "$NGINX_WORKERS,$PROVIDER_PID" "" --scenario provider-direct --in-flight 64
point nginx-stock-keepalive "$NGINX_STOCK_PORT" "$NGINX_WORKERS,$PROVIDER_PID" "" \
  --scenario provider-direct --in-flight 64

log "broker: fetch-consent, in-flight scaling (64 per connection at most)"
for n in 1 8 64 256; do
  conns=$(( n > 64 ? n / 64 : 1 ))
  point "fetch-consent/$n" "$BROKER_PORT" "$BROKER_PID" "$PROVIDER_PID" \
    --scenario fetch-consent --in-flight "$n" --connections "$conns"
done
half=$(jq -rn --argjson r "$(rps_of fetch-consent/64)" '$r / 2 | floor')
point fetch-consent/half-load "$BROKER_PORT" "$BROKER_PID" "$PROVIDER_PID" \
  --scenario fetch-consent --in-flight 64 --rate "$half"

# Right after fetch-consent/64, before other scenarios add to the broker's state.
log "nginx and the broker alternated, $ALTERNATED_ROUNDS rounds"
for _ in $(seq "$ALTERNATED_ROUNDS"); do
  point nginx/alternated "$NGINX_PORT" "$NGINX_WORKERS,$PROVIDER_PID" "" \
    --scenario provider-direct --in-flight 64
  point fetch-consent/alternated "$BROKER_PORT" "$BROKER_PID" "$PROVIDER_PID" \
    --scenario fetch-consent --in-flight 64
done

if [ "$PROFILE" = 1 ]; then
  log "profiling the broker under fetch-consent (perf record, cpu-clock, DWARF call graphs)"
  perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$BROKER_PID" \
    -o "$BENCH_DIR/perf.data" -- sleep "$((DURATION > 8 ? 6 : DURATION / 2 + 1))" >/dev/null 2>&1 &
  PERF_PID=$!
  point fetch-consent/profiled "$BROKER_PORT" "$BROKER_PID" "$PROVIDER_PID" \
    --scenario fetch-consent --in-flight 64
  wait "$PERF_PID" || true
  perf report -i "$BENCH_DIR/perf.data" --no-children -g none --percent-limit 0.5 --sort symbol \
    --stdio 2>/dev/null | grep -E '^ +[0-9]' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' \
    | head -30 >"$BENCH_DIR/perf-top.txt" || true
  perf script --no-inline -i "$BENCH_DIR/perf.data" -F comm,tid,ip,sym 2>/dev/null \
    | python3 bench/perf-activities.py >"$BENCH_DIR/perf-activities.txt" || true
fi

log "broker: the other scenarios"
point fetch-law "$BROKER_PORT" "$BROKER_PID" "$PROVIDER_PID" --scenario fetch-law --in-flight 64
point prefill "$BROKER_PORT" "$BROKER_PID" "$PROVIDER_PID" --scenario prefill --in-flight 64
point prefill/1 "$BROKER_PORT" "$BROKER_PID" "$PROVIDER_PID" --scenario prefill --in-flight 1
point slowest-provider/1 "$PROVIDER_PORT" "$PROVIDER_PID" "" --scenario provider-direct \
  --in-flight 1 --type mesr.statut_etudiant --subjects test:bob --claims est_etudiant
point inclusion-proof "$BROKER_PORT" "$BROKER_PID" "$PROVIDER_PID" --scenario inclusion-proof --in-flight 64
point consent-grant "$BROKER_PORT" "$BROKER_PID" "$PROVIDER_PID" --scenario consent-grant --in-flight 64

# Does a fetch depend on the person's history? Consents of other types (HISTORY per person) for
# the three people fetch-consent asks about, then the same fetch-consent/64 point again.
log "broker: fetch-consent again, after $HISTORY consents of another type per person"
taskset -c "$CLIENT_CPU" "$BENCH" run --target "127.0.0.1:$BROKER_PORT" --pki "$PKI" \
  --broker-bin "$UNEFOIS" --idp-key examples/dev-idp/dev-signing-key.json \
  --scenario consent-grant --subjects test:alice,test:carol,test:david --in-flight 16 \
  --requests "$((3 * HISTORY))" --duration 600 --warmup 0 --json >/dev/null
point fetch-consent/long-history "$BROKER_PORT" "$BROKER_PID" "$PROVIDER_PID" \
  --scenario fetch-consent --in-flight 64

log "machine at the end: $(machine_load)"
log "results ($(nproc) CPUs; servers on CPU $SERVER_CPU, load generator on CPU $CLIENT_CPU; ${DURATION}s per point)"
jq -r '[.name, .connections, .in_flight, (.rps | floor), (.latency_us.p50 / 1000),
        (.latency_us.p90 / 1000), (.latency_us.p99 / 1000), (.latency_us.max / 1000), .errors,
        ((.server.cpu_us_per_request // 0) * 10 | floor / 10),
        (if .server.cpu_s > 0 then (100 * .server.system_s / .server.cpu_s | round) else 0 end),
        ((.aux_cpu_us_per_request // 0) * 10 | floor / 10),
        ((.server.peak_rss_mib // 0) * 10 | floor / 10),
        (.other_busy_cores * 100 | round / 100)] | @tsv' "$RESULTS" |
  awk 'BEGIN { FS = "\t"; printf "| %-28s | conns | in flight | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | server µs/req | kernel %% | provider µs/req | peak RSS MiB | other load (cores) |\n", "point";
               print "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" }
       { printf "| %-28s | %s | %s | %s | %.3f | %.3f | %.3f | %.3f | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 }'

log "ratios and the targets of issue 7"
jq -rs '
  def by($n): (map(select(.name == $n)) | first);
  def f($x): ($x * 100 | round / 100);
  (by("echo")) as $echo | (by("nginx")) as $nginx | (by("fetch-consent/64")) as $max |
  (by("fetch-consent/half-load")) as $half | (by("fetch-consent/256")) as $big |
  (by("prefill/1")) as $prefill | (by("slowest-provider/1")) as $slow |
  ($max.rps / $echo.rps) as $r1 | ($max.rps / $nginx.rps) as $r2 |
  ($prefill.latency_us.p50 - $slow.latency_us.p50) as $extra |
  (map(select(.name == "nginx/alternated"))) as $an |
  (map(select(.name == "fetch-consent/alternated"))) as $ab |
  ([range(0; [$an, $ab | length] | min) | $ab[.].rps / $an[.].rps]) as $alt |
  ([range(0; [$an, $ab | length] | min) | $an[.].server.cpu_us_per_request
     / ($ab[.].server.cpu_us_per_request + $ab[.].aux_cpu_us_per_request)]) as $altcpu |
  [ ["fetch-consent rps / echo rps", "\(f($r1)) (\($max.rps | floor) / \($echo.rps | floor))", ">= 0.35", ($r1 >= 0.35)],
    ["broker via grpc adapter rps / nginx rps", "\(f($r2)) (\($max.rps | floor) / \($nginx.rps | floor))", ">= 0.6", ($r2 >= 0.6)],
    (if ($alt | length) > 0 then
      ["broker / nginx, alternated (mean of \($alt | length) rounds; range)", "\(f($alt | add / length)) (\(f($alt | min))–\(f($alt | max))); in CPU \(f($altcpu | add / length))", ">= 0.6", (($alt | add / length) >= 0.6)]
     else empty end),
    ["broker CPU per fetch", "\(f($max.server.cpu_us_per_request)) µs", "<= 60 µs", ($max.server.cpu_us_per_request <= 60)],
    ["p99 at half the max load", "\(f($half.latency_us.p99 / 1000)) ms at \($half.rate | floor) req/s", "<= 2 ms", ($half.latency_us.p99 <= 2000)],
    ["prefill of three types, p50 over the slowest provider", "+\(f($extra / 1000)) ms (\(f($prefill.latency_us.p50 / 1000)) vs \(f($slow.latency_us.p50 / 1000)) ms)", "<= +1 ms", ($extra <= 1000)],
    (by("fetch-consent/long-history")) as $long |
    (if $long then ["fetch-consent after a long consent history / fetch-consent/64", "\(f($long.rps / $max.rps)) (\($long.rps | floor) / \($max.rps | floor)); \(f($long.server.cpu_us_per_request)) µs per fetch", "(not a target)", null] else empty end),
    ["broker peak RSS at 256 in flight", "\(f($big.server.peak_rss_mib)) MiB", "<= 150 MB", ($big.server.peak_rss_mib * 1.048576 <= 150)],
    ["(CPU view) echo µs / broker µs per request", "\(f($echo.server.cpu_us_per_request / $max.server.cpu_us_per_request)) (\(f($echo.server.cpu_us_per_request)) / \(f($max.server.cpu_us_per_request)) µs)", "(0.35 if CPU-bound)", null],
    ["(CPU view) nginx+provider µs / broker+provider µs per request", "\(f($nginx.server.cpu_us_per_request / ($max.server.cpu_us_per_request + $max.aux_cpu_us_per_request))) (\(f($nginx.server.cpu_us_per_request)) / \(f($max.server.cpu_us_per_request + $max.aux_cpu_us_per_request)) µs)", "(0.6 if CPU-bound)", null]
  ][] | "| \(.[0]) | \(.[1]) | \(.[2]) | \(if .[3] == null then "" elif .[3] then "met" else "NOT met" end) |"' "$RESULTS" |
  { echo "| ratio / figure | measured | target | |"; echo "| --- | --- | --- | --- |"; cat; }

if [ -s "$BENCH_DIR/perf-activities.txt" ]; then
  log "broker profile under fetch-consent: $BENCH_DIR/perf-activities.txt, perf-top.txt"
  cat "$BENCH_DIR/perf-activities.txt"
  echo "Top functions (self time):"
  head -15 "$BENCH_DIR/perf-top.txt"
fi
