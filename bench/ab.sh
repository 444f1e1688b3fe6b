#!/usr/bin/env bash
# Two broker binaries, A and B, against one bench home and one provider, alternated $ROUNDS
# times (A, B, A, B...), each a fresh broker process: does a change make a fetch cheaper? The
# VM's speed drifts between runs of the same binary by up to 8 %; alternating spreads the drift
# over both. Prints each run and the means.
#
#   BIN_A=/tmp/unefois-old BIN_B=target/release/unefois bench/ab.sh
#   RATE=3400 bench/ab.sh ...        # paced (--rate) instead of as fast as it goes
#   SCENARIO=fetch-law IN_FLIGHT=8 ROUNDS=4 DURATION=10 bench/ab.sh ...
#   REGISTRY_A=/tmp/registry-old.toml bench/ab.sh ...   # a registry of A's own (an older binary
#                                                      # refuses fields it does not know)
#   REGISTRY_A_DROP='^(default_rate_limit|max_acts_per_token) ' bench/ab.sh ...
#                                    # or the bench registry without the lines matching a regex
#   SIDE_BY_SIDE=1 bench/ab.sh ...   # A and B at the same time (below)
#
# Side by side, both brokers run at once on $SERVER_CPU (with the one provider), each loaded
# from $CLIENT_CPU by its own load generator, started together: whatever the VM's speed does
# during a round, it does to both, so that B / A per round is steady to about 1 % where
# alternated rounds scatter by 10 to 30 % (BENCHMARKS.md, run T). Each broker gets about half
# the core, so rates are half a broker's alone; compare CPU per request, not rates.
#
# Each run starts from an empty data directory (the PKI is kept, not the published verifier keys): a binary may not read the
# journal another one wrote (a newer record version), and no run inherits another's log.
source "$(dirname "$0")/lib.sh"
: "${BIN_A:?BIN_A: the first unefois binary}" "${BIN_B:?BIN_B: the second unefois binary}"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
SCENARIO=${SCENARIO:-fetch-consent}
IN_FLIGHT=${IN_FLIGHT:-64}
RATE_FLAGS=()
[ -n "${RATE:-}" ] && RATE_FLAGS=(--rate "$RATE")
bench_env "$CARGO_TARGET_DIR/bench-ab"
for side in A B; do
  drop_var=REGISTRY_${side}_DROP
  if [ -n "${!drop_var:-}" ]; then
    grep -vE "${!drop_var}" "$BENCH_DIR/registry.toml" >"$BENCH_DIR/registry-$side.toml"
    printf -v "REGISTRY_$side" '%s' "$BENCH_DIR/registry-$side.toml"
  fi
done
start_provider
declare -A LOAD_PIDS
RESULTS=$BENCH_DIR/ab.jsonl
: >"$RESULTS"
# use SIDE: the variables start_broker, load and metric_mean read, for broker SIDE. Side by
# side, B listens 1000 ports above A and has a home of its own (a copy of A's PKI).
use() {
  local bin_var=BIN_$1 registry_var=REGISTRY_$1
  UNEFOIS=${!bin_var}
  BENCH_REGISTRY=${!registry_var:-}
  BROKER_PORT=$BASE_BROKER_PORT OPS_PORT=$BASE_OPS_PORT BROKER_HOME=$BENCH_DIR/home BROKER_TAG=
  if [ "${SIDE_BY_SIDE:-0}" = 1 ] && [ "$1" = B ]; then
    BROKER_PORT=$((BASE_BROKER_PORT + 1000)) OPS_PORT=$((BASE_OPS_PORT + 1000))
    BROKER_HOME=$BENCH_DIR/home-B BROKER_TAG=-B
  fi
  PKI=$BROKER_HOME/pki
  BROKER_PID=${BROKER_PIDS[$1]:-}
}

# fresh SIDE: broker SIDE started on an empty data directory. A fresh data directory holds
# fresh keys: their published verifier keys go with it.
fresh() {
  use "$1"
  rm -rf "$BROKER_HOME/data" "$PKI/attestation.vkey" "$PKI/log.vkey"
  start_broker
  BROKER_PIDS[$1]=$BROKER_PID
  log "round $round, $1 ($UNEFOIS)"
}

# measured SIDE RESULT: RESULT (the load's JSON) with the side and the journal's records per
# batch, appended to $RESULTS and summarised; then broker SIDE stops.
measured() {
  use "$1"
  local per_batch
  per_batch=$(metric_mean unefois_journal_batch_records)
  printf '%s\n' "$2" | jq -c --arg side "$1" --arg round "$round" --arg per_batch "$per_batch" \
    '{side: $side, round: ($round | tonumber), records_per_batch: ($per_batch | tonumber? // null)} + .' |
    tee -a "$RESULTS" | summary | sed "s/^/$1: /" >&2
  echo "   journal records per batch since the broker started: $per_batch" >&2
  stop_broker
}

BASE_BROKER_PORT=$BROKER_PORT BASE_OPS_PORT=$OPS_PORT
declare -A BROKER_PIDS
if [ "${SIDE_BY_SIDE:-0}" = 1 ]; then
  rm -rf "$BENCH_DIR/home-B"
  mkdir -p "$BENCH_DIR/home-B"
  cp -r "$BENCH_DIR/home/pki" "$BENCH_DIR/home-B/pki"
fi
for round in $(seq "$ROUNDS"); do
  if [ "${SIDE_BY_SIDE:-0}" = 1 ]; then
    fresh A
    fresh B
    for side in A B; do
      use "$side"
      load "$DURATION" --scenario "$SCENARIO" --in-flight "$IN_FLIGHT" "${RATE_FLAGS[@]}" \
        >"$BENCH_DIR/load-$side.json" &
      LOAD_PIDS[$side]=$!
    done
    for side in A B; do wait "${LOAD_PIDS[$side]}"; done
    for side in A B; do measured "$side" "$(cat "$BENCH_DIR/load-$side.json")"; done
  else
    for side in A B; do
      fresh "$side"
      measured "$side" "$(load "$DURATION" --scenario "$SCENARIO" --in-flight "$IN_FLIGHT" "${RATE_FLAGS[@]}")"
    done
  fi
done
jq -rs '
  def mean(s; f): (map(select(.side == s) | f) | add / length);
  def line(s): "\(s): \(mean(s; .rps) | floor) req/s, \(mean(s; .server.cpu_us_per_request) * 10 | floor / 10) µs/req, p50 \(mean(s; .latency_us.p50) / 10 | round / 100) ms, p99 \(mean(s; .latency_us.p99) / 10 | round / 100) ms, \(mean(s; .records_per_batch) * 100 | round / 100) records per batch (means of \(map(select(.side == s)) | length) runs)";
  line("A"), line("B"),
  "B / A: \(mean("B"; .rps) / mean("A"; .rps) * 1000 | round / 1000) × the throughput, \(mean("B"; .server.cpu_us_per_request) / mean("A"; .server.cpu_us_per_request) * 1000 | round / 1000) × the CPU per request",
  "B / A CPU per request, round by round: \(group_by(.round) | map(select(length == 2) | (map(select(.side == "B"))[0].server.cpu_us_per_request / map(select(.side == "A"))[0].server.cpu_us_per_request * 1000 | round / 1000)) | map(tostring) | join(", "))"' "$RESULTS"
