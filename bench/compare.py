#!/usr/bin/env python3
"""Before/after comparison of two mxkeys binaries on the held benchmarks.

Run through bench/compare.sh (which finds the tools and says what it needs);
see that script and BENCHMARKS.md ("Before and after a change") for usage.

The binaries are measured interleaved in the same run, so that a machine
that gets busier or quieter during the run moves both alike:

  ingest  `mxkeys check` on a generated Traefik acme.json (10,000 entries by
          default): runs alternate A B, B A, A B, ...; wall time of each run
          and its peak RSS (from wait4, the child's own rusage).
  reload  change-to-reload latency of `mxkeys run` (default settings), both
          producers of bench/reload_latency.py (Traefik rewrites acme.json in
          place; Certbot re-points its four live/ symlinks one at a time):
          one daemon per binary, both running, each round updates A's source
          then B's (B then A on odd rounds) and waits for that reload.
  idle    the idle cost of bench/idle-cost.sh: a daemon per binary watching
          the same three unchanging sources (100-entry acme.json, Certbot,
          lego) with [metrics] on; both started together, then VmRSS, VmHWM
          and every thread's context switches over the same window.

Prints a Markdown table, one row per figure: before, after, after/before.
"""

import argparse
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in bench/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reload_latency import NAME, Reloads, acme_json, make_certs, pct, sh, write_archive  # noqa: E402

# Daemons must not talk to a systemd that started this script.
DAEMON_ENV = {k: v for k, v in os.environ.items()
              if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "MXKEYS_CONFIG")}


def log(msg):
    print(f"compare: {msg}", file=sys.stderr, flush=True)


def busy_pct(seconds=1.0):
    """CPU busy % of the whole machine over `seconds` (from /proc/stat)."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]
    t0, i0 = read()
    time.sleep(seconds)
    t1, i1 = read()
    return 100 * ((t1 - t0) - (i1 - i0)) / max(1, t1 - t0)


def run_timed(argv):
    """Wall seconds and peak RSS (bytes) of one run; fails on a non-zero exit."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, rusage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"compare: {' '.join(argv)} exited {p.returncode}")
    return wall, rusage.ru_maxrss * 1024


def order(i, sides):
    """A B on even rounds, B A on odd ones."""
    return sides if i % 2 == 0 else sides[::-1]


# --- ingest -----------------------------------------------------------------

def bench_ingest(bins, gen, out, count, runs, warmup):
    d = os.path.join(out, f"ingest-{count}")
    os.makedirs(d, exist_ok=True)
    acme = os.path.join(d, "acme.json")
    log(f"ingest: generating {count} entries into {acme}")
    sh(gen, "--count", str(count), "--target", NAME, acme)
    config = os.path.join(d, "mxkeys.toml")
    argv = {s: [b, "--config", config, "check"] for s, b in bins.items()}
    for s in bins:
        run_timed(argv[s])  # exits unless `check` succeeds
    for i in range(warmup):
        for s in order(i, list(bins)):
            run_timed(argv[s])
    times = {s: [] for s in bins}
    rss = {s: [] for s in bins}
    log(f"ingest: {runs} runs of each, interleaved")
    for i in range(runs):
        for s in order(i, list(bins)):
            t, r = run_timed(argv[s])
            times[s].append(t * 1000)
            rss[s].append(r / 1e6)
    rows = []
    q = {s: statistics.quantiles(times[s], n=4) for s in bins}
    rows.append((f"ingest {count} (`check`)", "median ms", *(statistics.median(times[s]) for s in bins)))
    rows.append(("", "IQR low ms", *(q[s][0] for s in bins)))
    rows.append(("", "IQR high ms", *(q[s][2] for s in bins)))
    rows.append(("", "min ms", *(min(times[s]) for s in bins)))
    rows.append(("", "peak RSS max MB", *(max(rss[s]) for s in bins)))
    return rows, f"ingest: {count} entries, {os.path.getsize(acme) / 1e6:.1f} MB, {runs} runs each"


