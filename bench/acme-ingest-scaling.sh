#!/usr/bin/env bash
# acme.json ingest scaling: `mxkeys check` on generated Traefik acme.json
# files of several sizes, against the two things shell-based mail containers
# and scripts do instead:
#   jq:     bash DIR/jq.sh, holding
#           jq -r '.le.Certificates[] | select(.domain.main=="T") | .certificate'
#              acme.json | base64 -d >/dev/null
#           (what the extractor scripts run; bash's start-up is part of it,
#           as it is in a container hook)
#   python: bench/acme_ingest_baseline.py (json.load + base64 of one entry)
# Neither validates anything; mxkeys reads every leaf's names, ranks every
# candidate and fully validates the one it selects.
# See BENCHMARKS.md ("acme.json ingest scaling") for the figures.
#
# usage: bench/acme-ingest-scaling.sh [--counts "100 1000 10000"] [--runs N]
#                                     [--warmup N] [--rss-runs N] [--out DIR]
#                                     [--no-build] [--quiet-wait S]
#
#   --counts LIST  certificate counts, space-separated (default "100 1000 10000")
#   --runs N       minimum hyperfine runs per command (default 20)
#   --warmup N     hyperfine warmup runs (default 3)
#   --rss-runs N   /usr/bin/time -v runs per command and size (default 5)
#   --out DIR      data and results (default target/bench/acme-ingest-scaling)
#   --no-build     use the existing target/release binaries
#   --quiet-wait S wait up to S s (default 60) for an idle machine before each size
#
# Environment: PYTHON (default: the real interpreter behind python3),
# MXKEYS (default target/release/mxkeys).
# Installs hyperfine, time and jq with apt-get when missing.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

counts="100 1000 10000"
runs=20
warmup=3
rss_runs=5
out=
build=1
quiet_wait=60
target=mail.example.com

die() { echo "acme-ingest-scaling: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --counts) counts=${2:?}; shift 2 ;;
        --runs) runs=${2:?}; shift 2 ;;
        --warmup) warmup=${2:?}; shift 2 ;;
        --rss-runs) rss_runs=${2:?}; shift 2 ;;
        --out) out=${2:?}; shift 2 ;;
        --no-build) build=0; shift ;;
        --quiet-wait) quiet_wait=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
out=${out:-$repo/target/bench/acme-ingest-scaling}
mkdir -p "$out"
out=$(cd "$out" && pwd)

need_pkg() { # need_pkg PACKAGE CHECK-COMMAND...
    local pkg=$1; shift
    "$@" >/dev/null 2>&1 && return 0
    echo "acme-ingest-scaling: installing Debian package $pkg" >&2
    local sudo=
    [[ $(id -u) -ne 0 ]] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null
    "$@" >/dev/null 2>&1 || die "$pkg installed but its check failed: $*"
}
need_pkg hyperfine hyperfine --version
need_pkg time test -x /usr/bin/time
need_pkg jq jq --version
PYTHON=${PYTHON:-$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')}

if [[ $build -eq 1 ]]; then
    cargo build --release -p mxkeys -p mxkeys-bench
fi
mxkeys=${MXKEYS:-$repo/target/release/mxkeys}
gen=$repo/target/release/gen-acme-json
[[ -x $mxkeys && -x $gen ]] || die "build first (or drop --no-build)"

: >"$out/sizes.txt"
for n in $counts; do
    d=$out/$n
    mkdir -p "$d"
    echo "== $n entries" >&2
    "$gen" --count "$n" --target "$target" "$d/acme.json" >"$d/generate.txt" 2>&1
    "$mxkeys" --config "$d/mxkeys.toml" check >"$d/check.out" 2>"$d/check.err" \
        || { cat "$d/check.err" >&2; die "mxkeys check failed on $n entries"; }
    # The container way, as a script run by bash (as a hook would be).
    printf '%s\n' "jq -r '.le.Certificates[] | select(.domain.main==\"$target\") | .certificate' $d/acme.json | base64 -d >/dev/null" >"$d/jq.sh"
    bash -o pipefail "$d/jq.sh" || die "the jq pipeline failed on $n entries"
    "$PYTHON" bench/acme_ingest_baseline.py "$d/acme.json" "$target" >/dev/null \
        || die "the python baseline failed on $n entries"
    wait_quiet acme-ingest-scaling "$quiet_wait"
    if [[ $quiet == yes ]]; then quiet="idle (${busy}% busy)"; else quiet="NOT idle (${busy}% busy)"; fi
    hyperfine -N --warmup "$warmup" --min-runs "$runs" --export-json "$d/hyperfine.json" \
        --command-name mxkeys "$mxkeys --config $d/mxkeys.toml check" \
        --command-name jq "bash $d/jq.sh" \
        --command-name python "$PYTHON bench/acme_ingest_baseline.py $d/acme.json $target" >&2
    for name in mxkeys jq python; do
        : >"$d/rss-$name.txt"
        for ((i = 0; i < rss_runs; i++)); do
            case $name in
                mxkeys) /usr/bin/time -v "$mxkeys" --config "$d/mxkeys.toml" check ;;
                jq) /usr/bin/time -v bash "$d/jq.sh" ;;
                python) /usr/bin/time -v "$PYTHON" bench/acme_ingest_baseline.py "$d/acme.json" "$target" ;;
            esac >/dev/null 2>"$d/time-v.tmp"
            awk -F': ' '/Maximum resident set size/ {print $2}' "$d/time-v.tmp" >>"$d/rss-$name.txt"
        done
    done
    rm -f "$d/time-v.tmp"
    printf '%s\t%s\t%s\n' "$n" "$(stat -c %s "$d/acme.json")" "$quiet" >>"$out/sizes.txt"
