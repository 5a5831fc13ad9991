#!/usr/bin/env python3
"""Change-to-reload latency of `mxkeys run` while its other tasks wait.

The daemon holds a Traefik acme.json source, an `acme` source ordering from
pebble by DNS-01, and a `[dkim]` domain. Both DNS waits go to a slow DNS
server (a UDP socket of this script that never answers), so an ACME order
waits in its propagation check and a DKIM key waits for its record for the
whole run (propagation_timeout 10m). Meanwhile acme.json is rewritten in
place ROUNDS times (one rewrite, then wait up to 5 s for its reload, as
bench/reload_latency.py does); the latency is from the last write to the
start of the reload command. A rewrite with no reload within 5 s is missed.

Usage: bench/reload_under_load.py [--rounds 20] --mxkeys BIN [--mxkeys BIN2 ...]
Prints a table per binary: first install seen, order and DKIM wait seen,
reloads, missed rewrites, median, p90, p99, max in ms.
Needs pebble and openssl. Uses only loopback and a temporary directory.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reload_latency import NAME, Reloads, acme_json, latency_cells, make_certs, sh  # noqa: E402


def free_port():
    """A loopback port free for TCP and UDP now (benchmark only; the tests
    use their port pool)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue


class SlowDns:
    """Receives DNS queries and never answers; remembers the names asked."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.asked = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                data, _ = self.sock.recvfrom(4096)
            except OSError:
                return
            self.asked.append(data.lower())

    def saw(self, label):
        return any(label in q for q in list(self.asked))


def start_pebble(d, dns_port):
    """pebble with a localhost certificate of a CA made here; (url, ca, proc)."""
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-keyout", f"{d}/https-ca.key", "-out", f"{d}/https-ca.pem", "-days", "30",
       "-subj", "/CN=bench pebble root", "-addext", "basicConstraints=critical,CA:TRUE",
       "-addext", "keyUsage=critical,keyCertSign")
    sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", f"{d}/https-key.pem", "-out", f"{d}/https.csr", "-subj", "/CN=localhost")
    with open(f"{d}/ext", "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    sh("openssl", "x509", "-req", "-in", f"{d}/https.csr", "-CA", f"{d}/https-ca.pem",
       "-CAkey", f"{d}/https-ca.key", "-CAcreateserial", "-days", "30",
       "-out", f"{d}/https-cert.pem", "-extfile", f"{d}/ext")
    listen, mgmt, http, tls = free_port(), free_port(), free_port(), free_port()
    with open(f"{d}/pebble.json", "w") as f:
        json.dump({"pebble": {
            "listenAddress": f"127.0.0.1:{listen}", "managementListenAddress": f"127.0.0.1:{mgmt}",
            "certificate": f"{d}/https-cert.pem", "privateKey": f"{d}/https-key.pem",
            "httpPort": http, "tlsPort": tls, "ocspResponderURL": "",
            "externalAccountBindingRequired": False, "certificateValidityPeriod": 7776000}}, f)
    env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0",
               PEBBLE_AUTHZREUSE="0")
    log = open(f"{d}/pebble.log", "w")
    proc = subprocess.Popen(["pebble", "-config", f"{d}/pebble.json", "-dnsserver",
                             f"127.0.0.1:{dns_port}"], stdout=log, stderr=log, env=env)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", listen), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return f"https://127.0.0.1:{listen}/dir", f"{d}/https-ca.pem", proc


def wait(cond, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def run(mxkeys, rounds, pairs, tmp, tag):
    d = f"{tmp}/{tag}"
    os.makedirs(d)
    dns = SlowDns()
    url, ca, pebble = start_pebble(d, dns.port)
    log = f"{d}/reloads.log"
    with open(f"{d}/acme.json", "wb") as f:
        f.write(acme_json(pairs[0]))
    with open(f"{d}/mxkeys.toml", "w") as f:
        f.write(f'''state_dir = "{d}/state"
[acme]
directory = "{url}"
ca_bundle = "{ca}"
[dns.slow]
type = "manual"
zone = "example.com"
nameservers = ["127.0.0.1:{dns.port}"]
propagation_interval = "1s"
propagation_timeout = "10m"
[dkim]
domains = ["example.com"]
key_dir = "{d}/dkim-keys"
dns = "slow"
signer = "opendkim"
signer_dir = "{d}/signer"
[[source]]
type = "traefik"
path = "{d}/acme.json"
[[source]]
type = "acme"
name = "ordered"
domains = ["acme.example.com"]
challenge = "dns-01"
dns = "slow"
[[target]]
name = "bench"
domains = ["{NAME}"]
combined = "{d}/out/combined.pem"
reload = ["sh", "-c", "date +%s.%N >> {log}"]
''')
    out = open(f"{d}/daemon.log", "w")
    daemon = subprocess.Popen([mxkeys, "--config", f"{d}/mxkeys.toml", "run"],
                              stdout=out, stderr=out)
    reloads = Reloads(log)
    try:
        installed = reloads.wait_next(10) is not None
        # Both waits under way: the order asks for its TXT record, the DKIM
        # key for its own (the sequential daemon never gets that far).
        acme_waits = wait(lambda: dns.saw(b"\x0f_acme-challenge"), 20)
        dkim_waits = wait(lambda: dns.saw(b"\x0a_domainkey"), 20)
        time.sleep(0.5)
        reloads.seen = baseline = reloads.count()
        lat, missed = [], 0
        for i in range(1, rounds + 1):
            with open(f"{d}/acme.json", "r+b") as f:  # in place, same inode
                f.truncate(0)
                f.write(acme_json(pairs[i % len(pairs)]))
                f.flush()
            last_write = time.time()
            t = reloads.wait_next(5)
            if t is None:
                missed += 1
            else:
                lat.append((t - last_write) * 1000)
            time.sleep(0.15)
        time.sleep(0.5)
        total = reloads.count() - baseline
        return installed, acme_waits, dkim_waits, lat, missed, total
    finally:
        daemon.terminate()
        try:
            daemon.wait(90)
        except subprocess.TimeoutExpired:
            daemon.kill()
        pebble.terminate()
        pebble.wait(10)
        dns.sock.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--mxkeys", action="append", required=True)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mxkeys-under-load-")
    try:
        pairs = make_certs(tmp, 4)
        print("| binary | first install | order waiting | DKIM waiting | rewrites | "
              "reloads | missed | median ms | p90 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for n, binary in enumerate(args.mxkeys):
            installed, acme_w, dkim_w, lat, missed, total = run(
                os.path.abspath(binary), args.rounds, pairs, tmp, f"run{n}")
            yn = lambda b: "yes" if b else "no"  # noqa: E731
            stats = latency_cells(lat) if lat else "- | - | - | -"
            print(f"| {binary} | {yn(installed)} | {yn(acme_w)} | {yn(dkim_w)} | {args.rounds} | "
                  f"{total} | {missed} | {stats} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
