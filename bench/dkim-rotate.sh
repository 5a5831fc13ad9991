#!/usr/bin/env bash
# Times `mxkeys dkim rotate` for N domains (default 200) through a local
# BIND 9 on loopback (RFC 2136 with TSIG, propagation checked on that
# server), lead = "0s": first the pass from nothing to every key signing,
# then a `--force` rotation (successors generated, published, verified,
# signing; old keys draining). Release build.
#
#   bash bench/dkim-rotate.sh                   # 200 domains, rsa-2048
#   N=50 ALGORITHMS='"rsa-2048", "ed25519"' bash bench/dkim-rotate.sh
#
# Needs bind9 and bind9-dnsutils (named, tsig-keygen, dig). Target: under 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
N=${N:-200}
ALGORITHMS=${ALGORITHMS:-'"rsa-2048"'}

for p in named tsig-keygen dig python3; do
    command -v "$p" >/dev/null || PATH=$PATH:/usr/sbin:/sbin
    command -v "$p" >/dev/null || { echo "missing $p: apt-get install bind9 bind9-dnsutils" >&2; exit 1; }
done

cargo build --release --quiet
BIN=$PWD/target/release/mxkeys
W=$(mktemp -d)
cleanup() {
    # DUMP=DIR keeps each pass's output (with its log's timestamps) there.
    [ -n "${DUMP:-}" ] && mkdir -p "$DUMP" && cp "$W"/*.out "$W"/*.err "$DUMP"/ 2>/dev/null
    # The named this script started, by its pid file.
    [ -s "$W/named.pid" ] && kill "$(cat "$W/named.pid")" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tsig-keygen -a hmac-sha256 bench-key > "$W/tsig.key"
cat > "$W/example.test.zone" <<EOF
\$TTL 300
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns.example.test.
ns IN A 127.0.0.1
EOF
write_named_conf "$W" "$PORT" bench-key
named -4 -c "$W/named.conf"
for _ in $(seq 100); do
    dig @127.0.0.1 -p "$PORT" +short +time=1 +tries=1 SOA example.test | grep -q hostmaster && break
    sleep 0.1
done

domains=$(for i in $(seq -f '%03g' 1 "$N"); do printf '"d%s.example.test", ' "$i"; done)
cat > "$W/mxkeys.toml" <<EOF
state_dir = "state"
[dns.bind]
type = "rfc2136"
server = "127.0.0.1:$PORT"
zone = "example.test"
tsig_name = "bench-key"
tsig_secret_file = "tsig.key"
nameservers = ["127.0.0.1:$PORT"]
propagation_interval = "100ms"
[dkim]
domains = [${domains%, }]
algorithms = [$ALGORITHMS]
key_dir = "keys"
dns = "bind"
lead = "0s"
signer = "opendkim"
signer_dir = "signer"
EOF

run() {
    local label=$1; shift
    local start end
    start=$(date +%s.%N)
    "$BIN" --config "$W/mxkeys.toml" dkim rotate "$@" > "$W/$label.out" 2> "$W/$label.err"
    end=$(date +%s.%N)
    local signs
    signs=$(grep -c ' signs$' "$W/$label.out" || true)
    printf '%-22s %6.2f s  (%d keys began signing, %d output lines)\n' \
        "$label" "$(echo "$end - $start" | bc)" "$signs" "$(wc -l < "$W/$label.out")"
}

echo "mxkeys dkim rotate: $N domains, algorithms [$ALGORITHMS], lead 0s, BIND 9 $(named -v | awk '{print $2}') on 127.0.0.1:$PORT"
echo "machine: $(nproc) CPU ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(uname -r)"
run "first pass"
run "forced rotation" --force
run "idle pass"
active=$("$BIN" --config "$W/mxkeys.toml" dkim status --json | grep -c '"state": "active"')
echo "active keys: $active; key table lines: $(grep -vc '^#' "$W/signer/KeyTable")"
if [ "$active" -ne "$(( N * $(echo "$ALGORITHMS" | tr ',' '\n' | wc -l) ))" ]; then
    echo "FAILED: not every domain has an active key" >&2
    cat "$W"/*.err | tail -20 >&2
    exit 1
fi
