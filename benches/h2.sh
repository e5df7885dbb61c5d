#!/usr/bin/env bash
# kedge vs nginx as HTTP/2 front ends (h2c with prior knowledge, and h2 over TLS) to the same
# HTTP/1.1 backend.
#
#   bash benches/h2.sh [--runs N] [--duration S] [--clients C] [--streams M]
#                      [--modes h2c,tls|all] [--targets kedge,nginx] [--workers N] [--skip-build]
#
# Load from h2load (nghttp2-client). Modes: h2c, tls: -c C connections with -m M concurrent
# streams each; the variants, all over TLS: c50m10 (-c50 -m10), m100 (-c C -m100), body64k (a
# 64 KiB response body), churn (new connections at --churn-rate per second, one request each),
# grpc (unary gRPC calls to benches/grpc_upstream.rs, nginx with grpc_pass). `all` = every mode.
# Same backend and pinning as benches/proxy.sh (proxy on CPU 0, backend and h2load on CPU 1 with
# one worker on 2 CPUs), the same ECDSA P-256 certificate for both proxies (openssl, as in
# benches/tls.sh). Private instances under a temp dir, 127.0.0.1 ports 18090 (backend),
# 18480/18482 (kedge h2c/TLS), 18481/18483 (nginx h2c/TLS); everything started here is stopped
# on exit.
set -euo pipefail

# ----------------------------------------------------------------------------
# defaults / arguments
# ----------------------------------------------------------------------------
RUNS=5
DURATION=5
WARMUP=2
CLIENTS=20
STREAMS=10
LOAD_THREADS=1
MODES="h2c,tls"
ALL_MODES="h2c,tls,c50m10,m100,body64k,churn,grpc"
CHURN_RATE=200
PORT_GRPC="${PORT_GRPC:-18091}"
# nginx's idle upstream connections per worker (`keepalive`); kedge keeps 128 per endpoint, and
# up to 8x as many for a burst until its next pool sweep.
NGINX_KEEPALIVE="${NGINX_KEEPALIVE:-64}"
GRPC_BIN=""
TARGETS="kedge,nginx"
WORKERS=1
SKIP_BUILD=0
QUIET_WAIT=120
MAX_OTHER=10
PROXY_QUOTA=0
KEDGE_DRIVER="${KEDGE_DRIVER:-auto}"
SNI="bench.example.com"

PORT_KEDGE="${PORT_KEDGE:-18480}"
PORT_NGINX="${PORT_NGINX:-18481}"
PORT_KEDGE_TLS="${PORT_KEDGE_TLS:-18482}"
PORT_NGINX_TLS="${PORT_NGINX_TLS:-18483}"
PORT_BACKEND="${PORT_BACKEND:-18090}"

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=benches/lib.sh
source "$BENCH_DIR/lib.sh"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
KEDGE_BIN="$ROOT/target/release/kedge"
RESULTS_BASE="$BENCH_DIR/results"
ORIG_CMD="bash benches/h2.sh $*"

usage() {
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<EOF

Options (defaults in brackets):
  --runs N          measured runs per target, kedge and nginx alternating [$RUNS]
  --duration S      seconds per measured h2load run (h2load -D) [$DURATION]
  --warmup S        seconds of the one warm-up run per target [$WARMUP]
  --clients C       h2load connections (-c) [$CLIENTS]
  --streams M       concurrent streams per connection (-m) [$STREAMS]
  --load-threads T  h2load threads (-t) [$LOAD_THREADS]
  --modes LIST      comma list out of $ALL_MODES, or all [$MODES]
  --churn-rate R    new connections per second in the churn mode [$CHURN_RATE]
  --grpc-bin PATH   gRPC upstream [built by cargo bench --no-run --bench grpc_upstream]
  --targets LIST    comma list out of kedge,nginx [$TARGETS]
  --workers N       kedge workers = nginx worker_processes [$WORKERS]
  --skip-build      use the existing target/release/kedge
  --kedge-bin PATH  kedge binary [target/release/kedge]
  --kedge-driver D  [proxy] driver of kedge [$KEDGE_DRIVER]
  --results-dir D   where to write results [benches/results]
  --quiet-wait S    wait up to S s for an idle machine before each run; 0 = never [$QUIET_WAIT]
  --max-other PCT   redo a run (up to 2x) when foreign processes used >= PCT % of a
                    core during it; 0 = never [$MAX_OTHER]
  --proxy-quota PCT CFS quota per proxy in % of one core (as in proxy.sh); 0 = none [$PROXY_QUOTA]
Env overrides: PROXY_CPUS, BACKEND_CPUS, LOAD_CPUS (taskset lists), PORT_KEDGE, PORT_NGINX,
               PORT_KEDGE_TLS, PORT_NGINX_TLS, PORT_BACKEND, PORT_GRPC, NGINX_KEEPALIVE (nginx's
               upstream keepalive) [$NGINX_KEEPALIVE].
EOF
}