# --- reload latency -----------------------------------------------------------

class Watched:
    """One `mxkeys run` on its own source, updated the way `kind` does it."""

    def __init__(self, kind, binary, d, pairs):
        self.kind, self.d, self.pairs = kind, d, pairs
        self.gen = 1
        os.makedirs(d)
        if kind == "traefik":
            self.acme = f"{d}/acme.json"
            with open(self.acme, "wb") as f:
                f.write(acme_json(pairs[0]))
            source = f'type = "traefik"\npath = "{self.acme}"\n'
        else:
            self.live, self.archive = f"{d}/live/{NAME}", f"{d}/archive/{NAME}"
            os.makedirs(self.live)
            os.makedirs(self.archive)
            write_archive(self.archive, 1, pairs[0])
            for k in ("cert", "privkey", "chain", "fullchain"):
                os.symlink(f"../../archive/{NAME}/{k}1.pem", f"{self.live}/{k}.pem")
            source = f'type = "certbot"\npath = "{d}"\n'
        self.log = f"{d}/reloads.log"
        with open(f"{d}/mxkeys.toml", "w") as f:
            f.write(f'state_dir = "{d}/state"\n[[source]]\n{source}[[target]]\nname = "bench"\n'
                    f'domains = ["{NAME}"]\ncombined = "{d}/out/combined.pem"\n'
                    f'reload = ["sh", "-c", "date +%s.%N >> {self.log}"]\n')
        self.reloads = Reloads(self.log)
        self.proc = subprocess.Popen([binary, "--config", f"{d}/mxkeys.toml", "-q", "run"],
                                     env=DAEMON_ENV, stderr=open(f"{d}/daemon.log", "wb"))

    def update(self):
        """Writes the next certificate as the producer does; the last write's time."""
        self.gen += 1
        pair = self.pairs[self.gen % len(self.pairs)]
        if self.kind == "traefik":
            data = acme_json(pair)
            with open(self.acme, "r+b") as f:  # in place, same inode
                f.truncate(0)
                f.write(data)
                f.flush()
        else:
            write_archive(self.archive, self.gen, pair)
            for k in ("cert", "privkey", "chain", "fullchain"):
                tmp = f"{self.live}/.{k}.tmp"
                os.symlink(f"../../archive/{NAME}/{k}{self.gen}.pem", tmp)
                os.replace(tmp, f"{self.live}/{k}.pem")
                time.sleep(0.01)
        return time.time()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def bench_reload(bins, out, rounds):
    d = os.path.join(out, "reload")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    log("reload: making certificates")
    pairs = make_certs(d, 4)
    rows = []
    for kind in ("traefik", "certbot"):
        daemons = {s: Watched(kind, b, f"{d}/{kind}-{s}", pairs) for s, b in bins.items()}
        try:
            for s, w in daemons.items():
                if w.reloads.wait_next(10) is None:
                    sys.exit(f"compare: reload {kind}: {s} did not install at start (see {w.d}/daemon.log)")
            time.sleep(1)
            lat = {s: [] for s in bins}
            log(f"reload: {kind}, {rounds} rounds, interleaved")
            for i in range(rounds):
                for s in order(i, list(bins)):
                    w = daemons[s]
                    last = w.update()
                    t = w.reloads.wait_next(5)
                    if t is None:
                        sys.exit(f"compare: reload {kind}: {s} round {i}: no reload within 5 s")
                    lat[s].append((t - last) * 1000)
                    time.sleep(0.15)
            time.sleep(0.5)
            extra = {s: w.reloads.count() - w.reloads.seen for s, w in daemons.items()}
        finally:
            for w in daemons.values():
                w.stop()
        rows.append((f"reload {kind}", "median ms", *(statistics.median(lat[s]) for s in bins)))
        rows.append(("", "p90 ms", *(pct(lat[s], 90) for s in bins)))
        rows.append(("", "p99 ms", *(pct(lat[s], 99) for s in bins)))
        rows.append(("", "max ms", *(max(lat[s]) for s in bins)))
        rows.append(("", "reloads beyond one per round", *(extra[s] for s in bins)))
    return rows, f"reload: {rounds} rounds per producer and binary"


