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
RESULTS=$BENCH_DIR/ab.jsonl
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
  for side in A B; do
    bin_var=BIN_$side
    UNEFOIS=${!bin_var}
    registry_var=REGISTRY_$side
    BENCH_REGISTRY=${!registry_var:-}
    # A fresh data directory holds fresh keys: their published verifier keys go with it.
    rm -rf "$BENCH_DIR/home/data" "$PKI/attestation.vkey" "$PKI/log.vkey"
    start_broker
    log "round $round, $side ($UNEFOIS)"
    result=$(load "$DURATION" --scenario "$SCENARIO" --in-flight "$IN_FLIGHT" "${RATE_FLAGS[@]}")
    per_batch=$(metric_mean unefois_journal_batch_records)
    printf '%s\n' "$result" | jq -c --arg side "$side" --arg per_batch "$per_batch" \
      '{side: $side, records_per_batch: ($per_batch | tonumber? // null)} + .' |
      tee -a "$RESULTS" | summary >&2
    echo "   journal records per batch since the broker started: $per_batch" >&2
    stop_broker
  done
done
jq -rs '
  def mean(s; f): (map(select(.side == s) | f) | add / length);
  def line(s): "\(s): \(mean(s; .rps) | floor) req/s, \(mean(s; .server.cpu_us_per_request) * 10 | floor / 10) µs/req, p50 \(mean(s; .latency_us.p50) / 10 | round / 100) ms, p99 \(mean(s; .latency_us.p99) / 10 | round / 100) ms, \(mean(s; .records_per_batch) * 100 | round / 100) records per batch (means of \(map(select(.side == s)) | length) runs)";
  line("A"), line("B"),
  "B / A: \(mean("B"; .rps) / mean("A"; .rps) * 1000 | round / 1000) × the throughput, \(mean("B"; .server.cpu_us_per_request) / mean("A"; .server.cpu_us_per_request) * 1000 | round / 1000) × the CPU per request"' "$RESULTS"
