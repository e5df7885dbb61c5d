#!/usr/bin/env bash
# CPU time per HTTP/2 request of kedge (and of its HTTP/1.1 backend), for side-by-side builds:
# figures a busy machine distorts far less than req/s.
#
#   bash benches/h2_cpu.sh [--requests N] [--repeat K] [--cases LIST] KEDGE_BIN [KEDGE_BIN...]
#
# For each binary and case: a private nginx backend (the one of benches/h2.sh, 19-byte answers
# and /64k) and kedge (one worker, `[http2]` as in benches/h2.sh) on 127.0.0.1, then `h2load -n N`
# with the case's -c/-m/path; utime+stime of the kedge and backend processes (/proc/PID/stat)
# over the run, divided by the requests. Also: the upstream connections kedge opened during the
# run (the backend's accepted-connection count, from its stub_status) and the ones it kept.
# Cases (comma list): h2c-c20 (h2c -c20 -m10), tls-c20, tls-c50 (-c50 -m10), tls-64k (-c20 -m10,
# 64 KiB bodies), h2c-64k. Each binary's case runs K times, alternating binaries; the median
# is printed. Ports: PORT_KEDGE (h2c, default 25000), PORT_KEDGE_TLS (25002), PORT_BACKEND
# (25010), PORT_STATUS (25011). KEDGE_MAX_IDLE sets `[upstream] max_idle_per_endpoint`.
# Pinning as in h2.sh on 2 CPUs: kedge on CPU 0, backend and h2load on CPU 1 (PROXY_CPUS,
# BACKEND_CPUS, LOAD_CPUS to change).
set -euo pipefail

REQUESTS=200000
REPEAT=3
CASES="h2c-c20,tls-c20,tls-c50,tls-64k"
BINS=()
while (($#)); do
    case "$1" in
        --requests) REQUESTS="$2"; shift 2 ;;
        --repeat) REPEAT="$2"; shift 2 ;;
        --cases) CASES="$2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) BINS+=("$1"); shift ;;
    esac
