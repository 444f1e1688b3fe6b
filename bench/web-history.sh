#!/usr/bin/env bash
# The citizen's history page for a person with 10,000 accesses (issue 23), in release: page
# time against Guichet.ListAccesses of the same page over gRPC (the baseline, same run).
# Results go in BENCHMARKS.md ("Run Q").
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p unefois-tests --test it web_history_bench -- --ignored --nocapture 2>&1 \
  | grep -E "seeded|page p50|test result"