done

OUT=$out CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) NPROC=$(nproc) \
REV="$(git rev-parse --short HEAD)$([[ -n $(git status --porcelain -- src Cargo.toml Cargo.lock) ]] && echo ' + uncommitted changes')" \
JQ=$(jq --version) PYV=$("$PYTHON" -c 'import sys; print(sys.version.split()[0])') \
"$PYTHON" - <<'EOF' | tee "$out/summary.txt"
import json, os, statistics
out = os.environ["OUT"]
print(f"machine: {os.environ['NPROC']} x {os.environ['CPU']}; mxkeys {os.environ['REV']}; "
      f"{os.environ['JQ']}; python {os.environ['PYV']}")
sizes = [line.rstrip("\n").split("\t") for line in open(os.path.join(out, "sizes.txt"))]
print("| entries | file | command | median | IQR | min | max | runs | peak RSS (max of runs) | RSS / file |")
print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
med = {}
for n, size, quiet in sizes:
    size = int(size)
    res = {r["command"]: r for r in json.load(open(os.path.join(out, n, "hyperfine.json")))["results"]}
    for name in ("mxkeys", "jq", "python"):
        r = res[name]
        t = r["times"]
        q = statistics.quantiles(t, n=4)
        rss = [int(x) * 1024 for x in open(os.path.join(out, n, f"rss-{name}.txt")) if x.strip()]
        med[(n, name)] = r["median"]
        print(f"| {int(n):,} | {size / 1e6:.2f} MB | {name} | {r['median'] * 1e3:.1f} ms | "
              f"{q[0] * 1e3:.1f}–{q[2] * 1e3:.1f} ms | {r['min'] * 1e3:.1f} ms | {r['max'] * 1e3:.1f} ms | "
              f"{len(t)} | {max(rss) / 1e6:.1f} MB | {max(rss) / size:.2f}x |")
    print(f"<!-- {n}: {quiet} -->")
print()
ns = [n for n, _, _ in sizes]
for name in ("mxkeys", "jq", "python"):
    steps = [f"{ns[i]}->{ns[i + 1]}: x{med[(ns[i + 1], name)] / med[(ns[i], name)]:.2f}"
             for i in range(len(ns) - 1)]
    print(f"growth of the median, {name}: " + ", ".join(steps))
for n in ns:
    print(f"{n}: mxkeys/jq = {med[(n, 'mxkeys')] / med[(n, 'jq')]:.2f}, "
          f"mxkeys/python = {med[(n, 'mxkeys')] / med[(n, 'python')]:.2f}")
EOF
