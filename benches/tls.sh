#!/usr/bin/env bash
# kedge vs nginx HTTPS (TLS termination) benchmark.
#
#   bash benches/tls.sh [--key ecdsa|rsa|both] [--runs N] [--duration S]
#                       [--concurrency C] [--idle-conns N] [--hold S]
#                       [--cells LIST] [--workers N] [--skip-build] [--sslscan]
#
# Same certificate and key for both proxies (generated here with openssl: a CA and
# a leaf for bench.example.com, ECDSA P-256 and/or RSA 2048), same backend as
# benches/proxy.sh, same pinning (proxy on CPU 0, backend and load generator on
# CPU 1 with one worker on 2 CPUs). The load generator is benches/tls_load.rs.
# Private instances under a temp dir, 127.0.0.1 ports 18090 (backend), 18453
# (kedge), 18454 (nginx); everything started here is stopped on exit.
set -euo pipefail

# ----------------------------------------------------------------------------
# defaults / arguments
# ----------------------------------------------------------------------------
KEYS="both"
RUNS=3
DURATION=5
CLIENT_WARMUP=1      # seconds inside every run before the measured window
CONCURRENCY=50
IDLE_CONNS=1000
HOLD=3
WORKERS=1
SKIP_BUILD=0
CELLS=""             # default depends on --key, see below
VERIFY=0             # 1: the load generator verifies chain + name (costs it CPU)
SSLSCAN=0
QUIET_WAIT=120
MAX_OTHER=10
PROXY_QUOTA=0
KEDGE_DRIVER="${KEDGE_DRIVER:-auto}"
SNI="bench.example.com"

PORT_KEDGE="${PORT_KEDGE:-18453}"
PORT_NGINX="${PORT_NGINX:-18454}"
PORT_BACKEND="${PORT_BACKEND:-18090}"

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=benches/lib.sh
source "$BENCH_DIR/lib.sh"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
KEDGE_BIN="$ROOT/target/release/kedge"
LOAD_BIN=""
RESULTS_BASE="$BENCH_DIR/results"
ORIG_CMD="bash benches/tls.sh $*"

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<EOF

Options (defaults in brackets):
  --key K           ecdsa, rsa or both [$KEYS]. With both, every cell runs with the
                    ECDSA certificate and full handshakes also with the RSA one.
  --cells LIST      comma list out of keepalive,full,fullpq (a client offering
                    X25519MLKEM768 first, as current browsers do; nginx 1.22 with
                    OpenSSL 3.0 takes its X25519 share), resumed13, resumed12,
                    resumed12id (TLS 1.2 by session ID, no tickets), idle
                    [all; with --key both the RSA certificate gets: full]
  --runs N          measured runs per cell and proxy, alternating kedge/nginx [$RUNS]
  --duration S      measured seconds per run [$DURATION]
  --client-warmup S seconds of load before the measured window of each run [$CLIENT_WARMUP]
  --concurrency C   connections/tasks of the load generator [$CONCURRENCY]
  --idle-conns N    connections held open by the idle cell [$IDLE_CONNS]
  --hold S          seconds they are held before the RSS sample [$HOLD]
  --workers N       kedge workers = nginx worker_processes [$WORKERS]
  --verify          the load generator verifies the certificate chain and name
                    against the generated CA, as a browser does. Default: it checks
                    only the server's handshake signature (like wrk or h2load, which
                    check nothing), so that its core saturates later; curl checks
                    the chain and name once when each proxy starts
  --skip-build      use the existing target/release/kedge and tls_load bench binary
  --kedge-bin PATH  kedge binary [target/release/kedge]
  --load-bin PATH   tls_load binary [built by cargo bench --no-run --bench tls_load]
  --kedge-driver D  [proxy] driver of kedge [$KEDGE_DRIVER]
  --sslscan         also run sslscan against kedge and nginx once per key (installs
                    it with apt if missing) and check the Mozilla "intermediate" profile
  --results-dir D   where to write results [benches/results]
  --quiet-wait S    wait up to S s for an idle machine before each run; 0 = never [$QUIET_WAIT]
  --max-other PCT   redo a run (up to 2x) when foreign processes used >= PCT % of a
                    core during it; 0 = never [$MAX_OTHER]
  --proxy-quota PCT CFS quota per proxy in % of one core (as in proxy.sh); 0 = none [$PROXY_QUOTA]
Env overrides: PROXY_CPUS, BACKEND_CPUS, LOAD_CPUS (taskset lists),
               PORT_KEDGE, PORT_NGINX, PORT_BACKEND.
