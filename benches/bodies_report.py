#!/usr/bin/env python3
"""Report of benches/bodies.sh (stdlib only): medians per (direction, size, target) from the
runs.tsv that bench_report.py's `record` wrote (target column "TARGET|DIR|SIZE").

  bodies_report.py --tsv FILE [--meta FILE]

MB/s = requests/s x body bytes / 1e6 (the body only: heads are a rounding error here).
CPU ms per MB = proxy CPU seconds per second / MB per second x 1000, per run, then the median:
what the proxy process (all its threads, user + system) spends to move one MB.
"""

import argparse
import json
import os
import statistics

TARGETS = ["kedge", "nginx-off", "nginx", "direct"]


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def size_bytes(s):
    if s.endswith("k"):
        return int(s[:-1]) << 10
    if s.endswith("m"):
        return int(s[:-1]) << 20
    return int(s)


def f(v, nd=0):
    return "n/a" if v is None else f"{v:,.{nd}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tsv", required=True)
    ap.add_argument("--meta")
    args = ap.parse_args()
    rows = []
    with open(args.tsv) as fh:
        header = fh.readline().rstrip("\n").split("\t")
        for line in fh:
            if line.strip():
                rows.append(dict(zip(header, line.rstrip("\n").split("\t"))))
    meta = {}
    if args.meta and os.path.exists(args.meta):
        with open(args.meta) as fh:
            meta = json.load(fh)

    cases, med = [], {}
    for r in rows:
        if r["phase"] != "run":
            continue
        t, d, s = r["target"].split("|")
        if (d, s) not in cases:
            cases.append((d, s))
        med.setdefault((d, s, t), []).append(r)

    out = []
    if meta:
        out.append(f"### Large bodies ({meta.get('date', '')})\n")
        out.append(f"- command: `{meta.get('command', '')}`")
        out.append(f"- machine: {meta.get('nproc')} CPUs, {meta.get('cpu_model')}, kernel {meta.get('kernel')}")
        out.append(f"- load: `{meta.get('wrk_cmd', '')}` (uploads: a Lua script POSTing the body); "
                   f"1 warm-up run per target and case, then {meta.get('runs')} runs each, alternating")
        out.append(f"- pinning: proxy CPU {meta.get('proxy_cpus')}, backend (benches/body_upstream.rs) "
                   f"CPU {meta.get('backend_cpus')}, wrk CPU {meta.get('wrk_cpus')}")
        out.append(f"- versions: {meta.get('versions', '')}")
        out.append("")
    out.append("| direction | size | target | runs | req/s | MB/s | proxy CPU % | CPU ms per MB | "
               "proxy RSS MB | backend CPU % | wrk CPU % | other CPU % | errors |")
    out.append("|" + "---|" * 13)
    summary = {}
    for d, s in cases:
        nbytes = size_bytes(s)
        for t in TARGETS:
            rs = med.get((d, s, t))
            if not rs:
                continue
            col = lambda c: [num(r[c]) for r in rs]  # noqa: E731
            rps = median(col("rps"))
            mbps = rps * nbytes / 1e6 if rps is not None else None
            per_mb = median([c / 100.0 / (q * nbytes / 1e6) * 1000.0
                             for q, c in zip(col("rps"), col("proxy_cpu_pct"))
                             if q and c is not None and t != "direct"])
            errors = sum(int(num(r["socket_errors"]) or 0) + int(num(r["non_2xx"]) or 0) for r in rs)
            summary[(d, s, t)] = {"mbps": mbps, "per_mb": per_mb}
            direct = t == "direct"
            out.append(f"| {d} | {s} | {t} | {len(rs)} | {f(rps, 0 if (rps or 0) >= 100 else 2)} | {f(mbps)} | "
                       f"{'—' if direct else f(median(col('proxy_cpu_pct')))} | "
                       f"{'—' if direct else f(per_mb, 2)} | "
                       f"{'—' if direct else f(median(col('proxy_rss_mb')), 1)} | "
                       f"{f(median(col('backend_cpu_pct')))} | {f(median(col('wrk_cpu_pct')))} | "
                       f"{f(median(col('other_cpu_pct')))} | {errors} |")
    out.append("")
    out.append("| direction | size | kedge MB/s ÷ nginx's best | kedge CPU per MB ÷ nginx's cheapest | "
               "kedge MB/s ÷ direct |")
    out.append("|---|---|---|---|---|")
    for d, s in cases:
        k = summary.get((d, s, "kedge"))
        ng = [summary[(d, s, t)] for t in ("nginx-off", "nginx") if (d, s, t) in summary]
        di = summary.get((d, s, "direct"))
        best = max((x["mbps"] for x in ng if x["mbps"]), default=None)
        cheap = min((x["per_mb"] for x in ng if x["per_mb"]), default=None)
        r1 = k["mbps"] / best if k and k["mbps"] and best else None
        r2 = k["per_mb"] / cheap if k and k["per_mb"] and cheap else None
        r3 = k["mbps"] / di["mbps"] if k and k["mbps"] and di and di["mbps"] else None
        out.append(f"| {d} | {s} | {f(r1, 3)} | {f(r2, 3)} | {f(r3, 3)} |")
    out.append("")
    out.append("nginx-off: `proxy_buffering off; proxy_request_buffering off;`; nginx: its defaults "
               "(request bodies above 16 KiB and responses above its 8 x 4/8 KiB buffers spooled to "
               "temp files, here on tmpfs). Both `client_max_body_size 0`. MB/s ratio > 1: kedge "
               "moved more; CPU-per-MB ratio < 1: kedge spent less CPU per MB. When the wrk/backend "
               "core is saturated (see its CPU columns) MB/s is capped for every target alike and "
               "CPU per MB is the figure that compares the proxies.")
    noisy = [r["target"] + "#" + r["run"] for r in rows
             if r["phase"] == "run" and (num(r.get("other_cpu_pct")) or 0) >= 10]
    if noisy:
        out.append(f"\n**Warning:** other processes used >= 10 % of a core during: {', '.join(noisy)}.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
