#!/usr/bin/env bash
# kedge vs nginx vs HAProxy (vs direct, vs the floor) HTTP/1.1 keep-alive proxy benchmark.
#
#   bash benches/proxy.sh [--runs N] [--duration S] [--connections C]
#                         [--workers N] [--skip-build] [--warmup S]
#                         [--threads T] [--targets LIST] [--kedge-bin PATH]
#                         [--kedge-driver auto|...] [--results-dir DIR] [--new-conn]
#                         [--floor-bin PATH] [--floor-mode turns|duplex] [--no-count]
#                         [--headers host|browser]
#
# Everything runs on 127.0.0.1 with private instances (own configs, pid files
# and prefixes under a temp dir, ports 18080-18090). Every process started here
# is stopped on exit, including Ctrl-C and errors. Per target it reports CPU time per request,
# and (perf, warm-up runs) syscalls, io_uring_enter calls, SQEs, poll arms, CQEs and context
# switches per request. See benches/README.md.
set -euo pipefail

# ----------------------------------------------------------------------------
# defaults / arguments
# ----------------------------------------------------------------------------
RUNS=6               # rounds; even rounds run the targets in reverse order
DURATION=10
CONNECTIONS=50
WORKERS=1
THREADS=1
WARMUP=""            # seconds; default = DURATION
SKIP_BUILD=0
TARGETS="kedge,nginx,haproxy,direct,floor"
QUIET_WAIT=120       # max seconds to wait for an idle machine before each run
MAX_OTHER=10         # % of a core used by foreign processes that voids a run
PROXY_QUOTA=0        # CFS quota per proxy in % of one core; 0 = none
KEDGE_DRIVER="${KEDGE_DRIVER:-auto}"
NEW_CONN=0           # 1: a new connection per request (wrk sends Connection: close)
HEADERS=host         # host: wrk's request (Host alone); browser: the fields a browser sends

PORT_KEDGE="${PORT_KEDGE:-18080}"
PORT_NGINX="${PORT_NGINX:-18081}"
PORT_HAPROXY="${PORT_HAPROXY:-18082}"
PORT_FLOOR="${PORT_FLOOR:-18083}"
PORT_BACKEND="${PORT_BACKEND:-18090}"

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=benches/lib.sh
source "$BENCH_DIR/lib.sh"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
KEDGE_BIN="$ROOT/target/release/kedge"
FLOOR_BIN=""         # default: built with `cargo bench --no-run --bench floor`
FLOOR_MODE=turns     # benches/floor.rs --mode
COUNT=1              # count syscalls / io_uring submissions during each warm-up run (perf)
RESULTS_BASE="$BENCH_DIR/results"
ORIG_CMD="bash benches/proxy.sh $*"

