#!/usr/bin/env python3
"""Helper for benches/tls.sh (stdlib only).

  line "key=.. cell=.. target=.. phase=.. run=.. <tls_load result fields>"
         One human-readable console line for a run.

  summary --runs runs.txt [--meta meta.json]
         Markdown report: medians per cell and proxy, kedge/nginx ratios, targets.

  sslscan FILE
         Summarises an sslscan output: accepted protocols and suites, and whether
         they fit Mozilla's "intermediate" profile (TLS 1.2 + 1.3, ECDHE/DHE + AEAD).
"""

import argparse
import json
import os
import re
import statistics
import sys

CELL_TITLE = {
    "keepalive": "keep-alive requests/s",
    "full": "full handshakes/s",
    "fullpq": "full handshakes/s, client preferring X25519MLKEM768",
    "resumed13": "resumed handshakes/s, TLS 1.3",
    "resumed12": "resumed handshakes/s, TLS 1.2 (ticket)",
    "resumed12id": "resumed handshakes/s, TLS 1.2 (session ID)",
    "idle": "memory per idle TLS connection, KiB",
}
# (cell, key or None = the first key measured) -> (minimum kedge/nginx ratio, or max KiB)
TARGETS = {
    ("keepalive", None): ("ratio", 1.1),
    ("full", "ecdsa"): ("ratio", 1.2),
    ("resumed13", None): ("ratio", 1.5),
    ("resumed12", None): ("ratio", 1.5),
    ("resumed12id", None): ("ratio", 1.5),
    ("idle", None): ("kib", 40.0),
}


def parse_fields(text):
    out = {}
    for tok in text.split():
        if "=" in tok:
            k, _, v = tok.partition("=")
            out[k] = v
    return out


def num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None  # NaN -> None


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, nd=0):
    return "n/a" if v is None else f"{v:,.{nd}f}"


def cmd_line(args):
    f = parse_fields(args.text)
    head = f"  {f.get('phase', ''):9s} {f.get('key', ''):5s} {f.get('cell', ''):9s} {f.get('target', ''):5s} #{f.get('run', '')}:"
    if f.get("mode") == "idle":
        msg = (f"{f.get('per_conn_kib', '?'):>8s} KiB/idle conn  ({f.get('opened')}/{f.get('conns')} opened, "
               f"{f.get('alive')} alive after {f.get('hold_s')} s; RSS {f.get('rss_before_kib')} -> "
               f"{f.get('rss_idle_kib')} KiB, {f.get('rss_after_close_kib')} after close)")
    else:
        msg = (f"{fmt(num(f.get('rate')), 0):>9s}/s  p50 {f.get('p50_ms')} ms  p99 {f.get('p99_ms')} ms  "
               f"proxy CPU {f.get('proxy_cpu')}%  per proxy core {fmt(num(f.get('per_proxy_core')), 0)}  "
               f"resumed {f.get('resumed')}  other CPU {f.get('other_cpu')}%  "
               f"[{f.get('proto')} {f.get('suite')} {f.get('kx')}]")
    if int(num(f.get("unclean_closes")) or 0):
        msg += f"  ({f.get('unclean_closes')} closes without close_notify)"
    errs = int(num(f.get("errors")) or 0)
    if errs:
        msg += f"  ERRORS {errs} ({f.get('error_kinds')})"
    print(head, msg)
    return 0


def load_runs(path):
    rows = []
    with open(path) as fh:
        for line in fh:
            if line.strip():
                rows.append(parse_fields(line))
    return rows


