#!/usr/bin/env bash
# Differential fuzzing of kedge's HTTP/1.1 handling, both directions, against h11 (a strict
# Python HTTP/1.1 implementation from PyPI):
#
#   bash fuzz/differential/run.sh [--cases N] [--seeds "1 2 3"] [--driver io_uring|epoll] [KEDGE_BIN]
#                                                   # default: cargo build, target/debug/kedge, kedge's own driver choice
#
# h11 and h2 (the Python HTTP/2 library, for the client of h2_requests.py) come from PyPI.
# requests.py: mutated requests (smuggling shapes, bad bytes, pipelining, upgrades, bodies
#   carrying a smuggled request) through kedge to an h11 backend. A finding: a request kedge
#   forwarded that h11 cannot parse; an answer the backend gave that did not reach the client
#   whose bytes carried the request (desync); an answer that is not HTTP; a hang.
# answers.py: mutated upstream answers (framing, 1xx, 204/304 with bodies, bytes after the
#   body, trailers) to an h11 client, each followed by a second request on the same client
#   connection. A finding: bytes kedge sent that h11 cannot parse; a second answer that is not
#   the backend's clean one or a 5xx of kedge's (desync); no answer at all; a timeout.
#   With the client on HTTP/2 (h2c, `answers.py … h2`): the same answers through kedge's
#   HTTP/1.1-to-HTTP/2 translation, checked by the `h2` library, and a GOAWAY over one stream's
#   bad upstream answer is a finding too.
# h2_requests.py: mutated HTTP/2 requests (h2c; pseudo-headers missing, doubled or odd; field
#   names and values meant to inject fields or a request into the HTTP/1.1 head kedge writes;
#   bodies against their content-length) to the h11 backend: the downgrade path. A finding: a
#   request h11 cannot parse, an injected field or request, an answer lost on a stream that
#   ended normally, a hang.
#
# Exploratory, not part of scripts/test.sh: thousands of cases per seed, seconds each, and the
# findings go into regression tests (tests/it). Exit status 1 when a seed has a finding.
# What the three scripts share (the h11 backend, mutation, command line) is in common.py.
# Ports: FUZZ_PORT (kedge) and FUZZ_PORT+10 (backend), default 18400.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CASES=3000 SEEDS="1 2 3" DRIVER=auto
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cases) CASES="$2"; shift 2 ;;
        --seeds) SEEDS="$2"; shift 2 ;;
        --driver) DRIVER="$2"; shift 2 ;;
        *) break ;;
    esac
done
BIN="${1:-}"
if [[ -z "$BIN" ]]; then
    (cd "$ROOT" && cargo build -q)
    BIN="$ROOT/target/debug/kedge"
fi
python3 -c "import h11, h2" 2>/dev/null || python3 -m pip install -q h11 h2
PORT="${FUZZ_PORT:-18400}"; BACKEND=$((PORT + 10))
TMP="$(mktemp -d)"; trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
KEDGE_STATE_DIR="$TMP/state" kedge_bench_config fuzz/differential/run.sh 1 "$DRIVER" "$PORT" "$BACKEND" >"$TMP/kedge.toml"
status=0
for fuzzer in requests answers answers-h2 h2_requests; do
    script="${fuzzer%-h2}" mode=""
    [[ "$fuzzer" == *-h2 ]] && mode="h2"
    for seed in $SEEDS; do
        "$BIN" run --config "$TMP/kedge.toml" >"$TMP/kedge.log" 2>&1 &
        k=$!
        ready=0
        for _ in $(seq 150); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && { ready=1; break; }; sleep 0.1; done
        echo "== $fuzzer, seed $seed"
        if ((!ready)); then
            echo "kedge did not listen on 127.0.0.1:$PORT within 15 s:"; tail -20 "$TMP/kedge.log"; status=1
            kill "$k" 2>/dev/null; wait "$k" 2>/dev/null || true
            continue
        fi
        python3 "$ROOT/fuzz/differential/$script.py" "$PORT" "$BACKEND" "$CASES" "$seed" 16 $mode || status=1
        if ! kill -0 "$k" 2>/dev/null; then
            echo "kedge died:"; tail -20 "$TMP/kedge.log"; ss -tanp | grep ":$PORT " | grep -v TIME-WAIT | head -8 || true; status=1
        fi
        kill "$k" 2>/dev/null; wait "$k" 2>/dev/null || true
    done
done
exit $status
