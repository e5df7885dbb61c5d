#!/usr/bin/env bash
# Large bodies through the proxy: kedge vs nginx (buffering off) vs nginx (defaults) vs direct,
# downloads and uploads of 64 KiB, 1 MiB and 100 MiB over keep-alive HTTP/1.1 (plain).
#
#   bash benches/bodies.sh [--runs N] [--duration S] [--connections C] [--connections-large C]
#                          [--sizes LIST]
#                          [--dirs down,up] [--targets LIST] [--skip-build]
#                          [--kedge-bin PATH] [--upstream-bin PATH] [--results-dir DIR]
#                          [--quiet-wait S] [--max-other PCT]
#
# Private instances only (own configs and prefixes in a temp dir on /dev/shm), 127.0.0.1 ports
# 18680-18690 by default. Every process started here is stopped on exit. See benches/README.md.
set -euo pipefail

RUNS=3
DURATION=10
WARMUP=2
CONNECTIONS=8
CONN_LARGE=2         # connections for bodies of 10 MiB and more
SIZES="64k,1m,100m"
DIRS="down,up"
SKIP_BUILD=0
TARGETS="kedge,nginx-off,nginx,direct"
QUIET_WAIT=120
MAX_OTHER=10
PROXY_QUOTA=0        # used by lib.sh's limited_in; not an option here
UPSTREAM_BIN=""

PORT_KEDGE="${PORT_KEDGE:-18680}"
PORT_NGINX_OFF="${PORT_NGINX_OFF:-18681}"
PORT_NGINX="${PORT_NGINX:-18682}"
PORT_BACKEND="${PORT_BACKEND:-18690}"

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=benches/lib.sh
source "$BENCH_DIR/lib.sh"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
KEDGE_BIN="$ROOT/target/release/kedge"
RESULTS_BASE="$BENCH_DIR/results"
ORIG_CMD="bash benches/bodies.sh $*"

usage() {
    sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<EOF

Options (defaults in brackets):
  --runs N           measured runs per target and case, alternating [$RUNS]
  --duration S       seconds per measured wrk run [$DURATION]
  --warmup S         seconds of the warm-up run per target and case [$WARMUP]
  --connections C    wrk keep-alive connections [$CONNECTIONS]
  --connections-large C  wrk connections for bodies of 10 MiB and more, so that a run
                     completes many of them [$CONN_LARGE]
  --sizes LIST       body sizes, out of 64k,1m,100m (any N[k|m]) [$SIZES]
  --dirs LIST        down (GET, body from the backend), up (POST to the backend) [$DIRS]
  --targets LIST     out of kedge,nginx-off,nginx,direct [$TARGETS]
  --skip-build       do not run 'cargo build --release'
  --kedge-bin PATH   kedge binary [target/release/kedge]
  --upstream-bin P   the body_upstream binary [built: cargo bench --no-run --bench body_upstream]
  --results-dir D    where to write results [benches/results]
  --quiet-wait S     wait up to S s for an idle machine before each run; 0 = never [$QUIET_WAIT]
  --max-other PCT    redo a run (up to 2x) when other processes used >= PCT % of a core;
                     0 = never [$MAX_OTHER]
Env overrides: PROXY_CPUS, BACKEND_CPUS, WRK_CPUS (taskset lists),
               PORT_KEDGE, PORT_NGINX_OFF, PORT_NGINX, PORT_BACKEND.
EOF
}

while (($#)); do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --connections-large) CONN_LARGE="$2"; shift 2 ;;
        --sizes) SIZES="$2"; shift 2 ;;
        --dirs) DIRS="$2"; shift 2 ;;
        --targets) TARGETS="$2"; shift 2 ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        --kedge-bin) KEDGE_BIN="$2"; shift 2 ;;
        --upstream-bin) UPSTREAM_BIN="$2"; shift 2 ;;
        --results-dir) RESULTS_BASE="$2"; shift 2 ;;
        --quiet-wait) QUIET_WAIT="$2"; shift 2 ;;
        --max-other) MAX_OTHER="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in RUNS DURATION WARMUP CONNECTIONS CONN_LARGE; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "--${v,,} must be a positive integer (got '${!v}')" >&2; exit 2; }
