#!/usr/bin/env bash
# Heap allocations per HTTP/2 request through kedge, counted by valgrind's DHAT: kedge (the
# epoll driver, one worker) runs under `valgrind --tool=dhat` twice, each time serving one
# h2load run (h2c with prior knowledge, one connection, -m streams) of N1 and then N2 requests to
# a private nginx backend; (blocks(N2) - blocks(N1)) / (N2 - N1) is the allocations per request,
# start-up and connection set-up cancelled out. Counts, not timings: robust on a busy machine.
#
#   bash benches/h2_allocs.sh [KEDGE_BIN] [N1] [N2] [STREAMS]
#
# KEDGE_BIN defaults to target/release/kedge (a debug build allocates the same blocks; it is
# only slower). Ports 127.0.0.1:18690 (backend) and 18692 (kedge).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEDGE_BIN="${1:-$ROOT/target/release/kedge}"
N1="${2:-500}"
N2="${3:-2500}"
STREAMS="${4:-10}"
PORT_BACKEND=18690
PORT_KEDGE=18692
for t in valgrind h2load nginx curl; do
    command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 1; }
done
TMP="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

wait_port() {   # port what
    for _ in $(seq 1 600); do
        if curl -s -o /dev/null --http2-prior-knowledge "http://127.0.0.1:$1/" 2>/dev/null \
            || curl -s -o /dev/null "http://127.0.0.1:$1/" 2>/dev/null; then
            return 0
        fi
        sleep 0.2   # polling for readiness, not synchronising a test
    done
    echo "$2 did not come up on port $1" >&2
    exit 1
}

if ss -ltn | grep -qE "127.0.0.1:($PORT_BACKEND|$PORT_KEDGE) "; then
    echo "port $PORT_BACKEND or $PORT_KEDGE is taken" >&2
    exit 1
fi

mkdir -p "$TMP/backend"
cat >"$TMP/backend/nginx.conf" <<EOF2
daemon off;
worker_processes 1;
pid $TMP/backend/nginx.pid;
error_log $TMP/backend/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/backend/cb;
    proxy_temp_path $TMP/backend/p;
    fastcgi_temp_path $TMP/backend/f;
    uwsgi_temp_path $TMP/backend/u;
    scgi_temp_path $TMP/backend/s;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$PORT_BACKEND;
        location / { default_type text/plain; return 200 "hello from backend\n"; }
    }
}
EOF2
nginx -p "$TMP/backend" -e "$TMP/backend/error.log" -c "$TMP/backend/nginx.conf" &
PIDS+=("$!")
wait_port "$PORT_BACKEND" backend

mkdir -p "$TMP/kedge/state"
cat >"$TMP/kedge/kedge.toml" <<EOF2
[proxy]
workers = 1
driver = "epoll"
state_dir = "$TMP/kedge/state"

[admin]
enabled = false

[log]
access_log = false
level = "warn"

[http2]
enabled = true
max_requests = 1000000

[[listener]]
address = "127.0.0.1:$PORT_KEDGE"

[[route]]
path = "/"
upstreams = ["127.0.0.1:$PORT_BACKEND"]
EOF2

BLOCKS=0
blocks_for() {   # requests -> BLOCKS: total blocks allocated over kedge's life
    local out="$TMP/dhat.$1"
    valgrind --tool=dhat --dhat-out-file="$out.json" "$KEDGE_BIN" run --config "$TMP/kedge/kedge.toml" \
        >"$out.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$PORT_KEDGE" kedge
    h2load -n "$1" -c 1 -m "$STREAMS" "http://127.0.0.1:$PORT_KEDGE/" >"$out.h2load" 2>&1
    grep -q "$1 succeeded" "$out.h2load" || { cat "$out.h2load" "$out.log" >&2; exit 1; }
    kill -TERM "$pid"
    wait "$pid" || true
    BLOCKS="$(sed -n 's/.*Total: *[0-9,]* bytes in \([0-9,]*\) blocks.*/\1/p' "$out.log" | tr -d ,)"
    [ -n "$BLOCKS" ] || { cat "$out.log" >&2; exit 1; }
}

blocks_for "$N1"
b1=$BLOCKS
blocks_for "$N2"
b2=$BLOCKS
echo "kedge: $KEDGE_BIN"
echo "h2c, 1 connection, -m $STREAMS, 19-byte responses from an HTTP/1.1 backend"
echo "blocks: $N1 requests -> $b1, $N2 requests -> $b2"
awk -v a="$b1" -v b="$b2" -v n1="$N1" -v n2="$N2" \
    'BEGIN { printf "allocations per request: %.1f\n", (b - a) / (n2 - n1) }'
