#!/usr/bin/env bash
# ACME issuance benchmark: 20 distinct certificates (h01.example.test ...
# h20.example.test) by DNS-01 from one pebble through one BIND 9 (RFC 2136 +
# TSIG), with mxkeys (one config with 20 acme sources, one
# `mxkeys renew --force`), lego (one `lego run` per certificate) and certbot
# (one `certbot certonly --dns-rfc2136` per certificate). See BENCHMARKS.md.
#
# usage: bench/acme-issue.sh [--count N] [--runs N] [--mxkeys-runs N]
#                            [--certbot-propagation S] [--no-certbot-default]
#                            [--out DIR] [--no-build] [--setup-only]
#                            [--quiet-wait S]
#
#   --count N                 certificates per run (default 20)
#   --runs N                  hyperfine runs of lego and certbot (default 3)
#   --mxkeys-runs N           hyperfine runs of mxkeys (default 10)
#   --certbot-propagation S   certbot's --dns-rfc2136-propagation-seconds for
#                             the timed runs (default 0: BIND applies an
#                             update before it answers it, so no wait is
#                             needed on loopback; certbot's default is 60)
#   --no-certbot-default      skip timing one certificate with certbot's
#                             default propagation wait (60 s)
#   --out DIR                 work and results directory
#                             (default target/bench/acme-issue)
#   --no-build                use the existing target/release/mxkeys
#   --setup-only              start BIND and pebble, write the configs and
#                             scripts, print them, wait for Ctrl-C
#   --quiet-wait S            before timing, wait up to S seconds (default
#                             300) for the machine to be idle (other
#                             processes using < 10% of the CPUs over 2 s);
#                             the summary says whether it was
#
# Everything listens on 127.0.0.1 only. pebble runs with PEBBLE_VA_NOSLEEP=1,
# PEBBLE_WFE_NONCEREJECT=0 and PEBBLE_AUTHZREUSE=0 (every order validates
# every name: no client profits from an earlier run's authorizations).
# Each client gets its ACME account before the timing (one certificate for
# h00.example.test), so the timed runs reuse it, as a renewal would.
#
# Results land in DIR (emptied first): hyperfine-mxkeys.json,
# hyperfine-others.json, summary.txt (also printed), the servers' logs, each
# client's configuration, run script and output.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

count=20
runs=3
mxkeys_runs=10
certbot_prop=0
certbot_default=1
out=
build=1
setup_only=0
quiet_wait=300

die() { echo "acme-issue: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --count) count=${2:?}; shift 2 ;;
        --runs) runs=${2:?}; shift 2 ;;
        --mxkeys-runs) mxkeys_runs=${2:?}; shift 2 ;;
        --certbot-propagation) certbot_prop=${2:?}; shift 2 ;;
        --no-certbot-default) certbot_default=0; shift ;;
        --out) out=${2:?}; shift 2 ;;
        --no-build) build=0; shift ;;
        --setup-only) setup_only=1; shift ;;
        --quiet-wait) quiet_wait=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
done
[[ $count =~ ^[0-9]+$ && $count -ge 1 && $count -le 99 ]] || die "--count must be 1..99"
[[ $runs =~ ^[0-9]+$ && $runs -ge 1 ]] || die "--runs must be a positive integer"
[[ $mxkeys_runs =~ ^[0-9]+$ && $mxkeys_runs -ge 1 ]] || die "--mxkeys-runs must be a positive integer"
[[ $certbot_prop =~ ^[0-9]+$ ]] || die "--certbot-propagation must be a whole number of seconds"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
out=${out:-$repo/target/bench/acme-issue}
rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)

# --- tools ----------------------------------------------------------------
missing=()
for p in named:bind9 tsig-keygen:bind9-utils dig:bind9-dnsutils pebble:pebble \
         lego:lego certbot:certbot openssl:openssl hyperfine:hyperfine python3:python3; do
    command -v "${p%%:*}" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin command -v "${p%%:*}" >/dev/null 2>&1 \
        || missing+=("${p#*:}")
done
/usr/bin/python3 -c 'import certbot_dns_rfc2136' 2>/dev/null || missing+=(python3-certbot-dns-rfc2136)
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "acme-issue: installing ${missing[*]}" >&2
    [[ $(id -u) -eq 0 ]] || die "missing Debian packages: ${missing[*]} (run as root, or apt-get install them)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PATH=$PATH:/usr/sbin:/sbin

if [[ $build -eq 1 ]]; then
    cargo build --release -p mxkeys
