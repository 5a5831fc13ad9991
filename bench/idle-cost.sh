#!/usr/bin/env bash
# Idle cost of `mxkeys run`: memory and wake-ups of a daemon watching three
# sources (a Traefik acme.json, a Certbot directory, a lego directory) with
# `[metrics] listen` on, while nothing changes.
# See BENCHMARKS.md ("Idle cost of `mxkeys run`") for the figures.
#
# usage: bench/idle-cost.sh [--window S] [--strace-window S] [--out DIR] [--no-build]
#
#   --window S         idle window for RSS and context switches (default 60)
#   --strace-window S  then `strace -f -tt` over this many seconds (default 60;
#                      0 skips it); strace is installed with apt when missing
#   --out DIR          default target/bench/idle-cost
#   --no-build         use the existing target/release binaries
#
# MXKEYS selects another binary (default: a private copy of
# target/release/mxkeys, so a rebuild during the run does not matter).
#
# Measured: VmRSS and VmHWM from /proc/PID/status; voluntary and
# nonvoluntary context switches of every thread (/proc/PID/task/*/status)
# before and after the window; then every syscall of every thread with its
# time (strace -f -tt), summarised per thread: how often it woke and when.
set -euo pipefail

window=60
strace_window=60
out=
build=1
die() { echo "idle-cost: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --window) window=${2:?}; shift 2 ;;
        --strace-window) strace_window=${2:?}; shift 2 ;;
        --out) out=${2:?}; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
out=${out:-$repo/target/bench/idle-cost}
rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [[ $build -eq 1 ]]; then
    cargo build --release -p mxkeys -p mxkeys-bench
fi
if [[ -z ${MXKEYS:-} ]]; then
    cp "$repo/target/release/mxkeys" "$out/mxkeys"
    MXKEYS=$out/mxkeys
fi
gen=$repo/target/release/gen-acme-json
command -v openssl >/dev/null || die "openssl is needed"
if [[ $strace_window -gt 0 ]] && ! command -v strace >/dev/null; then
    sudo=; [[ $(id -u) -ne 0 ]] && sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq strace >/dev/null
fi

# --- sources --------------------------------------------------------------
# acme.json: 100 entries from the ingest benchmark's generator (the target
# name's newest valid certificate is among them).
mkdir -p "$out/traefik" "$out/letsencrypt/live" "$out/letsencrypt/archive/mail.example.com" \
    "$out/letsencrypt/renewal" "$out/lego/certificates" "$out/out" "$out/state"
"$gen" --count 100 "$out/traefik/acme.json" >"$out/generate.txt" 2>&1
rm -f "$out/traefik/mxkeys.toml"
# Certbot and lego: a small CA and a leaf each, made with openssl.
cd "$out"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=idle bench CA" -keyout ca.key -out ca.pem \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
leaf() { # leaf NAME DAYS PREFIX
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
        -keyout "$3.key" -out "$3.csr" 2>/dev/null
    printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$1" >"$3.ext"
    openssl x509 -req -in "$3.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$2" \
        -extfile "$3.ext" -out "$3.pem" 2>/dev/null
}
leaf mail.example.com 30 certbot
a=letsencrypt/archive/mail.example.com
cp certbot.pem $a/cert1.pem; cp ca.pem $a/chain1.pem; cat certbot.pem ca.pem >$a/fullchain1.pem
cp certbot.key $a/privkey1.pem; chmod 600 $a/privkey1.pem
mkdir -p letsencrypt/live/mail.example.com
for f in cert chain fullchain privkey; do
    ln -s "../../archive/mail.example.com/${f}1.pem" "letsencrypt/live/mail.example.com/$f.pem"
done
leaf mail.example.com 20 lego
cat lego.pem ca.pem >lego/certificates/mail.example.com.crt
cp ca.pem lego/certificates/mail.example.com.issuer.crt
cp lego.key lego/certificates/mail.example.com.key; chmod 600 lego/certificates/mail.example.com.key
echo '{"domain": "mail.example.com"}' >lego/certificates/mail.example.com.json
cd "$repo"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$out/mxkeys.toml" <<EOF
hostname = "mail.example.com"
state_dir = "$out/state"

[metrics]
listen = "127.0.0.1:$port"

[[source]]
type = "traefik"
path = "$out/traefik/acme.json"

[[source]]
type = "certbot"
path = "$out/letsencrypt"

[[source]]
type = "lego"
path = "$out/lego"

[[target]]
name = "postfix"
combined = "$out/out/chain.pem"
EOF
"$MXKEYS" --config "$out/mxkeys.toml" check >"$out/check.out" 2>&1 \
    || { cat "$out/check.out" >&2; die "mxkeys check failed"; }

# --- the daemon -------------------------------------------------------------
env -u NOTIFY_SOCKET -u WATCHDOG_USEC -u MXKEYS_CONFIG \
    "$MXKEYS" --config "$out/mxkeys.toml" run >"$out/daemon.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
