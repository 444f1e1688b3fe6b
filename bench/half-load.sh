#!/usr/bin/env bash
# Issue 7: is the broker's CPU per fetch at half load its own, or the provider's on the shared
# core? For each layout, a fresh broker and provider: fetch-consent as fast as it goes (64 in
# flight), then $PACED runs paced at half that rate. "shared": the provider on the broker's CPU,
# as in compare.sh; "apart": on the load generator's CPU. Layouts alternate (shared, apart,
# apart, shared by default) to spread the VM's drift over both.
#
#   bench/half-load.sh                     # about 3 minutes after the build
#   LAYOUTS="apart shared" PACED=3 DURATION=10 bench/half-load.sh
source "$(dirname "$0")/lib.sh"
LAYOUTS=${LAYOUTS:-shared apart apart shared}
PACED=${PACED:-2}
DURATION=${DURATION:-8}
# point LABEL [run flags...]: one measured run, its summary and its records per batch; the
# run's JSON is left in $result.
point() {
  local label=$1 before after
  shift
  before=$(metric_totals unefois_journal_batch_records)
  result=$(load "$DURATION" --scenario fetch-consent --in-flight 64 "$@")
  after=$(metric_totals unefois_journal_batch_records)
  echo "$label: $(summary <<<"$result"), $(echo "$before $after" |
    awk '{ printf "%.1f records per batch", ($3 - $1) / (($4 - $2) > 0 ? $4 - $2 : 1) }')"
}
bench_env "$CARGO_TARGET_DIR/bench-half-load"
for layout in $LAYOUTS; do
  case $layout in
    shared) PROVIDER_CPU=$SERVER_CPU ;;
    apart) PROVIDER_CPU=$CLIENT_CPU ;;
    *) echo "unknown layout $layout (shared or apart)" >&2; exit 2 ;;
  esac
  start_provider
  start_broker
  point "$layout, 64 in flight"
  max=$(jq -r '.rps | floor' <<<"$result")
  for _ in $(seq "$PACED"); do
    point "$layout, paced at $((max / 2))/s" --rate $((max / 2))
  done
  stop_broker
  kill "$PROVIDER_PID"
  wait "$PROVIDER_PID" 2>/dev/null || true
done