EOF
}

while (($#)); do
    case "$1" in
        --key) KEYS="$2"; shift 2 ;;
        --cells) CELLS="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --client-warmup) CLIENT_WARMUP="$2"; shift 2 ;;
        --concurrency) CONCURRENCY="$2"; shift 2 ;;
        --idle-conns) IDLE_CONNS="$2"; shift 2 ;;
        --hold) HOLD="$2"; shift 2 ;;
        --workers) WORKERS="$2"; shift 2 ;;
        --verify) VERIFY=1; shift ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        --kedge-bin) KEDGE_BIN="$2"; shift 2 ;;
        --load-bin) LOAD_BIN="$2"; shift 2 ;;
        --kedge-driver) KEDGE_DRIVER="$2"; shift 2 ;;
        --sslscan) SSLSCAN=1; shift ;;
        --results-dir) RESULTS_BASE="$2"; shift 2 ;;
        --quiet-wait) QUIET_WAIT="$2"; shift 2 ;;
        --max-other) MAX_OTHER="$2"; shift 2 ;;
        --proxy-quota) PROXY_QUOTA="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

case "$KEYS" in
    both) KEY_LIST=(ecdsa rsa) ;;
    ecdsa|rsa) KEY_LIST=("$KEYS") ;;
    *) echo "--key must be ecdsa, rsa or both" >&2; exit 2 ;;
esac
ALL_CELLS="keepalive,full,fullpq,resumed13,resumed12,resumed12id,idle"
for v in RUNS DURATION CONCURRENCY IDLE_CONNS WORKERS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "--${v,,} must be a positive integer (got '${!v}')" >&2; exit 2; }
done
for v in QUIET_WAIT MAX_OTHER PROXY_QUOTA; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "${v,,} must be an integer >= 0" >&2; exit 2; }
done
[[ "$HOLD" =~ ^[0-9]+(\.[0-9]+)?$ && "$CLIENT_WARMUP" =~ ^[0-9]+(\.[0-9]+)?$ ]] \
    || { echo "--hold and --client-warmup must be numbers >= 0" >&2; exit 2; }
IFS=',' read -r -a CELL_LIST <<<"${CELLS:-$ALL_CELLS}"
for c in "${CELL_LIST[@]}"; do
    [[ ",$ALL_CELLS," == *",$c,"* ]] || { echo "unknown cell '$c' in --cells" >&2; exit 2; }
done
# Cells per key: with both keys, the RSA certificate only changes what full handshakes cost.
cells_for() {   # key
    if [[ "$KEYS" == both && "$1" == rsa ]]; then
        if [[ " ${CELL_LIST[*]} " == *" full "* ]]; then echo full; fi
    else
        echo "${CELL_LIST[*]}"
    fi
    return 0
}
NPROC="$(nproc)"
((WORKERS <= NPROC)) || { echo "--workers $WORKERS exceeds the $NPROC CPUs of this machine" >&2; exit 2; }

log() { printf '[tls-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
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
        pkill -TERM -P "$pid" 2>/dev/null || true
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
    rmdir /sys/fs/cgroup/cpu/kedge-tlsbench-* /sys/fs/cgroup/kedge-tlsbench-* 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT
set -E
trap 'log "FAILED (exit $?) at line $LINENO: $BASH_COMMAND"' ERR
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ----------------------------------------------------------------------------
# 1. packages (nginx, openssl, ...; sslscan only with --sslscan)
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
    command -v openssl >/dev/null || m+=(openssl)
    command -v taskset >/dev/null || m+=(util-linux)
    command -v curl >/dev/null || m+=(curl)
    command -v python3 >/dev/null || m+=(python3)
    command -v pkill >/dev/null || m+=(procps)
    if ((SSLSCAN)); then command -v sslscan >/dev/null || m+=(sslscan); fi
    echo "${m[*]}"
}
ensure_packages                 # benches/lib.sh
stop_system_services nginx
find_bins
"$NGINX_BIN" -V 2>&1 | grep -q -- --with-http_ssl_module || die "$NGINX_BIN has no http_ssl_module"

# ----------------------------------------------------------------------------
# 2. build kedge and the load generator
# ----------------------------------------------------------------------------
if ((SKIP_BUILD == 0)); then
    command -v cargo >/dev/null || die "cargo not found (use --skip-build with existing binaries)"
    log "building the load generator: cargo bench --no-run --bench tls_load"
    exe="$(bench_exe tls_load)"   # benches/lib.sh
    [[ -n "$LOAD_BIN" ]] || LOAD_BIN="$exe"
    # Last, so that target/release/kedge is the plain release build (the bench build
    # above links one with the dev-dependencies' features).
    log "building kedge: cargo build --release --bin kedge"
    (cd "$ROOT" && cargo build --release --bin kedge)