done
for v in QUIET_WAIT MAX_OTHER; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "--${v,,} must be an integer >= 0" >&2; exit 2; }
done
IFS=',' read -r -a SIZE_LIST <<<"$SIZES"
IFS=',' read -r -a DIR_LIST <<<"$DIRS"
IFS=',' read -r -a ACTIVE <<<"$TARGETS"
for s in "${SIZE_LIST[@]}"; do [[ "$s" =~ ^[1-9][0-9]*[km]?$ ]] || { echo "bad size '$s'" >&2; exit 2; }; done
for d in "${DIR_LIST[@]}"; do [[ "$d" =~ ^(down|up)$ ]] || { echo "bad direction '$d'" >&2; exit 2; }; done
for t in "${ACTIVE[@]}"; do [[ "$t" =~ ^(kedge|nginx-off|nginx|direct)$ ]] || { echo "unknown target '$t'" >&2; exit 2; }; done
bytes_of() { local s=$1; case "$s" in *k) echo $(( ${s%k} << 10 )) ;; *m) echo $(( ${s%m} << 20 )) ;; *) echo "$s" ;; esac; }
conns_for() { if (( $(bytes_of "$1") >= 10 << 20 )); then echo "$CONN_LARGE"; else echo "$CONNECTIONS"; fi; }

