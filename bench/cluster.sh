#!/usr/bin/env bash
# Brokers on PostgreSQL against the embedded backend, side by side in one run (issue 22): fetch
# under consent at 1, 64 and 256 in flight, then paced at half the 64-in-flight rate, for
#   embedded   one broker, its journal in its data directory;
#   pg-1       one broker on a PostgreSQL primary with one synchronous standby (loopback);
#   pg-3       three brokers on the same, the load's connections spread over the three.
# Every server process (brokers, provider, PostgreSQL's) runs on CPU $SERVER_CPU, the load on
# CPU $CLIENT_CPU; STANDBY_CPU (and lib.sh's PROVIDER_CPU) put the standby (the provider)
# elsewhere, as a second machine would. CPU per fetch counts all brokers and all PostgreSQL
# processes (primary and standby); records per transaction is the brokers' batch histogram;
# WAL per request is the primary's (pg_stat_wal) per leaf the run added.
#
#   bench/cluster.sh                      # DURATION=10 CONFIGS="embedded pg-1 pg-3"
#   SKIP_BUILD=1 DURATION=5 bench/cluster.sh
#   CONFIGS=pg-1 IN_FLIGHTS=64 PG_CONF="wal_init_zero = on" bench/cluster.sh   # one setting tried
#   DIRTY_BACKGROUND_BYTES=$((16 << 20)) bench/cluster.sh   # as root: the host's writeback
#   SCENARIO=consent-grant CONFIGS="embedded pg-1" bench/cluster.sh       # acts instead of fetches
#
# Writes target/bench-cluster/cluster.jsonl and prints a table.
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10}
CONFIGS=${CONFIGS:-embedded pg-1 pg-3}
# The loads before the paced one (64 must be among them: the paced rate is half its rate).
IN_FLIGHTS=${IN_FLIGHTS:-1 64 256}
# Then paced at these shares of the 64-in-flight rate (0.5 is "half-load"; PACED_SHARES="0.3 0.4
# 0.5" finds the share under which a p99 holds).
PACED_SHARES=${PACED_SHARES:-0.5}
# SCENARIO: the bench tool's scenario (`unefois-bench run --help`): fetch-consent, or e.g.
# consent-grant (acts: the ID tokens' count, the holds), inclusion-proof or checkpoint (reads of
# the log).
SCENARIO=${SCENARIO:-fetch-consent}
# LOAD_ARGS: more arguments for each load run (`unefois-bench run --help`), e.g.
# "--subjects test:p1,test:p2" for acts about many people.
LOAD_ARGS=${LOAD_ARGS:-}
# PG_CONF: lines added to both servers' postgresql.conf, for trying a setting.
PG_CONF=${PG_CONF:-}
# STANDBY_CPU: the standby's CPU.
STANDBY_CPU=${STANDBY_CPU:-$SERVER_CPU}
# PG_WARM_WAL: MB of WAL written and checkpointed before the runs (see warm_wal); 0 for none.
PG_WARM_WAL=${PG_WARM_WAL:-0}
# PG_STATEMENTS=1: pg_stat_statements on the primary, each run's statements (calls, time, per
# fetch) written to $BENCH_DIR/statements-CONFIG-MODE.txt.
PG_STATEMENTS=${PG_STATEMENTS:-}
[ -n "$PG_STATEMENTS" ] && PG_CONF="$PG_CONF
shared_preload_libraries = 'pg_stat_statements'"
# DIRTY_BACKGROUND_BYTES: the host's vm.dirty_background_bytes for the run (root; the previous
# setting is put back on exit). PostgreSQL 15 extends a table by writing zero pages, which the
# kernel otherwise flushes 30 s later all at once (docs/cluster.md, "The settings latency
# depends on"); a few MB makes it write them as they come.
DIRTY_BACKGROUND_BYTES=${DIRTY_BACKGROUND_BYTES:-}
if [ -n "$DIRTY_BACKGROUND_BYTES" ]; then
  [ "$(id -u)" = 0 ] || { echo "DIRTY_BACKGROUND_BYTES needs root" >&2; exit 1; }
  DIRTY_SAVED_BYTES=$(cat /proc/sys/vm/dirty_background_bytes)
  DIRTY_SAVED_RATIO=$(cat /proc/sys/vm/dirty_background_ratio)
  restore_dirty() {
    # Writing one of the two clears the other: the one that was set is written back.
    if [ "$DIRTY_SAVED_BYTES" != 0 ]; then echo "$DIRTY_SAVED_BYTES" >/proc/sys/vm/dirty_background_bytes
    else echo "$DIRTY_SAVED_RATIO" >/proc/sys/vm/dirty_background_ratio; fi
  }
