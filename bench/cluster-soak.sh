#!/usr/bin/env bash
# The cluster's crash soak (issue 22): ROUNDS (20) rounds of killing a node under load — a
# broker process (SIGKILL, restarted) or the PostgreSQL primary (SIGKILL of all its processes,
# standby promoted, a new standby made), in a shuffled schedule that holds at least one of each
# — then every receipt given, and every checkpoint served, checked in the final log. Real
# servers on loopback, debug build (the test binary's); prints the seed, each round and the
# totals. The figures in BENCHMARKS.md need at least 20 rounds (issue 22): fewer are refused
# (CI's 2 rounds: `cargo test -p unefois-tests --test cluster soak::`). SEED replays a schedule.
#
#   bench/cluster-soak.sh            # ROUNDS=20
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-20}
if ! [[ "$ROUNDS" =~ ^[0-9]+$ ]] || ((ROUNDS < 20)); then
  echo "cluster-soak: ROUNDS=$ROUNDS: the soak's figures need at least 20 rounds (issue 22)" >&2
  exit 2
fi
UNEFOIS_CLUSTER_ROUNDS=$ROUNDS UNEFOIS_CLUSTER_SEED=${SEED:-} cargo test -p unefois-tests \
  --test cluster random_nodes_die_under_load -- --nocapture 2>&1 |
  grep --line-buffered -E "^(round|soak|test )"
