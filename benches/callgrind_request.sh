#!/usr/bin/env bash
# User-space instructions per plain HTTP/1.1 keep-alive request inside kedge's connection task,
# under callgrind: robust on a shared machine where throughput is not.
#
#   bash benches/callgrind_request.sh [--browser] [--new-conn | --load] [KEDGE_BIN]   # default target/release/kedge
#
# kedge (1 worker, epoll driver: valgrind does not follow io_uring) routes to a one-process
# nginx backend; a Python client sends 200 warm-up requests, then N on one connection. The
# figure is the inclusive cost of the connection's task (`accept::connection`, or
# `plain_dispatch` where the compiler inlined the former into it, or the boxed HTTP/1.1 loop
# `conn::serve`, which every request runs inside: the largest; where `serve` is inlined too, its
# request loop `Conn::run`), as
# (cost at 5,000 − cost at 1,000) / 4,000, so start-up and warm-up cancel out.
#
# --new-conn: each request on a connection of its own ("Connection: close"), and the figure is
# the whole process's user-space instructions per request (accept loop, task start, allocator,
# teardown included: what a new connection costs beyond its request), the same difference.
#
# --browser: each request carries the fields a browser sends (User-Agent, Accept, Accept-Language,
# Accept-Encoding, Referer, Cookie, sec-fetch-*: 12 in all, a 520-byte head), not Host alone.
#
# --load: 50 keep-alive connections at once (wrk -c50, as benches/proxy.sh loads), and the figure
# is the whole process's user-space instructions per request over a 10 s window after a 3 s
# warm-up (callgrind's counters zeroed and dumped around it): what the sequential client does
# not show, e.g. the timer's work with as many waits pending as connections.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NEW_CONN=0 LOAD=0 CLIENT_MODE=() BROWSER=0
[[ "${1:-}" == "--browser" ]] && { BROWSER=1; shift; }
[[ "${1:-}" == "--new-conn" ]] && { NEW_CONN=1; CLIENT_MODE=(new-conn); shift; }
[[ "${1:-}" == "--load" ]] && { LOAD=1; shift; }
((BROWSER && LOAD)) && { echo "--browser is for the sequential client, not --load (wrk sends Host only)" >&2; exit 2; }
BIN="${1:-$ROOT/target/release/kedge}"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
FIELDS=""
((BROWSER)) && FIELDS="$(printf '%s\n' "${BROWSER_FIELDS[@]}")"
command -v valgrind >/dev/null || apt-get install -y -qq valgrind >/dev/null
command -v nginx >/dev/null || apt-get install -y -qq nginx >/dev/null
((LOAD)) && { command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null; }
TMP="$(mktemp -d)"; trap 'kill $(jobs -p) 2>/dev/null; [[ -n "${KEEP:-}" ]] || rm -rf "$TMP"' EXIT
# Ports: PORT_KEDGE, PORT_BACKEND from the environment (machines shared by several runs).
PORT="${PORT_KEDGE:-18180}"; BACKEND="${PORT_BACKEND:-18190}"
mkdir -p "$TMP/t"
cat >"$TMP/be.conf" <<EOF2
daemon off; master_process off; worker_processes 1; pid $TMP/be.pid; error_log $TMP/be.err warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000; client_body_temp_path $TMP/t; proxy_temp_path $TMP/t;
  fastcgi_temp_path $TMP/t; uwsgi_temp_path $TMP/t; scgi_temp_path $TMP/t;
  server { listen 127.0.0.1:$BACKEND; location / { default_type text/plain; return 200 "hello from backend\n"; } } }
EOF2
nginx -p "$TMP" -c "$TMP/be.conf" &
KEDGE_STATE_DIR="$TMP/state" kedge_bench_config benches/callgrind_request.sh 1 epoll "$PORT" "$BACKEND" >"$TMP/kedge.toml"
cat >"$TMP/client.py" <<'EOF2'
import http.client, os, sys
new_conn = len(sys.argv) > 3
fields = {"Host": "bench.example.com"}
# --browser: lib.sh's BROWSER_FIELDS, one "Name: value" a line.
for line in os.environ.get("BROWSER_FIELDS", "").splitlines():
    name, value = line.split(": ", 1)
    fields[name] = value
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    if new_conn:
        c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
        c.request("GET", "/", headers=dict(fields, Connection="close"))
    else:
        c.request("GET", "/", headers=fields)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
    if new_conn:
        c.close()
EOF2
start_kedge() {   # name -> kedge under callgrind into $TMP/cg.<name>, its pid in $V once it listens
    valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.$1" "$BIN" run --config "$TMP/kedge.toml" 2>"$TMP/vg.$1" &
    V=$!
    for _ in $(seq 60); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT),timeout=1)" 2>/dev/null && break; sleep 1; done
}
totals() {   # callgrind file -> the program's instructions
    callgrind_annotate --auto=no "$1" 2>/dev/null \
        | awk '/PROGRAM TOTALS/ && !seen {gsub(",", "", $1); print $1 + 0; seen = 1}'
}
header() {
    [[ -n "${KEEP:-}" ]] && echo "callgrind files kept in $TMP"
    echo "kedge: $BIN ($("$BIN" version 2>/dev/null | head -1))"
}
cost() {   # n -> inclusive instructions of the connection task
    start_kedge "$1"
    local v=$V
    BROWSER_FIELDS=$FIELDS python3 "$TMP/client.py" "$PORT" 200 "${CLIENT_MODE[@]}"
    BROWSER_FIELDS=$FIELDS python3 "$TMP/client.py" "$PORT" "$1" "${CLIENT_MODE[@]}"
    kill -INT "$v"; wait "$v" || true
    if ((NEW_CONN)); then
        totals "$TMP/cg.$1"
        return
    fi
    callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$TMP/cg.$1" 2>/dev/null \
        | grep -E 'kedge::worker::(accept::connection|accept::plain_dispatch|conn::serve|conn::<impl [^ ]*Conn<S>>::run)::\{\{closure\}\}' \
        | awk '{gsub(",", "", $1); if ($1 + 0 > m) m = $1 + 0} END {print m + 0}'
}
if ((LOAD)); then
    start_kedge load
    v=$V
    load() { wrk -t1 -c50 -d"$1" -H "Host: bench.example.com" "http://127.0.0.1:$PORT/"; }
    load 3s >/dev/null
    callgrind_control -z "$v" >/dev/null
    load 10s >"$TMP/wrk.out"
    callgrind_control -d "$v" >/dev/null
    kill -INT "$v"; wait "$v" || true
    n=$(awk '/requests in/ {print $1}' "$TMP/wrk.out")
    total=$(totals "$TMP/cg.load.1")
    header
    echo "instructions per request in the whole process, 50 connections: $((total / n))  ($n requests, $total)"
    exit 0
fi
a=$(cost 1000); b=$(cost 5000)
header
what="in the connection task"
((NEW_CONN)) && what="in the whole process, a new connection each"
((BROWSER)) && what="$what, browser fields"
echo "instructions per request $what: $(( (b - a) / 4000 ))  (1,000: $a, 5,000: $b)"