done
((${#BINS[@]} > 0)) || { echo "usage: bash benches/h2_cpu.sh [options] KEDGE_BIN..." >&2; exit 2; }

PORT_KEDGE="${PORT_KEDGE:-25000}"
PORT_KEDGE_TLS="${PORT_KEDGE_TLS:-25002}"
PORT_BACKEND="${PORT_BACKEND:-25010}"
PORT_STATUS="${PORT_STATUS:-25011}"
PROXY_CPUS="${PROXY_CPUS:-0}"
BACKEND_CPUS="${BACKEND_CPUS:-1}"
LOAD_CPUS="${LOAD_CPUS:-1}"
PROXY_QUOTA=0
SNI="bench.example.com"
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=benches/lib.sh
source "$BENCH_DIR/lib.sh"

log() { printf '[h2-cpu %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
PIDS=()
TMP=""
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    [[ -n "$TMP" && -d "$TMP" ]] && rm -rf "$TMP"
}
trap cleanup EXIT
NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_ready() {   # name pid port logfile
    local i
    for i in $(seq 100); do
        kill -0 "$2" 2>/dev/null || { tail -n 20 "$4" >&2; die "$1 exited during startup"; }
        port_open "$3" && return 0
        sleep 0.1
    done
    die "$1 not accepting on 127.0.0.1:$3"
}
for p in "$PORT_KEDGE" "$PORT_KEDGE_TLS" "$PORT_BACKEND" "$PORT_STATUS"; do
    port_open "$p" && die "port 127.0.0.1:$p is already in use (set PORT_* to move)"
done
TMP="$(mktemp -d /tmp/kedge-h2cpu.XXXXXX)"
OUT="$TMP/out"
mkdir -p "$OUT/conf"
gen_certs ecdsa
start_backend "benches/h2_cpu.sh"
# The backend's accepted-connection counter, on a second listener (the bench backend has none).
sed -i "s|^http {|http {\n    server { listen 127.0.0.1:$PORT_STATUS; location / { stub_status; } }|" "$TMP/backend/nginx.conf"
kill -HUP "$BACKEND_PID"
for _ in $(seq 50); do port_open "$PORT_STATUS" && break; sleep 0.1; done
port_open "$PORT_STATUS" || die "backend status listener did not come up"
accepted() { curl -s "http://127.0.0.1:$PORT_STATUS/" | awk 'NR==3 {print $1}'; }
cpu_ticks() {   # pid: utime+stime of the process and its children threads (clock ticks)
    local t=0 f
    for f in /proc/"$1"/task/*/stat; do
        t=$((t + $(awk '{print $14 + $15}' "$f" 2>/dev/null || echo 0)))
    done
    echo "$t"
}
backend_ticks() {   # the backend's master and worker
    local t; t=$(cpu_ticks "$BACKEND_PID")
    for c in $(pgrep -P "$BACKEND_PID"); do t=$((t + $(cpu_ticks "$c"))); done
    echo "$t"
}
HZ="$(getconf CLK_TCK)"

start_kedge() {   # bin
    local d="$TMP/kedge"
    rm -rf "$d"; mkdir -p "$d/state"
    cat >"$d/kedge.toml" <<EOF
[proxy]
workers = 1
state_dir = "$d/state"
[admin]
enabled = false
${KEDGE_MAX_IDLE:+[upstream]
max_idle_per_endpoint = $KEDGE_MAX_IDLE}
[log]
access_log = false
level = "warn"
[http2]
enabled = true
max_concurrent_streams = 128
max_requests = 1000000
[tls]
default_cert = "$TMP/pki/ecdsa/cert.pem"
default_key = "$TMP/pki/ecdsa/key.pem"
[[listener]]
address = "127.0.0.1:$PORT_KEDGE"
[[listener]]
address = "127.0.0.1:$PORT_KEDGE_TLS"
tls = true
[[route]]
path = "/"
upstreams = ["127.0.0.1:$PORT_BACKEND"]
EOF
    taskset -c "$PROXY_CPUS" "$1" run --config "$d/kedge.toml" >"$d/kedge.log" 2>&1 &
    KEDGE_PID=$!; PIDS+=("$KEDGE_PID")
    wait_ready kedge "$KEDGE_PID" "$PORT_KEDGE" "$d/kedge.log"
    wait_ready kedge "$KEDGE_PID" "$PORT_KEDGE_TLS" "$d/kedge.log"
}
stop_kedge() {
    kill -TERM "$KEDGE_PID"; wait "$KEDGE_PID" 2>/dev/null || true
}

case_args() {   # case -> "url c m"
    case "$1" in
        h2c-c20) echo "http://127.0.0.1:$PORT_KEDGE/ 20 10" ;;
        h2c-64k) echo "http://127.0.0.1:$PORT_KEDGE/64k 20 10" ;;
        tls-c20) echo "https://127.0.0.1:$PORT_KEDGE_TLS/ 20 10" ;;
        tls-c50) echo "https://127.0.0.1:$PORT_KEDGE_TLS/ 50 10" ;;
        tls-64k) echo "https://127.0.0.1:$PORT_KEDGE_TLS/64k 20 10" ;;
        *) die "unknown case $1" ;;
    esac
}

RESULTS="$TMP/results.tsv"
IFS=',' read -r -a CASE_LIST <<<"$CASES"
for c in "${CASE_LIST[@]}"; do
    read -r url conns streams <<<"$(case_args "$c")"
    n=$REQUESTS
    [[ "$c" == *64k ]] && n=$((REQUESTS / 10))
    for ((r = 1; r <= REPEAT; r++)); do
        for b in "${BINS[@]}"; do
            start_kedge "$b"
            # warm-up: connections, pools, allocator
            taskset -c "$LOAD_CPUS" h2load -n $((n / 10)) -c "$conns" -m "$streams" "$url" >/dev/null 2>&1
            a0=$(accepted); k0=$(cpu_ticks "$KEDGE_PID"); b0=$(backend_ticks)
            taskset -c "$LOAD_CPUS" h2load -n "$n" -c "$conns" -m "$streams" "$url" >"$TMP/h2load.txt" 2>&1 \
                || { cat "$TMP/h2load.txt" >&2; die "h2load failed"; }
            k1=$(cpu_ticks "$KEDGE_PID"); b1=$(backend_ticks); a1=$(accepted)
            ok=$(sed -n 's/.*requests: .* \([0-9]*\) succeeded.*/\1/p' "$TMP/h2load.txt")
            rps=$(sed -n 's/.*finished in .*, \([0-9.]*\) req\/s.*/\1/p' "$TMP/h2load.txt")
            kept=$(ss -Htn state established "( dport = :$PORT_BACKEND )" | wc -l)
            stop_kedge
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$b" "$r" "$ok" \
                "$(( (k1 - k0) * 1000000 / HZ ))" "$(( (b1 - b0) * 1000000 / HZ ))" "$((a1 - a0 - 1))" "$kept $rps" >>"$RESULTS"
            log "$c $(basename "$b") run $r: $ok ok, kedge $(( (k1 - k0) * 1000000 / HZ / (ok > 0 ? ok : 1) )) us/req, backend conns opened $((a1 - a0 - 1)), kept $kept, $rps req/s"
        done
    done
done

python3 - "$RESULTS" <<'EOF'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    c, b, r, ok, k_us, b_us, opened, rest = line.rstrip("\n").split("\t")
    kept, rps = rest.split(" ")
    ok = int(ok) or 1
    rows[(c, b)].append((int(k_us) / ok, int(b_us) / ok, int(opened) / ok * 1000, int(kept), float(rps or 0)))
print("| case | kedge binary | kedge CPU µs/request | backend CPU µs/request | upstream connections opened per 1000 requests | kept after | req/s (loaded machine) |")
print("|---|---|---|---|---|---|---|")
for (c, b), v in rows.items():
    med = lambda i: statistics.median(x[i] for x in v)
    print(f"| {c} | {b} | {med(0):.2f} | {med(1):.2f} | {med(2):.1f} | {med(3):.0f} | {med(4):,.0f} |")
EOF