while (($#)); do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --streams) STREAMS="$2"; shift 2 ;;
        --load-threads) LOAD_THREADS="$2"; shift 2 ;;
        --modes) MODES="$2"; shift 2 ;;
        --churn-rate) CHURN_RATE="$2"; shift 2 ;;
        --grpc-bin) GRPC_BIN="$2"; shift 2 ;;
        --targets) TARGETS="$2"; shift 2 ;;
        --workers) WORKERS="$2"; shift 2 ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        --kedge-bin) KEDGE_BIN="$2"; shift 2 ;;
        --kedge-driver) KEDGE_DRIVER="$2"; shift 2 ;;
        --results-dir) RESULTS_BASE="$2"; shift 2 ;;
        --quiet-wait) QUIET_WAIT="$2"; shift 2 ;;
        --max-other) MAX_OTHER="$2"; shift 2 ;;
        --proxy-quota) PROXY_QUOTA="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in RUNS DURATION WARMUP CLIENTS STREAMS LOAD_THREADS WORKERS CHURN_RATE; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "--${v,,} must be a positive integer (got '${!v}')" >&2; exit 2; }
done
for v in QUIET_WAIT MAX_OTHER PROXY_QUOTA; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "${v,,} must be an integer >= 0" >&2; exit 2; }
done
[[ "$MODES" == all ]] && MODES="$ALL_MODES"
IFS=',' read -r -a MODE_LIST <<<"$MODES"
for m in "${MODE_LIST[@]}"; do
    [[ ",$ALL_MODES," == *",$m,"* ]] || { echo "unknown mode '$m' in --modes" >&2; exit 2; }
done
want_mode() { [[ ",$MODES," == *",$1,"* ]]; }
IFS=',' read -r -a PROXY_LIST <<<"$TARGETS"
for t in "${PROXY_LIST[@]}"; do
    [[ "$t" == kedge || "$t" == nginx ]] || { echo "unknown target '$t' in --targets" >&2; exit 2; }
done
want() { [[ ",$TARGETS," == *",$1,"* ]]; }
NPROC="$(nproc)"
((WORKERS <= NPROC)) || { echo "--workers $WORKERS exceeds the $NPROC CPUs of this machine" >&2; exit 2; }

