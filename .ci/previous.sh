#!/usr/bin/env bash
# Builds the `unefois` binary of the version a rolling upgrade starts from: the parent of the
# commit that added this version's newest schema migration (store/src/postgres/schema.rs). The
# cluster test upgrade::the_previous_version_serves_beside_this_one_on_its_schema runs it next
# to this version (UNEFOIS_PREVIOUS). Prints the binary's path; prints nothing when the history
# is not here (a shallow clone) or has no earlier schema.
set -euo pipefail
cd "$(dirname "$0")/.."

migrations() {
  python3 -c '
import sys
s = sys.stdin.read()
start = s.find("pub const MIGRATIONS")
print(s[start:s.find("];", start)].count("r#\"") if start >= 0 else 0)'
}

now=$(migrations < store/src/postgres/schema.rs)
added=""
for commit in $(git log --format=%H -- store/src/postgres/schema.rs 2>/dev/null); do
  if [ "$(git show "$commit:store/src/postgres/schema.rs" | migrations)" -lt "$now" ]; then
    break
  fi
  added=$commit
done
previous=$(git rev-parse --verify --quiet "${added}^" 2>/dev/null || true)
[ -n "$added" ] && [ -n "$previous" ] || exit 0

dir=target/previous
if [ ! -x "$dir/target/debug/unefois" ] || [ "$(cat "$dir/commit" 2>/dev/null)" != "$previous" ]; then
  git worktree remove --force "$dir/src" >/dev/null 2>&1 || rm -rf "$dir/src"
  git worktree prune
  mkdir -p "$dir"
  git worktree add --detach --quiet "$dir/src" "$previous"
  # A target of its own: one shared with this tree's would let cargo take one version's
  # artifacts for the other's.
  (cd "$dir/src" && cargo build --quiet --locked -p unefois-cli --target-dir ../target >&2)
  echo "$previous" > "$dir/commit"
fi
echo "$PWD/$dir/target/debug/unefois"
