#!/usr/bin/env bash
# Before/after comparison of two mxkeys binaries on the held benchmarks (issue
# 13: "held benchmarks stay within noise"): acme.json ingest (`mxkeys check`
# on 10,000 entries), change-to-reload latency of `mxkeys run` (Traefik and
# Certbot producers), idle cost of `mxkeys run` (RSS, context switches).
# The two binaries run interleaved in the same run (A B, B A, ...; the
# daemons side by side), so load that comes and goes moves both alike.
# See BENCHMARKS.md ("Before and after a change").
#
# usage: bench/compare.sh BEFORE_BIN AFTER_BIN [--only ingest,reload,idle]
#                         [--count N] [--runs N] [--warmup N] [--rounds N]
#                         [--idle-window S] [--out DIR] [--quiet-wait S]
#
#   --only LIST       which benchmarks (default all three)
#   --count N         acme.json entries for ingest (default 10000)
#   --runs N          `mxkeys check` runs per binary (default 30; warmup 3)
#   --rounds N        reload rounds per producer and binary (default 50)
#   --idle-window S   idle window (default 60)
#   --out DIR         data and daemons' logs (default target/bench/compare)
#   --quiet-wait S    wait up to S seconds (default 60) for an idle machine
#                     first; the run goes on anyway and the table's header
#                     says how busy the machine was
#
# GEN names gen-acme-json (default: next to BEFORE_BIN, else
# target/release/gen-acme-json; `cargo build --release -p mxkeys-bench`).
# Needs python3 and openssl. Only loopback and the output directory are used.
# To compare the tree with a baseline:
#   cargo build --release -p mxkeys -p mxkeys-bench
#   bench/compare.sh /work/bench-before/mxkeys target/release/mxkeys
# Running it with the same binary twice shows the noise of the machine.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

die() { echo "compare: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
[[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }
[[ $# -ge 2 ]] || { usage >&2; exit 2; }
before=$1 after=$2
shift 2
quiet_wait=60
out=
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out=${2:?}; shift 2 ;;
        --quiet-wait) quiet_wait=${2:?}; shift 2 ;;
        --only|--count|--runs|--warmup|--rounds|--idle-window) args+=("$1" "${2:?}"); shift 2 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for b in "$before" "$after"; do
    [[ -x $b ]] || die "$b is not an executable mxkeys"
done
if [[ -z ${GEN:-} ]]; then
    GEN=$(dirname "$before")/gen-acme-json
    [[ -x $GEN ]] || GEN=$repo/target/release/gen-acme-json
fi
[[ -x $GEN ]] || die "gen-acme-json not found: set GEN, or cargo build --release -p mxkeys-bench"
command -v python3 >/dev/null || die "python3 is needed"
command -v openssl >/dev/null || die "openssl is needed"
out=${out:-$repo/target/bench/compare}
mkdir -p "$out"

wait_quiet compare "$quiet_wait"
echo "== machine idle before the run: $quiet (${busy}% busy)" >&2
python3 "$repo/bench/compare.py" "$before" "$after" --gen "$GEN" --out "$out" "${args[@]}" \
    | tee "$out/summary.md"
echo "== results in $out/summary.md" >&2
