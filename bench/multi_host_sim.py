#!/usr/bin/env python3
"""Several MX hosts (issue 18): DNS writes, etcd writes and CA orders per day.

A model, not a measurement: no network, no mxkeys process. It replays a
year (day by day, event times in seconds) of what mxkeys' schedules make N
hosts do for M domains, and checks the orders against Let's Encrypt's
published rate limits (https://letsencrypt.org/docs/rate-limits/, "Last
updated: June 12, 2025", as read for this model):

  - New Orders per Account: 300 per 3 hours, refill 1 per 36 s;
  - New Certificates per Registered Domain: 50 per 7 days, refill 1 per
    202 min (renewals, the exact same identifier set, are exempt; also
    letsencrypt/boulder#7508);
  - New Certificates per Exact Set of Identifiers: 5 per 7 days, refill 1
    per 34 h (every order counts, renewals too);
  - New Registrations per IP: 10 per 3 hours (each host registers one
    account from its own address: never reached here).

Constants from mxkeys (src/acme/schedule.rs, src/config/dkim.rs):
renewal when a third of the lifetime is left (ARI: a random point of the
CA's window; modelled as 2/3 of the lifetime plus a uniform draw over the
next `--ari-window-days`); DKIM rotate_every 90 d, lead 2 d, drain 7 d,
revoke_hold 30 d (publish, p= revoke and delete: three DNS writes per key);
dns-01: one add and one remove per name per order; TLSA per renewal: with
a new key an add and (once served) a remove per owner name, with
reuse_key none; MTA-STS/TLS-RPT: one deterministic value, written only
when the policy changes (none here).

Scenarios:
  a) per-host names, no cluster: host h orders mx<h>.<provider> for itself
     (one registered domain for all hosts); every host signs every domain
     with its own DKIM selectors ({host} in the template).
  a') the mistake [cluster] prevents: every host orders the shared names
     mx.<domain> on its own (no coordination).
  b) shared names through etcd: one order per mx.<domain>, placed by the
     host that wins the job's lock; one shared DKIM key set.

etcd writes are Raft proposals: a campaign is a transaction (put-if-absent
on lock/JOB) proposed whether it wins or not, so a host first reads the
lock and campaigns only when it is free (cluster::campaign_if_free): per
due job one host campaigns (--campaigns) and the others only read; a
result put_fenced; a resign (delete). Shared DKIM is one job (`dkim`) whose
leader keeps its lock: a new key costs the sealed key and the book, every
other transition the book; each follower's DKIM pass (at least once a
minute) reads the lock and the book. Lease keep-alives are answered by the leader without a
Raft proposal (etcd 3.4 without lease checkpointing) and are counted apart.

Usage: bench/multi_host_sim.py [--hosts 100] [--domains 1000] [--days 365]
       [--lifetime-days 90] [--reuse-key] [--seed 1]
Pure Python 3 standard library; deterministic for a seed.
"""

import argparse
import heapq
import random
from collections import defaultdict

DAY = 86_400
HOUR = 3_600


class Bucket:
    """A token bucket as Let's Encrypt's limits work: `capacity` tokens,
    one more every `refill` seconds. take(t) returns when the request can
    go (t itself, or later when the bucket is empty)."""

    def __init__(self, capacity, refill):
        self.capacity = capacity
        self.refill = refill
        self.tokens = float(capacity)
        self.at = 0.0

    def take(self, t):
        t = max(t, self.at)
        self.tokens = min(self.capacity, self.tokens + (t - self.at) / self.refill)
        self.at = t
        if self.tokens >= 1:
            self.tokens -= 1
            return t
        wait = (1 - self.tokens) * self.refill
        self.at = t + wait
        self.tokens = 0.0
        return t + wait