log() { printf '[h2-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ----------------------------------------------------------------------------
# cleanup (as in proxy.sh): every process started here is in PIDS
# ----------------------------------------------------------------------------
PIDS=()
LOAD_PID=""
TMP=""
cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    if [[ -n "$LOAD_PID" ]]; then PIDS+=("$LOAD_PID"); fi
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        pkill -TERM -P "$pid" 2>/dev/null || true   # h2load under its `time` subshell
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
    rmdir /sys/fs/cgroup/cpu/kedge-h2bench-* /sys/fs/cgroup/kedge-h2bench-* 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT
set -E
trap 'log "FAILED (exit $?) at line $LINENO: $BASH_COMMAND"' ERR
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ----------------------------------------------------------------------------
# 1. packages: nginx (with http_v2), h2load, openssl, curl (with HTTP/2), ...
# ----------------------------------------------------------------------------
NGINX_BIN=""
find_bins() {
    NGINX_BIN="$(command -v nginx || true)"; [[ -z "$NGINX_BIN" && -x /usr/sbin/nginx ]] && NGINX_BIN=/usr/sbin/nginx
    return 0
}
missing_pkgs() {
    find_bins
    local m=()
    [[ -n "$NGINX_BIN" ]] || m+=(nginx)
    command -v h2load >/dev/null || m+=(nghttp2-client)
    command -v openssl >/dev/null || m+=(openssl)
    command -v taskset >/dev/null || m+=(util-linux)
    command -v curl >/dev/null || m+=(curl)
    command -v python3 >/dev/null || m+=(python3)
    command -v pkill >/dev/null || m+=(procps)
    echo "${m[*]}"
}
ensure_packages                 # benches/lib.sh
stop_system_services nginx
find_bins
"$NGINX_BIN" -V 2>&1 | grep -q -- --with-http_v2_module || die "$NGINX_BIN has no http_v2_module"
"$NGINX_BIN" -V 2>&1 | grep -q -- --with-http_ssl_module || die "$NGINX_BIN has no http_ssl_module"
curl --version | grep -qi 'nghttp2' || die "curl has no HTTP/2 (nghttp2): it checks both proxies before the runs"
# nginx >= 1.25.1 turns HTTP/2 on with `http2 on;` (and then also takes h2c with prior knowledge
# on a plain listener); before, with the `http2` parameter of `listen`.
NGINX_VERSION="$("$NGINX_BIN" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')"
if printf '%s\n' 1.25.1 "$NGINX_VERSION" | sort -V -C; then NGINX_H2_ON=1; else NGINX_H2_ON=0; fi

# ----------------------------------------------------------------------------
# 2. kedge
# ----------------------------------------------------------------------------
if want kedge && ((SKIP_BUILD == 0)); then
    command -v cargo >/dev/null || die "cargo not found (use --skip-build with an existing binary)"
    log "building kedge: cargo build --release --bin kedge"
    (cd "$ROOT" && cargo build --release --bin kedge)
fi
! want kedge || [[ -x "$KEDGE_BIN" ]] || die "kedge binary $KEDGE_BIN not found"
if want_mode grpc && [[ -z "$GRPC_BIN" ]]; then
    command -v cargo >/dev/null || die "cargo not found (use --grpc-bin with an existing binary)"
    log "building the gRPC upstream: cargo bench --no-run --bench grpc_upstream"
    GRPC_BIN="$(bench_exe grpc_upstream)"   # benches/lib.sh
fi
! want_mode grpc || [[ -x "$GRPC_BIN" ]] || die "gRPC upstream binary '$GRPC_BIN' not found"

# ----------------------------------------------------------------------------
# CPU pinning (as in proxy.sh)
# ----------------------------------------------------------------------------
OVERSUB=0
if ((NPROC >= WORKERS + 2)); then
    d_proxy="0-$((WORKERS - 1))"; d_backend="$WORKERS"; d_load="$((WORKERS + 1))"
elif ((NPROC >= WORKERS + 1)); then
    d_proxy="0-$((WORKERS - 1))"; d_backend="$WORKERS"; d_load="$WORKERS"
else
    d_proxy="0-$((NPROC - 1))"; d_backend="$d_proxy"; d_load="$d_proxy"; OVERSUB=1
fi
[[ "$d_proxy" == "0-0" ]] && d_proxy=0
PROXY_CPUS="${PROXY_CPUS:-$d_proxy}"
BACKEND_CPUS="${BACKEND_CPUS:-$d_backend}"
LOAD_CPUS="${LOAD_CPUS:-$d_load}"
log "pinning: proxy CPUs $PROXY_CPUS | backend CPUs $BACKEND_CPUS | h2load CPUs $LOAD_CPUS$( ((OVERSUB)) && echo ' (OVERSUBSCRIBED)')"

nginx_affinity() {   # worker i -> CPU i (the cores kedge pins its workers to)
    local n=$1 i j s masks=()
    for ((i = 0; i < n; i++)); do
        s=""
        for ((j = n - 1; j >= 0; j--)); do ((j == i)) && s+="1" || s+="0"; done
        masks+=("$s")
    done
    echo "${masks[*]}"
}

# ----------------------------------------------------------------------------
# helpers: ports, readiness (the backend's body over HTTP/2, checked with curl)
# ----------------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_ready() {   # name pid port logfile [h2c|tls|http]
    local name=$1 pid=$2 port=$3 logf=$4 how=${5:-http} i out
    for i in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during startup; last log lines:"; tail -n 20 "$logf" >&2 || true
            die "$name failed to start"
        fi
        port_open "$port" && break
        sleep 0.1
    done
    port_open "$port" || { tail -n 20 "$logf" >&2 || true; die "$name not accepting on 127.0.0.1:$port after 10 s"; }
    case "$how" in
        h2c) out="$(curl -sS --max-time 3 --http2-prior-knowledge -w '\n%{http_version}' "http://127.0.0.1:$port/" 2>&1)" ;;
        tls) out="$(curl -sS --max-time 3 --http2 --cacert "$TMP/pki/ecdsa/ca.pem" --resolve "$SNI:$port:127.0.0.1" \
                -w '\n%{http_version}' "https://$SNI:$port/" 2>&1)" ;;
        *) out="$(curl -sS --max-time 3 -w '\n1.1' "http://127.0.0.1:$port/" 2>&1)" ;;
    esac || die "$name: GET / ($how) failed: $out"
    [[ "$out" == *"hello from backend"* ]] || die "$name: unexpected response: $out"
    if [[ "$how" != http && "${out##*$'\n'}" != 2 ]]; then
        die "$name: $how answered over HTTP/${out##*$'\n'}, not HTTP/2"
    fi
    log "$name ready on 127.0.0.1:$port ($how, pid $pid)"
}

