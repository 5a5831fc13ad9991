#!/usr/bin/env python3
"""Change-to-reload latency of `mxkeys run`, beside a 2-second polling loop.

For each round, a source is updated the way its producer does it, and the
time from the producer's last write to the start of the reload command is
measured (the reload command appends `date +%s.%N` to a log). Two producers:

  traefik  acme.json rewritten in place: truncate, write (Traefik's way)
  certbot  a renewal: new archive files, then the four live/ symlinks
           re-pointed one at a time (Certbot's order: cert, privkey, chain,
           fullchain)

Side by side, docker-mailserver's method runs on the same files: a loop that
hashes them every 2 seconds and "reloads" when the hash changes.

Usage: bench/reload_latency.py [--rounds 100] [--mxkeys target/release/mxkeys]
Prints a table (median, p90, p99, max in ms) per producer and watcher.
Needs openssl and sha256sum. Uses only loopback and a temporary directory.
"""

import argparse
import base64
import json
import random
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

NAME = "mail.example.com"


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, **kw)


def make_certs(tmp, n):
    """n distinct (fullchain_pem, key_pem) pairs for NAME, from a small CA."""
    ca_key, ca_crt = f"{tmp}/ca.key", f"{tmp}/ca.crt"
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-keyout", ca_key, "-out", ca_crt, "-days", "90", "-subj", "/CN=bench CA",
       "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    pairs = []
    for i in range(n):
        key, csr, crt = f"{tmp}/l{i}.key", f"{tmp}/l{i}.csr", f"{tmp}/l{i}.crt"
        sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", key, "-out", csr, "-subj", f"/CN={NAME}")
        ext = f"{tmp}/ext{i}"
        with open(ext, "w") as f:
            f.write(f"subjectAltName=DNS:{NAME}\n")
        sh("openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
           "-CAcreateserial", "-days", str(60 + i), "-out", crt, "-extfile", ext)
        with open(crt) as c, open(ca_crt) as a, open(key) as k:
            pairs.append((c.read() + a.read(), k.read()))
    return pairs


def acme_json(pair):
    chain, key = pair
    return json.dumps({"le": {"Account": None, "Certificates": [{
        "domain": {"main": NAME},
        "certificate": base64.b64encode(chain.encode()).decode(),
        "key": base64.b64encode(key.encode()).decode(),
        "Store": "default"}]}}, indent=2).encode()