fi
mxkeys=${MXKEYS:-$repo/target/release/mxkeys}
[[ -x $mxkeys ]] || die "$mxkeys does not exist (build it, or drop --no-build)"

free_port() { # a port free for TCP and UDP on 127.0.0.1
    /usr/bin/python3 - <<'EOF'
import socket
while True:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
    port = u.getsockname()[1]
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        t.bind(("127.0.0.1", port)); print(port); break
    except OSError:
        pass
EOF
}

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for() { # wait_for WHAT SECONDS COMMAND...
    local what=$1 limit=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [[ $SECONDS -lt $end ]] || die "$what did not come up within ${limit}s (logs in $out)"
        sleep 0.1
    done
}

# --- BIND -------------------------------------------------------------------
dnsdir=$out/bind
mkdir -p "$dnsdir"
dns_port=$(free_port)
key_name=mxkeys-bench
tsig-keygen -a hmac-sha256 "$key_name" >"$dnsdir/tsig.key"
chmod 600 "$dnsdir/tsig.key"
tsig_secret=$(sed -n 's/.*secret "\(.*\)";.*/\1/p' "$dnsdir/tsig.key")
cat >"$dnsdir/example.test.zone" <<'EOF'
$TTL 300
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns.example.test.
ns IN A 127.0.0.1
* IN A 127.0.0.1
EOF
write_named_conf "$dnsdir" "$dns_port" "$key_name"
named -g -4 -c "$dnsdir/named.conf" >"$dnsdir/named.log" 2>&1 &
pids+=($!)
wait_for "named" 20 sh -c "dig @127.0.0.1 -p $dns_port +norecurse +time=1 +tries=1 SOA example.test +short | grep -q hostmaster"

# --- pebble -----------------------------------------------------------------
pdir=$out/pebble
mkdir -p "$pdir"
(
    cd "$pdir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=pebble HTTPS bench root" -keyout ca.key -out ca.pem \
        -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=localhost" -keyout https-key.pem -out https.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >https.ext
    openssl x509 -req -in https.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
        -extfile https.ext -out https-cert.pem 2>/dev/null
)
ca_pem=$pdir/ca.pem
acme_port=$(free_port); mgmt_port=$(free_port); http_port=$(free_port); tls_port=$(free_port)
cat >"$pdir/pebble.json" <<EOF
{ "pebble": {
    "listenAddress": "127.0.0.1:$acme_port",
    "managementListenAddress": "127.0.0.1:$mgmt_port",
    "certificate": "$pdir/https-cert.pem",
    "privateKey": "$pdir/https-key.pem",
    "httpPort": $http_port,
    "tlsPort": $tls_port,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false,
    "certificateValidityPeriod": 7776000
} }
EOF
PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \
    pebble -config "$pdir/pebble.json" -dnsserver "127.0.0.1:$dns_port" >"$pdir/pebble.log" 2>&1 &
pids+=($!)
acme_url=https://127.0.0.1:$acme_port/dir
wait_for "pebble" 20 curl -sf --cacert "$ca_pem" "$acme_url"

names=()
for i in $(seq 1 "$count"); do names+=("$(printf 'h%02d.example.test' "$i")"); done

# --- mxkeys -----------------------------------------------------------------
mdir=$out/mxkeys
mkdir -p "$mdir"
mx_config() { # mx_config FILE NAME...
    local file=$1; shift
    {
        cat <<EOF
state_dir = "state"

[acme]
directory = "$acme_url"
email = "admin@example.test"
ca_bundle = "$ca_pem"

[dns.bind]
type = "rfc2136"
server = "127.0.0.1:$dns_port"
zone = "example.test"
tsig_name = "$key_name"
tsig_secret_file = "$dnsdir/tsig.key"
nameservers = ["127.0.0.1:$dns_port"]
propagation_interval = "200ms"
EOF
        for n in "$@"; do
            printf '\n[[source]]\ntype = "acme"\nname = "%s"\ndomains = ["%s"]\nchallenge = "dns-01"\ndns = "bind"\nkey_type = "ecdsa-p256"\n' "${n%%.*}" "$n"
        done
        printf '\n[[target]]\nname = "first"\ndomains = ["%s"]\ncombined = "out/chain.pem"\n' "$1"
    } >"$file"
}
mx_config "$mdir/prepare.toml" h00.example.test
mx_config "$mdir/mxkeys.toml" "${names[@]}"
# One run: every source must print "issued" (a failed order leaves the
# target served from before, which exits 0).
cat >"$mdir/run.sh" <<EOF
#!/bin/sh
out=\$("$mxkeys" --config "$mdir/mxkeys.toml" renew --force 2>>"$mdir/out.log") || { echo "\$out" >&2; exit 1; }
n=\$(printf '%s\\n' "\$out" | grep -c ': issued ')
[ "\$n" -eq $count ] || { printf '%s\\n' "\$out" >&2; exit 1; }
EOF

