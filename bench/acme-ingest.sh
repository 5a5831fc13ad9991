#!/usr/bin/env bash
# acme.json ingest benchmark: `mxkeys check` on a generated Traefik acme.json
# versus a Python script that only json.loads it and base64-decodes one entry,
# and versus the floor: the least work a validating reader does, stage by
# stage (`cat FILE`, then `acme-floor read|parse|base64|der FILE`, and
# `acme-floor der --threads 2`), all in the same hyperfine run. See
# BENCHMARKS.md for what it measures and the figures it gave.
#
# usage: bench/acme-ingest.sh [--count N] [--target NAME] [--runs N] [--warmup N]
#                             [--rss-runs N] [--scts N] [--out DIR] [--no-build]
#                             [--quiet-wait S] [--stage-iterations N]
#
#   --count N     certificate entries in the generated acme.json (default 10000)
#   --target NAME the name mxkeys' [[target]] asks for (default mail.example.com)
#   --runs N      minimum hyperfine runs per command (default 20)
#   --warmup N    hyperfine warmup runs (default 3)
#   --rss-runs N  /usr/bin/time -v runs per command for peak RSS (default 5)
#   --scts N      SCTs per leaf, passed to gen-acme-json (default 0)
#   --out DIR     where data and results go (default target/bench/acme-ingest-N)
#   --no-build    use the existing target/release binaries
#   --quiet-wait S before timing, wait up to S seconds (default 120) for the
#                 machine to be idle (other processes using < 10% of the CPUs
#                 over 2 s); the summary says whether it was
#   --interleave N  rounds of the interleaved timing (default 30): every
#                 command once per round, each round in the same order; the
#                 verdicts on ratios use its medians (see below)
#   --stage-iterations N  iterations of `acme-floor stages` (each stage timed
#                 alone in one process, 1 and 2 threads; default 20)
#
# Environment: PYTHON (default: the real interpreter behind `python3`, not a
# pyenv shim, so the baseline is not charged for the shim's start-up). When
# Debian's /usr/bin/python3 is a different interpreter it is timed too, as a
# second baseline; the verdict is against the fastest baseline.
# MXKEYS (default target/release/mxkeys) times another mxkeys binary, and
# MXKEYS_REV names where it was built from in the summary. MXKEYS_OLD=BIN
# (optional) times an older mxkeys binary in the same run, for "no
# regression" (e.g. at --count 10); MXKEYS_OLD_REV names its source.
#
# The summary prints issue 19's goals as ratios of medians (of the
# interleaved rounds, which the machine's drift cannot skew; hyperfine's are
# printed too), with a verdict each: mxkeys / fastest Python baseline <= 0.5; mxkeys / floor <= 1.5 (floor
# = `acme-floor der`, one thread, all four stages in one process; the ratio to
# `acme-floor der --threads 2` is printed too); mxkeys peak RSS / file size
# <= 1.2; with MXKEYS_OLD, mxkeys / old <= 1.05 (time) and peak RSS no more
# than 1.05x the old one's. The first three goals are set for the
# 10,000-entry (~33 MB) file: below 10 MB they are printed for information.
#
# Results land in DIR: acme.json, mxkeys.toml, hyperfine.{json,md},
# rss-*.txt, stages-{1,2}.json (acme-floor stages) and summary.txt (also
# printed).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

count=10000
target=mail.example.com
runs=20
warmup=3
rss_runs=5
scts=0
out=
build=1
quiet_wait=120
interleave=30
stage_iterations=20