for p in "$PORT_BACKEND" "$PORT_KEDGE" "$PORT_NGINX" "$PORT_KEDGE_TLS" "$PORT_NGINX_TLS" "$PORT_GRPC"; do
    port_open "$p" && die "port 127.0.0.1:$p is already in use (set PORT_* to move)"
done

TMP="$(mktemp -d /tmp/kedge-h2bench.XXXXXX)"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$RESULTS_BASE/$STAMP-h2-w$WORKERS"
mkdir -p "$OUT/raw" "$OUT/conf"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"; [[ "$NOFILE" == unlimited ]] && NOFILE=1048576

# ----------------------------------------------------------------------------
# 3. certificate (ECDSA P-256, benches/lib.sh), backend (benches/lib.sh), proxies
# ----------------------------------------------------------------------------
gen_certs ecdsa
start_backend "benches/h2.sh"

declare -A PID_OF PORT_OF
for m in ${ALL_MODES//,/ }; do
    PORT_OF[kedge-$m]="$PORT_KEDGE_TLS"; PORT_OF[nginx-$m]="$PORT_NGINX_TLS"
done
PORT_OF[kedge-h2c]="$PORT_KEDGE"; PORT_OF[nginx-h2c]="$PORT_NGINX"
set_pids() {   # proxy pid
    local m
    for m in ${ALL_MODES//,/ }; do PID_OF[$1-$m]=$2; done
}

limited() { limited_in kedge-h2bench "$@"; }   # name cmd... (benches/lib.sh)

# Both proxies: HTTP/2 to clients with 128 concurrent streams per connection (both defaults),
# no limit on streams per connection that a run could reach (h2load does not reconnect after a
# GOAWAY), HTTP/1.1 with keep-alive to the backend, the forwarded headers an ingress sets.
start_nginx() {
    local d="$TMP/nginx" h2_listen=" http2" h2_on=""
    if ((NGINX_H2_ON)); then h2_listen=""; h2_on="http2 on;"; fi
    mkdir -p "$d"
    cat >"$d/nginx.conf" <<EOF
# kedge HTTP/2 bench: nginx as HTTP/2 front end (generated by benches/h2.sh)
daemon off;
master_process on;
worker_processes $WORKERS;
worker_cpu_affinity $(nginx_affinity "$WORKERS");
worker_rlimit_nofile $NOFILE;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
$(nginx_common_http "$d")
    http2_max_concurrent_streams 128;
    # TLS as kedge does it (see benches/tls.sh).
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
    ssl_prefer_server_ciphers on;
    ssl_session_cache shared:SSL:10m;
    upstream backend {
        server 127.0.0.1:$PORT_BACKEND;
        keepalive $NGINX_KEEPALIVE;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    upstream grpc_backend {
        server 127.0.0.1:$PORT_GRPC;
        keepalive $NGINX_KEEPALIVE;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$PORT_NGINX$h2_listen backlog=4096;
        listen 127.0.0.1:$PORT_NGINX_TLS ssl$h2_listen backlog=4096;
        $h2_on
        server_name _;
        ssl_certificate     $TMP/pki/ecdsa/cert.pem;
        ssl_certificate_key $TMP/pki/ecdsa/key.pem;
        location / {
$(nginx_proxy_location)
        }
        # The gRPC mode: h2c to benches/grpc_upstream.rs, the ingress-nginx GRPC backend-protocol.
        location /bench.Bench/ {
            grpc_pass grpc://grpc_backend;
            grpc_set_header X-Request-ID \$request_id;
            grpc_set_header X-Real-IP \$remote_addr;
            grpc_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            grpc_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
    "$NGINX_BIN" -t -q -p "$d" -e "$d/error.log" -c "$d/nginx.conf" || die "nginx config invalid"
    limited nginx taskset -c "$PROXY_CPUS" "$NGINX_BIN" -p "$d" -e "$d/error.log" -c "$d/nginx.conf" \
        >"$d/stdout.log" 2>&1 &
    local pid=$!; PIDS+=("$pid"); set_pids nginx "$pid"
    wait_ready "nginx" "$pid" "$PORT_NGINX" "$d/error.log" h2c
    wait_ready "nginx" "$pid" "$PORT_NGINX_TLS" "$d/error.log" tls
    cp "$d/nginx.conf" "$OUT/conf/nginx.conf"
}

start_kedge() {
    local d="$TMP/kedge"
    mkdir -p "$d/state"
    cat >"$d/kedge.toml" <<EOF
# kedge HTTP/2 bench config (generated by benches/h2.sh)
[proxy]
workers = $WORKERS
driver = "$KEDGE_DRIVER"
state_dir = "$d/state"

[admin]
enabled = false

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

[[route]]
path = "/bench.Bench/"
upstreams = ["127.0.0.1:$PORT_GRPC"]
upstream_protocol = "grpc"
EOF
    limited kedge taskset -c "$PROXY_CPUS" "$KEDGE_BIN" run --config "$d/kedge.toml" >>"$d/kedge.log" 2>&1 &
    local pid=$!; PIDS+=("$pid"); set_pids kedge "$pid"
    wait_ready "kedge" "$pid" "$PORT_KEDGE" "$d/kedge.log" h2c
    wait_ready "kedge" "$pid" "$PORT_KEDGE_TLS" "$d/kedge.log" tls
    cp "$d/kedge.toml" "$OUT/conf/kedge.toml"
}

GRPC_PID=""
if want_mode grpc; then
    taskset -c "$BACKEND_CPUS" "$GRPC_BIN" --addr "127.0.0.1:$PORT_GRPC" >"$TMP/grpc_upstream.log" 2>&1 &
    GRPC_PID=$!; PIDS+=("$GRPC_PID")
    for _ in $(seq 100); do port_open "$PORT_GRPC" && break; sleep 0.1; done
    port_open "$PORT_GRPC" || die "gRPC upstream not listening on 127.0.0.1:$PORT_GRPC"
    # One unary call's request: an empty, uncompressed message.
    printf '\0\0\0\0\0' >"$TMP/grpc-request.bin"
fi
if want kedge; then start_kedge; fi
if want nginx; then start_nginx; fi

# h2load's load arguments for a mode and a duration (the URL and gRPC fields come in run_one).
load_args() {   # mode seconds
    case "$1" in
        c50m10) echo "-c 50 -m 10 -D $2" ;;
        m100) echo "-c $CLIENTS -m 100 -D $2" ;;
        # -r: CHURN_RATE new connections a second, each with one request, for about $2 s.
        churn) echo "-r $CHURN_RATE -c $((CHURN_RATE * $2)) -n $((CHURN_RATE * $2)) -m 1" ;;
        *) echo "-c $CLIENTS -m $STREAMS -D $2" ;;
    esac
}

# ----------------------------------------------------------------------------
# metadata
# ----------------------------------------------------------------------------
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)"
V_KEDGE="kedge not measured"
if want kedge; then
    V_KEDGE="$("$KEDGE_BIN" --version 2>/dev/null | head -n1 || true)"
    V_KEDGE="${V_KEDGE:-kedge} @ $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$( [[ -z "$(git -C "$ROOT" status --porcelain -- src 2>/dev/null)" ]] || echo '+dirty src') (driver=$KEDGE_DRIVER)"