class Tally:
    """Per-day counters of one scenario."""

    def __init__(self, days):
        self.days = days
        self.c = defaultdict(lambda: [0] * days)

    def add(self, what, t, n=1):
        d = int(t // DAY)
        if 0 <= d < self.days:
            self.c[what][d] += n

    def first(self, what):
        return self.c[what][0] if what in self.c else 0

    def peak(self, what):
        return max(self.c[what]) if what in self.c else 0

    def steady(self, what):
        """Mean per day after the first day (the start-up burst)."""
        if what not in self.c:
            return 0.0
        return sum(self.c[what][1:]) / (self.days - 1)


class Limits:
    """Let's Encrypt's limits, replayed over the orders in time order."""

    def __init__(self):
        self.accounts = defaultdict(lambda: Bucket(300, 3 * HOUR / 300))
        self.domains = defaultdict(lambda: Bucket(50, 7 * DAY / 50))
        self.sets = defaultdict(lambda: Bucket(5, 7 * DAY / 5))
        self.delayed = 0
        self.max_delay = 0.0
        self.refused_sets = 0
        self.issued = set()

    def order(self, t, account, registered, names):
        """When an order placed at `t` is accepted: a renewal (a name set
        issued before, by any account) is exempt from the account and
        registered-domain limits; every order counts for its name set (a
        refusal there is retried once the bucket allows, as a backoff)."""
        go = t
        if names not in self.issued:
            go = max(go, self.accounts[account].take(t), self.domains[registered].take(t))
        s = self.sets[names].take(t)
        if s > t:
            self.refused_sets += 1
        go = max(go, s)
        self.issued.add(names)
        if go > t:
            self.delayed += 1
            self.max_delay = max(self.max_delay, go - t)
        return go


def simulate(args, scenario):
    rng = random.Random(f"{args.seed}-{scenario}")
    days = args.days
    tally = Tally(days)
    limits = Limits()
    life = args.lifetime_days * DAY
    renew_after = life * 2 // 3
    window = args.ari_window_days * DAY
    H, M = args.hosts, args.domains

    # Certificates: (name set, registered domain, ordering hosts).
    if scenario == "a":
        certs = [((f"mx{h}.provider.test",), "provider.test", [h]) for h in range(H)]
    elif scenario == "a'":
        certs = [((f"mx.d{d}.test",), f"d{d}.test", list(range(H))) for d in range(M)]
    else:
        certs = [((f"mx.d{d}.test",), f"d{d}.test", None) for d in range(M)]
    shared = scenario == "b"

    # Orders as events: (time, cert index, host, renewal?, renewals so far).
    events = []
    for i, (_, _, hosts) in enumerate(certs):
        for h in hosts if hosts is not None else [None]:
            # Hosts start within the first hour (a deployment).
            heapq.heappush(events, (rng.uniform(0, HOUR), i, h, False, 0))
    end = days * DAY
    while events:
        t, i, h, renewal, n = heapq.heappop(events)
        if t >= end:
            break
        names, registered, _ = certs[i]
        if shared:
            # Every host finds the job due; the first campaigns and wins,
            # the others find the lock held and only read.
            h = rng.randrange(H)
            tally.add("etcd", t, args.campaigns + 2)  # + put_fenced + resign
            tally.add("etcd_campaigns", t, args.campaigns)
            tally.add("etcd_reads", t, H - args.campaigns)
        go = limits.order(t, ("acct", h), registered, names)
        tally.add("orders", go)
        tally.add("dns_acme", go, 2 * len(names))
        # TLSA under each name (port 25): a new key adds one record and
        # retires the old once served; reuse_key keeps the record. With a
        # shared certificate every host serves the same key: the first
        # host's DANE pass adds, the others find it present.
        if not renewal:
            tally.add("dns_tlsa", go, len(names))
        elif not args.reuse_key:
            tally.add("dns_tlsa", go, 2 * len(names))
        nxt = go + renew_after + rng.uniform(0, window)
        heapq.heappush(events, (nxt, i, h, True, n + 1))

    # DKIM: per-host selectors (a, a') or one shared key set (b). Each key:
    # published (1 write) rotate_every - lead after its predecessor was
    # made, revoked (p=) drain after it stops signing, deleted revoke_hold
    # later: 3 writes per key; shared: the sealed key and the book when a
    # key is made, the book at each later transition (the leader of job
    # `dkim` keeps its lock: one campaign at start).
    keys = M if shared else H * M
    rotate, lead, drain, hold = 90 * DAY, 2 * DAY, 7 * DAY, 30 * DAY
    for k in range(keys):
        start = rng.uniform(0, HOUR)
        made = start
        while made < end:
            tally.add("dns_dkim", made)  # publish
            active_until = made + (rotate if made == start else rotate + lead)
            tally.add("dns_dkim", active_until + drain)  # p=
            tally.add("dns_dkim", active_until + drain + hold)  # delete
            if shared:
                tally.add("etcd", made, 2)
                for t in (active_until, active_until + drain, active_until + drain + hold):
                    tally.add("etcd", t, 1)
            made = active_until - lead
    if shared:
        tally.add("etcd", 0, 1)  # the `dkim` lock, taken once
        tally.add("etcd_campaigns", 0, 1)
        for day in range(days):
            # Each follower's DKIM pass, once a minute: the lock and the book.
            tally.add("etcd_reads", day * DAY, (H - 1) * 1440 * 2)
    keepalives = H * DAY / (args.lease_ttl / 3) if shared else 0
    return tally, limits, keepalives


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--domains", type=int, default=1000)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--lifetime-days", type=int, default=90)
    p.add_argument("--ari-window-days", type=float, default=2.0)
    p.add_argument("--reuse-key", action="store_true")
    p.add_argument("--campaigns", type=int, default=1, help="hosts that campaign per due job (the others read)")
    p.add_argument("--lease-ttl", type=float, default=15.0)
    p.add_argument("--seed", default="1")
    args = p.parse_args()

    print(
        f"{args.hosts} hosts x {args.domains} domains, {args.days} days, "
        f"certificates of {args.lifetime_days} d, reuse_key={args.reuse_key}, seed {args.seed}"
    )
    print()
    cols = ["first day", "peak day", "per day (year)"]
    header = f"| {'scenario':<36} | {'quantity':<28} | " + " | ".join(f"{c:>14}" for c in cols) + " |"
    print(header)
    print("|" + "|".join("-" * (len(x)) for x in header.split("|")[1:-1]) + "|")
    names = {
        "a": "a) per-host names, no cluster",
        "a'": "a') shared names, no cluster (wrong)",
        "b": "b) shared names through etcd",
    }
    notes = []
    for s in ["a", "a'", "b"]:
        tally, limits, keepalives = simulate(args, s)
        rows = [
            ("CA orders", "orders"),
            ("DNS writes: dns-01", "dns_acme"),
            ("DNS writes: TLSA", "dns_tlsa"),
            ("DNS writes: DKIM", "dns_dkim"),
            ("etcd writes (Raft)", "etcd"),
            ("  of which campaigns", "etcd_campaigns"),
            ("etcd reads (no Raft)", "etcd_reads"),
        ]
        for label, key in rows:
            if key.startswith("etcd") and s != "b":
                continue
            print(
                f"| {names[s]:<36} | {label:<28} | {tally.first(key):>14,} | "
                f"{tally.peak(key):>14,} | {tally.steady(key):>14,.1f} |"
            )
        notes.append(
            f"{names[s]}: orders delayed by a limit {limits.delayed:,} "
            f"(longest wait {limits.max_delay / DAY:,.1f} d); orders refused at least once "
            f"as duplicates (over 5 per name set per 7 days) {limits.refused_sets:,}"
            + (f"; lease keep-alives (leader-local, not Raft) {keepalives:,.0f}/day" if s == "b" else "")
        )
    print()
    for n in notes:
        print(n)


if __name__ == "__main__":
    main()