usage() {
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<EOF

Options (defaults in brackets):
  --runs N          measured runs per target: rounds of one run per target, every
                    other round in reverse order [$RUNS]
  --duration S      seconds per wrk run [$DURATION]
  --warmup S        seconds of the single warm-up run per target [= duration]
  --connections C   wrk keep-alive connections [$CONNECTIONS]
  --threads T       wrk threads [$THREADS]
  --workers N       proxy workers/threads (nginx worker_processes, HAProxy
                    nbthread, kedge workers) [$WORKERS]
  --new-conn        a new TCP connection per request: wrk sends "Connection: close",
                    the proxy closes after each answer and wrk reconnects (accept,
                    connection set-up and teardown dominate; req/s = connections/s)
  --headers KIND    host: wrk's own request, Host alone; browser: each request also
                    carries the 11 fields a browser sends (User-Agent, Accept,
                    Accept-Language, Accept-Encoding, Referer, Cookie, sec-fetch-*,
                    Priority: a 520-byte head, as callgrind_request.sh --browser) [$HEADERS]
  --skip-build      do not run 'cargo build --release'
  --targets LIST    comma list out of kedge,nginx,haproxy,direct,floor [$TARGETS]
                    (floor: benches/floor.rs, bytes copied to a fixed upstream
                    connection on kedge's runtime, no HTTP: the bound for any proxy)
  --kedge-bin PATH  kedge binary [target/release/kedge]
  --floor-bin PATH  floor binary [built by 'cargo bench --no-run --bench floor']
  --floor-mode M    turns: one task per client relaying request then answer, one read
                    pending at a time (the cheapest; assumes one read per message, true
                    for this load); duplex: a copy task per direction [$FLOOR_MODE]
  --no-count        do not count syscalls per request (perf stat on tracepoints
                    during each target's warm-up run)
  --kedge-driver D  value of [proxy] driver in kedge's config [$KEDGE_DRIVER]
  --results-dir D   where to write results [benches/results]
  --quiet-wait S    before each run wait up to S s for other CPU load (builds,
                    neighbours) to drop below 10 % of a core; 0 = never [$QUIET_WAIT]
  --proxy-quota PCT give each proxy a CFS CPU quota of PCT % of one core (cgroup v1
                    or v2 cpu controller), so that the proxy, not the load
                    generator's core, is the bottleneck and req/s compares CPU
                    efficiency at an equal CPU budget; 0 = no quota [$PROXY_QUOTA]
  --max-other PCT   redo a measured run (up to 2x) when processes other than
                    proxy/backend/wrk used >= PCT % of a core during it;
                    0 = never [$MAX_OTHER]
Env overrides: PROXY_CPUS, BACKEND_CPUS, WRK_CPUS (taskset lists),
               PORT_KEDGE, PORT_NGINX, PORT_HAPROXY, PORT_FLOOR, PORT_BACKEND.
EOF
}

while (($#)); do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --workers) WORKERS="$2"; shift 2 ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        --new-conn) NEW_CONN=1; shift ;;
        --headers) HEADERS="$2"; shift 2 ;;
        --targets) TARGETS="$2"; shift 2 ;;
        --kedge-bin) KEDGE_BIN="$2"; shift 2 ;;
        --floor-bin) FLOOR_BIN="$2"; shift 2 ;;
        --floor-mode) FLOOR_MODE="$2"; shift 2 ;;
        --no-count) COUNT=0; shift ;;
        --kedge-driver) KEDGE_DRIVER="$2"; shift 2 ;;
        --results-dir) RESULTS_BASE="$2"; shift 2 ;;
        --quiet-wait) QUIET_WAIT="$2"; shift 2 ;;
        --max-other) MAX_OTHER="$2"; shift 2 ;;
        --proxy-quota) PROXY_QUOTA="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
WARMUP="${WARMUP:-$DURATION}"

[[ "$FLOOR_MODE" =~ ^(turns|duplex)$ ]] || { echo "--floor-mode must be turns or duplex" >&2; exit 2; }
[[ "$HEADERS" =~ ^(host|browser)$ ]] || { echo "--headers must be host or browser" >&2; exit 2; }
[[ "$QUIET_WAIT" =~ ^[0-9]+$ ]] || { echo "--quiet-wait must be an integer >= 0" >&2; exit 2; }
[[ "$PROXY_QUOTA" =~ ^[0-9]+$ ]] || { echo "--proxy-quota must be an integer >= 0" >&2; exit 2; }
[[ "$MAX_OTHER" =~ ^[0-9]+$ ]] || { echo "--max-other must be an integer >= 0" >&2; exit 2; }
for v in RUNS DURATION WARMUP CONNECTIONS THREADS WORKERS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "--${v,,} must be a positive integer (got '${!v}')" >&2; exit 2; }
done
NPROC="$(nproc)"
if ((WORKERS > NPROC)); then
    echo "--workers $WORKERS exceeds the $NPROC CPUs of this machine" >&2; exit 2
fi

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ----------------------------------------------------------------------------
# cleanup: every process started here is recorded in PIDS and stopped on exit
# ----------------------------------------------------------------------------
PIDS=()      # servers: they live until cleanup
WRK_PID=""   # the wrk run in flight, if any (cleared once reaped)
PERF_PID=""  # the perf stat counting a warm-up run, if any
TMP=""
cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    if [[ -n "$WRK_PID" ]]; then PIDS+=("$WRK_PID"); fi
    if [[ -n "$PERF_PID" ]]; then PIDS+=("$PERF_PID"); fi
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        pkill -TERM -P "$pid" 2>/dev/null || true   # direct children (e.g. wrk under its `time` subshell)
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid ignored SIGTERM; sending SIGKILL"
            pkill -KILL -P "$pid" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    [[ -n "$TMP" && -d "$TMP" ]] && rm -rf "$TMP"
    rmdir /sys/fs/cgroup/cpu/kedge-bench-* /sys/fs/cgroup/kedge-bench-* 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT
