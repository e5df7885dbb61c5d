#!/usr/bin/env bash
# Every cell of the performance targets in one run, one after another on the same build and the
# same pinning (each script's own: proxy on CPU 0, backend and load generator on CPU 1), into one
# report. Each cell is the command printed above its table; rerun any one alone with it.
#
#   bash benches/all.sh [--skip-build] [--runs N] [--duration S] [--only LIST]
#
# Cells (--only takes a comma list of these names):
#   keepalive        proxy.sh: kedge, nginx, HAProxy, direct, floor; keep-alive, no quota
#   keepalive-quota  the same at an equal CPU budget (--proxy-quota 80): kedge, nginx, floor
#   keepalive-browser  keep-alive, each request with the fields a browser sends (--headers
#                    browser): kedge, nginx, floor; no quota
#   newconn          proxy.sh --new-conn: kedge, nginx, HAProxy; no quota
#   newconn-quota    the same at an equal CPU budget (--proxy-quota 50): kedge, nginx
#   tls              tls.sh: keep-alive, full, resumed TLS 1.3 and post-quantum handshakes, ECDSA and RSA
#   h2               h2.sh --modes all: h2c, TLS, -c50, -m100, 64 KiB bodies, churn, gRPC
#   bodies           bodies.sh: 64 KiB, 1 MiB and 100 MiB up and down against nginx's best
#   scaling          scaling.sh: one worker against two
#   control          cargo bench --bench propagation: every control-plane scenario at 10k
#
# Runs as root on an otherwise idle machine (the scripts install nginx, HAProxy, wrk and h2load
# when missing). About 45 minutes with the defaults. Output: the report on stdout and in
# benches/results/<date>-all/report.md, each script's own results next to it.
#
# Every binary is built (or, with --skip-build, found) once before the first cell and handed to
# the scripts by path, so no script runs cargo in between: a cargo run in the middle of the
# cells would rebuild kedge from whatever the working tree holds by then.
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=3
DURATION=5
SKIP_BUILD=0
ONLY="keepalive,keepalive-quota,keepalive-browser,newconn,newconn-quota,tls,h2,bodies,scaling,control"

log() { printf '[all.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --skip-build) SKIP_BUILD=1; shift ;;
        --runs) RUNS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "all.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

OUT="benches/results/$(date +%Y%m%d-%H%M%S)-all"
mkdir -p "$OUT"
REPORT="$OUT/report.md"

if [[ $SKIP_BUILD == 0 ]]; then
    cargo build --release >&2
fi
# The bench executables' paths (cargo builds what is missing or stale, then never again).
ROOT="$(pwd)"
# shellcheck source=benches/lib.sh
source benches/lib.sh
exe() { bench_exe "$1" 2>/dev/null; }
KEDGE_BIN=target/release/kedge
FLOOR_BIN=$(exe floor)
LOAD_BIN=$(exe tls_load)
GRPC_BIN=$(exe grpc_upstream)
UPSTREAM_BIN=$(exe body_upstream)
PROPAGATION_BIN=$(exe propagation)
for b in "$KEDGE_BIN" "$FLOOR_BIN" "$LOAD_BIN" "$GRPC_BIN" "$UPSTREAM_BIN" "$PROPAGATION_BIN"; do
    [[ -x "$b" ]] || die "binary '$b' missing (run without --skip-build)"
done
# Every package the cells use, installed now (lib.sh's ensure_packages, as each script does), so
# that apt's output stays out of the report.
missing_pkgs() {
    local m=()
    [[ -x /usr/sbin/nginx ]] || m+=(nginx)
    [[ -x /usr/sbin/haproxy ]] || m+=(haproxy)
    command -v wrk >/dev/null || m+=(wrk)
    command -v h2load >/dev/null || m+=(nghttp2-client)
    echo "${m[*]}"
}
ensure_packages >&2

{
    echo "# kedge: every performance cell in one run"
    echo
    echo "kedge $(git describe --always --dirty) ($(sha256sum "$KEDGE_BIN" | cut -c1-12)), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs:" \
        "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
    echo "Load average before the first cell: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$REPORT"

wanted() { [[ ",$ONLY," == *",$1,"* ]]; }

# cell NAME COMMAND...: runs one cell, its stdout (the script's Markdown) into the report.
cell() {
    local name="$1"; shift
    wanted "$name" || return 0
    log "$name: $*"
    {
        echo
        echo "## $name"
        echo
        echo "\`$*\`"
        echo
    } >> "$REPORT"
    local rc=0
    "$@" > "$OUT/$name.md" 2> "$OUT/$name.log" || rc=$?
    if [[ $rc != 0 ]]; then
        echo "**failed** (exit status $rc; see $name.log)" >> "$REPORT"
        log "$name failed; see $OUT/$name.log"
        return 0
    fi
    cat "$OUT/$name.md" >> "$REPORT"
}

COMMON=(--skip-build --runs "$RUNS" --duration "$DURATION" --kedge-bin "$KEDGE_BIN")
PROXY=(bash benches/proxy.sh "${COMMON[@]}" --floor-bin "$FLOOR_BIN")
cell keepalive "${PROXY[@]}" --targets kedge,nginx,haproxy,direct,floor
cell keepalive-quota "${PROXY[@]}" --targets kedge,nginx,floor --proxy-quota 80
cell keepalive-browser "${PROXY[@]}" --targets kedge,nginx,floor --headers browser
cell newconn "${PROXY[@]}" --new-conn --targets kedge,nginx,haproxy
cell newconn-quota "${PROXY[@]}" --new-conn --targets kedge,nginx --proxy-quota 50
cell tls bash benches/tls.sh "${COMMON[@]}" --load-bin "$LOAD_BIN" --key both \
    --cells keepalive,full,resumed13,fullpq
cell h2 bash benches/h2.sh "${COMMON[@]}" --grpc-bin "$GRPC_BIN" --modes all
cell bodies bash benches/bodies.sh "${COMMON[@]}" --upstream-bin "$UPSTREAM_BIN"
cell scaling bash benches/scaling.sh "${COMMON[@]}" --floor-bin "$FLOOR_BIN"
# The propagation bench runs target/release/kedge (its path is built in).
cell control env KEDGE_START_TIMEOUT_S=120 "$PROPAGATION_BIN" --bench

log "report: $REPORT"
cat "$REPORT"