die() { echo "acme-ingest: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --count) count=${2:?}; shift 2 ;;
        --count=*) count=${1#*=}; shift ;;
        --target) target=${2:?}; shift 2 ;;
        --target=*) target=${1#*=}; shift ;;
        --runs) runs=${2:?}; shift 2 ;;
        --runs=*) runs=${1#*=}; shift ;;
        --warmup) warmup=${2:?}; shift 2 ;;
        --warmup=*) warmup=${1#*=}; shift ;;
        --rss-runs) rss_runs=${2:?}; shift 2 ;;
        --rss-runs=*) rss_runs=${1#*=}; shift ;;
        --scts) scts=${2:?}; shift 2 ;;
        --scts=*) scts=${1#*=}; shift ;;
        --out) out=${2:?}; shift 2 ;;
        --out=*) out=${1#*=}; shift ;;
        --no-build) build=0; shift ;;
        --quiet-wait) quiet_wait=${2:?}; shift 2 ;;
        --quiet-wait=*) quiet_wait=${1#*=}; shift ;;
        --interleave) interleave=${2:?}; shift 2 ;;
        --interleave=*) interleave=${1#*=}; shift ;;
        --stage-iterations) stage_iterations=${2:?}; shift 2 ;;
        --stage-iterations=*) stage_iterations=${1#*=}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
done
[[ $count =~ ^[0-9]+$ && $count -ge 1 ]] || die "--count must be a positive integer"
[[ $runs =~ ^[0-9]+$ && $runs -ge 2 ]] || die "--runs must be an integer >= 2"
[[ $warmup =~ ^[0-9]+$ ]] || die "--warmup must be an integer"
[[ $rss_runs =~ ^[0-9]+$ && $rss_runs -ge 1 ]] || die "--rss-runs must be a positive integer"
[[ $stage_iterations =~ ^[0-9]+$ && $stage_iterations -ge 1 ]] \
    || die "--stage-iterations must be a positive integer"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
out=${out:-$repo/target/bench/acme-ingest-$count}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# --- tools ----------------------------------------------------------------
apt_updated=0
need_pkg() { # need_pkg PACKAGE CHECK-COMMAND...
    local pkg=$1; shift
    "$@" >/dev/null 2>&1 && return 0
    echo "acme-ingest: installing Debian package $pkg" >&2
    local sudo=
    [[ $(id -u) -ne 0 ]] && sudo=sudo
    if [[ $apt_updated -eq 0 ]] && ! apt-cache show "$pkg" >/dev/null 2>&1; then
        $sudo apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null \
        || { [[ $apt_updated -eq 0 ]] && $sudo apt-get update -qq && apt_updated=1 \
             && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null; }
    "$@" >/dev/null 2>&1 || die "$pkg installed but its check failed: $*"
}
need_pkg hyperfine hyperfine --version
need_pkg time test -x /usr/bin/time
command -v python3 >/dev/null || die "python3 not found"
realpy() { "$1" -c 'import os, sys; print(os.path.realpath(sys.executable))'; }
PYTHON=${PYTHON:-$(realpy python3)}
pythons=("$PYTHON")
if [[ -x /usr/bin/python3 && $(realpy /usr/bin/python3) != "$(realpy "$PYTHON")" ]]; then
    pythons+=("$(realpy /usr/bin/python3)")
fi

# --- build ----------------------------------------------------------------
if [[ $build -eq 1 ]]; then
    echo "== cargo build --release -p mxkeys -p mxkeys-bench" >&2
    cargo build --release -p mxkeys -p mxkeys-bench
fi
mxkeys=${MXKEYS:-$repo/target/release/mxkeys}
gen=$repo/target/release/gen-acme-json
floor=$repo/target/release/acme-floor
old=${MXKEYS_OLD:-}
[[ -x $mxkeys ]] || die "$mxkeys missing (build it, or drop --no-build)"
[[ -x $gen ]] || die "$gen missing (build it, or drop --no-build)"
[[ -x $floor ]] || die "$floor missing (build it, or drop --no-build)"
[[ -z $old || -x $old ]] || die "MXKEYS_OLD=$old is not an executable"

# --- data -----------------------------------------------------------------
acme=$out/acme.json
config=$out/mxkeys.toml
echo "== generating $count entries into $acme" >&2
"$gen" --count "$count" --target "$target" --scts "$scts" "$acme" 2>&1 | tee "$out/generate.txt" >&2
size=$(stat -c %s "$acme")

# --- sanity: every command must succeed before it is timed ------------------
check_ok() { # check_ok NAME BIN: BIN --config CONFIG check must exit 0
    local name=$1 bin=$2 rc
    echo "== $bin --config $config check" >&2
    set +e
    "$bin" --config "$config" check >"$out/$name.out" 2>"$out/$name.err"
    rc=$?
    set -e
    cat "$out/$name.out" >&2
    if [[ $rc -ne 0 ]]; then
        cat "$out/$name.err" >&2
        die "$bin check exited $rc: nothing to benchmark"
    fi
}
check_ok check "$mxkeys"
hf_cmds=(--command-name "mxkeys check" "$mxkeys --config $config check")
if [[ -n $old ]]; then
    check_ok check-old "$old"
    hf_cmds+=(--command-name "mxkeys check (MXKEYS_OLD)" "$old --config $config check")
fi
# The floor: each command does the stages before it too (see acme-floor --help).
floor_cmds=("read" "parse" "base64" "der" "der --threads 2")
hf_cmds+=(--command-name "cat" "cat $acme")
: >"$out/floor.out"
for f in "${floor_cmds[@]}"; do
    # shellcheck disable=SC2086 # $f is a command and its options
    "$floor" $f "$acme" >>"$out/floor.out" || die "acme-floor $f failed"
    hf_cmds+=(--command-name "acme-floor $f" "$floor $f $acme")
done
cat "$out/floor.out" >&2
baseline_args=("$repo/bench/acme_ingest_baseline.py" "$acme" "$target")
: >"$out/baselines.txt"
for i in "${!pythons[@]}"; do
    py=${pythons[$i]}
    "$py" "${baseline_args[@]}" >"$out/baseline.out" || die "baseline with $py failed"
    label="python baseline $i ($("$py" -c 'import sys; print(sys.version.split()[0])') $py)"
    printf '%s\t%s\n' "$i" "$label" >>"$out/baselines.txt"
    hf_cmds+=(--command-name "$label" "$py ${baseline_args[*]}")
done

# --- wait for a quiet machine ---------------------------------------------
wait_quiet acme-ingest "$quiet_wait"
echo "== machine idle before timing: $quiet (${busy}% busy)" >&2

# --- timing ---------------------------------------------------------------
# -N: no intermediate shell, so neither command is charged a shell start-up.
echo "== hyperfine (warmup $warmup, at least $runs runs)" >&2
hyperfine -N --warmup "$warmup" --min-runs "$runs" \
    --export-json "$out/hyperfine.json" --export-markdown "$out/hyperfine.md" \
    "${hf_cmds[@]}" >&2

# --- the same commands interleaved ----------------------------------------
# hyperfine times one command's runs, then the next's: on this VM the speed
# of the machine drifts by 10 % over a minute, which skews ratios between
# blocks. Round after round, each command once per round, drift hits all
# alike; the verdicts on ratios use these medians.
echo "== interleaved ($interleave rounds)" >&2
INTERLEAVE=$interleave OUT=$out "$PYTHON" - "${hf_cmds[@]}" <<'EOF_I' >&2
import json, os, shlex, subprocess, sys, time
args = sys.argv[1:]
cmds = [(args[i + 1], args[i + 2]) for i in range(0, len(args), 3) if args[i] == "--command-name"]
times = {name: [] for name, _ in cmds}
for _ in range(int(os.environ["INTERLEAVE"])):
    for name, cmd in cmds:
        t = time.perf_counter()
        subprocess.run(shlex.split(cmd), stdout=subprocess.DEVNULL, check=True)
        times[name].append(time.perf_counter() - t)
with open(os.path.join(os.environ["OUT"], "interleaved.json"), "w") as f:
    json.dump(times, f)
print(f"interleaved: {len(cmds)} commands x {os.environ['INTERLEAVE']} rounds")
EOF_I

# --- each floor stage alone, in one process -------------------------------
echo "== acme-floor stages ($stage_iterations iterations, 1 and 2 threads)" >&2
for t in 1 2; do
    "$floor" stages "$acme" --iterations "$stage_iterations" --threads "$t" \
        >"$out/stages-$t.json" 2>"$out/stages-$t.txt" || die "acme-floor stages --threads $t failed"
    cat "$out/stages-$t.txt" >&2
done

# --- peak memory ----------------------------------------------------------
rss_of() { # rss_of NAME CMD...: max RSS (kB) per run, one per line
    local name=$1; shift
    : >"$out/rss-$name.txt"
    for ((i = 0; i < rss_runs; i++)); do
        /usr/bin/time -v "$@" 2>"$out/time-v.tmp" >/dev/null
        awk -F': ' '/Maximum resident set size/ {print $2}' "$out/time-v.tmp" >>"$out/rss-$name.txt"
    done
    mv "$out/time-v.tmp" "$out/time-v-$name.txt"
}
echo "== /usr/bin/time -v ($rss_runs runs each)" >&2
rss_of mxkeys "$mxkeys" --config "$config" check
[[ -n $old ]] && rss_of mxkeys-old "$old" --config "$config" check
rss_of floor "$floor" der "$acme"
for i in "${!pythons[@]}"; do
    rss_of "baseline-$i" "${pythons[$i]}" "${baseline_args[@]}"
done

# --- summary --------------------------------------------------------------
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
if [[ -n ${MXKEYS:-} ]]; then
    rev=${MXKEYS_REV:-"$MXKEYS (set MXKEYS_REV to name its source)"}
else
    rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n $(git -C "$repo" status --porcelain -- src providers Cargo.toml Cargo.lock 2>/dev/null) ]]; then
        rev="$rev + uncommitted changes"
    fi