set -E
trap 'log "FAILED (exit $?) at line $LINENO: $BASH_COMMAND"' ERR
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ----------------------------------------------------------------------------
# 1. packages
# ----------------------------------------------------------------------------
NGINX_BIN=""; HAPROXY_BIN=""
find_bins() {
    NGINX_BIN="$(command -v nginx || true)"; [[ -z "$NGINX_BIN" && -x /usr/sbin/nginx ]] && NGINX_BIN=/usr/sbin/nginx
    HAPROXY_BIN="$(command -v haproxy || true)"; [[ -z "$HAPROXY_BIN" && -x /usr/sbin/haproxy ]] && HAPROXY_BIN=/usr/sbin/haproxy
    return 0
}
missing_pkgs() {
    find_bins
    local m=()
    [[ -n "$NGINX_BIN" ]] || m+=(nginx)
    [[ -n "$HAPROXY_BIN" ]] || m+=(haproxy)
    command -v wrk >/dev/null || m+=(wrk)
    command -v taskset >/dev/null || m+=(util-linux)
    command -v curl >/dev/null || m+=(curl)
    command -v python3 >/dev/null || m+=(python3)
    command -v pkill >/dev/null || m+=(procps)
    echo "${m[*]}"
}
ensure_packages                 # benches/lib.sh
stop_system_services nginx haproxy
find_bins

# ----------------------------------------------------------------------------
# kedge build / presence
# ----------------------------------------------------------------------------
IFS=',' read -r -a WANT <<<"$TARGETS"
for t in "${WANT[@]}"; do
    [[ "$t" =~ ^(kedge|nginx|haproxy|direct|floor)$ ]] || die "unknown target '$t' in --targets"
done
want() { local t; for t in "${WANT[@]}"; do [[ "$t" == "$1" ]] && return 0; done; return 1; }

SKIPPED=""
if want kedge; then
    if ((SKIP_BUILD == 0)); then
        command -v cargo >/dev/null || die "cargo not found (use --skip-build with an existing binary)"
        log "building kedge: cargo build --release"
        (cd "$ROOT" && cargo build --release)
    fi
    if [[ ! -x "$KEDGE_BIN" ]]; then
        log "kedge binary $KEDGE_BIN not found: kedge is SKIPPED, benchmarking the others"
        SKIPPED="kedge (binary $KEDGE_BIN absent)"
        WANT=("${WANT[@]/kedge/}")
    fi
fi
if want floor && [[ -z "$FLOOR_BIN" ]]; then
    command -v cargo >/dev/null || die "cargo not found (give --floor-bin or leave floor out of --targets)"
    log "building the floor: cargo bench --no-run --bench floor"
    FLOOR_BIN="$(bench_exe floor)"
fi
if want floor && [[ ! -x "$FLOOR_BIN" ]]; then
    log "floor binary '$FLOOR_BIN' not found: floor is SKIPPED"
    SKIPPED="${SKIPPED:+$SKIPPED; }floor (binary '$FLOOR_BIN' absent)"
    WANT=("${WANT[@]/floor/}")
fi
if ((COUNT)) && ! perf stat -x, -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
    log "perf cannot count the raw_syscalls:sys_enter tracepoint here: syscalls per request not counted"
    COUNT=0