fi
V_ALL="nginx $NGINX_VERSION; $(h2load --version 2>&1 | head -n1); $V_KEDGE"
LOAD_CMD="$(for m in "${MODE_LIST[@]}"; do printf '%s: h2load %s -t %s; ' "$m" "$(load_args "$m" "$DURATION")" "$LOAD_THREADS"; done)"
BENCH_COMMAND="$ORIG_CMD" BENCH_CPU_MODEL="$CPU_MODEL" BENCH_VERSIONS="$V_ALL" BENCH_LOAD_CMD="$LOAD_CMD" \
python3 - "$OUT/meta.json" <<EOF
import json, os, sys, datetime, platform
json.dump({
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "command": os.environ["BENCH_COMMAND"], "load_cmd": os.environ["BENCH_LOAD_CMD"],
    "nproc": $NPROC, "cpu_model": os.environ["BENCH_CPU_MODEL"], "kernel": platform.release(),
    "workers": $WORKERS, "runs": $RUNS, "duration_s": $DURATION, "warmup_s": $WARMUP,
    "clients": $CLIENTS, "streams": $STREAMS, "modes": "${MODE_LIST[*]}".split(),
    "proxy_cpus": "$PROXY_CPUS", "backend_cpus": "$BACKEND_CPUS", "load_cpus": "$LOAD_CPUS",
    "oversubscribed": bool($OVERSUB), "proxy_quota_pct": $PROXY_QUOTA,
    "versions": os.environ["BENCH_VERSIONS"],
}, open(sys.argv[1], "w"), indent=2)
EOF