fi
# On exit, early or not: the processes, the PostgreSQL servers a failed step left running (the
# next run would delete their folder under them), the writeback setting.
on_exit() {
  cleanup
  [ -z "${BENCH_DIR:-}" ] || [ ! -d "$BENCH_DIR/pg/primary" ] || pg_down 2>/dev/null
  [ -z "$DIRTY_BACKGROUND_BYTES" ] || restore_dirty
}
trap on_exit EXIT
[ -z "$DIRTY_BACKGROUND_BYTES" ] || echo "$DIRTY_BACKGROUND_BYTES" >/proc/sys/vm/dirty_background_bytes
PG_BIN=${UNEFOIS_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
PG_PRIMARY_PORT=${PG_PRIMARY_PORT:-22433}
PG_STANDBY_PORT=${PG_STANDBY_PORT:-22434}
bench_env "$CARGO_TARGET_DIR/bench-cluster"
RESULTS=$BENCH_DIR/cluster.jsonl
: >"$RESULTS"
start_provider

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_up: a primary and a synchronous standby in $BENCH_DIR/pg, fresh, on CPUs $SERVER_CPU and
# $STANDBY_CPU.
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
# docs/cluster.md, "The settings latency depends on": no segment zero-filled in a commit's path,
# and checkpoints recycle the old segments instead of removing them.
wal_init_zero = off
min_wal_size = '2GB'
max_wal_size = '4GB'
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
  as_postgres taskset -c "$STANDBY_CPU" "$PG_BIN/pg_ctl" -D "$dir/standby" -l "$dir/standby.log" -w start >/dev/null
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
  [ "$PG_WARM_WAL" = 0 ] || warm_wal
  [ -z "$PG_STATEMENTS" ] || psql_primary "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
}

# warm_wal: $PG_WARM_WAL MB of WAL written and checkpointed on both servers, so that the runs
# write into recycled segments (already allocated) as a server in service does, not into new
# ones whose blocks each commit's flush must first allocate.
warm_wal() {
  psql_primary "CREATE TABLE unefois_bench_warm AS SELECT g, repeat('w', 1000) AS pad
    FROM generate_series(1, $((PG_WARM_WAL * 900))) g" >/dev/null
  psql_primary "DROP TABLE unefois_bench_warm" >/dev/null
  psql_primary "CHECKPOINT" >/dev/null
  local lsn
  lsn=$(psql_primary "SELECT pg_current_wal_lsn()")
  for _ in $(seq 600); do
    [ "$(psql_primary "SELECT replay_lsn >= '$lsn' FROM pg_stat_replication")" = t ] && break
    sleep 0.1
  done
  psql -h 127.0.0.1 -p "$PG_STANDBY_PORT" -U unefois -d postgres -Atc "CHECKPOINT" >/dev/null
  psql_primary "SELECT pg_switch_wal()" >/dev/null
}

pg_down() {
  as_postgres "$PG_BIN/pg_ctl" -D "$BENCH_DIR/pg/standby" -m fast -w stop >/dev/null || true
  as_postgres "$PG_BIN/pg_ctl" -D "$BENCH_DIR/pg/primary" -m fast -w stop >/dev/null || true
}