def cmd_summary(args):
    rows = load_runs(args.runs)
    meta = {}
    if args.meta and os.path.exists(args.meta):
        with open(args.meta) as fh:
            meta = json.load(fh)
    keys = []
    for r in rows:
        if r.get("key") not in keys:
            keys.append(r.get("key"))

    cells = []  # (key, cell) in order of appearance
    for r in rows:
        kc = (r.get("key"), r.get("cell"))
        if r.get("phase") == "run" and kc not in cells:
            cells.append(kc)

    med = {}
    for kc in cells:
        for t in ("kedge", "nginx"):
            rs = [r for r in rows if (r.get("key"), r.get("cell")) == kc and r.get("target") == t
                  and r.get("phase") == "run"]
            if not rs:
                continue
            col = lambda c: [num(r.get(c)) for r in rs]  # noqa: E731
            value = col("per_conn_kib") if kc[1] == "idle" else col("rate")
            vals = [v for v in value if v is not None]
            med[kc + (t,)] = {
                "n": len(rs),
                "value": median(vals),
                "min": min(vals) if vals else None,
                "max": max(vals) if vals else None,
                "p50": median(col("p50_ms")),
                "p99": median(col("p99_ms")),
                "cpu": median(col("proxy_cpu")),
                "per_core": median(col("per_proxy_core")),
                "resumed": median(col("resumed")),
                "other": median(col("other_cpu")),
                "backend": median(col("backend_cpu")),
                "self": median(col("self_cpu")),
                "errors": sum(int(num(r.get("errors")) or 0) for r in rs),
                "unclean": sum(int(num(r.get("unclean_closes")) or 0) for r in rs),
                "alive": [r.get("alive") + "/" + r.get("opened") for r in rs if "alive" in r],
                "rss": median(col("rss_idle_kib")),
                "neg": sorted({f"{r.get('proto')} {r.get('suite')} {r.get('kx')}" for r in rs}),
            }

    out = []
    if meta:
        out.append(f"### TLS benchmark, workers={meta.get('workers')} ({meta.get('date', '')})\n")
        out.append(f"- command: `{meta.get('command', '')}`")
        out.append(f"- machine: {meta.get('nproc')} CPUs, {meta.get('cpu_model')}, kernel {meta.get('kernel')}")
        out.append(f"- client: {meta.get('client')}; {meta.get('concurrency')} concurrent connections; "
                   f"{meta.get('runs')} runs x {meta.get('duration_s')} s per cell and proxy "
                   f"(+{meta.get('client_warmup_s')} s warm-up each), alternating kedge/nginx; medians")
        out.append(f"- idle: {meta.get('idle_conns')} connections, one request each, held "
                   f"{meta.get('hold_s')} s; (proxy RSS with them − RSS before) / connections; nginx = "
                   f"master + workers")
        out.append(f"- pinning: proxy CPU {meta.get('proxy_cpus')}, backend CPU {meta.get('backend_cpus')}, "
                   f"load generator CPU {meta.get('load_cpus')}"
                   + ("  **(oversubscribed)**" if meta.get("oversubscribed") else "")
                   + (f"; each proxy capped at {meta['proxy_quota_pct']} % of one core"
                      if meta.get("proxy_quota_pct") else ""))
        v = meta.get("versions", {})
        out.append(f"- versions: {v.get('kedge')}; {v.get('nginx')}")
        out.append("")

    def target_for(key, cell):
        t = TARGETS.get((cell, key)) or TARGETS.get((cell, None))
        if (cell, None) in TARGETS and key != keys[0] and (cell, key) not in TARGETS:
            return None
        return t

    out.append("| measurement | key | kedge | nginx | kedge/nginx | per proxy core: kedge / nginx / ratio | target | |")
    out.append("|---|---|---|---|---|---|---|---|")
    for key, cell in cells:
        k, n = med.get((key, cell, "kedge")), med.get((key, cell, "nginx"))
        nd = 1 if cell == "idle" else 0
        ratio = (k["value"] / n["value"]) if k and n and k["value"] and n["value"] else None
        tgt = target_for(key, cell)
        verdict, tgt_s = "", ""
        if tgt and tgt[0] == "ratio":
            tgt_s = f"≥ {tgt[1]}×"
            verdict = "" if ratio is None else ("met" if ratio >= tgt[1] else "**not met**")
        elif tgt and tgt[0] == "kib":
            tgt_s = f"kedge ≤ {tgt[1]:.0f} KiB"
            verdict = "" if not k or k["value"] is None else ("met" if k["value"] <= tgt[1] else "**not met**")
        if cell == "idle":
            pc = "—"
        else:
            kp, np_ = (k or {}).get("per_core"), (n or {}).get("per_core")
            pc = f"{fmt(kp)} / {fmt(np_)} / {fmt(kp / np_, 2) if kp and np_ else 'n/a'}"
        out.append(f"| {CELL_TITLE.get(cell, cell)} | {key} | {fmt(k and k['value'], nd)} | "
                   f"{fmt(n and n['value'], nd)} | {fmt(ratio, 2)} | {pc} | {tgt_s} | {verdict} |")
    out.append("")
    if any(cell == "idle" for _, cell in cells):
        out.append("For idle memory the ratio is kedge/nginx KiB (< 1 = kedge leaner).")
        out.append("")

    out.append("| cell | key | proxy | runs | median | min–max | p50 ms | p99 ms | proxy CPU % | backend CPU % "
               "| client CPU % | other CPU % | resumed | errors | negotiated |")
    out.append("|" + "---|" * 15)
    for key, cell in cells:
        for t in ("kedge", "nginx"):
            m = med.get((key, cell, t))
            if not m:
                continue
            if cell == "idle":
                out.append(f"| {cell} | {key} | {t} | {m['n']} | {fmt(m['value'], 1)} KiB | "
                           f"{fmt(m['min'], 1)}–{fmt(m['max'], 1)} | | | | | | | alive {', '.join(m['alive'])} | "
                           f"{m['errors']} | {'; '.join(m['neg'])} |")
            else:
                out.append(f"| {cell} | {key} | {t} | {m['n']} | {fmt(m['value'])} | {fmt(m['min'])}–{fmt(m['max'])} | "
                           f"{fmt(m['p50'], 2)} | {fmt(m['p99'], 2)} | {fmt(m['cpu'])} | {fmt(m['backend'])} | "
                           f"{fmt(m['self'])} | {fmt(m['other'])} | {fmt(m['resumed'], 3)} | {m['errors']} | "
                           f"{'; '.join(m['neg'])} |")
    for key, cell in cells:
        for t in ("kedge", "nginx"):
            m = med.get((key, cell, t))
            if m and m["unclean"]:
                out.append(f"{t} {key} {cell}: {m['unclean']} connection(s) closed without close_notify.")
    noisy = [r for r in rows if r.get("phase") == "run-noisy"]
    errs = [r for r in rows if int(num(r.get("errors")) or 0) > 0]
    out.append("")
    if noisy:
        out.append(f"{len(noisy)} run(s) discarded for foreign CPU load and redone (phase run-noisy in runs.txt).")
    if errs:
        out.append("Runs with errors: " + "; ".join(
            f"{r.get('key')}/{r.get('cell')}/{r.get('target')}/{r.get('phase')}#{r.get('run')}: "
            f"{r.get('errors')} ({r.get('error_kinds')})" for r in errs))
    print("\n".join(out))
    return 0