fi
ACTIVE=()
for t in "${WANT[@]}"; do [[ -n "$t" ]] && ACTIVE+=("$t"); done
((${#ACTIVE[@]})) || die "nothing to benchmark"

# ----------------------------------------------------------------------------
# CPU pinning
# ----------------------------------------------------------------------------
OVERSUB=0
if ((NPROC >= WORKERS + 2)); then
    d_proxy="0-$((WORKERS - 1))"; d_backend="$WORKERS"; d_wrk="$((WORKERS + 1))"
elif ((NPROC >= WORKERS + 1)); then
    d_proxy="0-$((WORKERS - 1))"; d_backend="$WORKERS"; d_wrk="$WORKERS"
else
    d_proxy="0-$((NPROC - 1))"; d_backend="$d_proxy"; d_wrk="$d_proxy"; OVERSUB=1
fi
[[ "$d_proxy" == "0-0" ]] && d_proxy=0
PROXY_CPUS="${PROXY_CPUS:-$d_proxy}"
BACKEND_CPUS="${BACKEND_CPUS:-$d_backend}"
WRK_CPUS="${WRK_CPUS:-$d_wrk}"
log "pinning: proxy CPUs $PROXY_CPUS | backend CPUs $BACKEND_CPUS | wrk CPUs $WRK_CPUS$( ((OVERSUB)) && echo ' (OVERSUBSCRIBED)')"

# nginx worker_cpu_affinity: worker i -> CPU i (same cores kedge pins itself to)
nginx_affinity() {
    local n=$1 i j s masks=()
    for ((i = 0; i < n; i++)); do
        s=""
        for ((j = n - 1; j >= 0; j--)); do ((j == i)) && s+="1" || s+="0"; done
        masks+=("$s")
    done
    echo "${masks[*]}"
}

# ----------------------------------------------------------------------------
# helpers: ports, readiness
# ----------------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_ready() {   # name pid port logfile
    local name=$1 pid=$2 port=$3 logf=$4 i
    for i in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during startup; last log lines:"; tail -n 20 "$logf" >&2 || true
            die "$name failed to start"
        fi
        port_open "$port" && break
        sleep 0.1
    done
    port_open "$port" || { tail -n 20 "$logf" >&2 || true; die "$name not accepting on 127.0.0.1:$port after 10 s"; }
    local body
    body="$(curl -sS --max-time 3 "http://127.0.0.1:$port/" 2>&1)" || die "$name: GET / failed: $body"
    [[ "$body" == *"hello from backend"* ]] || die "$name: unexpected response body: $body"
    log "$name ready on 127.0.0.1:$port (pid $pid)"
}

for p in "$PORT_BACKEND" "$PORT_KEDGE" "$PORT_NGINX" "$PORT_HAPROXY" "$PORT_FLOOR"; do
    port_open "$p" && die "port 127.0.0.1:$p is already in use (set PORT_* to move)"
done

TMP="$(mktemp -d /tmp/kedge-bench.XXXXXX)"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$RESULTS_BASE/$STAMP-w$WORKERS$( ((NEW_CONN)) && echo -newconn || true)$([[ $HEADERS == browser ]] && echo -browser || true)"
mkdir -p "$OUT/wrk" "$OUT/conf"

# Enough file descriptors for the servers (inherited); HAProxy refuses to start
# when maxconn needs more fds than the hard limit allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"; [[ "$NOFILE" == unlimited ]] && NOFILE=1048576
HAPROXY_MAXCONN=$(( (NOFILE - 100) / 2 )); ((HAPROXY_MAXCONN > 10000)) && HAPROXY_MAXCONN=10000
((CONNECTIONS * 2 + 100 <= NOFILE)) || die "--connections $CONNECTIONS needs more fds than ulimit -n ($NOFILE)"

# ----------------------------------------------------------------------------
# 2. backend: private nginx, 1 worker, pinned
# ----------------------------------------------------------------------------
start_backend "benches/proxy.sh"

# ----------------------------------------------------------------------------
# 3. proxies
# ----------------------------------------------------------------------------
declare -A PID_OF PORT_OF
PORT_OF[direct]="$PORT_BACKEND"

limited() { limited_in kedge-bench "$@"; }   # name cmd... (benches/lib.sh)

start_nginx() {
    mkdir -p "$TMP/nginx"
    cat >"$TMP/nginx/nginx.conf" <<EOF
# kedge bench: nginx as reverse proxy (generated by benches/proxy.sh)
daemon off;
master_process on;
worker_processes $WORKERS;
worker_cpu_affinity $(nginx_affinity "$WORKERS");
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
$(nginx_common_http "$TMP/nginx")
    upstream backend {
        server 127.0.0.1:$PORT_BACKEND;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$PORT_NGINX backlog=4096;
        location / {
$(nginx_proxy_location)
        }
    }
}
EOF
    "$NGINX_BIN" -t -q -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" \
        || die "nginx proxy config invalid"
    limited nginx taskset -c "$PROXY_CPUS" "$NGINX_BIN" -p "$TMP/nginx" -e "$TMP/nginx/error.log" \
        -c "$TMP/nginx/nginx.conf" >"$TMP/nginx/stdout.log" 2>&1 &
    PID_OF[nginx]=$!; PIDS+=("$!"); PORT_OF[nginx]="$PORT_NGINX"
    wait_ready nginx "${PID_OF[nginx]}" "$PORT_NGINX" "$TMP/nginx/error.log"
    cp "$TMP/nginx/nginx.conf" "$OUT/conf/nginx.conf"
}

start_haproxy() {
    mkdir -p "$TMP/haproxy"
    local cpumap
    if ((WORKERS == 1)); then cpumap="cpu-map 1/1 0"
    else cpumap="cpu-map auto:1/1-$WORKERS 0-$((WORKERS - 1))"; fi
    cat >"$TMP/haproxy/haproxy.cfg" <<EOF
# kedge bench: HAProxy as reverse proxy (generated by benches/proxy.sh)
global
    nbthread $WORKERS
    $cpumap
    maxconn $HAPROXY_MAXCONN
    pidfile $TMP/haproxy/haproxy.pid

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:$PORT_HAPROXY
    # What an ingress sends upstream; kedge always does it.
    option forwardfor
    unique-id-format %{+X}o%ci%cp%fi%fp%Ts%rt%pid
    http-request set-header X-Request-ID %[unique-id] unless { req.hdr(x-request-id) -m found }
    http-request set-header X-Real-IP %[src]
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Port %[dst_port]
    default_backend be

backend be
    server s1 127.0.0.1:$PORT_BACKEND
EOF
    "$HAPROXY_BIN" -c -q -f "$TMP/haproxy/haproxy.cfg" || die "haproxy config invalid"
    # -db: stay in the foreground (no daemon, no master-worker) so $! is haproxy
    limited haproxy taskset -c "$PROXY_CPUS" "$HAPROXY_BIN" -db -f "$TMP/haproxy/haproxy.cfg" \
        >"$TMP/haproxy/haproxy.log" 2>&1 &
    PID_OF[haproxy]=$!; PIDS+=("$!"); PORT_OF[haproxy]="$PORT_HAPROXY"
    wait_ready haproxy "${PID_OF[haproxy]}" "$PORT_HAPROXY" "$TMP/haproxy/haproxy.log"
    cp "$TMP/haproxy/haproxy.cfg" "$OUT/conf/haproxy.cfg"
}

start_kedge() {
    mkdir -p "$TMP/kedge"
    kedge_bench_config benches/proxy.sh "$WORKERS" "$KEDGE_DRIVER" "$PORT_KEDGE" "$PORT_BACKEND" \
        >"$TMP/kedge/kedge.toml"
    limited kedge taskset -c "$PROXY_CPUS" "$KEDGE_BIN" run --config "$TMP/kedge/kedge.toml" \
        >"$TMP/kedge/kedge.log" 2>&1 &
    PID_OF[kedge]=$!; PIDS+=("$!"); PORT_OF[kedge]="$PORT_KEDGE"
    wait_ready kedge "${PID_OF[kedge]}" "$PORT_KEDGE" "$TMP/kedge/kedge.log"
    cp "$TMP/kedge/kedge.toml" "$OUT/conf/kedge.toml"
}

# The floor: one thread per worker on kedge's runtime and driver, thread i pinned to the i-th
# CPU of PROXY_CPUS (where kedge pins worker i), copying bytes to one upstream connection per
# client, in --floor-mode. Its driver follows --kedge-driver.
start_floor() {
    mkdir -p "$TMP/floor"
    local cores
    cores="$(python3 -c 'import sys
out = []
for part in sys.argv[1].split(","):
    a, _, b = part.partition("-")
    out += range(int(a), int(b or a) + 1)
print(",".join(map(str, out[:int(sys.argv[2])])))' "$PROXY_CPUS" "$WORKERS")"
    limited floor taskset -c "$PROXY_CPUS" "$FLOOR_BIN" --listen "127.0.0.1:$PORT_FLOOR" \
        --upstream "127.0.0.1:$PORT_BACKEND" --driver "$KEDGE_DRIVER" --cores "$cores" --mode "$FLOOR_MODE" \
        >"$TMP/floor/floor.log" 2>&1 &
    PID_OF[floor]=$!; PIDS+=("$!"); PORT_OF[floor]="$PORT_FLOOR"
    wait_ready floor "${PID_OF[floor]}" "$PORT_FLOOR" "$TMP/floor/floor.log"
    cp "$TMP/floor/floor.log" "$OUT/conf/floor.log"
}

for t in "${ACTIVE[@]}"; do
    case "$t" in
        kedge) start_kedge ;;
        nginx) start_nginx ;;
        haproxy) start_haproxy ;;
        floor) start_floor ;;
        direct) ;;
    esac