# --- lego -------------------------------------------------------------------
ldir=$out/lego
mkdir -p "$ldir"
cat >"$ldir/env.sh" <<EOF
export LEGO_CA_CERTIFICATES=$ca_pem
export RFC2136_NAMESERVER=127.0.0.1:$dns_port
export RFC2136_TSIG_KEY=$key_name.
export RFC2136_TSIG_ALGORITHM=hmac-sha256.
export RFC2136_TSIG_SECRET=$tsig_secret
export RFC2136_SEQUENCE_INTERVAL=1
export RFC2136_PROPAGATION_TIMEOUT=60
export RFC2136_POLLING_INTERVAL=1
EOF
lego_cmd() { # the command for one certificate
    printf 'lego --path %s --server %s --email admin@example.test --accept-tos --key-type ec256 --dns rfc2136 --dns.resolvers 127.0.0.1:%s --dns.disable-cp -d %s run' \
        "$ldir/data" "$acme_url" "$dns_port" "$1"
}
{
    echo "#!/bin/sh"
    echo "set -e"
    echo ". $ldir/env.sh"
    for n in "${names[@]}"; do echo "$(lego_cmd "$n") >>$ldir/out.log 2>&1"; done
} >"$ldir/run.sh"

# --- certbot ----------------------------------------------------------------
cdir=$out/certbot
mkdir -p "$cdir"/{config,work,logs}
cat >"$cdir/rfc2136.ini" <<EOF
dns_rfc2136_server = 127.0.0.1
dns_rfc2136_port = $dns_port
dns_rfc2136_name = $key_name
dns_rfc2136_secret = $tsig_secret
dns_rfc2136_algorithm = HMAC-SHA256
EOF
chmod 600 "$cdir/rfc2136.ini"
certbot_cmd() { # certbot_cmd NAME PROPAGATION-SECONDS (empty: certbot's default)
    printf 'REQUESTS_CA_BUNDLE=%s certbot certonly --non-interactive --agree-tos --email admin@example.test --server %s --config-dir %s/config --work-dir %s/work --logs-dir %s/logs --dns-rfc2136 --dns-rfc2136-credentials %s/rfc2136.ini%s --key-type ecdsa --force-renewal --cert-name %s -d %s' \
        "$ca_pem" "$acme_url" "$cdir" "$cdir" "$cdir" "$cdir" \
        "${2:+ --dns-rfc2136-propagation-seconds $2}" "$1" "$1"
}
{
    echo "#!/bin/sh"
    echo "set -e"
    for n in "${names[@]}"; do echo "$(certbot_cmd "$n" "$certbot_prop") >>$cdir/out.log 2>&1"; done
} >"$cdir/run.sh"

chmod +x "$mdir/run.sh" "$ldir/run.sh" "$cdir/run.sh"

if [[ $setup_only -eq 1 ]]; then
    cat <<EOF
BIND on 127.0.0.1:$dns_port (key $key_name, $dnsdir/tsig.key)
pebble $acme_url (management 127.0.0.1:$mgmt_port, CA $ca_pem)
mxkeys: $mdir/mxkeys.toml  ($mdir/run.sh)
lego:   $ldir/run.sh
certbot: $cdir/run.sh
Ctrl-C to stop.
EOF
    while :; do sleep 3600 & wait $! || true; done
fi

# --- accounts (not timed) ---------------------------------------------------
echo "acme-issue: creating each client's account (one certificate for h00.example.test)" >&2
(cd "$mdir" && "$mxkeys" -q --config prepare.toml renew >"$mdir/prepare.log" 2>&1) \
    || { cat "$mdir/prepare.log" >&2; die "mxkeys could not issue h00"; }
(. "$ldir/env.sh" && eval "$(lego_cmd h00.example.test)" >"$ldir/prepare.log" 2>&1) \
    || { tail -30 "$ldir/prepare.log" >&2; die "lego could not issue h00"; }
(eval "$(certbot_cmd h00.example.test "$certbot_prop")" >"$cdir/prepare.log" 2>&1) \
    || { tail -30 "$cdir/prepare.log" >&2; die "certbot could not issue h00 with --dns-rfc2136-propagation-seconds $certbot_prop"; }

