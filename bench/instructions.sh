#!/usr/bin/env bash
# Issue 7: the broker's user-space instructions per request, counted by callgrind. Unlike CPU
# time on this VM (±10 to 30 % between runs of the same binary), the count moves only when the
# code does, so it can tell a 2 % change from the noise. It leaves out the kernel's work (system
# calls, fdatasync): bench/profile.sh and perf's syscall tracepoints cover that.
#
# The broker runs under valgrind (about 50 times slower), pinned to CPU $SERVER_CPU with the
# provider; a warm-up of $WARMUP requests, then the counters are zeroed, $REQUESTS requests are
# sent at $IN_FLIGHT in flight, and the counters dumped. Prints instructions per request and the
# functions with the most inclusive instructions per request.
#
#   bench/instructions.sh                          # fetch-consent, 2,000 requests, 16 in flight
#   SCENARIO=fetch-law REQUESTS=1000 bench/instructions.sh
#   UNEFOIS=/tmp/unefois-old bench/instructions.sh # another broker binary
#   GRANTS=50000 bench/instructions.sh             # first, that many consents granted to others
#   GRANTS=300 GRANT_SUBJECTS=test:alice,test:carol,test:david bench/instructions.sh
#                                                  # ... or to the people the fetches are about
#   KEEP=/tmp/a.out bench/instructions.sh          # keep the dump (callgrind_annotate, kcachegrind)
source "$(dirname "$0")/lib.sh"
command -v valgrind >/dev/null || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y valgrind >/dev/null || { apt-get update >/dev/null && apt-get install -y valgrind >/dev/null; }
}
SCENARIO=${SCENARIO:-fetch-consent}
REQUESTS=${REQUESTS:-2000}
WARMUP=${WARMUP:-300}
IN_FLIGHT=${IN_FLIGHT:-1}
GRANTS=${GRANTS:-0}
GRANT_SUBJECTS=${GRANT_SUBJECTS:-}
bench_env "$CARGO_TARGET_DIR/bench-instructions"
start_provider
OUT=$BENCH_DIR/callgrind.out
# start_broker execs "$BROKER_WRAPPER" with its command: a small script that execs valgrind.
cat >"$BENCH_DIR/valgrind-wrapper" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file=$OUT --dump-instr=no "\$@" 2>>$BENCH_DIR/valgrind.log
EOF
chmod +x "$BENCH_DIR/valgrind-wrapper"
BROKER_WRAPPER=$BENCH_DIR/valgrind-wrapper
start_broker
# requests N SCENARIO [IN_FLIGHT]: exactly N requests, no timed warm-up, the JSON result on stdout.
requests() {
  taskset -c "$CLIENT_CPU" "$BENCH" run --target "127.0.0.1:$BROKER_PORT" --pki "$PKI" \
    --broker-bin "$UNEFOIS" --idp-key examples/dev-idp/dev-signing-key.json \
    --duration 3600 --warmup 0 --requests "$1" --scenario "$2" --in-flight "${3:-$IN_FLIGHT}" \
    --json "${@:4}"
}
if [ "$GRANTS" -gt 0 ]; then
  log "granting $GRANTS consents (to ${GRANT_SUBJECTS:-test:eve and test:frank})"
  requests "$GRANTS" consent-grant 16 ${GRANT_SUBJECTS:+--subjects "$GRANT_SUBJECTS"} |
    summary >&2
fi
log "warm-up: $WARMUP requests"
requests "$WARMUP" "$SCENARIO" >/dev/null
callgrind_control --zero "$BROKER_PID" >/dev/null
log "measured: $REQUESTS requests"
result=$(requests "$REQUESTS" "$SCENARIO")
callgrind_control --dump="measured" "$BROKER_PID" >/dev/null
printf '%s\n' "$result" | summary >&2
errors=$(printf '%s\n' "$result" | jq -r .errors)
[ "$errors" = 0 ] || { echo "$errors requests failed: the count would be wrong" >&2; exit 1; }
stop_broker
dump=$(ls -t "$OUT".* 2>/dev/null | head -1)
[ -n "$dump" ] || { echo "no callgrind dump in $BENCH_DIR" >&2; exit 1; }
[ -n "${KEEP:-}" ] && cp "$dump" "$KEEP"
total=$(awk '/^summary:/ { print $2 }' "$dump")
echo "$SCENARIO: $((total / REQUESTS)) instructions per request (user space, $REQUESTS requests, $IN_FLIGHT in flight)"
callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null |
  awk -v n="$REQUESTS" '/^ *[0-9,]+ \(/ && count < '"${TOP:-40}"' {
      ir = $1; gsub(",", "", ir); $1 = ""; $2 = ""
      sub(/^ +/, ""); sub(/ \[.*$/, "")
      printf "%10d  %s\n", ir / n, substr($0, 1, 150); count++ }'