# ----------------------------------------------------------------------------
# 4. load
# ----------------------------------------------------------------------------
TSV="$OUT/runs.tsv"
REPORT="$BENCH_DIR/bench_report.py"
H2_REPORT="$BENCH_DIR/h2_report.py"
SEQ=0

# One h2load run against target ("kedge-h2c", "nginx-tls", ...); appends a row to runs.tsv.
# Returns 3 when the run was disturbed by foreign CPU load (other CPU >= max_other).
run_one() {   # target phase run_no seconds max_other
    local t=$1 phase=$2 n=$3 secs=$4 max_other=$5 tag url mode=${1#*-}
    SEQ=$((SEQ + 1))
    tag="$(printf '%03d' "$SEQ")-$t-$phase-$n"
    kill -0 "${PID_OF[$t]}" 2>/dev/null || die "$t (pid ${PID_OF[$t]}) is no longer running"
    if ((QUIET_WAIT > 0)); then
        python3 "$REPORT" quiet --max-busy 10 --timeout "$QUIET_WAIT" || die "quiet check failed"
    fi
    local path=/ backend_pid=$BACKEND_PID args
    read -r -a args <<<"$(load_args "$mode" "$secs")"
    case "$mode" in
        body64k) path=/64k ;;
        grpc) path=/bench.Bench/Call; backend_pid=$GRPC_PID
              args+=(-d "$TMP/grpc-request.bin" -H "content-type: application/grpc" -H "te: trailers") ;;
    esac
    if [[ "$mode" != h2c ]]; then url="https://127.0.0.1:${PORT_OF[$t]}$path"; else url="http://127.0.0.1:${PORT_OF[$t]}$path"; fi
    python3 "$REPORT" snap --out "$TMP/$tag.before" --pid "backend=$backend_pid" --pid "proxy=${PID_OF[$t]}" \
        || die "snapshot failed"
    (
        TIMEFORMAT='%3R %3U %3S'
        time taskset -c "$LOAD_CPUS" h2load "${args[@]}" -t "$LOAD_THREADS" --log-file "$TMP/$tag.reqlog" "$url" \
            >"$OUT/raw/$tag.txt" 2>&1
    ) 2>"$TMP/$tag.time" &
    LOAD_PID=$!
    local rc=0; wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    python3 "$REPORT" snap --out "$TMP/$tag.after" --pid "backend=$backend_pid" --pid "proxy=${PID_OF[$t]}" \
        || die "snapshot failed"
    ((rc == 0)) || { tail -n 30 "$OUT/raw/$tag.txt" >&2; die "h2load failed against $t (exit $rc)"; }
    rc=0
    python3 "$H2_REPORT" record --tsv "$TSV" --target "$t" --mode "$mode" --phase "$phase" --run "$n" \
        --before "$TMP/$tag.before" --after "$TMP/$tag.after" --h2load "$OUT/raw/$tag.txt" \
        --time "$TMP/$tag.time" --reqlog "$TMP/$tag.reqlog" --max-other "$max_other" \
        --proxy-pid "${PID_OF[$t]}" >&2 || rc=$?
    rm -f "$TMP/$tag.reqlog"
    return "$rc"
}

