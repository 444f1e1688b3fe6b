#!/usr/bin/env bash
# Issue 7: what the group commit's fdatasync costs. fetch-consent at 64 in flight against one
# broker home, with the journal synced, then with every fdatasync a no-op (eatmydata, an
# LD_PRELOAD library: the broker itself has no switch to stop syncing), alternated $ROUNDS
# times, each a fresh broker process on the same data. The broker's own histogram shows that
# the unsynced runs did not wait for the disk.
#
#   bench/sync-cost.sh                 # ROUNDS=3 DURATION=10
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
command -v eatmydata >/dev/null || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y eatmydata >/dev/null || { apt-get update >/dev/null && apt-get install -y eatmydata >/dev/null; }
}
bench_env "$CARGO_TARGET_DIR/bench-sync"
start_provider
RESULTS=$BENCH_DIR/sync-cost.jsonl
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
  for mode in synced unsynced; do
    BROKER_WRAPPER=; [ "$mode" = unsynced ] && BROKER_WRAPPER=eatmydata
    start_broker
    log "round $round, $mode"
    result=$(load "$DURATION" --scenario fetch-consent --in-flight 64)
    sync_us=$(metric_mean unefois_journal_sync_seconds 1e6)
    printf '%s\n' "$result" | jq -c --arg mode "$mode" --arg sync "$sync_us" \
      '{mode: $mode, mean_sync_us: $sync} + .' | tee -a "$RESULTS" | summary >&2
    echo "   mean fdatasync since the broker started: $sync_us µs" >&2
    stop_broker
  done
done
jq -rs '
  def mean(m; f): (map(select(.mode == m) | f) | add / length);
  mean("synced"; .rps) as $s | mean("unsynced"; .rps) as $u |
  mean("synced"; .server.cpu_us_per_request) as $cs | mean("unsynced"; .server.cpu_us_per_request) as $cu |
  "synced \($s | floor) req/s, \($cs * 10 | floor / 10) µs/req; unsynced \($u | floor) req/s, \($cu * 10 | floor / 10) µs/req; the sync costs \((1 - $s / $u) * 1000 | round / 10) % of the throughput (target <= 20 %)"' "$RESULTS"