fi
if [[ -z "$LOAD_BIN" ]]; then   # newest tls_load-<hash> in target/release/deps
    LOAD_BIN="$(find "$ROOT/target/release/deps" -maxdepth 1 -type f -executable -name 'tls_load-*' \
        -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -n1 | cut -d' ' -f2-)"
fi
[[ -n "$LOAD_BIN" && -x "$LOAD_BIN" ]] || die "tls_load binary not found (run without --skip-build, or --load-bin)"
[[ -x "$KEDGE_BIN" ]] || die "kedge binary $KEDGE_BIN not found"
log "kedge: $KEDGE_BIN; load generator: $LOAD_BIN"

# ----------------------------------------------------------------------------
# CPU pinning (as proxy.sh; the load generator takes wrk's place)
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
log "pinning: proxy CPUs $PROXY_CPUS | backend CPUs $BACKEND_CPUS | load generator CPUs $LOAD_CPUS$( ((OVERSUB)) && echo ' (OVERSUBSCRIBED)')"

nginx_affinity() {
    local n=$1 i j s masks=()
    for ((i = 0; i < n; i++)); do
        s=""
        for ((j = n - 1; j >= 0; j--)); do ((j == i)) && s+="1" || s+="0"; done
        masks+=("$s")
    done
    echo "${masks[*]}"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_ready() {   # name pid port logfile [https]
    local name=$1 pid=$2 port=$3 logf=$4 https=${5:-} i body
    for i in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during startup; last log lines:"; tail -n 20 "$logf" >&2 || true
            die "$name failed to start"
        fi
        port_open "$port" && break
        sleep 0.1
    done
    port_open "$port" || { tail -n 20 "$logf" >&2 || true; die "$name not accepting on 127.0.0.1:$port after 10 s"; }
    if [[ -n "$https" ]]; then
        body="$(curl -sS --max-time 3 --cacert "$https" --resolve "$SNI:$port:127.0.0.1" \
            "https://$SNI:$port/" 2>&1)" || die "$name: GET https://$SNI:$port/ failed: $body"
    else
        body="$(curl -sS --max-time 3 "http://127.0.0.1:$port/" 2>&1)" || die "$name: GET / failed: $body"
    fi
    [[ "$body" == *"hello from backend"* ]] || die "$name: unexpected response body: $body"
    log "$name ready on 127.0.0.1:$port (pid $pid)"
}

for p in "$PORT_BACKEND" "$PORT_KEDGE" "$PORT_NGINX"; do
    port_open "$p" && die "port 127.0.0.1:$p is already in use (set PORT_* to move)"
done

TMP="$(mktemp -d /tmp/kedge-tlsbench.XXXXXX)"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$RESULTS_BASE/$STAMP-tls-w$WORKERS"
mkdir -p "$OUT/raw" "$OUT/conf"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"; [[ "$NOFILE" == unlimited ]] && NOFILE=1048576
((IDLE_CONNS * 2 + 200 <= NOFILE)) || die "--idle-conns $IDLE_CONNS needs more fds than ulimit -n ($NOFILE)"
WORKER_CONNS=$((IDLE_CONNS * 2 + 1024))

# ----------------------------------------------------------------------------
# 3. certificates: a CA and a leaf for $SNI per key type (leaf key PKCS#8)
# ----------------------------------------------------------------------------
# gen_certs: benches/lib.sh
for k in "${KEY_LIST[@]}"; do gen_certs "$k"; done
log "certificates: $(for k in "${KEY_LIST[@]}"; do printf '%s ' "$k=$(openssl x509 -in "$TMP/pki/$k/cert.pem" -noout -text | grep -m1 'Public Key Algorithm' | sed 's/.*: //')"; done)"

# ----------------------------------------------------------------------------
# 4. backend: the same private nginx as proxy.sh (1 worker, 19-byte body)
# ----------------------------------------------------------------------------
start_backend "benches/tls.sh"

# ----------------------------------------------------------------------------
# 5. proxies (restarted per key)
# ----------------------------------------------------------------------------
declare -A PID_OF PORT_OF
PORT_OF[kedge]="$PORT_KEDGE"; PORT_OF[nginx]="$PORT_NGINX"

limited() { limited_in kedge-tlsbench "$@"; }   # name cmd... (benches/lib.sh)

start_nginx() {   # key
    local k=$1 d="$TMP/nginx-$1"
    mkdir -p "$d"
    cat >"$d/nginx.conf" <<EOF
# kedge TLS bench: nginx terminating TLS (generated by benches/tls.sh)
daemon off;
master_process on;
worker_processes $WORKERS;
worker_cpu_affinity $(nginx_affinity "$WORKERS");
worker_rlimit_nofile $NOFILE;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections $WORKER_CONNS; }
http {
$(nginx_common_http "$d")
    # What kedge does: TLS 1.2 + 1.3, ECDHE + AEAD suites only in Mozilla "intermediate" order
    # (AES-128-GCM first; no DHE), server preference, session tickets and a session-ID cache,
    # ALPN http/1.1, no 0-RTT.
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;
    ssl_prefer_server_ciphers on;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 1d;
    ssl_session_tickets on;
    upstream backend {
        server 127.0.0.1:$PORT_BACKEND;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$PORT_NGINX ssl backlog=4096;
        server_name _;
        ssl_certificate     $TMP/pki/$k/cert.pem;
        ssl_certificate_key $TMP/pki/$k/key.pem;
        location / {
$(nginx_proxy_location)
            # kedge adds this header to HTTPS responses by default.
            add_header Strict-Transport-Security "max-age=31536000; includeSubDomains" always;
        }
    }
}
EOF
    "$NGINX_BIN" -t -q -p "$d" -e "$d/error.log" -c "$d/nginx.conf" || die "nginx TLS config invalid"
    limited nginx taskset -c "$PROXY_CPUS" "$NGINX_BIN" -p "$d" -e "$d/error.log" -c "$d/nginx.conf" \
        >"$d/stdout.log" 2>&1 &
    PID_OF[nginx]=$!; PIDS+=("$!")
    wait_ready "nginx ($k)" "${PID_OF[nginx]}" "$PORT_NGINX" "$d/error.log" "$TMP/pki/$k/ca.pem"
    cp "$d/nginx.conf" "$OUT/conf/nginx-$k.conf"
}