done

# ----------------------------------------------------------------------------
# metadata
# ----------------------------------------------------------------------------
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)"
V_NGINX="$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')"
V_HAPROXY="$("$HAPROXY_BIN" -v 2>&1 | awk 'NR == 1 {print "haproxy " $3}')"
V_WRK="$( (wrk -v 2>&1 || true) | awk 'NR == 1 {print "wrk " $2}')"   # wrk -v exits 1
V_KEDGE=""
if [[ " ${ACTIVE[*]} " == *" kedge "* ]]; then
    V_KEDGE="$("$KEDGE_BIN" --version 2>/dev/null | head -n1 || true)"; V_KEDGE="${V_KEDGE:-kedge (version unknown)}"
    V_KEDGE="$V_KEDGE @ $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') (driver=$KEDGE_DRIVER)"
fi
WRK_HDR=()
((NEW_CONN)) && WRK_HDR=(-H "Connection: close")
if [[ $HEADERS == browser ]]; then
    for field in "${BROWSER_FIELDS[@]}"; do WRK_HDR+=(-H "$field"); done
fi
WRK_CMD="wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency$( ((${#WRK_HDR[@]})) && printf " %q" "${WRK_HDR[@]}" || true)"
BENCH_COMMAND="$ORIG_CMD" BENCH_WRK_CMD="$WRK_CMD" BENCH_CPU_MODEL="$CPU_MODEL" \
BENCH_VERSIONS="$(printf '%s; ' "$V_NGINX" "$V_HAPROXY" "$V_WRK" ${V_KEDGE:+"$V_KEDGE"} | sed 's/; $//')" \
python3 - "$OUT/meta.json" <<EOF
import json, os, sys, datetime, platform
json.dump({
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "command": os.environ["BENCH_COMMAND"],
    "wrk_cmd": os.environ["BENCH_WRK_CMD"],
    "nproc": $NPROC, "cpu_model": os.environ["BENCH_CPU_MODEL"],
    "kernel": platform.release(),
    "workers": $WORKERS, "runs": $RUNS, "duration_s": $DURATION, "warmup_s": $WARMUP,
    "connections": $CONNECTIONS, "wrk_threads": $THREADS,
    "proxy_cpus": "$PROXY_CPUS", "backend_cpus": "$BACKEND_CPUS", "wrk_cpus": "$WRK_CPUS",
    "oversubscribed": bool($OVERSUB),
    "proxy_quota_pct": $PROXY_QUOTA,
    "floor_mode": "$FLOOR_MODE",
    "headers": "$HEADERS",
    "ports": {"kedge": $PORT_KEDGE, "nginx": $PORT_NGINX, "haproxy": $PORT_HAPROXY, "floor": $PORT_FLOOR, "backend": $PORT_BACKEND},
    "counted": bool($COUNT),
    "targets": "${ACTIVE[*]}".split(),
    "skipped": "$SKIPPED",
    "versions": os.environ["BENCH_VERSIONS"],
}, open(sys.argv[1], "w"), indent=2)
EOF