fi
busy_after=$(busy_pct)
if [[ -n $old ]]; then
    old_rev=${MXKEYS_OLD_REV:-"$old (set MXKEYS_OLD_REV to name its source)"}
    old_ver=$("$old" --version 2>/dev/null | head -1)
fi
SIZE=$size COUNT=$count OUT=$out OLD_REV=${old_rev:-} OLD_VER=${old_ver:-} CPU=$cpu MEM=$mem NPROC=$(nproc) REV=$rev \
QUIET="idle before timing: $quiet (${busy}% busy); ${busy_after}% busy after" \
MXVER=$("$mxkeys" --version 2>/dev/null | head -1) RUSTC=$(rustc --version 2>/dev/null) \
HFVER=$(hyperfine --version | awk '{print $2}') KERNEL=$(uname -r) \
"$PYTHON" - <<'EOF' | tee "$out/summary.txt"
import json, os, statistics

out = os.environ["OUT"]
size = int(os.environ["SIZE"])
with open(os.path.join(out, "hyperfine.json")) as f:
    results = {r["command"]: r for r in json.load(f)["results"]}
with open(os.path.join(out, "baselines.txt")) as f:
    baselines = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
old = "mxkeys check (MXKEYS_OLD)" if "mxkeys check (MXKEYS_OLD)" in results else None

