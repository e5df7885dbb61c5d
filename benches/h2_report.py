#!/usr/bin/env python3
"""Helper for benches/h2.sh (stdlib only): h2load output parsing, one TSV row per run, summary.

The /proc snapshots and the quiet-machine wait are bench_report.py's (`snap`, `quiet`).

  record  --tsv FILE --target T --mode MODE --phase warmup|run --run I --before SNAP
          --after SNAP --h2load OUTPUT --time TIME_OUTPUT [--reqlog FILE] [--max-other PCT]
          [--proxy-pid PID]
          Parses one h2load run and appends a row; exits 3 when other processes used
          >= PCT % of a core during it (the row's phase then ends in -noisy). --reqlog is
          h2load's --log-file (one line per request: start µs, status, µs to the response's
          end): p50 and p99 come from it. --proxy-pid: the proxy's anonymous memory (RssAnon
          of it and its child processes, read at record time, right after the run) joins the
          row: RSS counts the mapped binary and shared libraries too (file-backed, and once per
          nginx process), anonymous memory is what the proxy allocated.

  summary --tsv FILE [--meta FILE]
          Prints the Markdown report: medians per target, kedge/nginx ratios per mode.
"""

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_report import CLK_TCK, _fmt, _median, _num, _process_tree, _ratio, parse_time  # noqa: E402

COLUMNS = [
    "target", "mode", "phase", "run", "rps", "mean_ms", "max_ms", "requests", "errors",
    "non_2xx", "protocol", "elapsed_s", "proxy_cpu_pct", "proxy_rss_mb", "backend_cpu_pct",
    "load_cpu_pct", "other_cpu_pct", "cpu_busy_pct", "p50_ms", "p99_ms", "proxy_anon_mb",
]


def anon_mb(root):
    """RssAnon of `root` and its descendants, in MB (None when unreadable)."""
    total, seen = 0, False
    for pid in _process_tree(int(root)):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        total += int(line.split()[1])
                        seen = True
        except OSError:
            pass
    return total / 1024.0 if seen else None


