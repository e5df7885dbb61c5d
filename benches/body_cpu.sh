#!/usr/bin/env bash
# kedge's CPU time per MB of body, for comparing two builds on a shared machine: one kedge (one
# worker, CPU 0) in front of benches/body_upstream.rs (CPU 1), `wrk -t1 -cC -dDs` (CPU 1) per
# direction (GET /SIZE, POST /upload) and size (64k, 1m, 100m); kedge's on-CPU time is the sum of
# its threads' /proc/PID/task/*/schedstat (nanoseconds, not 10 ms ticks), over the bytes of the
# requests wrk completed.
#
#   bash benches/body_cpu.sh KEDGE_BIN UPSTREAM_BIN [LABEL]
#   C=2 D=8 PORT_KEDGE=18780 PORT_BACKEND=18790 bash benches/body_cpu.sh ...   (defaults)
#
# UPSTREAM_BIN: `cargo bench --no-run --bench body_upstream` prints it. Prints one line per case.
set -euo pipefail
# shellcheck source=benches/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BIN=${1:?usage: body_cpu.sh KEDGE_BIN UPSTREAM_BIN [LABEL]}; UP=${2:?upstream binary}; TAG=${3:-kedge}
D=${D:-8}; C=${C:-2}; PK=${PORT_KEDGE:-18780}; PB=${PORT_BACKEND:-18790}
T=$(mktemp -d /dev/shm/kedge-body-cpu.XXXXXX)
taskset -c 1 "$UP" --addr "127.0.0.1:$PB" >"$T/up.log" 2>&1 & UPID=$!
KPID=""
trap 'kill $UPID ${KPID:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$T"' EXIT
kedge_bench_config benches/body_cpu.sh 1 auto "$PK" "$PB" 'max_body = "1g"' >"$T/k.toml"
taskset -c 0 "$BIN" run --config "$T/k.toml" >"$T/k.log" 2>&1 & KPID=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PK/" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$PK/" >/dev/null || { cat "$T/k.log" >&2; exit 1; }
cpu() { local s=0 f; for f in /proc/"$KPID"/task/*/schedstat; do s=$((s + $(cut -d' ' -f1 "$f"))); done; echo "$s"; }
for s in 64k 1m 100m; do
    case $s in 64k) n=65536 ;; 1m) n=1048576 ;; 100m) n=104857600 ;; esac
    printf 'wrk.method = "POST"\nwrk.path = "/upload"\nwrk.body = string.rep("x", %s)\n' "$n" >"$T/up.lua"
    for dir in down up; do
        if [[ $dir == down ]]; then args=("http://127.0.0.1:$PK/$s"); else args=(-s "$T/up.lua" "http://127.0.0.1:$PK/upload"); fi
        a=$(cpu); taskset -c 1 wrk -t1 -c"$C" -d"${D}s" --timeout 60s "${args[@]}" >"$T/w.txt"; b=$(cpu)
        req=$(awk '/requests in/ {print $1}' "$T/w.txt")
        echo "$TAG $dir $s requests=$req kedge_cpu_ms=$(( (b - a) / 1000000 )) cpu_ms_per_MB=$(python3 -c "print(f'{($b - $a) / 1e6 / ($req * $n / 1e6):.3f}' if $req else 'n/a')")"
    done
done