def rss(name):
    with open(os.path.join(out, f"rss-{name}.txt")) as f:
        return [int(line) * 1024 for line in f if line.strip()]

def ms(s):
    return f"{s * 1000:.2f} ms" if abs(s) < 0.01 else f"{s * 1000:.1f} ms"

def mb(b):
    return f"{b / 1e6:.1f} MB"

small = size < 10_000_000

def verdict(ok, scale_goal=True):
    # The goals on Python, the floor and RSS / file are set for 10,000 entries
    # (~33 MB); on a small file they are printed for information only.
    if scale_goal and small:
        return "(info, goal set for 10,000 entries)"
    return "PASS" if ok else "FAIL"

# (hyperfine command name, peak RSS file name or None), in the order timed
rows = [("mxkeys check", "mxkeys")]
if old:
    rows.append((old, "mxkeys-old"))
rows += [(c, None) for c in results if c == "cat" or c.startswith("acme-floor ")]
rows += [(label, f"baseline-{i}") for i, label in baselines]
floor_rss = {"acme-floor der": "floor"}
print(f"machine:   {os.environ['NPROC']} x {os.environ['CPU']}, {os.environ['MEM']}, "
      f"Linux {os.environ['KERNEL']}, hyperfine {os.environ['HFVER']}")
print(f"mxkeys:    {os.environ['MXVER']} from {os.environ['REV']} ({os.environ['RUSTC']})")
if old:
    print(f"old:       {os.environ['OLD_VER']} from {os.environ['OLD_REV']}")
print(f"load:      {os.environ['QUIET']}")
print(f"file:      {os.environ['COUNT']} entries, {size} bytes ({mb(size)})")
for name, _ in rows:
    r = results[name]
    t = r["times"]
    q = statistics.quantiles(t, n=4)
    print(f"time:      {name}\n           median {ms(r['median'])}, mean {ms(r['mean'])} "
          f"± {ms(r['stddev'])}, min {ms(r['min'])}, max {ms(r['max'])}, "
          f"IQR {ms(q[0])}..{ms(q[2])}, {len(t)} runs; user {ms(r['user'])}, sys {ms(r['system'])}")