class Reloads:
    """Reads the timestamps a reload command appended to a log."""

    def __init__(self, path):
        self.path, self.seen = path, 0

    def count(self):
        try:
            with open(self.path) as f:
                return len(f.read().split())
        except FileNotFoundError:
            return 0

    def wait_next(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with open(self.path) as f:
                    stamps = f.read().split()
            except FileNotFoundError:
                stamps = []
            if len(stamps) > self.seen:
                self.seen = len(stamps)
                return float(stamps[-1])
            time.sleep(0.002)
        return None


def polling_loop(files, log):
    """docker-mailserver's check-for-changes: hash every 2 s, act on change."""
    script = (
        'prev=""; while true; do h=$(cat ' + " ".join(f"'{p}'" for p in files) +
        ' 2>/dev/null | sha256sum); if [ -n "$prev" ] && [ "$h" != "$prev" ]; then '
        f'date +%s.%N >> \'{log}\'; fi; prev="$h"; sleep 2; done')
    return subprocess.Popen(["sh", "-c", script])


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def latency_cells(values):
    """The table cells "median | p90 | p99 | max" of latencies in ms."""
    return (f"{statistics.median(values):.0f} | {pct(values, 90):.0f} | {pct(values, 99):.0f} | "
            f"{max(values):.0f}")


def run_scenario(kind, mxkeys, rounds, pairs, tmp):
    d = f"{tmp}/{kind}"
    os.makedirs(d)
    if kind == "traefik":
        source = f'type = "traefik"\npath = "{d}/acme.json"\n'
        with open(f"{d}/acme.json", "wb") as f:
            f.write(acme_json(pairs[0]))
        watched = [f"{d}/acme.json"]
    else:
        live, archive = f"{d}/live/{NAME}", f"{d}/archive/{NAME}"
        os.makedirs(live)
        os.makedirs(archive)
        write_archive(archive, 1, pairs[0])
        for kind_ in ("cert", "privkey", "chain", "fullchain"):
            os.symlink(f"../../archive/{NAME}/{kind_}1.pem", f"{live}/{kind_}.pem")
        source = f'type = "certbot"\npath = "{d}"\n'
        watched = [f"{live}/fullchain.pem", f"{live}/privkey.pem"]
    log, poll_log = f"{d}/reloads.log", f"{d}/poll.log"
    with open(f"{d}/mxkeys.toml", "w") as f:
        f.write(f'state_dir = "{d}/state"\n[[source]]\n{source}[[target]]\nname = "bench"\n'
                f'domains = ["{NAME}"]\ncombined = "{d}/out/combined.pem"\n'
                f'reload = ["sh", "-c", "date +%s.%N >> {log}"]\n')
    daemon = subprocess.Popen([mxkeys, "--config", f"{d}/mxkeys.toml", "-q", "run"])
    poller = polling_loop(watched, poll_log)
    reloads, polls = Reloads(log), Reloads(poll_log)
    try:
        if reloads.wait_next(10) is None:
            sys.exit(f"{kind}: mxkeys did not install at start")
        time.sleep(2.5)  # let the polling loop take its first hash
        lat, poll_lat, poll_early, extra = [], [], 0, 0
        for i in range(1, rounds + 1):
            pair = pairs[i % len(pairs)]
            # Every 10th round also samples the polling loop: let it hash the
            # current state first, so its next detection is this round's.
            sample = i % 10 == 0
            if sample:
                # A random phase against the loop's 2 s period.
                time.sleep(2.2 + random.uniform(0, 2))
                polls.seen = polls.count()
            if kind == "traefik":
                data = acme_json(pair)
                with open(f"{d}/acme.json", "r+b") as f:  # in place, same inode
                    f.truncate(0)
                    f.write(data)
                    f.flush()
                last_write = time.time()
            else:
                write_archive(archive, i + 1, pair)
                for kind_ in ("cert", "privkey", "chain", "fullchain"):
                    tmp_link = f"{live}/.{kind_}.tmp"
                    os.symlink(f"../../archive/{NAME}/{kind_}{i + 1}.pem", tmp_link)
                    os.replace(tmp_link, f"{live}/{kind_}.pem")
                    time.sleep(0.01)
                last_write = time.time()
            t = reloads.wait_next(5)
            if t is None:
                sys.exit(f"{kind}: round {i}: no reload within 5 s")
            lat.append((t - last_write) * 1000)
            if sample:
                p = polls.wait_next(5)
                if p is not None:
                    poll_lat.append((p - last_write) * 1000)
                    # Acting before the last write means acting mid-swap.
                    poll_early += p < last_write
            time.sleep(0.15)
        time.sleep(0.5)
        extra = reloads.count() - reloads.seen
        return lat, poll_lat, poll_early, extra
    finally:
        daemon.terminate()
        poller.terminate()
        daemon.wait(10)


def write_archive(archive, n, pair):
    chain, key = pair
    leaf_end = chain.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----\n")
    files = {"cert": chain[:leaf_end], "chain": chain[leaf_end:], "fullchain": chain, "privkey": key}
    for kind, text in files.items():
        with open(f"{archive}/{kind}{n}.pem", "w") as f:
            f.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--mxkeys", default="target/release/mxkeys")
    args = ap.parse_args()
    mxkeys = os.path.abspath(args.mxkeys)
    tmp = tempfile.mkdtemp(prefix="mxkeys-latency-")
    try:
        pairs = make_certs(tmp, 4)
        print("| producer | watcher | rounds | median ms | p90 ms | p99 ms | max ms | "
              "reloads beyond one per round | acted mid-swap |")
        print("|---|---|---|---|---|---|---|---|---|")
        for kind in ("traefik", "certbot"):
            lat, poll_lat, early, extra = run_scenario(kind, mxkeys, args.rounds, pairs, tmp)
            for who, v, ex, mid in (("mxkeys run", lat, extra, 0),
                                    ("2 s hash loop", poll_lat, "", early)):
                if v:
                    print(f"| {kind} | {who} | {len(v)} | {latency_cells(v)} | {ex} | {mid} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