start_kedge() {   # key
    local k=$1 d="$TMP/kedge-$1"
    mkdir -p "$d/state"
    cat >"$d/kedge.toml" <<EOF
# kedge TLS bench config (generated by benches/tls.sh)
[proxy]
workers = $WORKERS
driver = "$KEDGE_DRIVER"
state_dir = "$d/state"

[admin]
enabled = false

[log]
access_log = false
level = "warn"

[tls]
default_cert = "$TMP/pki/$k/cert.pem"
default_key = "$TMP/pki/$k/key.pem"

[[listener]]
address = "127.0.0.1:$PORT_KEDGE"
tls = true

[[route]]
path = "/"
upstreams = ["127.0.0.1:$PORT_BACKEND"]
EOF
    limited kedge taskset -c "$PROXY_CPUS" "$KEDGE_BIN" run --config "$d/kedge.toml" >>"$d/kedge.log" 2>&1 &
    PID_OF[kedge]=$!; PIDS+=("$!")
    wait_ready "kedge ($k)" "${PID_OF[kedge]}" "$PORT_KEDGE" "$d/kedge.log" "$TMP/pki/$k/ca.pem"
    cp "$d/kedge.toml" "$OUT/conf/kedge-$k.toml"
}

stop_proxy() {   # target
    local pid="${PID_OF[$1]:-}" i
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { log "$1 (pid $pid) ignored SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
    wait "$pid" 2>/dev/null || true
    for i in $(seq 50); do port_open "${PORT_OF[$1]}" || break; sleep 0.1; done
    PID_OF[$1]=""
}

# ----------------------------------------------------------------------------
# metadata
# ----------------------------------------------------------------------------
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)"
V_NGINX="$("$NGINX_BIN" -V 2>&1 | sed -n 's/^nginx version: //p'), $("$NGINX_BIN" -V 2>&1 | sed -n 's/^built with //p')"
V_KEDGE="$("$KEDGE_BIN" --version 2>/dev/null | head -n1 || true)"
V_KEDGE="${V_KEDGE:-kedge} @ $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$( [[ -z "$(git -C "$ROOT" status --porcelain -- src 2>/dev/null)" ]] || echo '+dirty src') (driver=$KEDGE_DRIVER)"
CLIENT_DESC="tls_load (tokio + rustls $(sed -n '/^name = "rustls"$/{n;s/version = "\(.*\)"/\1/p}' "$ROOT/Cargo.lock" | head -n1), aws-lc-rs, X25519 first), $( ((VERIFY)) && echo 'chain and name verified against the CA' || echo 'handshake signature checked, chain and name not')"
BENCH_COMMAND="$ORIG_CMD" BENCH_CPU_MODEL="$CPU_MODEL" BENCH_V_NGINX="$V_NGINX" BENCH_V_KEDGE="$V_KEDGE" \
BENCH_CLIENT="$CLIENT_DESC" python3 - "$OUT/meta.json" <<EOF
import json, os, sys, datetime, platform
json.dump({
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "command": os.environ["BENCH_COMMAND"],
    "nproc": $NPROC, "cpu_model": os.environ["BENCH_CPU_MODEL"], "kernel": platform.release(),
    "workers": $WORKERS, "runs": $RUNS, "duration_s": $DURATION, "client_warmup_s": $CLIENT_WARMUP,
    "concurrency": $CONCURRENCY, "idle_conns": $IDLE_CONNS, "hold_s": $HOLD,
    "proxy_cpus": "$PROXY_CPUS", "backend_cpus": "$BACKEND_CPUS", "load_cpus": "$LOAD_CPUS",
    "oversubscribed": bool($OVERSUB), "proxy_quota_pct": $PROXY_QUOTA,
    "keys": "${KEY_LIST[*]}".split(), "client": os.environ["BENCH_CLIENT"],
    "versions": {"nginx": os.environ["BENCH_V_NGINX"], "kedge": os.environ["BENCH_V_KEDGE"]},
}, open(sys.argv[1], "w"), indent=2)
EOF