RETRIES=2
measured_run() {   # target run_no
    local attempt rc
    for ((attempt = 0; attempt <= RETRIES; attempt++)); do
        rc=0
        if ((attempt < RETRIES)); then
            run_one "$1" run "$2" "$DURATION" "$MAX_OTHER" || rc=$?
        else
            run_one "$1" run "$2" "$DURATION" 0 || rc=$?
        fi
        ((rc == 3)) || return "$rc"
        log "  run disturbed by other processes (other CPU >= $MAX_OTHER %); redoing it"
    done
}

log "modes: ${MODE_LIST[*]}; $RUNS runs x ${DURATION}s per target (+1 warm-up of ${WARMUP}s), $LOAD_CMD"
log "results -> $OUT"
for m in "${MODE_LIST[@]}"; do
    for p in "${PROXY_LIST[@]}"; do run_one "$p-$m" warmup 0 "$WARMUP" 0; done
done
for ((r = 1; r <= RUNS; r++)); do
    for m in "${MODE_LIST[@]}"; do
        order=("${PROXY_LIST[@]}")
        if ((r % 2 == 0 && ${#order[@]} == 2)); then order=("${order[1]}" "${order[0]}"); fi
        for p in "${order[@]}"; do measured_run "$p-$m" "$r"; done
    done
done
for f in "$TMP"/kedge/kedge.log "$TMP"/nginx/error.log; do
    [[ -s "$f" ]] || continue
    cp "$f" "$OUT/raw/$(basename "$(dirname "$f")")-$(basename "$f")"
    log "$(basename "$(dirname "$f")") wrote $(wc -l <"$f") line(s) to $(basename "$f"); last: $(tail -n1 "$f" | cut -c1-200)"
done

# ----------------------------------------------------------------------------
# 5. report
# ----------------------------------------------------------------------------
python3 "$H2_REPORT" summary --tsv "$TSV" --meta "$OUT/meta.json" | tee "$OUT/summary.md"
log "per-run rows: $TSV ; raw h2load output: $OUT/raw/ ; configs and certificate: $OUT/conf/"
