#!/usr/bin/env bash
# Issue 8, soak: fetch-consent at 70 % of the maximum measured just before, for $DURATION
# seconds (default 600); the broker's RSS sampled every $EVERY seconds. Passes when there is no
# error and RSS grew less than 10 % from the first sample after warm-up to the last.
#
#   bench/soak.sh                          # DURATION=600 EVERY=30
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-600}
EVERY=${EVERY:-30}
bench_env "$CARGO_TARGET_DIR/bench-soak"
start_provider
start_broker
log "maximum (10 s at 64 in flight)"
max=$(load 10 --scenario fetch-consent --in-flight 64 | tee /dev/stderr | jq -r '.rps | floor')
rate=$(( max * 70 / 100 ))
log "soak: $rate req/s (70 % of $max) for $DURATION s"
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$BROKER_PID/status"; }
( while sleep "$EVERY"; do printf '%s %s\n' "$(date +%s)" "$(rss)"; done ) >"$BENCH_DIR/rss.txt" &
SAMPLER=$!; PIDS+=("$SAMPLER")
result=$(load "$DURATION" --scenario fetch-consent --in-flight 64 --rate "$rate")
kill "$SAMPLER"
printf '%s\n' "$result" | summary >&2
first=$(sed -n 2p "$BENCH_DIR/rss.txt" | cut -d' ' -f2)
last=$(tail -1 "$BENCH_DIR/rss.txt" | cut -d' ' -f2)
errors=$(printf '%s\n' "$result" | jq -r .errors)
growth=$(( (last - first) * 1000 / first ))
echo "RSS samples (KiB, every ${EVERY}s): $(cut -d' ' -f2 "$BENCH_DIR/rss.txt" | paste -sd' ')"
echo "RSS $first KiB -> $last KiB: $((growth / 10)).$((growth % 10)) % growth; $errors errors"
if [ "$errors" -eq 0 ] && [ "$growth" -lt 100 ]; then echo "soak: PASS"; else echo "soak: FAIL"; fi
