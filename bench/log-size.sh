#!/usr/bin/env bash
# Issue 7, scaling against log size: does a fetch slow down as the log grows? For each size in
# $SIZES, a fresh bench folder whose log is first filled with that many synthetic exchange
# records (broker/examples/fill_log.rs, through the real Store), then fetch-consent at 64 in
# flight for $DURATION seconds.
#
#   bench/log-size.sh                      # SIZES="0 1000000" DURATION=10
source "$(dirname "$0")/lib.sh"
SIZES=${SIZES:-0 1000000}
DURATION=${DURATION:-10}
for size in $SIZES; do
  bench_env "$CARGO_TARGET_DIR/bench-log-$size"
  if [ "$size" -gt 0 ]; then
    log "filling the log with $size records"
    "$CARGO_TARGET_DIR/release/examples/fill_log" "$BENCH_DIR/home/data" unefois.test "$size" >&2
  fi
  start_provider
  start_broker
  printf 'log of %9s entries: ' "$size" >&2
  load "$DURATION" --scenario fetch-consent --in-flight 64 | tee "$BENCH_DIR/result.json" | summary >&2
  printf '                        inclusion proofs: ' >&2
  load "$DURATION" --scenario inclusion-proof --in-flight 64 | summary >&2
  printf '                        data dir: %s\n' "$(du -sh "$BENCH_DIR/home/data" | cut -f1)" >&2
  stop_broker
  kill "$PROVIDER_PID"; wait "$PROVIDER_PID" 2>/dev/null || true
  rm -rf "$BENCH_DIR"
done
