#!/usr/bin/env bash
# The cluster's crash soak (issue 22): ROUNDS (20) rounds of killing a random node under load —
# a broker process (SIGKILL, restarted) or the PostgreSQL primary (SIGKILL, standby promoted, a
# new standby made) — then every receipt given checked in the final log. Real servers on
# loopback, debug build (the test binary's); prints each round and the totals.
#
#   bench/cluster-soak.sh            # ROUNDS=20
set -euo pipefail
cd "$(dirname "$0")/.."
UNEFOIS_CLUSTER_ROUNDS=${ROUNDS:-20} cargo test -p unefois-tests --test cluster \
  random_nodes_die_under_load -- --nocapture 2>&1 | grep --line-buffered -E "^(round|soak|test )"