healthz() { python3 - "$port" <<'EOF'
import sys, urllib.request
try:
    print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=2).status)
except Exception as e:
    print(getattr(e, "code", 0))
EOF
}
for _ in $(seq 100); do [[ $(healthz) == 200 ]] && break; sleep 0.1; done
[[ $(healthz) == 200 ]] || { cat "$out/daemon.log" >&2; die "the daemon is not healthy"; }
sleep 5 # let start-up settle (first reconcile done, threads parked)

field() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
switches() { # per thread: tid name voluntary nonvoluntary
    local t
    for t in /proc/"$pid"/task/*; do
        printf '%s %s %s %s\n' "${t##*/}" "$(awk '$1 == "Name:" {print $2}' "$t/status")" \
            "$(awk '$1 == "voluntary_ctxt_switches:" {print $2}' "$t/status")" \
            "$(awk '$1 == "nonvoluntary_ctxt_switches:" {print $2}' "$t/status")"
    done
}
switches >"$out/ctxt-before.txt"
rss_before=$(field "$pid" VmRSS)
echo "== idle window: $window s" >&2
sleep "$window"
switches >"$out/ctxt-after.txt"
rss_after=$(field "$pid" VmRSS)
hwm=$(field "$pid" VmHWM)
threads=$(field "$pid" Threads)

if [[ $strace_window -gt 0 ]]; then
    echo "== strace -f -tt over $strace_window s" >&2
    timeout -s INT "$strace_window" strace -f -tt -qq -p "$pid" -o "$out/strace.txt" || true
fi
# The metrics endpoint answers (after the measurement, so it is not counted).
python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://127.0.0.1:$port/metrics').read().decode())" \
    >"$out/metrics.txt"
kill -TERM "$pid"; wait "$pid" || true
trap - EXIT

WINDOW=$window SWINDOW=$strace_window OUT=$out RSS0=$rss_before RSS1=$rss_after HWM=$hwm \
THREADS=$threads MXVER=$("$MXKEYS" --version | head -1) \
REV="$(git rev-parse --short HEAD)$([[ -n $(git status --porcelain -- src Cargo.toml Cargo.lock) ]] && echo ' + uncommitted changes')" \
python3 - <<'EOF' | tee "$out/summary.txt"
import collections, os, re
out = os.environ["OUT"]
w = float(os.environ["WINDOW"])
def load(name):
    d = {}
    for line in open(os.path.join(out, name)):
        tid, comm, v, nv = line.split()
        d[tid] = (comm, int(v), int(nv))
    return d
b, a = load("ctxt-before.txt"), load("ctxt-after.txt")
print(f"mxkeys: {os.environ['MXVER']} ({os.environ['REV']})")
print(f"memory: VmRSS {int(os.environ['RSS0'])/1024:.1f} MiB before, {int(os.environ['RSS1'])/1024:.1f} MiB after; "
      f"VmHWM {int(os.environ['HWM'])/1024:.1f} MiB; {os.environ['THREADS']} threads")
tv = tn = 0
print(f"context switches over {w:.0f} s, per thread (voluntary + nonvoluntary):")
for tid in sorted(set(a) | set(b), key=int):
    if tid not in a:
        # Its last switches (going to sleep, exiting) are not visible.
        print(f"  {tid} {b[tid][0]}: exited during the window (an idle pool thread timing out)")
        continue
    comm, v1, n1 = a[tid]
    _, v0, n0 = b.get(tid, (comm, 0, 0))
    tv += v1 - v0; tn += n1 - n0
    note = "" if tid in b else " (started during the window)"
    print(f"  {tid} {comm}: {v1 - v0} + {n1 - n0}{note}")
print(f"total: {tv} voluntary + {tn} nonvoluntary = {(tv + tn) / w:.2f} per second")
trace = os.path.join(out, "strace.txt")
if os.path.exists(trace):
    per = collections.defaultdict(list)
    calls = collections.Counter()
    for line in open(trace):
        m = re.match(r"(\d+)\s+(\d+):(\d+):([\d.]+)\s+(?:<\.\.\. )?(\w+)", line)
        if not m:
            continue
        tid, h, mi, s, call = m.groups()
        if "resumed>" in line or "<unfinished" not in line:
            per[tid].append(int(h) * 3600 + int(mi) * 60 + float(s))
            calls[(tid, call)] += 1
    print(f"strace over {os.environ['SWINDOW']} s: syscalls completed per thread")
    for tid, ts in sorted(per.items()):
        gaps = [y - x for x, y in zip(ts, ts[1:])]
        top = ", ".join(f"{c} x{n}" for (t, c), n in calls.most_common() if t == tid)
        g = f"; gaps min {min(gaps):.3f} s, max {max(gaps):.3f} s" if gaps else ""
        print(f"  {tid}: {len(ts)} syscalls ({top}){g}")
    if not per:
        print("  none: no thread made a system call")
EOF