peaks = {}
for name, f in [(n, f) for n, f in rows if f] + list(floor_rss.items()):
    r = rss(f)
    peaks[name] = max(r)
    print(f"peak RSS:  {name}: max {mb(max(r))}, median {mb(statistics.median(r))} "
          f"({len(r)} runs) = {max(r) / size:.2f}x file size")

# The floor, stage by stage: each acme-floor command includes the ones before.
med = {name: results[name]["median"] for name, _ in rows}
prev, prev_t = None, 0.0
parts = []
for c in ("cat", "acme-floor read", "acme-floor parse", "acme-floor base64", "acme-floor der"):
    short = c.replace("acme-floor ", "")
    parts.append(f"{short} {ms(med[c])}" if prev is None or c == "acme-floor read"
                 else f"{short} {'+' if med[c] >= prev_t else '-'}{ms(abs(med[c] - prev_t))}")
    prev, prev_t = c, med[c]
print("floor:     process medians: " + ", ".join(parts)
      + f"; der on 2 threads {ms(med['acme-floor der --threads 2'])}")
for t in (1, 2):
    with open(os.path.join(out, f"stages-{t}.json")) as f:
        st = json.load(f)
    line = ", ".join(f"{k} {st['stages'][k]['median_ms']:.2f} ms"
                     for k in ("read", "parse", "base64", "pem", "der"))
    print(f"stages:    in one process, {t} thread(s) for base64/pem/der, medians of "
          f"{st['iterations']}: {line}; sum {st['total_median_ms']:.1f} ms")

m = med["mxkeys check"]
for name, _ in rows[1:]:
    print(f"ratio:     mxkeys / {name} = {m / med[name]:.2f} (hyperfine medians)")
with open(os.path.join(out, "interleaved.json")) as f:
    inter = json.load(f)
for name, _ in rows:
    t = inter[name]
    print(f"interleaved: {name}: median {ms(statistics.median(t))}, min {ms(min(t))}, {len(t)} rounds")
# The verdicts on ratios use the interleaved medians.
med = {name: statistics.median(inter[name]) for name, _ in rows}
m = med["mxkeys check"]
for name, _ in rows[1:]:
    print(f"ratio:     mxkeys / {name} = {m / med[name]:.2f} (interleaved medians)")
pys = [label for _, label in baselines]
best = min(pys, key=lambda label: med[label])
r_py = m / med[best]
r_floor = m / med["acme-floor der"]
r_floor2 = m / med["acme-floor der --threads 2"]
mx_rss = peaks["mxkeys check"]
print(f"verdict:   time vs Python {verdict(r_py <= 0.5)}: mxkeys {ms(m)} / fastest baseline "
      f"{ms(med[best])} = {r_py:.2f} (goal <= 0.5)")
print(f"verdict:   time vs floor {verdict(r_floor <= 1.5)}: mxkeys {ms(m)} / acme-floor der "
      f"{ms(med['acme-floor der'])} = {r_floor:.2f} (goal <= 1.5); "
      f"/ 2-thread floor {ms(med['acme-floor der --threads 2'])} = {r_floor2:.2f}")
print(f"verdict:   memory {verdict(mx_rss <= 1.2 * size)}: mxkeys peak RSS {mb(mx_rss)} / file "
      f"{mb(size)} = {mx_rss / size:.2f} (goal <= 1.2)")
if old:
    r_old = m / med[old]
    old_rss = peaks[old]
    print(f"verdict:   no time regression {verdict(r_old <= 1.05, False)}: mxkeys {ms(m)} / old "
          f"{ms(med[old])} = {r_old:.2f} (goal <= 1.05)")
    print(f"verdict:   no memory regression {verdict(mx_rss <= 1.05 * old_rss, False)}: mxkeys peak "
          f"RSS {mb(mx_rss)} / old {mb(old_rss)} = {mx_rss / old_rss:.2f} (goal <= 1.05)")
if small:
    print("note:      the goals against Python, the floor and the file size are set for the "
          "10,000-entry (~33 MB) file; on a small file fixed process costs dominate, and the goal "
          "that counts is no regression (MXKEYS_OLD)")
EOF
echo "== results in $out" >&2