# --- wait for a quiet machine -----------------------------------------------
wait_quiet acme-issue "$quiet_wait"

# --- machine ----------------------------------------------------------------
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine: $(nproc) CPUs ($cpu), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
    echo "mxkeys: $mxkeys ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$repo" diff --quiet HEAD -- src 2>/dev/null || echo '+changes'))"
    echo "lego: $(dpkg-query -W -f='${Version}' lego 2>/dev/null), certbot: $(certbot --version 2>&1 | awk '{print $2}'), pebble: $(dpkg-query -W -f='${Version}' pebble 2>/dev/null), named: $(named -v)"
    echo "certificates per run: $count; certbot --dns-rfc2136-propagation-seconds $certbot_prop"
    echo "machine idle before timing: $quiet (${busy}% busy)"
} >"$out/summary.txt"

# --- timing -----------------------------------------------------------------
# Each run orders every certificate again (mxkeys --force, lego run, certbot
# --force-renewal), with the same accounts and pebble.
# mxkeys' bundles are removed before each run: with a certificate held,
# mxkeys (at ae6b0cd) sends `replaces` in the new order, which instant-acme
# refuses for a CA without ARI (pebble 2.4): "ACME server does not support:
# ACME renewal information (ARI)". Without a held certificate, --force orders
# exactly as a renewal would otherwise (same account, same requests).
hyperfine --style basic --runs "$mxkeys_runs" --export-json "$out/hyperfine-mxkeys.json" \
    --prepare "rm -f $mdir/state/acme/h[0-9][0-9]/bundle.pem" \
    -n mxkeys "sh $mdir/run.sh"
hyperfine --style basic --runs "$runs" --export-json "$out/hyperfine-others.json" \
    -n lego "sh $ldir/run.sh" \
    -n "certbot (propagation ${certbot_prop}s)" "sh $cdir/run.sh"

# Every timed run must really have issued: mxkeys' 20 bundles are newer than
# the start, lego's and certbot's logs show 20 x runs issuances.
issued_lego=$(grep -c 'Server responded with a certificate' "$ldir/out.log" || true)
issued_certbot=$(grep -c 'Successfully received certificate' "$cdir/out.log" || true)
[[ $issued_lego -eq $((count * runs)) ]] || die "lego issued $issued_lego certificates, expected $((count * runs)) (see $ldir/out.log)"
[[ $issued_certbot -eq $((count * runs)) ]] || die "certbot issued $issued_certbot certificates, expected $((count * runs)) (see $cdir/out.log)"
for n in "${names[@]}"; do
    [[ -s $mdir/state/acme/${n%%.*}/bundle.pem ]] || die "mxkeys has no certificate for $n"
done

if [[ $certbot_default -eq 1 ]]; then
    echo "acme-issue: one certificate with certbot's default propagation wait" >&2
    start=$(date +%s.%N)
    eval "$(certbot_cmd h01.example.test '')" >>"$cdir/default.log" 2>&1 \
        || die "certbot with the default propagation wait failed (see $cdir/default.log)"
    end=$(date +%s.%N)
    echo "certbot_default_one_cert_s: $(echo "$end - $start" | bc -l)" >>"$out/summary.txt"
fi

echo "machine busy after timing: $(busy_pct)% (other processes and the servers)" >>"$out/summary.txt"

/usr/bin/python3 - "$out" "$count" >>"$out/summary.txt" <<'EOF'
import json, sys
out, count = sys.argv[1], int(sys.argv[2])
results = []
for f in ("hyperfine-mxkeys.json", "hyperfine-others.json"):
    results += json.load(open(f"{out}/{f}"))["results"]
by = {r["command"]: r for r in results}
for name, r in by.items():
    t = sorted(r["times"])
    print(f"{name}: median {r['median']:.2f} s, mean {r['mean']:.2f} s ± {r['stddev'] or 0:.2f}, "
          f"min {r['min']:.2f}, max {r['max']:.2f} ({len(t)} runs; {r['median']/count:.2f} s per certificate)")
mx = by["mxkeys"]["median"]
others = {k: v["median"] for k, v in by.items() if k != "mxkeys"}
fastest = min(others, key=others.get)
ratio = others[fastest] / mx
print(f"fastest other: {fastest} ({others[fastest]:.2f} s); mxkeys is {ratio:.1f}x faster (goal: 5x): "
      + ("met" if ratio >= 5 else "NOT met"))
EOF
cat "$out/summary.txt"