def percentiles(path):
    """p50 and p99 in ms of the request times in h2load's --log-file (nearest rank)."""
    times = []
    try:
        with open(path) as f:
            for line in f:
                cols = line.split("\t")
                if len(cols) >= 3:
                    try:
                        times.append(int(cols[2]) / 1000.0)
                    except ValueError:
                        pass
    except OSError:
        return None, None
    if not times:
        return None, None
    times.sort()

    def rank(p):
        return times[min(len(times) - 1, max(0, int(round(p * len(times))) - 1))]
    return rank(0.50), rank(0.99)

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_h2load(text):
    """The figures of one h2load run (None where the output lacks them)."""
    out = {"rps": None, "requests": None, "errors": None, "non_2xx": None, "mean_ms": None,
           "max_ms": None, "protocol": None}
    m = re.search(r"^finished in [\d.]+(?:us|ms|s), ([\d.]+) req/s", text, re.M)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"^requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", text, re.M)
    if m:
        out["requests"] = int(m.group(2))
        out["errors"] = int(m.group(3)) + int(m.group(4)) + int(m.group(5))
    m = re.search(r"^status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    if m:
        out["non_2xx"] = sum(int(m.group(i)) for i in (1, 2, 3))
    m = re.search(r"^time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)",
                  text, re.M)
    if m:
        out["max_ms"] = float(m.group(3)) * _UNIT_MS[m.group(4)]
        out["mean_ms"] = float(m.group(5)) * _UNIT_MS[m.group(6)]
    m = re.search(r"^Application protocol: (\S+)", text, re.M)
    if m:
        out["protocol"] = m.group(1)
    return out


def cmd_record(args):
    with open(args.before) as f:
        a = json.load(f)
    with open(args.after) as f:
        b = json.load(f)
    with open(args.h2load, errors="replace") as f:
        h2 = parse_h2load(f.read())
    try:
        with open(args.time) as f:
            tm = parse_time(f.read())
    except OSError:
        tm = None
    elapsed = tm[0] if tm and tm[0] > 0 else b["t"] - a["t"]

    def proc_cpu(name):
        if name not in a["procs"] or name not in b["procs"] or elapsed <= 0:
            return None
        return 100.0 * (b["procs"][name]["ticks"] - a["procs"][name]["ticks"]) / CLK_TCK / elapsed

    busy, busy_cores = [], 0.0
    for cpu in sorted(b["cpus"], key=lambda c: int(c[3:])):
        if cpu in a["cpus"] and elapsed > 0:
            frac = min(1.0, (b["cpus"][cpu][0] - a["cpus"][cpu][0]) / CLK_TCK / elapsed)
            busy.append(f"{cpu}={100.0 * frac:.0f}")
            busy_cores += frac
    load_cpu = (100.0 * tm[1] / tm[0]) if tm and tm[0] > 0 else None
    ours = sum(v for v in (proc_cpu("proxy"), proc_cpu("backend"), load_cpu) if v is not None)
    other = max(0.0, 100.0 * busy_cores - ours)
    noisy = args.max_other > 0 and other >= args.max_other
    row = {
        "target": args.target, "mode": args.mode, "phase": args.phase + ("-noisy" if noisy else ""),
        "run": args.run, **h2, "elapsed_s": elapsed,
        "proxy_cpu_pct": proc_cpu("proxy"),
        "proxy_rss_mb": b["procs"]["proxy"]["rss_kb"] / 1024.0 if "proxy" in b["procs"] else None,
        "backend_cpu_pct": proc_cpu("backend"), "load_cpu_pct": load_cpu, "other_cpu_pct": other,
        "cpu_busy_pct": ",".join(busy),
    }
    row["p50_ms"], row["p99_ms"] = percentiles(args.reqlog) if args.reqlog else (None, None)
    row["proxy_anon_mb"] = anon_mb(args.proxy_pid) if args.proxy_pid else None
    new = not os.path.exists(args.tsv) or os.path.getsize(args.tsv) == 0
    with open(args.tsv, "a") as f:
        if new:
            f.write("\t".join(COLUMNS) + "\n")
        f.write("\t".join(_fmt(row[c], 3 if c.endswith("_ms") else 2) for c in COLUMNS) + "\n")
    print(f"  {row['phase']:6s} {args.target:10s} #{args.run}: {_fmt(row['rps'], 0):>9s} req/s  "
          f"mean {_fmt(row['mean_ms'], 3)} ms  proxy CPU {_fmt(row['proxy_cpu_pct'], 0)}%  "
          f"backend CPU {_fmt(row['backend_cpu_pct'], 0)}%  h2load CPU {_fmt(load_cpu, 0)}%  "
          f"other CPU {_fmt(other, 0)}%  [busy {row['cpu_busy_pct']}]  protocol {h2['protocol']}"
          + (f"  ERRORS {h2['errors']} non-2xx {h2['non_2xx']}" if (h2["errors"] or h2["non_2xx"]) else "")
          + ("  (h2load output unparseable!)" if h2["rps"] is None else "")
          + (f"  -> discarded: other CPU load >= {args.max_other:.0f}%, will retry" if noisy else ""))
    return 3 if noisy else 0


def cmd_summary(args):
    with open(args.tsv) as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [dict(zip(header, line.rstrip("\n").split("\t"))) for line in f if line.strip()]
    meta = {}
    if args.meta and os.path.exists(args.meta):
        with open(args.meta) as f:
            meta = json.load(f)
    order = []
    for r in rows:
        if r["phase"] == "run" and r["target"] not in order:
            order.append(r["target"])
    med = {}
    for t in order:
        rs = [r for r in rows if r["target"] == t and r["phase"] == "run"]
        col = lambda c: [_num(r[c]) for r in rs]  # noqa: E731
        rps = [v for v in col("rps") if v is not None]
        busy = {}
        for r in rs:
            for kv in (r.get("cpu_busy_pct") or "").split(","):
                if "=" in kv:
                    k, v = kv.split("=")
                    busy.setdefault(k, []).append(_num(v))
        med[t] = {
            "n": len(rs), "rps": _median(rps), "min": min(rps) if rps else None,
            "max": max(rps) if rps else None, "mean": _median(col("mean_ms")),
            "p50": _median([v for v in col("p50_ms") if v is not None]),
            "p99": _median([v for v in col("p99_ms") if v is not None]),
            "cpu": _median(col("proxy_cpu_pct")),
            "eff": _median([r_ / (c_ / 100.0) for r_, c_ in zip(col("rps"), col("proxy_cpu_pct"))
                            if r_ is not None and c_ and c_ > 0]),
            "rss": _median(col("proxy_rss_mb")), "backend": _median(col("backend_cpu_pct")),
            "anon": _median([v for v in col("proxy_anon_mb") if v is not None] if "proxy_anon_mb" in header else []),
            "us": _median([c_ / 100.0 * e_ / q_ * 1e6
                           for c_, e_, q_ in zip(col("proxy_cpu_pct"), col("elapsed_s"), col("requests"))
                           if c_ is not None and e_ and q_]),
            "load": _median(col("load_cpu_pct")), "other": _median(col("other_cpu_pct")),
            "errors": sum(int(_num(r["errors"]) or 0) + int(_num(r["non_2xx"]) or 0) for r in rs),
            "protocols": sorted({r["protocol"] for r in rs if r.get("protocol")}),
            "busy": {k: _median(v) for k, v in sorted(busy.items(), key=lambda kv: int(kv[0][3:]))},
        }

    def f(v, nd=0):
        return "n/a" if v is None else f"{v:,.{nd}f}"

    out = []
    if meta:
        out.append(f"### HTTP/2 front-end benchmark, workers={meta.get('workers')} ({meta.get('date', '')})\n")
        out.append(f"- command: `{meta.get('command', '')}`")
        out.append(f"- machine: {meta.get('nproc')} CPUs, {meta.get('cpu_model')}, kernel {meta.get('kernel')}")
        out.append(f"- load: `{meta.get('load_cmd', '')}`; 1 warm-up run per target, then {meta.get('runs')} "
                   "runs per target, kedge and nginx alternating (the order flips every run)")
        out.append(f"- pinning: proxy CPU {meta.get('proxy_cpus')}, backend CPU {meta.get('backend_cpus')}, "
                   f"h2load CPU {meta.get('load_cpus')}"
                   + ("  **(oversubscribed)**" if meta.get("oversubscribed") else "")
                   + (f"; each proxy capped at {meta['proxy_quota_pct']} % of one core (CFS quota)"
                      if meta.get("proxy_quota_pct") else ""))
        out.append(f"- versions: {meta.get('versions', '')}")
        out.append("")
    cpu_cols = sorted({c for t in order for c in med[t]["busy"]}, key=lambda c: int(c[3:]))
    out.append("| target | protocol | runs | req/s (median) | req/s min–max | mean request ms | p50 ms | p99 ms | proxy CPU % | "
               "req/s per proxy core | proxy CPU µs/request | proxy RSS MB | proxy anon MB | backend CPU % | h2load CPU % | other CPU % | "
               + "".join(f"{c} busy % | " for c in cpu_cols) + "errors |")
    out.append("|" + "---|" * (17 + len(cpu_cols)))
    for t in order:
        m = med[t]
        out.append(f"| {t} | {'/'.join(m['protocols']) or '?'} | {m['n']} | {f(m['rps'])} | "
                   f"{f(m['min'])}–{f(m['max'])} | {f(m['mean'], 3)} | {f(m['p50'], 3)} | {f(m['p99'], 3)} | "
                   f"{f(m['cpu'])} | {f(m['eff'])} | {f(m['us'], 1)} | "
                   f"{f(m['rss'], 1)} | {f(m['anon'], 1)} | {f(m['backend'])} | {f(m['load'])} | {f(m['other'])} | "
                   + "".join(f"{f(m['busy'].get(c))} | " for c in cpu_cols) + f"{m['errors']} |")
    out.append("")
    out.append("| ratio | req/s ratio | mean request time ratio | req/s-per-proxy-core ratio |")
    out.append("|---|---|---|---|")
    modes = []
    for r in rows:
        if r["mode"] not in modes:
            modes.append(r["mode"])
    for mode in modes:
        a, b = med.get(f"kedge-{mode}"), med.get(f"nginx-{mode}")
        if not a or not b:
            continue
        out.append(f"| kedge-{mode}/nginx-{mode} | {f(_ratio(a['rps'], b['rps']), 3)} | "
                   f"{f(_ratio(a['mean'], b['mean']), 3)} | {f(_ratio(a['eff'], b['eff']), 3)} |")
    out.append("")
    out.append("req/s ratio > 1: kedge served more requests/s; mean request time ratio < 1: kedge answered "
               "sooner; req/s per proxy core = req/s / (proxy CPU % / 100), > 1 ratio: kedge spent less "
               "CPU per request. Latencies: h2load's mean, and p50/p99 from its per-request log "
               "(closed loop: they move with req/s; churn runs at a fixed connection rate, so there "
               "req/s is that rate and the latencies and CPU are what compare).")
    sat = sorted({c for t in order for c, v in med[t]["busy"].items() if v is not None and v >= 95})
    if sat:
        out.append(f"\nNote: CPU(s) {', '.join(sat)} were >= 95 % busy: req/s is capped by whichever core "
                   "saturates first; compare the per-proxy-core column.")
    wrong = [t for t in order if med[t]["protocols"] and med[t]["protocols"] != ["h2c" if t.endswith("h2c") else "h2"]]
    if wrong:
        out.append(f"\n**Warning:** not HTTP/2 for: {', '.join(wrong)} (see the protocol column).")
    discarded = [f"{r['target']}#{r['run']}" for r in rows if r["phase"] == "run-noisy"]
    if discarded:
        out.append(f"\nDiscarded and re-run because other processes were using the CPUs: {', '.join(discarded)}.")
    noisy = [f"{r['target']}#{r['run']}" for r in rows
             if r["phase"] == "run" and (_num(r.get("other_cpu_pct")) or 0) >= 10]
    if noisy:
        out.append(f"\n**Warning:** other processes used >= 10 % of a core during: {', '.join(noisy)}.")
    bad = [t for t in order if med[t]["errors"]]
    if bad:
        out.append(f"\n**Warning:** failed requests or non-2xx answers for: {', '.join(bad)} (see runs.tsv).")
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("record")
    for a in ("--tsv", "--target", "--mode", "--phase", "--run", "--before", "--after", "--h2load", "--time"):
        p.add_argument(a, required=True)
    p.add_argument("--max-other", type=float, default=0.0)
    p.add_argument("--reqlog")
    p.add_argument("--proxy-pid")
    p.set_defaults(fn=cmd_record)
    p = sub.add_parser("summary")
    p.add_argument("--tsv", required=True)
    p.add_argument("--meta")
    p.set_defaults(fn=cmd_summary)
    args = ap.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