# ----------------------------------------------------------------------------
# 5. load
# ----------------------------------------------------------------------------
TSV="$OUT/runs.tsv"
REPORT="$BENCH_DIR/bench_report.py"

# What perf counts during a warm-up run, on every thread of the proxy's processes: all
# syscalls, io_uring_enter calls, SQEs the kernel took, reads/writes that found their
# socket not ready and armed a poll (io_uring's extra wake-up), completions posted (CQEs: per
# io_uring_enter, how much one wake-up reaps) and context switches (how often the proxy slept).
PERF_EVENTS="raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,io_uring:io_uring_submit_req,io_uring:io_uring_poll_arm,io_uring:io_uring_complete,context-switches"

SEQ=0
run_one() {   # target phase run_no seconds [max_other]
    local t=$1 phase=$2 n=$3 secs=$4 max_other=${5:-0} tag snaps=() proxy_arg=() perf_arg=()
    SEQ=$((SEQ + 1))
    tag="$(printf '%03d' "$SEQ")-$t-$phase-$n"   # chronological order in results/*/wrk/
    snaps=(--pid "backend=$BACKEND_PID")
    if [[ "$t" != direct ]]; then
        snaps+=(--pid "proxy=${PID_OF[$t]}"); proxy_arg=(--proxy proxy)
        kill -0 "${PID_OF[$t]}" 2>/dev/null || die "$t (pid ${PID_OF[$t]}) is no longer running"
    fi
    if ((QUIET_WAIT > 0)); then
        python3 "$REPORT" quiet --max-busy 10 --timeout "$QUIET_WAIT" || die "quiet check failed"
    fi
    python3 "$REPORT" snap --out "$TMP/$tag.before" "${snaps[@]}" || die "snapshot failed"
    if ((COUNT)) && [[ "$phase" == warmup && "$t" != direct ]]; then
        # Counting (no sampling) tracepoints slows every syscall a little: only the warm-up
        # runs are counted, the measured runs are not.
        local pids
        pids="$( { echo "${PID_OF[$t]}"; pgrep -P "${PID_OF[$t]}" || true; } | paste -sd, -)"
        perf stat -x, -o "$TMP/$tag.perf" -e "$PERF_EVENTS" -p "$pids" >/dev/null 2>&1 &
        PERF_PID=$!
        perf_arg=(--perf "$TMP/$tag.perf")
        # perf attaches to every thread before wrk starts; the idle proxy's few syscalls
        # meanwhile are noise against a run's hundreds of thousands of requests.
        sleep 0.5
    fi
    # wrk runs in the background so the cleanup trap can stop it; bash's `time`
    # gives wrk's own CPU time (user+sys) for the "wrk CPU %" column.
    (
        TIMEFORMAT='%3R %3U %3S'
        time taskset -c "$WRK_CPUS" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" --latency "${WRK_HDR[@]}" \
            "http://127.0.0.1:${PORT_OF[$t]}/" >"$OUT/wrk/$tag.txt" 2>&1
    ) 2>"$TMP/$tag.time" &
    WRK_PID=$!
    local wrc=0; wait "$WRK_PID" || wrc=$?
    WRK_PID=""
    python3 "$REPORT" snap --out "$TMP/$tag.after" "${snaps[@]}" || die "snapshot failed"
    if [[ -n "$PERF_PID" ]]; then
        kill -INT "$PERF_PID" 2>/dev/null || true
        wait "$PERF_PID" 2>/dev/null || true
        PERF_PID=""
    fi
    ((wrc == 0)) || { cat "$OUT/wrk/$tag.txt" >&2; die "wrk failed against $t (exit $wrc)"; }
    local rc=0
    python3 "$REPORT" record --tsv "$TSV" --target "$t" --phase "$phase" --run "$n" \
        --before "$TMP/$tag.before" --after "$TMP/$tag.after" --max-other "$max_other" \
        --wrk "$OUT/wrk/$tag.txt" --time "$TMP/$tag.time" "${proxy_arg[@]}" "${perf_arg[@]}" >&2 || rc=$?
    return "$rc"
}