AEAD = re.compile(r"(GCM|CHACHA20|CCM)")


def cmd_sslscan(args):
    with open(args.file, errors="replace") as fh:
        text = re.sub(r"\x1b\[[0-9;]*m", "", fh.read())
    protocols = dict(re.findall(r"^(SSLv[23]|TLSv1\.[0-3])\s+(enabled|disabled)", text, re.M))
    suites = re.findall(r"^(Preferred|Accepted)\s+(TLSv1\.[0-3]|SSLv[23])\s+(\d+) bits\s+(\S+)", text, re.M)
    groups = re.findall(r"^TLSv1\.[23]\s+\d+ bits\s+(\S+)", text, re.M)
    sig_part = text.split("Server Signature Algorithm(s):", 1)[1].split("\n\n", 1)[0] if "Server Signature Algorithm(s):" in text else ""
    sigs = re.findall(r"^(TLSv1\.[23])\s+(.+?)\s*$", sig_part, re.M)
    enabled = sorted(p for p, s in protocols.items() if s == "enabled")
    bad_proto = [p for p in enabled if p not in ("TLSv1.2", "TLSv1.3")]
    bad_suites = [s for _, proto, _, s in suites
                  if not (proto == "TLSv1.3" or (("ECDHE" in s or "DHE" in s) and AEAD.search(s)))]
    out = [f"sslscan ({args.file}):",
           f"- protocols enabled: {', '.join(enabled) or '?'}",
           f"- suites accepted: " + ", ".join(f"{p} {s}" + (" (preferred)" if w == "Preferred" else "")
                                             for w, p, _, s in suites),
           f"- key exchange groups: {', '.join(sorted(set(groups))) or '?'}",
           f"- signature algorithms: " + (", ".join(f"{p} {s}" for p, s in sigs) or "?")]
    if not protocols or not suites:
        out.append("- could not parse the sslscan output")
    elif bad_proto or bad_suites:
        out.append(f"- Mozilla intermediate: **no** (extra protocols {bad_proto}, non-AEAD/ECDHE suites {bad_suites})")
    elif "TLSv1.3" not in enabled or "TLSv1.2" not in enabled:
        out.append("- Mozilla intermediate: **no** (needs both TLS 1.2 and 1.3)")
    else:
        out.append("- Mozilla intermediate: yes (TLS 1.2 + 1.3 only; every suite ECDHE + AEAD or TLS 1.3)")
    print("\n".join(out))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("line")
    p.add_argument("text")
    p.set_defaults(fn=cmd_line)
    p = sub.add_parser("summary")
    p.add_argument("--runs", required=True)
    p.add_argument("--meta")
    p.set_defaults(fn=cmd_summary)
    p = sub.add_parser("sslscan")
    p.add_argument("file")
    p.set_defaults(fn=cmd_sslscan)
    args = ap.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
