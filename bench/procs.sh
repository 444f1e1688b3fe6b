# Sourced by every bench script: the processes it starts (their PIDs in PIDS) are stopped when it
# exits, `log` says what it does, `wait_listening FILE` waits for a server's "listening on".
# Needs only bash and grep, so that bench/scaling.sh still runs where there is no cargo.
PIDS=()

log() { printf '\n== %s\n' "$*" >&2; }
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Waits for "listening on" in a server's output file (10 s at most).
wait_listening() {
  for _ in $(seq 100); do
    grep -q "listening on" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "no 'listening on' in $1" >&2; cat "$1" >&2; exit 1
}