# --- idle cost ----------------------------------------------------------------

def idle_sources(d, gen):
    """The three sources of bench/idle-cost.sh, in d; returns their config lines."""
    os.makedirs(f"{d}/traefik")
    sh(gen, "--count", "100", f"{d}/traefik/acme.json")
    os.remove(f"{d}/traefik/mxkeys.toml")
    ca_key, ca = f"{d}/ca.key", f"{d}/ca.pem"
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-days", "365", "-subj", "/CN=idle bench CA", "-keyout", ca_key, "-out", ca,
       "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")

    def leaf(days, prefix):
        p = f"{d}/{prefix}"
        sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-subj", f"/CN={NAME}", "-keyout", f"{p}.key", "-out", f"{p}.csr")
        with open(f"{p}.ext", "w") as f:
            f.write(f"subjectAltName=DNS:{NAME}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
        sh("openssl", "x509", "-req", "-in", f"{p}.csr", "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
           "-days", str(days), "-extfile", f"{p}.ext", "-out", f"{p}.pem")
        with open(f"{p}.pem") as c, open(f"{p}.key") as k, open(ca) as a:
            return c.read(), k.read(), a.read()

    cert, key, chain = leaf(30, "certbot")
    archive, live = f"{d}/letsencrypt/archive/{NAME}", f"{d}/letsencrypt/live/{NAME}"
    os.makedirs(archive)
    os.makedirs(live)
    os.makedirs(f"{d}/letsencrypt/renewal")
    for name, text in (("cert", cert), ("chain", chain), ("fullchain", cert + chain), ("privkey", key)):
        with open(f"{archive}/{name}1.pem", "w") as f:
            f.write(text)
        os.symlink(f"../../archive/{NAME}/{name}1.pem", f"{live}/{name}.pem")
    os.chmod(f"{archive}/privkey1.pem", 0o600)
    cert, key, chain = leaf(20, "lego")
    certs = f"{d}/lego/certificates"
    os.makedirs(certs)
    for name, text in ((".crt", cert + chain), (".issuer.crt", chain), (".key", key),
                       (".json", f'{{"domain": "{NAME}"}}\n')):
        with open(f"{certs}/{NAME}{name}", "w") as f:
            f.write(text)
    os.chmod(f"{certs}/{NAME}.key", 0o600)
    return (f'[[source]]\ntype = "traefik"\npath = "{d}/traefik/acme.json"\n\n'
            f'[[source]]\ntype = "certbot"\npath = "{d}/letsencrypt"\n\n'
            f'[[source]]\ntype = "lego"\npath = "{d}/lego"\n')


def free_port():
    # As bench/idle-cost.sh does: the port is only used by the daemon started next.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthz(port):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status
    except Exception as e:  # noqa: BLE001 - any failure means "not yet"
        return getattr(e, "code", 0)


def proc_status(pid, tid=None):
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def switches(pid):
    """Per thread id: voluntary + nonvoluntary context switches so far."""
    total = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            st = proc_status(pid, tid)
        except FileNotFoundError:
            continue
        total[tid] = int(st["voluntary_ctxt_switches"]) + int(st["nonvoluntary_ctxt_switches"])
    return total


def kb(value):
    return int(value.split()[0])


def bench_idle(bins, gen, out, window):
    d = os.path.join(out, "idle")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    log("idle: making the three sources")
    sources = idle_sources(f"{d}/sources", gen)
    procs, ports = {}, {}
    try:
        for s, b in bins.items():
            os.makedirs(f"{d}/{s}/out")
            ports[s] = free_port()
            config = f"{d}/{s}/mxkeys.toml"
            with open(config, "w") as f:
                f.write(f'hostname = "{NAME}"\nstate_dir = "{d}/{s}/state"\n\n'
                        f'[metrics]\nlisten = "127.0.0.1:{ports[s]}"\n\n{sources}\n'
                        f'[[target]]\nname = "postfix"\ncombined = "{d}/{s}/out/chain.pem"\n')
            sh(b, "--config", config, "check")
            procs[s] = subprocess.Popen([b, "--config", config, "run"], env=DAEMON_ENV,
                                        stdout=subprocess.DEVNULL,
                                        stderr=open(f"{d}/{s}/daemon.log", "wb"))
        for s in bins:
            deadline = time.time() + 10
            while healthz(ports[s]) != 200:
                if time.time() > deadline:
                    sys.exit(f"compare: idle: {s} is not healthy (see {d}/{s}/daemon.log)")
                time.sleep(0.1)
        time.sleep(5)  # as idle-cost.sh: first reconcile done, threads parked
        before = {s: (switches(p.pid), proc_status(p.pid)) for s, p in procs.items()}
        log(f"idle: {window} s window, both daemons at once")
        time.sleep(window)
        after = {s: (switches(p.pid), proc_status(p.pid)) for s, p in procs.items()}
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    rows = []

    def ctx(s):
        # Threads that exited during the window drop out (their last switches are not visible).
        b, a = before[s][0], after[s][0]
        return sum(a[t] - b.get(t, 0) for t in a)
    rows.append(("idle `run`", "VmRSS after window MiB", *(kb(after[s][1]["VmRSS"]) / 1024 for s in bins)))
    rows.append(("", "VmHWM MiB", *(kb(after[s][1]["VmHWM"]) / 1024 for s in bins)))
    rows.append(("", "threads", *(int(after[s][1]["Threads"]) for s in bins)))
    rows.append(("", f"context switches in {window} s", *(ctx(s) for s in bins)))
    return rows, f"idle: {window} s window"


# --- main -----------------------------------------------------------------------

def fmt(v):
    if isinstance(v, int):
        return str(v)
    return f"{v:.1f}"


def describe(path):
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()
    return f"{path} ({version}, sha256 {digest}…)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--gen", required=True, help="gen-acme-json binary")
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="ingest,reload,idle")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--idle-window", type=int, default=60)
    a = ap.parse_args()
    bins = {"before": os.path.abspath(a.before), "after": os.path.abspath(a.after)}
    only = set(a.only.split(","))
    unknown = only - {"ingest", "reload", "idle"}
    if unknown:
        sys.exit(f"compare: --only: unknown benchmark(s) {', '.join(sorted(unknown))}")
    os.makedirs(a.out, exist_ok=True)
    load0, busy0 = os.getloadavg()[0], busy_pct()
    started = time.time()
    rows, notes = [], []
    if "ingest" in only:
        r, n = bench_ingest(bins, a.gen, a.out, a.count, a.runs, a.warmup)
        rows += r
        notes.append(n)
    if "reload" in only:
        r, n = bench_reload(bins, a.out, a.rounds)
        rows += r
        notes.append(n)
    if "idle" in only:
        r, n = bench_idle(bins, a.gen, a.out, a.idle_window)
        rows += r
        notes.append(n)
    load1, busy1 = os.getloadavg()[0], busy_pct()
    print(f"before: {describe(bins['before'])}")
    print(f"after:  {describe(bins['after'])}")
    print(f"machine: {os.cpu_count()} CPUs; before the run {busy0:.0f}% busy (load {load0:.1f}), "
          f"after it {busy1:.0f}% busy (load {load1:.1f}); {time.time() - started:.0f} s")
    for n in notes:
        print(f"         {n}")
    print()
    print("| benchmark | figure | before | after | after / before |")
    print("|---|---|---:|---:|---:|")
    for name, figure, b, af in rows:
        ratio = f"{af / b:.2f}" if b else ("same" if af == b else "–")
        print(f"| {name} | {figure} | {fmt(b)} | {fmt(af)} | {ratio} |")


if __name__ == "__main__":
    main()
