#!/usr/bin/env bash
# Brokers on PostgreSQL against the embedded backend, side by side in one run (issue 22): fetch
# under consent at 1, 64 and 256 in flight, then paced at half the 64-in-flight rate, for
#   embedded   one broker, its journal in its data directory;
#   pg-1       one broker on a PostgreSQL primary with one synchronous standby (loopback);
#   pg-3       three brokers on the same, the load's connections spread over the three.
# Every server process (brokers, provider, PostgreSQL's) runs on CPU $SERVER_CPU, the load on
# CPU $CLIENT_CPU. CPU per fetch counts all brokers and all PostgreSQL processes (primary and
# standby); records per transaction is the brokers' batch histogram.
#
#   bench/cluster.sh                      # DURATION=10 CONFIGS="embedded pg-1 pg-3"
#   SKIP_BUILD=1 DURATION=5 bench/cluster.sh
#   CONFIGS=pg-1 IN_FLIGHTS=64 PG_CONF="wal_init_zero = on" bench/cluster.sh   # one setting tried
#
# Writes target/bench-cluster/cluster.jsonl and prints a table.
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10}
CONFIGS=${CONFIGS:-embedded pg-1 pg-3}
# The loads before the paced one (64 must be among them: the paced rate is half its rate).
IN_FLIGHTS=${IN_FLIGHTS:-1 64 256}
# PG_CONF: lines added to both servers' postgresql.conf, for trying a setting.
PG_CONF=${PG_CONF:-}
PG_BIN=${UNEFOIS_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
PG_PRIMARY_PORT=${PG_PRIMARY_PORT:-52433}
PG_STANDBY_PORT=${PG_STANDBY_PORT:-52434}
bench_env "$CARGO_TARGET_DIR/bench-cluster"
RESULTS=$BENCH_DIR/cluster.jsonl
: >"$RESULTS"
start_provider

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_up: a primary and a synchronous standby in $BENCH_DIR/pg, fresh, on CPU $SERVER_CPU.
pg_up() {
  local dir=$BENCH_DIR/pg
  rm -rf "$dir"; mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  as_postgres "$PG_BIN/initdb" -D "$dir/primary" -U unefois --auth=trust -E UTF8 --locale=C >/dev/null
  cat >>"$dir/primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PRIMARY_PORT
unix_socket_directories = '$dir'
wal_level = replica
max_wal_senders = 4
synchronous_commit = on
shared_buffers = '256MB'
# docs/cluster.md, "The settings latency depends on": no segment zero-filled in a commit's path.
wal_init_zero = off
$PG_CONF
CONF
  echo "host replication all 127.0.0.1/32 trust" >>"$dir/primary/pg_hba.conf"
  as_postgres taskset -c "$SERVER_CPU" "$PG_BIN/pg_ctl" -D "$dir/primary" -l "$dir/primary.log" -w start >/dev/null
  as_postgres "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U unefois \
    -D "$dir/standby" -R -X stream -c fast
  cat >>"$dir/standby/postgresql.auto.conf" <<CONF
port = $PG_STANDBY_PORT
primary_conninfo = 'host=127.0.0.1 port=$PG_PRIMARY_PORT user=unefois application_name=s1'
CONF
  as_postgres taskset -c "$SERVER_CPU" "$PG_BIN/pg_ctl" -D "$dir/standby" -l "$dir/standby.log" -w start >/dev/null
  psql_primary "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (s1)'" >/dev/null
  psql_primary "SELECT pg_reload_conf()" >/dev/null
  for _ in $(seq 100); do
    [ "$(psql_primary "SELECT sync_state FROM pg_stat_replication")" = quorum ] && break
    sleep 0.1
  done
  [ "$(psql_primary "SELECT sync_state FROM pg_stat_replication")" = quorum ] ||
    { echo "the standby is not synchronous" >&2; exit 1; }
  STORE_URL="postgresql://unefois@127.0.0.1:$PG_PRIMARY_PORT,127.0.0.1:$PG_STANDBY_PORT/postgres?target_session_attrs=read-write"
  "$UNEFOIS" store init --store "$STORE_URL" >&2
}

pg_down() {
  as_postgres "$PG_BIN/pg_ctl" -D "$BENCH_DIR/pg/standby" -m fast -w stop >/dev/null || true
  as_postgres "$PG_BIN/pg_ctl" -D "$BENCH_DIR/pg/primary" -m fast -w stop >/dev/null || true
}

psql_primary() {
  psql -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U unefois -d postgres -Atc "$1"
}

pg_pids() {
  pgrep -d, -u postgres || true
}

# brokers N [--store URL]: N brokers on ports BROKER_PORT+i, each with its home (the first
# one's keys copied to the others), their consents seeded through the first.
BROKER_PIDS=()
TARGETS=()
brokers() {
  local n=$1; shift
  BROKER_PIDS=(); TARGETS=()
  for i in $(seq 0 $((n - 1))); do
    local home=$BENCH_DIR/home$i port=$((BROKER_PORT + i)) ops=$((OPS_PORT + i))
    rm -rf "$home"; mkdir -p "$home/data"
    cp -r "$PKI" "$home/pki"
    rm -f "$home/pki/attestation.vkey" "$home/pki/log.vkey"
    [ "$i" -gt 0 ] && cp -r "$BENCH_DIR/home0/data/keys" "$home/data/keys"
    taskset -c "$SERVER_CPU" "$UNEFOIS" serve --home "$home" --registry "$BENCH_DIR/registry.toml" \
      --listen "127.0.0.1:$port" --ops-listen "127.0.0.1:$ops" --log-format json "$@" \
      >"$BENCH_DIR/broker$i.out" 2>"$BENCH_DIR/broker$i.log" &
    BROKER_PIDS+=($!); PIDS+=($!); TARGETS+=("127.0.0.1:$port")
    for _ in $(seq 600); do
      curl -sf "http://127.0.0.1:$ops/readyz" >/dev/null 2>&1 && break
      sleep 0.1
    done
    curl -sf "http://127.0.0.1:$ops/readyz" >&2 || { tail "$BENCH_DIR/broker$i.log" >&2; exit 1; }
  done
  "$BENCH" seed --target "${TARGETS[0]}" --pki "$BENCH_DIR/home0/pki" --broker-bin "$UNEFOIS" \
    --idp-key examples/dev-idp/dev-signing-key.json >&2
}

stop_brokers() {
  for pid in "${BROKER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${BROKER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}

# batch_mean: records per batch (per transaction on PostgreSQL) over every broker.
batch_mean() {
  local s=0 n=0 i
  for i in $(seq 0 $((${#BROKER_PIDS[@]} - 1))); do
    read -r si ni < <(curl -s "http://127.0.0.1:$((OPS_PORT + i))/metrics" |
      awk '$1 == "unefois_journal_batch_records_sum" { s = $2 } $1 == "unefois_journal_batch_records_count" { n = $2 } END { print s + 0, n + 0 }')
    s=$(echo "$s + $si" | bc -l); n=$(echo "$n + $ni" | bc -l)
  done
  if [ "$n" != 0 ]; then echo "scale=2; $s / $n" | bc -l; else echo null; fi
}

run() {
  local config=$1 mode=$2; shift 2
  local servers
  servers=$(IFS=,; echo "${BROKER_PIDS[*]}")
  [ "$config" != embedded ] && servers="$servers,$(pg_pids)"
  local result
  result=$(taskset -c "$CLIENT_CPU" "$BENCH" run --target "$(IFS=,; echo "${TARGETS[*]}")" \
    --pki "$BENCH_DIR/home0/pki" --broker-bin "$UNEFOIS" \
    --idp-key examples/dev-idp/dev-signing-key.json --scenario fetch-consent \
    --connections "${#TARGETS[@]}" --duration "$DURATION" --warmup 1 \
    --server-pid "$servers" --aux-pid "$PROVIDER_PID" --json "$@")
  printf '%s\n' "$result" |
    jq -c --arg config "$config" --arg mode "$mode" --arg batch "$(batch_mean)" \
      '{config: $config, mode: $mode, records_per_transaction: ($batch | tonumber? // null)} + .' |
    tee -a "$RESULTS" | summary >&2
}

command -v bc >/dev/null || apt-get install -y bc >/dev/null
for config in $CONFIGS; do
  log "$config"
  case $config in
    embedded) brokers 1 ;;
    pg-1) pg_up; brokers 1 --store "$STORE_URL" ;;
    pg-3) pg_up; brokers 3 --store "$STORE_URL" ;;
    *) echo "unknown config $config" >&2; exit 1 ;;
  esac
  for in_flight in $IN_FLIGHTS; do
    log "$config, $in_flight in flight"
    run "$config" "in-flight-$in_flight" --in-flight "$in_flight"
  done
  half=$(jq -rs --arg c "$config" 'map(select(.config == $c and .mode == "in-flight-64"))[0].rps / 2 | floor' "$RESULTS")
  log "$config, paced at $half req/s (half the 64-in-flight rate)"
  run "$config" "half-load" --in-flight 256 --rate "$half"
  stop_brokers
  [ "$config" != embedded ] && pg_down
done

jq -rs '
  (map(select(.config == "embedded")) | map({key: .mode, value: .}) | from_entries) as $e |
  "| config | load | req/s | p50 ms | p99 ms | CPU µs/fetch (all servers) | × embedded CPU | records/transaction |",
  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  (.[] | "| \(.config) | \(.mode) | \(.rps | floor) | \(.latency_us.p50 / 10 | round / 100) | \(.latency_us.p99 / 10 | round / 100) | \(.server.cpu_us_per_request * 10 | round / 10) | \(if $e[.mode] then (.server.cpu_us_per_request / $e[.mode].server.cpu_us_per_request * 100 | round / 100) else "" end) | \(.records_per_transaction // "") |")
' "$RESULTS"
