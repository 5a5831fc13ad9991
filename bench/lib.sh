# Shared by the bench/ scripts (sourced, not run).

# CPU busy % over 2 s, all CPUs (from /proc/stat).
busy_pct() {
    local a b total=0 idle i
    read -r -a a < <(head -1 /proc/stat)
    sleep 2
    read -r -a b < <(head -1 /proc/stat)
    for ((i = 1; i < ${#a[@]}; i++)); do total=$((total + b[i] - a[i])); done
    idle=$(( (b[4] - a[4]) + (b[5] - a[5]) ))
    echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}

# Waits up to $2 seconds for an idle machine (under 10% busy over 2 s); $1
# names the script in messages. Sets `quiet` (yes or no) and `busy` (the
# last reading, %).
wait_quiet() {
    local name=$1 deadline=$((SECONDS + $2))
    quiet=no
    while :; do
        busy=$(busy_pct)
        if [[ $busy -lt 10 ]]; then quiet=yes; return; fi
        if [[ $SECONDS -ge $deadline ]]; then
            echo "$name: WARNING: the machine is still ${busy}% busy; timing anyway" >&2
            return
        fi
        echo "$name: machine ${busy}% busy, waiting for it to settle" >&2
    done
}

# Writes $1/named.conf: BIND on 127.0.0.1:$2 only, primary for example.test
# from $1/example.test.zone, updatable with the TSIG key $3 ($1/tsig.key),
# no recursion.
write_named_conf() {
    local dir=$1 port=$2 key=$3
    cat >"$dir/named.conf" <<EOF
include "$dir/tsig.key";
options {
    directory "$dir";
    pid-file "$dir/named.pid";
    session-keyfile "$dir/session.key";
    managed-keys-directory "$dir";
    listen-on port $port { 127.0.0.1; };
    listen-on-v6 { none; };
    recursion no;
    dnssec-validation no;
    notify no;
    allow-transfer { none; };
};
controls { };
zone "example.test" { type primary; file "$dir/example.test.zone"; allow-update { key "$key"; }; };
EOF
}