# ----------------------------------------------------------------------------
# 6. load
# ----------------------------------------------------------------------------
RUNS_TXT="$OUT/runs.txt"
REPORT="$BENCH_DIR/bench_report.py"
TLS_REPORT="$BENCH_DIR/tls_report.py"
SEQ=0

cell_args() {   # cell -> tls_load arguments
    case "$1" in
        keepalive) echo "--mode keepalive" ;;
        full) echo "--mode full" ;;
        fullpq) echo "--mode full --pq" ;;
        resumed13) echo "--mode resumed" ;;
        resumed12) echo "--mode resumed --tls12" ;;
        resumed12id) echo "--mode resumed --tls12 --session-id" ;;
        idle) echo "--mode idle --idle-conns $IDLE_CONNS --hold $HOLD" ;;
    esac
}

# Runs tls_load once; appends "key=.. cell=.. target=.. phase=.. run=.. <result fields>" to
# runs.txt. Returns 3 when the run was disturbed by foreign CPU load (other_cpu >= max).
run_one() {   # key cell target phase run_no seconds max_other
    local k=$1 cell=$2 t=$3 phase=$4 n=$5 secs=$6 max_other=$7 tag line other verify=() args
    SEQ=$((SEQ + 1))
    tag="$(printf '%03d' "$SEQ")-$k-$cell-$t-$phase-$n"
    kill -0 "${PID_OF[$t]}" 2>/dev/null || die "$t (pid ${PID_OF[$t]}) is no longer running"
    if ((QUIET_WAIT > 0)); then
        python3 "$REPORT" quiet --max-busy 10 --timeout "$QUIET_WAIT" || die "quiet check failed"
    fi
    if ((VERIFY)); then verify=(--ca "$TMP/pki/$k/ca.pem"); else verify=(--insecure); fi
    read -r -a args <<<"$(cell_args "$cell")"
    taskset -c "$LOAD_CPUS" "$LOAD_BIN" --addr "127.0.0.1:${PORT_OF[$t]}" --sni "$SNI" "${verify[@]}" \
        "${args[@]}" --concurrency "$CONCURRENCY" --duration "$secs" --warmup "$CLIENT_WARMUP" \
        --proxy-pid "${PID_OF[$t]}" --backend-pid "$BACKEND_PID" >"$OUT/raw/$tag.txt" 2>&1 &
    LOAD_PID=$!
    local rc=0; wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    ((rc == 0)) || { cat "$OUT/raw/$tag.txt" >&2; die "tls_load failed against $t (exit $rc)"; }
    line="$(grep '^result ' "$OUT/raw/$tag.txt" | tail -n1)"
    [[ -n "$line" ]] || { cat "$OUT/raw/$tag.txt" >&2; die "no result line from tls_load"; }
    other="$(sed -n 's/.* other_cpu=\([0-9.]*\).*/\1/p' <<<"$line")"
    if [[ "$phase" == run && "$max_other" -gt 0 && -n "$other" ]] \
        && python3 -c "import sys; sys.exit(0 if float('$other') >= $max_other else 1)"; then
        phase=run-noisy
    fi
    echo "key=$k cell=$cell target=$t phase=$phase run=$n ${line#result }" >>"$RUNS_TXT"
    python3 "$TLS_REPORT" line "key=$k cell=$cell target=$t phase=$phase run=$n ${line#result }" >&2
    [[ "$phase" == run-noisy ]] && return 3
    return 0
}

