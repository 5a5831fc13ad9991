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