log() { printf '[bodies %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PIDS=(); WRK_PID=""; TMP=""
cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    [[ -n "$WRK_PID" ]] && PIDS+=("$WRK_PID")
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        pkill -TERM -P "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            pkill -KILL -P "$pid" 2>/dev/null || true; kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    [[ -n "$TMP" && -d "$TMP" ]] && rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
set -E
trap 'log "FAILED (exit $?) at line $LINENO: $BASH_COMMAND"' ERR
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---- packages, binaries ----------------------------------------------------------------------
NGINX_BIN=""
missing_pkgs() {
    NGINX_BIN="$(command -v nginx || true)"; [[ -z "$NGINX_BIN" && -x /usr/sbin/nginx ]] && NGINX_BIN=/usr/sbin/nginx
    local m=()
    [[ -n "$NGINX_BIN" ]] || m+=(nginx)
    command -v wrk >/dev/null || m+=(wrk)
    command -v taskset >/dev/null || m+=(util-linux)
    command -v curl >/dev/null || m+=(curl)
    command -v python3 >/dev/null || m+=(python3)
    command -v pkill >/dev/null || m+=(procps)
    echo "${m[*]}"
}
ensure_packages
stop_system_services nginx
missing_pkgs >/dev/null

want() { local t; for t in "${ACTIVE[@]}"; do [[ "$t" == "$1" ]] && return 0; done; return 1; }
if want kedge; then
    if ((SKIP_BUILD == 0)); then
        log "building kedge: cargo build --release --bin kedge"
        (cd "$ROOT" && cargo build --release --bin kedge)
    fi
    [[ -x "$KEDGE_BIN" ]] || die "kedge binary $KEDGE_BIN not found"
fi
if [[ -z "$UPSTREAM_BIN" ]]; then
    log "building the upstream: cargo bench --no-run --bench body_upstream"
    UPSTREAM_BIN="$(bench_exe body_upstream)"
fi
[[ -x "$UPSTREAM_BIN" ]] || die "body_upstream binary '$UPSTREAM_BIN' not found"

# ---- pinning (as proxy.sh with one worker) ---------------------------------------------------
NPROC="$(nproc)"
if ((NPROC >= 3)); then d_backend=1; d_wrk=2; else d_backend=1; d_wrk=1; fi
((NPROC >= 2)) || { d_backend=0; d_wrk=0; }
PROXY_CPUS="${PROXY_CPUS:-0}"; BACKEND_CPUS="${BACKEND_CPUS:-$d_backend}"; WRK_CPUS="${WRK_CPUS:-$d_wrk}"
log "pinning: proxy CPU $PROXY_CPUS | backend CPU $BACKEND_CPUS | wrk CPU $WRK_CPUS"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_ready() {   # name pid port logfile
    local name=$1 pid=$2 port=$3 logf=$4 i body
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$logf" >&2 || true; die "$name failed to start"; }
        port_open "$port" && break
        sleep 0.1
    done
    port_open "$port" || { tail -n 20 "$logf" >&2 || true; die "$name not accepting on 127.0.0.1:$port"; }
    body="$(curl -sS --max-time 3 "http://127.0.0.1:$port/" 2>&1)" || die "$name: GET / failed: $body"
    [[ "$body" == *"hello from backend"* ]] || die "$name: unexpected response body: $body"
    log "$name ready on 127.0.0.1:$port (pid $pid)"
}
for p in "$PORT_BACKEND" "$PORT_KEDGE" "$PORT_NGINX_OFF" "$PORT_NGINX"; do
    port_open "$p" && die "port 127.0.0.1:$p is already in use (set PORT_* to move)"
done

# nginx's default mode spools large bodies to temp files: keep them in memory (tmpfs), so the
# comparison is not about this machine's disk.
TMPBASE=/dev/shm; [[ -d $TMPBASE && -w $TMPBASE ]] || TMPBASE=/tmp
TMP="$(mktemp -d "$TMPBASE/kedge-bodies.XXXXXX")"
chmod a+rx "$TMP"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$RESULTS_BASE/$STAMP-bodies"
mkdir -p "$OUT/wrk" "$OUT/conf"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- backend ----------------------------------------------------------------------------------
taskset -c "$BACKEND_CPUS" "$UPSTREAM_BIN" --addr "127.0.0.1:$PORT_BACKEND" >"$TMP/backend.log" 2>&1 &
BACKEND_PID=$!; PIDS+=("$BACKEND_PID")
wait_ready backend "$BACKEND_PID" "$PORT_BACKEND" "$TMP/backend.log"

# ---- proxies ----------------------------------------------------------------------------------
declare -A PID_OF PORT_OF
PORT_OF[direct]="$PORT_BACKEND"

start_nginx() {   # name port buffering(on|off)
    local name=$1 port=$2 buffering=$3 d="$TMP/$1" extra=""
    mkdir -p "$d"
    if [[ $buffering == off ]]; then
        extra="            proxy_buffering off;
            proxy_request_buffering off;"
    fi
    cat >"$d/nginx.conf" <<EOF
# kedge bench: nginx as reverse proxy, buffering $buffering (generated by benches/bodies.sh)
daemon off;
master_process on;
worker_processes 1;
worker_cpu_affinity 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
$(nginx_common_http "$d")
    client_max_body_size 0;
    upstream backend {
        server 127.0.0.1:$PORT_BACKEND;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
$(nginx_proxy_location)
$extra
        }
    }
}
EOF
    "$NGINX_BIN" -t -q -p "$d" -e "$d/error.log" -c "$d/nginx.conf" || die "$name config invalid"
    taskset -c "$PROXY_CPUS" "$NGINX_BIN" -p "$d" -e "$d/error.log" -c "$d/nginx.conf" >"$d/stdout.log" 2>&1 &
    PID_OF[$name]=$!; PIDS+=("$!"); PORT_OF[$name]="$port"
    wait_ready "$name" "${PID_OF[$name]}" "$port" "$d/error.log"
    cp "$d/nginx.conf" "$OUT/conf/$name.conf"
}

