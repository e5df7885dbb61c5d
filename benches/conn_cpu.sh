#!/usr/bin/env bash
# CPU time per request of one or more kedge binaries and of nginx, a new connection per
# request (wrk -H 'Connection: close'), side by side on the same backend, alternating runs.
#
#   bash benches/conn_cpu.sh [--rounds N] [--duration S] [--proxy-quota PCT]
#                            NAME=KEDGE_BIN... [nginx] [nginx-deferred]
#
# Each proxy has one worker on CPU 0; the backend (a one-worker nginx, as in proxy.sh) and wrk
# (-t1 -c50) share CPU 1. The figure is the proxy's on-CPU time (the sum of
# /proc/PID/task/*/schedstat, nanoseconds, every thread) over a wrk run divided by the requests
# wrk completed: far finer than utime+stime ticks, and less distorted by other load on the
# machine than any rate. `nginx-deferred` is nginx with `listen ... deferred` (TCP_DEFER_ACCEPT,
# as kedge's listeners). Ports: PORT_BACKEND (default 18190), the proxies from PORT_BASE
# (default 18191) upwards. Prints one line per run, then the mean per target.
# --proxy-quota PCT: each proxy in a cgroup of its own capped at PCT % of one core (as
# proxy.sh's), so that the proxy, not wrk's core, is the bottleneck: then req/s compares the
# proxies at an equal CPU budget, and the CPU per request holds no idle wake-ups.
set -euo pipefail
ROUNDS=6 SECS=5 PROXY_QUOTA=0
while (($#)); do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --duration) SECS="$2"; shift 2 ;;
        --proxy-quota) PROXY_QUOTA="$2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) break ;;
    esac
done
(($#)) || { echo "usage: bash benches/conn_cpu.sh [--rounds N] [--duration S] NAME=KEDGE_BIN... [nginx] [nginx-deferred]" >&2; exit 2; }
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=benches/lib.sh
source "$BENCH_DIR/lib.sh"
BE="${PORT_BACKEND:-18190}" BASE="${PORT_BASE:-18191}"
TMP="$(mktemp -d)"; PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$TMP"
      rmdir /sys/fs/cgroup/cpu/kedge-conncpu-*-$$ /sys/fs/cgroup/kedge-conncpu-*-$$ 2>/dev/null || true' EXIT
[[ "$PROXY_QUOTA" =~ ^[0-9]+$ ]] || { echo "--proxy-quota must be an integer >= 0" >&2; exit 2; }
up() {   # port: answers within 10 s
    for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done
    echo "nothing answers on 127.0.0.1:$1" >&2; exit 1
}
nginx_conf() {   # name server-and-upstream-blocks
    mkdir -p "$TMP/$1"
    cat <<EOF2
daemon off; master_process off; worker_processes 1; pid $TMP/$1.pid; error_log $TMP/$1.err warn;
events { worker_connections 4096; }
http {
$(nginx_common_http "$TMP/$1")
$2
}
EOF2
}
nginx_conf backend "    server { listen 127.0.0.1:$BE backlog=4096;
        location / { default_type text/plain; return 200 \"hello from backend\n\"; } }" >"$TMP/backend.conf"
taskset -c 1 nginx -p "$TMP" -c "$TMP/backend.conf" & PIDS+=($!)
up "$BE"
declare -A PORT PID
names=()
i=0
for spec in "$@"; do
    name=${spec%%=*} port=$((BASE + i)); i=$((i + 1))
    case "$name" in
        nginx|nginx-deferred)
            deferred=""; [[ $name == nginx-deferred ]] && deferred=" deferred"
            nginx_conf "$name" "    upstream backend { server 127.0.0.1:$BE; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }
    server { listen 127.0.0.1:$port backlog=4096$deferred;
        location / {
$(nginx_proxy_location)
        } }" >"$TMP/$name.conf"
            (limited_in kedge-conncpu "$name" taskset -c 0 nginx -p "$TMP" -c "$TMP/$name.conf") & PID[$name]=$!; PIDS+=($!) ;;
        *)
            [[ "$spec" == *=* ]] || { echo "not NAME=KEDGE_BIN: $spec" >&2; exit 2; }
            # (Each kedge with a state directory of its own.)
            kedge_bench_config benches/conn_cpu.sh 1 auto "$port" "$BE" \
                | sed "s|^\[proxy\]$|[proxy]\nstate_dir = \"$TMP/state-$name\"|" >"$TMP/$name.toml"
            (limited_in kedge-conncpu "$name" taskset -c 0 "${spec#*=}" run --config "$TMP/$name.toml") >"$TMP/$name.log" 2>&1 & PID[$name]=$!; PIDS+=($!) ;;
    esac
    PORT[$name]=$port; names+=("$name")
    up "$port"
done
ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {print s}'; }
for ((r = 1; r <= ROUNDS; r++)); do
    for name in "${names[@]}"; do
        a=$(ns "${PID[$name]}")
        out=$(taskset -c 1 wrk -t1 -c50 -d"${SECS}s" -H 'Connection: close' "http://127.0.0.1:${PORT[$name]}/")
        b=$(ns "${PID[$name]}")
        n=$(awk '/requests in/ {print $1}' <<<"$out")
        errs=$(grep -E "Socket errors|Non-2xx" <<<"$out" | tr '\n' ' ' || true)
        echo "$r $name requests=$n cpu_us_per_req=$(awk -v a="$a" -v b="$b" -v n="$n" 'BEGIN {printf "%.2f", (b - a) / 1000 / n}') req_per_s=$((n / SECS)) $errs"
    done
done | tee "$TMP/runs"
echo "mean CPU µs per request and req/s ($ROUNDS runs of ${SECS}s each$( ((PROXY_QUOTA)) && echo ", proxies capped at $PROXY_QUOTA % of a core")):"
awk '{split($4, v, "="); split($5, q, "="); s[$2] += v[2]; t[$2] += q[2]; c[$2]++}
     END {for (k in s) printf "  %-16s %.2f  %.0f req/s\n", k, s[k] / c[k], t[k] / c[k]}' "$TMP/runs"