RETRIES=2
measured_run() {   # key cell target run_no
    local attempt rc
    for ((attempt = 0; attempt <= RETRIES; attempt++)); do
        rc=0
        if ((attempt < RETRIES)); then
            run_one "$1" "$2" "$3" run "$4" "$DURATION" "$MAX_OTHER" || rc=$?
        else
            run_one "$1" "$2" "$3" run "$4" "$DURATION" 0 || rc=$?
        fi
        ((rc == 3)) || return "$rc"
        log "  run disturbed by other processes (other CPU >= $MAX_OTHER %); redoing it"
    done
}

sslscan_both() {   # key: kedge, and nginx for comparison
    local k=$1 t f
    for t in "${TARGETS[@]}"; do
        f="$OUT/sslscan-$t-$k.txt"
        log "sslscan against $t ($k certificate)"
        timeout 120 sslscan --no-colour --show-sigs --sni-name="$SNI" "127.0.0.1:${PORT_OF[$t]}" >"$f" 2>&1 \
            || log "sslscan exited with $? (output kept in $f)"
        python3 "$TLS_REPORT" sslscan "$f" | tee "$OUT/sslscan-$t-$k.md" >&2
    done
}

TARGETS=(kedge nginx)
log "keys: ${KEY_LIST[*]}; cells: ${CELL_LIST[*]}; $RUNS runs x ${DURATION}s (+${CLIENT_WARMUP}s client warm-up) per cell and proxy, -c$CONCURRENCY"
log "results -> $OUT"
for k in "${KEY_LIST[@]}"; do
    read -r -a cells <<<"$(cells_for "$k")"
    ((${#cells[@]})) || continue
    start_kedge "$k"
    start_nginx "$k"
    if ((SSLSCAN)); then sslscan_both "$k"; fi
    rate_cells=(); idle=0
    for cell in "${cells[@]}"; do
        if [[ "$cell" == idle ]]; then idle=1; else rate_cells+=("$cell"); fi
    done
    # One short warm-up per cell and proxy (not counted), then alternating measured runs;
    # the proxy order flips every run so neither always goes first.
    for cell in "${rate_cells[@]}"; do
        for t in "${TARGETS[@]}"; do run_one "$k" "$cell" "$t" warmup 0 2 0; done
    done
    for ((r = 1; r <= RUNS; r++)); do
        for cell in "${rate_cells[@]}"; do
            if ((r % 2)); then order=(kedge nginx); else order=(nginx kedge); fi
            for t in "${order[@]}"; do measured_run "$k" "$cell" "$t" "$r"; done
        done
    done
    # Idle memory on a freshly started proxy each time: memory a process kept from earlier
    # connections (allocator caches, nginx's pools) would otherwise be reused and hide the cost.
    if ((idle)); then
        for ((r = 1; r <= RUNS; r++)); do
            if ((r % 2)); then order=(kedge nginx); else order=(nginx kedge); fi
            for t in "${order[@]}"; do
                stop_proxy "$t"; "start_$t" "$k"
                measured_run "$k" idle "$t" "$r"
            done
        done
    fi
    for t in "${TARGETS[@]}"; do
        stop_proxy "$t"
        for f in "$TMP/$t-$k/"*.log; do
            [[ -s "$f" ]] || continue
            cp "$f" "$OUT/raw/$t-$k-$(basename "$f")"
            log "$t ($k) wrote $(wc -l <"$f") line(s) to $(basename "$f") (kept as raw/$t-$k-$(basename "$f")); last: $(tail -n1 "$f" | cut -c1-200)"
        done
    done
done

# ----------------------------------------------------------------------------
# 7. report
# ----------------------------------------------------------------------------
python3 "$TLS_REPORT" summary --runs "$RUNS_TXT" --meta "$OUT/meta.json" | tee "$OUT/summary.md"
log "per-run lines: $RUNS_TXT ; raw tls_load output: $OUT/raw/ ; configs and certificates: $OUT/conf/"