start_kedge() {
    mkdir -p "$TMP/kedge"
    kedge_bench_config benches/bodies.sh 1 auto "$PORT_KEDGE" "$PORT_BACKEND" 'max_body = "1g"' \
        >"$TMP/kedge/kedge.toml"
    taskset -c "$PROXY_CPUS" "$KEDGE_BIN" run --config "$TMP/kedge/kedge.toml" >"$TMP/kedge/kedge.log" 2>&1 &
    PID_OF[kedge]=$!; PIDS+=("$!"); PORT_OF[kedge]="$PORT_KEDGE"
    wait_ready kedge "${PID_OF[kedge]}" "$PORT_KEDGE" "$TMP/kedge/kedge.log"
    cp "$TMP/kedge/kedge.toml" "$OUT/conf/kedge.toml"
}

for t in "${ACTIVE[@]}"; do
    case "$t" in
        kedge) start_kedge ;;
        nginx-off) start_nginx nginx-off "$PORT_NGINX_OFF" off ;;
        nginx) start_nginx nginx "$PORT_NGINX" on ;;
        direct) ;;
    esac
done

# Upload scripts: one POST /upload of SIZE bytes per request (wrk adds Content-Length).
for s in "${SIZE_LIST[@]}"; do
    printf 'wrk.method = "POST"\nwrk.path = "/upload"\nwrk.headers["Content-Type"] = "application/octet-stream"\nwrk.body = string.rep("x", %s)\n' \
        "$(bytes_of "$s")" >"$TMP/up-$s.lua"
done

# Every proxy must move one body of each case intact before anything is measured.
for t in "${ACTIVE[@]}"; do
    for s in "${SIZE_LIST[@]}"; do
        n="$(bytes_of "$s")"
        got="$(curl -sS --max-time 60 -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:${PORT_OF[$t]}/$s")"
        [[ "$got" == "200 $n" ]] || die "$t: GET /$s gave '$got', want '200 $n'"
        got="$(head -c "$n" /dev/zero | curl -sS --max-time 60 -o /dev/null -w '%{http_code} %{size_upload}' \
            -H 'Content-Type: application/octet-stream' --data-binary @- "http://127.0.0.1:${PORT_OF[$t]}/upload")"
        [[ "$got" == "200 $n" ]] || die "$t: POST /upload of $n bytes gave '$got', want '200 $n'"
    done
done
log "every target moved every body size both ways"

# ---- metadata ---------------------------------------------------------------------------------
V_NGINX="$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')"
V_WRK="$( (wrk -v 2>&1 || true) | awk 'NR == 1 {print "wrk " $2}')"
V_KEDGE=""
if want kedge; then
    V_KEDGE="$("$KEDGE_BIN" --version 2>/dev/null | head -n1 || true) @ $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
fi
WRK_CMD="wrk -t1 -c$CONNECTIONS (-c$CONN_LARGE for 10 MiB and more) -d${DURATION}s --timeout 60s --latency"
BENCH_COMMAND="$ORIG_CMD" BENCH_WRK_CMD="$WRK_CMD" \
BENCH_CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)" \
BENCH_VERSIONS="$V_NGINX; $V_WRK${V_KEDGE:+; $V_KEDGE}" \
python3 - "$OUT/meta.json" <<EOF
import json, os, sys, datetime, platform
json.dump({
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "command": os.environ["BENCH_COMMAND"], "wrk_cmd": os.environ["BENCH_WRK_CMD"],
    "nproc": $NPROC, "cpu_model": os.environ["BENCH_CPU_MODEL"], "kernel": platform.release(),
    "runs": $RUNS, "duration_s": $DURATION, "warmup_s": $WARMUP, "connections": $CONNECTIONS,
    "proxy_cpus": "$PROXY_CPUS", "backend_cpus": "$BACKEND_CPUS", "wrk_cpus": "$WRK_CPUS",
    "versions": os.environ["BENCH_VERSIONS"],
}, open(sys.argv[1], "w"), indent=2)
EOF

