#!/usr/bin/env bash
# Issue 7: where the broker's CPU goes per fetch, at full load and paced at half of it.
# fetch-consent at 64 in flight (broker and provider on CPU $SERVER_CPU, load from $CLIENT_CPU),
# `perf record` on the broker for 8 s of each point, folded into activities by
# bench/perf-activities.py; each activity's share times the point's CPU per fetch gives µs per
# fetch, side by side.
#
#   bench/profile.sh                  # about a minute after the build; installs perf if missing
source "$(dirname "$0")/lib.sh"
command -v perf >/dev/null || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y linux-perf >/dev/null || { apt-get update >/dev/null && apt-get install -y linux-perf >/dev/null; }
}
bench_env "$CARGO_TARGET_DIR/bench-profile"
start_provider
start_broker
max=$(load 5 --scenario fetch-consent --in-flight 64 | jq -r '.rps | floor')
for point in full half; do
  rate=(); [ "$point" = half ] && rate=(--rate $((max / 2)))
  perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$BROKER_PID" \
    -o "$BENCH_DIR/perf-$point.data" -- sleep 8 >/dev/null 2>&1 &
  perf_pid=$!
  load 10 --scenario fetch-consent --in-flight 64 "${rate[@]}" >"$BENCH_DIR/$point.json"
  wait "$perf_pid" || true
  summary <"$BENCH_DIR/$point.json" | sed "s/^/$point: /" >&2
  perf script --no-inline -i "$BENCH_DIR/perf-$point.data" -F comm,tid,ip,sym 2>/dev/null |
    python3 bench/perf-activities.py >"$BENCH_DIR/activities-$point.txt"
done
python3 - "$BENCH_DIR" <<'PY'
import json, re, sys
folder = sys.argv[1]
def activities(point):
    shares, inside = {}, False
    for line in open(f"{folder}/activities-{point}.txt"):
        if line.startswith("By activity"):
            inside = True
        elif inside and not line.strip():
            break
        elif inside:
            m = re.match(r"\s*([\d.]+) %\s+(.*)", line)
            if m:
                shares[m.group(2)] = float(m.group(1)) / 100
    return shares
cost = {p: json.load(open(f"{folder}/{p}.json"))["server"]["cpu_us_per_request"] for p in ("full", "half")}
full, half = activities("full"), activities("half")
print(f"| activity | µs per fetch, full load ({cost['full']:.0f}) | µs per fetch, half load ({cost['half']:.0f}) | difference |")
print("| --- | ---: | ---: | ---: |")
for label in sorted(set(full) | set(half), key=lambda l: -half.get(l, 0) * cost["half"]):
    a, b = full.get(label, 0) * cost["full"], half.get(label, 0) * cost["half"]
    if max(a, b) >= 0.5:
        print(f"| {label} | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
PY