# pg_wal: the primary's WAL so far (records, full-page images, bytes) and the log's size, as a
# JSON array; a run's difference divided by the leaves it added is its WAL per record.
pg_wal() {
  psql_primary "SELECT json_build_array(wal_records, wal_fpi, wal_bytes, (SELECT size FROM unefois_log)) FROM pg_stat_wal"
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

# batch_totals: records and batches (transactions on PostgreSQL) so far over every broker, as
# "RECORDS BATCHES"; a run's records per transaction is its difference's ratio.
batch_totals() {
  local s=0 n=0 i
  for i in $(seq 0 $((${#BROKER_PIDS[@]} - 1))); do
    read -r si ni < <(OPS_PORT=$((OPS_PORT + i)) metric_totals unefois_journal_batch_records)
    s=$(echo "$s + $si" | bc -l); n=$(echo "$n + $ni" | bc -l)
  done
  echo "$s $n"
}

run() {
  local config=$1 mode=$2; shift 2
  local servers
  servers=$(IFS=,; echo "${BROKER_PIDS[*]}")
  [ "$config" != embedded ] && servers="$servers,$(pg_pids)"
  local wal_before=null wal_after=null batches_before batches_after
  batches_before=$(batch_totals)
  [ "$config" != embedded ] && wal_before=$(pg_wal)
  [ "$config" = embedded ] || [ -z "$PG_STATEMENTS" ] || psql_primary "SELECT pg_stat_statements_reset()" >/dev/null
  local result
  result=$(taskset -c "$CLIENT_CPU" "$BENCH" run --target "$(IFS=,; echo "${TARGETS[*]}")" \
    --pki "$BENCH_DIR/home0/pki" --broker-bin "$UNEFOIS" \
    --idp-key examples/dev-idp/dev-signing-key.json --scenario "$SCENARIO" \
    --connections "${#TARGETS[@]}" --duration "$DURATION" --warmup 1 \
    --server-pid "$servers" --aux-pid "$PROVIDER_PID" --json $LOAD_ARGS "$@")
  [ "$config" != embedded ] && wal_after=$(pg_wal)
  batches_after=$(batch_totals)
  printf '%s\n' "$result" |
    jq -c --arg config "$config" --arg mode "$mode" --arg batch "$(echo "$batches_before $batches_after" |
      awk '$4 > $2 { printf "%.2f", ($3 - $1) / ($4 - $2) }')" \
      --argjson w0 "$wal_before" --argjson w1 "$wal_after" \
      '{config: $config, mode: $mode, records_per_transaction: ($batch | tonumber? // null)} + .
       + (if $w0 then {wal_per_request: ([$w1, $w0] | transpose | map(.[0] - .[1])
            | (.[3] | if . > 0 then . else 1 end) as $leaves
            | {records: .[0], full_page_images: .[1], bytes: .[2]} | map_values(. / $leaves * 10 | round / 10))}
          else {} end)' |
    tee -a "$RESULTS" | summary >&2
  if [ "$config" != embedded ] && [ -n "$PG_STATEMENTS" ]; then
    local fetches  # the leaves the run added, warm-up included, as the statements count
    fetches=$(jq -n --argjson w0 "$wal_before" --argjson w1 "$wal_after" '[$w1[3] - $w0[3], 1] | max')
    psql -h 127.0.0.1 -p "$PG_PRIMARY_PORT" -U unefois -d postgres -c "
      SELECT round(calls::numeric / $fetches, 3) AS calls_per_fetch,
             round((total_exec_time * 1000 / $fetches)::numeric, 1) AS exec_us_per_fetch,
             round((total_exec_time * 1000 / calls)::numeric, 1) AS us_per_call,
             round(rows::numeric / calls, 1) AS rows_per_call, left(regexp_replace(query, '\s+', ' ', 'g'), 70) AS query
      FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 20" >"$BENCH_DIR/statements-$config-$mode.txt"
  fi
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
  for share in $PACED_SHARES; do
    rate=$(jq -rs --arg c "$config" --argjson s "$share" \
      'map(select(.config == $c and .mode == "in-flight-64"))[0].rps * $s | floor' "$RESULTS")
    mode=half-load
    [ "$share" = 0.5 ] || mode=paced-$share
    log "$config, paced at $rate req/s ($share × the 64-in-flight rate)"
    run "$config" "$mode" --in-flight 256 --rate "$rate"
  done
  stop_brokers
  [ "$config" != embedded ] && pg_down
done

jq -rs '
  (map(select(.config == "embedded")) | map({key: .mode, value: .}) | from_entries) as $e |
  "| config | load | req/s | p50 ms | p99 ms | CPU µs/fetch (all servers) | × embedded CPU | records/transaction |",
  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  (.[] | "| \(.config) | \(.mode) | \(.rps | floor) | \(.latency_us.p50 / 10 | round / 100) | \(.latency_us.p99 / 10 | round / 100) | \(.server.cpu_us_per_request * 10 | round / 10) | \(if $e[.mode] then (.server.cpu_us_per_request / $e[.mode].server.cpu_us_per_request * 100 | round / 100) else "" end) | \(.records_per_transaction // "") |")
' "$RESULTS"
