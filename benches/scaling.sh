#!/usr/bin/env bash
# Two-worker scaling: benches/proxy.sh with --workers 1, then --workers 2 (same other options),
# then the scaling report (bench_report.py scaling): req/s at both, scaling efficiency =
# req/s(2) / (2 x req/s(1)), and the proxies' CPU time per request at both.
#
#   bash benches/scaling.sh [proxy.sh options except --workers and --results-dir]
#
# Results: benches/results/<date>-scaling/{w1,w2}/ and scaling.md there.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for a in "$@"; do
    case "$a" in
        --workers|--results-dir) echo "scaling.sh sets $a itself" >&2; exit 2 ;;
        -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    esac
done
OUT="$BENCH_DIR/results/$(date +%Y%m%d-%H%M%S)-scaling"
mkdir -p "$OUT/w1" "$OUT/w2"
bash "$BENCH_DIR/proxy.sh" --workers 1 --results-dir "$OUT/w1" "$@"
# The first run built kedge (unless told not to): the second one does not.
args=(); for a in "$@"; do [[ "$a" == --skip-build ]] || args+=("$a"); done
bash "$BENCH_DIR/proxy.sh" --workers 2 --results-dir "$OUT/w2" --skip-build "${args[@]}"
python3 "$BENCH_DIR/bench_report.py" scaling --one "$(echo "$OUT"/w1/*/)" --two "$(echo "$OUT"/w2/*/)" \
    | tee "$OUT/scaling.md"