# ---- load ---------------------------------------------------------------------------------------
TSV="$OUT/runs.tsv"
REPORT="$BENCH_DIR/bench_report.py"
SEQ=0
run_one() {   # target dir size phase run_no seconds max_other
    local t=$1 dir=$2 size=$3 phase=$4 n=$5 secs=$6 max_other=$7 tag snaps=() proxy_arg=() script=() url
    SEQ=$((SEQ + 1))
    tag="$(printf '%03d' "$SEQ")-$t-$dir-$size-$phase-$n"
    snaps=(--pid "backend=$BACKEND_PID")
    if [[ "$t" != direct ]]; then
        snaps+=(--pid "proxy=${PID_OF[$t]}"); proxy_arg=(--proxy proxy)
        kill -0 "${PID_OF[$t]}" 2>/dev/null || die "$t (pid ${PID_OF[$t]}) is no longer running"
    fi
    if [[ $dir == down ]]; then url="http://127.0.0.1:${PORT_OF[$t]}/$size"
    else url="http://127.0.0.1:${PORT_OF[$t]}/upload"; script=(-s "$TMP/up-$size.lua"); fi
    if ((QUIET_WAIT > 0)); then
        python3 "$REPORT" quiet --max-busy 10 --timeout "$QUIET_WAIT" || die "quiet check failed"
    fi
    python3 "$REPORT" snap --out "$TMP/$tag.before" "${snaps[@]}"
    (
        TIMEFORMAT='%3R %3U %3S'
        time taskset -c "$WRK_CPUS" wrk -t1 -c"$(conns_for "$size")" -d"${secs}s" --timeout 60s --latency \
            "${script[@]}" "$url" >"$OUT/wrk/$tag.txt" 2>&1
    ) 2>"$TMP/$tag.time" &
    WRK_PID=$!
    local wrc=0; wait "$WRK_PID" || wrc=$?
    WRK_PID=""
    python3 "$REPORT" snap --out "$TMP/$tag.after" "${snaps[@]}"
    ((wrc == 0)) || { cat "$OUT/wrk/$tag.txt" >&2; die "wrk failed against $t (exit $wrc)"; }
    local rc=0
    python3 "$REPORT" record --tsv "$TSV" --target "$t|$dir|$size" --phase "$phase" --run "$n" \
        --before "$TMP/$tag.before" --after "$TMP/$tag.after" --max-other "$max_other" \
        --wrk "$OUT/wrk/$tag.txt" --time "$TMP/$tag.time" "${proxy_arg[@]}" >&2 || rc=$?
    return "$rc"
}
measured_run() {   # target dir size run_no
    local attempt rc
    for ((attempt = 0; attempt <= 2; attempt++)); do
        rc=0
        if ((attempt < 2 && MAX_OTHER > 0)); then
            run_one "$1" "$2" "$3" run "$4" "$DURATION" "$MAX_OTHER" || rc=$?
        else
            run_one "$1" "$2" "$3" run "$4" "$DURATION" 0 || rc=$?
        fi
        ((rc == 3)) || return "$rc"
    done
}

log "targets: ${ACTIVE[*]}; sizes ${SIZES}; directions ${DIRS}; $RUNS runs x ${DURATION}s (+${WARMUP}s warm-up) per case, -c$CONNECTIONS (-c$CONN_LARGE from 10 MiB)"
log "results -> $OUT"
for dir in "${DIR_LIST[@]}"; do
    for size in "${SIZE_LIST[@]}"; do
        for t in "${ACTIVE[@]}"; do run_one "$t" "$dir" "$size" warmup 0 "$WARMUP" 0; done
        for ((r = 1; r <= RUNS; r++)); do
            # alternate, and flip the order every run
            if ((r % 2)); then order=("${ACTIVE[@]}"); else order=(); for ((i = ${#ACTIVE[@]} - 1; i >= 0; i--)); do order+=("${ACTIVE[i]}"); done; fi
            for t in "${order[@]}"; do measured_run "$t" "$dir" "$size" "$r"; done
        done
    done
done

python3 "$BENCH_DIR/bodies_report.py" --tsv "$TSV" --meta "$OUT/meta.json" | tee "$OUT/summary.md"
log "raw per-run numbers: $TSV ; wrk outputs: $OUT/wrk/ ; configs: $OUT/conf/"