# A measured run during which other processes (a compiler, a neighbour) used
# >= MAX_OTHER % of a core is kept as "run-noisy" and repeated, up to RETRIES
# times; the last attempt is kept whatever happened (and flagged in the report).
RETRIES=2
measured_run() {   # target run_no
    local attempt rc
    for ((attempt = 0; attempt <= RETRIES; attempt++)); do
        rc=0
        if ((attempt < RETRIES && MAX_OTHER > 0)); then
            run_one "$1" run "$2" "$DURATION" "$MAX_OTHER" || rc=$?
        else
            run_one "$1" run "$2" "$DURATION" 0 || rc=$?
        fi
        ((rc == 3)) || return "$rc"
    done
}

log "targets: ${ACTIVE[*]}; $RUNS runs x ${DURATION}s each (+1 warm-up of ${WARMUP}s per target), -c$CONNECTIONS -t$THREADS"
log "results -> $OUT"
for t in "${ACTIVE[@]}"; do run_one "$t" warmup 0 "$WARMUP"; done
# Round r runs every target once; even rounds run them in reverse order, so no target always
# runs first after another's load (or last before a drift of the machine).
REVERSED=()
for ((i = ${#ACTIVE[@]} - 1; i >= 0; i--)); do REVERSED+=("${ACTIVE[$i]}"); done
for ((r = 1; r <= RUNS; r++)); do
    if ((r % 2)); then order=("${ACTIVE[@]}"); else order=("${REVERSED[@]}"); fi
    for t in "${order[@]}"; do measured_run "$t" "$r"; done
done

# ----------------------------------------------------------------------------
# 6. report
# ----------------------------------------------------------------------------
python3 "$REPORT" summary --tsv "$TSV" --meta "$OUT/meta.json" | tee "$OUT/summary.md"
log "raw per-run numbers: $TSV ; wrk outputs: $OUT/wrk/ ; configs: $OUT/conf/"
