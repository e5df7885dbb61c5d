#!/usr/bin/env python3
"""Helper for benches/proxy.sh: /proc snapshots, wrk output parsing, summary.

Subcommands (all called by proxy.sh, stdlib only):

  snap   --out FILE [--pid NAME=PID ...]
         Snapshot of per-CPU jiffies (/proc/stat) and, for each NAME, the
         utime+stime ticks, the nanoseconds on CPU (schedstat) and VmRSS summed
         over PID and all its descendants.

  record --tsv FILE --target T --phase warmup|run --run I --before SNAP
         --after SNAP --wrk WRK_OUTPUT --time TIME_OUTPUT [--proxy NAME]
         [--perf PERF_STAT_CSV]
         Parses one wrk run and appends one row to the TSV (header written
         when the file is new): with the proxy's CPU time per request, and with
         --perf (`perf stat -x,` output over the run) its syscalls, io_uring_enter
         calls, SQEs, poll arms, CQEs and context switches per request.

  quiet  [--max-busy PCT] [--timeout S]
         Waits until all CPUs together are less than PCT % of one core busy.

  summary --tsv FILE [--meta FILE]
         Prints the Markdown report (medians per target, ratios) to stdout.

  scaling --one DIR --two DIR
         Two-worker scaling from a --workers 1 and a --workers 2 results directory (each
         with runs.tsv and meta.json): per target, req/s at 1 and 2 workers, scaling
         efficiency = req/s(2) / (2 x req/s(1)), and proxy CPU time per request at each.
"""

import argparse
import json
import math
import os
import re
import statistics
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")

COLUMNS = [
    "target", "phase", "run", "rps", "p50_ms", "p75_ms", "p90_ms", "p99_ms",
    "requests", "socket_errors", "non_2xx", "elapsed_s",
    "proxy_cpu_pct", "proxy_rss_mb", "proxy_procs", "backend_cpu_pct",
    "wrk_cpu_pct", "other_cpu_pct", "cpu_busy_pct", "cpu_steal_pct",
    "proxy_cpu_us_per_req", "syscalls_per_req", "uring_enter_per_req", "sqes_per_req",
    "poll_arm_per_req", "proxy_task_us_per_req", "softirq_us_per_req",
    "cqes_per_req", "cs_per_req", "proxy_user_us_per_req",
]

# perf tracepoint -> per-request column (benches/proxy.sh's PERF_EVENTS)
PERF_COLUMNS = {
    "raw_syscalls:sys_enter": "syscalls_per_req",
    "syscalls:sys_enter_io_uring_enter": "uring_enter_per_req",
    "io_uring:io_uring_submit_req": "sqes_per_req",
    "io_uring:io_uring_poll_arm": "poll_arm_per_req",
    "io_uring:io_uring_complete": "cqes_per_req",
    "context-switches": "cs_per_req",
}


def parse_perf(text):
    """`perf stat -x,` output: {event: count}; events perf could not count are left out."""
    out = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) >= 3 and parts[0].strip().isdigit():
            out[parts[2].strip()] = int(parts[0])
    return out


# --------------------------------------------------------------------------
# /proc sampling
# --------------------------------------------------------------------------

def _read_stat(pid):
    """Return (ppid, utime+stime ticks, utime ticks) for pid, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm may contain spaces/parens: split after the last ')'
    rest = data[data.rfind(")") + 2:].split()
    # rest[0] = state (field 3); ppid = field 4; utime = 14; stime = 15
    ppid = int(rest[1])
    ticks = int(rest[11]) + int(rest[12])
    return ppid, ticks, int(rest[11])


def _task_ns(pid):
    """(on-CPU, run-queue wait) nanoseconds of every thread of pid, summed, from one read of each
    /proc/PID/task/TID/schedstat. Field 1, the scheduler's sum_exec_runtime, is exact, unlike
    utime+stime, which the tick samples (every 4 ms at HZ=250: the whole tick goes to whatever
    runs at that instant) and which, without CONFIG_IRQ_TIME_ACCOUNTING, leaves out a tick that
    lands in a softirq, although the softirq ran on the proxy's behalf (the loopback delivery of
    what it sends); it counts in-context softirq work as the task's, like `perf stat -e
    task-clock`. Field 2 is the time spent runnable but waiting for a CPU: a run whose answers
    came seconds late while it grew by seconds was starved."""
    run = wait = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                fields = f.read().split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
        except (OSError, ValueError, IndexError):
            pass
    return run, wait


def _rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _process_tree(root):
    """root pid plus all descendants (processes, not threads: a process's
    /proc/PID/stat already includes the CPU time of all its threads)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _read_stat(entry)
        if st is None:
            continue
        children.setdefault(st[0], []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cmd_snap(args):
    snap = {"t": time.monotonic(), "cpus": {}, "procs": {}}
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts and re.fullmatch(r"cpu\d+", parts[0]):
                vals = [int(v) for v in parts[1:]]
                idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle+iowait
                # total excludes guest/guest_nice (already in user/nice)
                total = sum(vals[:8])
                steal = vals[7] if len(vals) > 7 else 0
                # irq + softirq: what the kernel charged to no process (tick-sampled)
                irq = vals[5] + vals[6] if len(vals) > 6 else 0
                snap["cpus"][parts[0]] = [total - idle, total, steal, irq]
    for spec in args.pid or []:
        name, _, pid = spec.partition("=")
        ticks = uticks = ns = wait = rss = n = 0
        for p in _process_tree(int(pid)):
            st = _read_stat(p)
            if st is None:
                continue
            ticks += st[1]
            uticks += st[2]
            run, waited = _task_ns(p)
            ns += run
            wait += waited
            rss += _rss_kb(p)
            n += 1
        snap["procs"][name] = {"ticks": ticks, "uticks": uticks, "ns": ns, "wait_ns": wait, "rss_kb": rss, "n": n}
    with open(args.out, "w") as f:
        json.dump(snap, f)


def _busy_cores():
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts and re.fullmatch(r"cpu\d+", parts[0]):
                vals = [int(v) for v in parts[1:]]
                total = sum(vals[:8])
                out[parts[0]] = (total - vals[3] - (vals[4] if len(vals) > 4 else 0), total)
    return out


def cmd_quiet(args):
    """Wait until the machine is idle (our servers are idle between runs), so a
    run does not start while e.g. a compiler is busy on the same CPUs. After a
    busy period, --settle consecutive quiet samples are required (builds tend to
    pause briefly between compilation units)."""
    start = time.monotonic()
    warned = False
    quiet_in_a_row = 0
    while True:
        a = _busy_cores()
        time.sleep(args.interval)
        b = _busy_cores()
        busy = 100.0 * sum((b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]) for c in b if c in a)
        quiet_in_a_row = quiet_in_a_row + 1 if busy < args.max_busy else 0
        if quiet_in_a_row >= (args.settle if warned else 1):
            if warned:
                print(f"  machine quiet again ({busy:.0f}% of a core busy)", file=sys.stderr)
            return 0
        waited = time.monotonic() - start
        if waited >= args.timeout:
            print(f"  WARNING: machine still busy ({busy:.0f}% of a core used by other "
                  f"processes) after {waited:.0f}s; running anyway", file=sys.stderr)
            return 0
        if not warned and busy >= args.max_busy:
            print(f"  machine busy ({busy:.0f}% of a core used by other processes); waiting "
                  f"up to {args.timeout:.0f}s for it to calm down", file=sys.stderr)
            warned = True


# --------------------------------------------------------------------------
# wrk parsing
# --------------------------------------------------------------------------

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_wrk(text):
    out = {"rps": None, "requests": None, "socket_errors": 0, "non_2xx": 0}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"^\s*(\d+) requests in ", text, re.M)
    if m:
        out["requests"] = int(m.group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s*{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
        out[f"p{pct}_ms"] = float(m.group(1)) * _UNIT_MS[m.group(2)] if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = sum(int(g) for g in m.groups())
        out["timeouts"] = int(m.group(4))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["non_2xx"] = int(m.group(1))
    return out


def parse_time(text):
    """Output of bash `time` with TIMEFORMAT='%3R %3U %3S'."""
    nums = re.findall(r"^([\d.]+) ([\d.]+) ([\d.]+)\s*$", text, re.M)
    if not nums:
        return None
    real, user, sys_ = (float(x) for x in nums[-1])
    return real, user + sys_


def _fmt(v, nd=2):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def cmd_record(args):
    with open(args.before) as f:
        a = json.load(f)
    with open(args.after) as f:
        b = json.load(f)
    with open(args.wrk, errors="replace") as f:
        wrk = parse_wrk(f.read())
    try:
        with open(args.time) as f:
            tm = parse_time(f.read())
    except OSError:
        tm = None
    # The snapshots bracket wrk (plus ~0.1 s of python start-up). All CPU
    # counters only move while wrk loads the servers, so CPU-seconds are divided
    # by wrk's own wall time when known, else by the snapshot interval.
    elapsed = tm[0] if tm and tm[0] > 0 else b["t"] - a["t"]

    def proc_cpu(name):
        if name not in a["procs"] or name not in b["procs"]:
            return None
        d = b["procs"][name]["ticks"] - a["procs"][name]["ticks"]
        return 100.0 * d / CLK_TCK / elapsed if elapsed > 0 else None

    busy, steal = [], []
    busy_cores = 0.0   # sum over CPUs of busy CPU-seconds / elapsed (1.0 = one core)
    for cpu in sorted(b["cpus"], key=lambda c: int(c[3:])):
        if cpu in a["cpus"]:
            db = b["cpus"][cpu][0] - a["cpus"][cpu][0]
            dt = b["cpus"][cpu][1] - a["cpus"][cpu][1]
            ds = b["cpus"][cpu][2] - a["cpus"][cpu][2]
            frac = min(1.0, db / CLK_TCK / elapsed) if elapsed > 0 else 0.0
            busy.append(f"{cpu}={100.0 * frac:.0f}")
            busy_cores += frac
            steal.append(f"{cpu}={100.0 * ds / dt:.0f}" if dt > 0 else f"{cpu}=?")

    wrk_cpu = (100.0 * tm[1] / tm[0]) if tm and tm[0] > 0 else None
    reqs = wrk["requests"] or 0
    # irq + softirq time per request on each CPU: kernel work (loopback delivery) that no
    # process's CPU time holds, and on which core it landed.
    irq = []
    for cpu in sorted(b["cpus"], key=lambda c: int(c[3:])):
        if cpu in a["cpus"] and len(b["cpus"][cpu]) > 3 and len(a["cpus"][cpu]) > 3 and reqs:
            di = b["cpus"][cpu][3] - a["cpus"][cpu][3]
            irq.append(f"{cpu}={1e6 * di / CLK_TCK / reqs:.2f}")
    per_req = {c: None for c in PERF_COLUMNS.values()}
    if args.perf and reqs:
        try:
            with open(args.perf) as f:
                counts = parse_perf(f.read())
        except OSError:
            counts = {}
        for ev, col in PERF_COLUMNS.items():
            if ev in counts:
                per_req[col] = counts[ev] / reqs
    cpu_us = None
    if args.proxy and reqs and args.proxy in a["procs"] and args.proxy in b["procs"]:
        d = b["procs"][args.proxy]["ticks"] - a["procs"][args.proxy]["ticks"]
        cpu_us = 1e6 * d / CLK_TCK / reqs
    user_us = None
    if (args.proxy and reqs and "uticks" in a["procs"].get(args.proxy, {})
            and "uticks" in b["procs"].get(args.proxy, {})):
        user_us = 1e6 * (b["procs"][args.proxy]["uticks"] - a["procs"][args.proxy]["uticks"]) / CLK_TCK / reqs
    task_us = None
    if (args.proxy and reqs and "ns" in a["procs"].get(args.proxy, {})
            and "ns" in b["procs"].get(args.proxy, {})):
        task_us = (b["procs"][args.proxy]["ns"] - a["procs"][args.proxy]["ns"]) / 1e3 / reqs
    ours = sum(v for v in (proc_cpu(args.proxy) if args.proxy else 0.0,
                           proc_cpu("backend"), wrk_cpu) if v is not None)
    # CPU used by anything that is not proxy/backend/wrk (other builds, other
    # containers on the same VM, kernel softirq not charged to our processes)
    other = max(0.0, 100.0 * busy_cores - ours)

    noisy = args.max_other > 0 and other >= args.max_other
    phase = args.phase + ("-noisy" if noisy else "")

    row = {
        "target": args.target, "phase": phase, "run": args.run,
        **{k: wrk[k] for k in ("rps", "p50_ms", "p75_ms", "p90_ms", "p99_ms",
                               "requests", "socket_errors", "non_2xx")},
        "elapsed_s": elapsed,
        "proxy_cpu_pct": proc_cpu(args.proxy) if args.proxy else None,
        "proxy_rss_mb": (b["procs"][args.proxy]["rss_kb"] / 1024.0
                         if args.proxy and args.proxy in b["procs"] else None),
        "proxy_procs": (b["procs"][args.proxy]["n"]
                        if args.proxy and args.proxy in b["procs"] else None),
        "backend_cpu_pct": proc_cpu("backend"),
        "wrk_cpu_pct": wrk_cpu,
        "other_cpu_pct": other,
        "cpu_busy_pct": ",".join(busy),
        "cpu_steal_pct": ",".join(steal),
        "proxy_cpu_us_per_req": cpu_us,
        **per_req,
        "proxy_task_us_per_req": task_us,
        "softirq_us_per_req": ",".join(irq),
        "proxy_user_us_per_req": user_us,
    }
    new = not os.path.exists(args.tsv) or os.path.getsize(args.tsv) == 0
    with open(args.tsv, "a") as f:
        if new:
            f.write("\t".join(COLUMNS) + "\n")
        f.write("\t".join(_fmt(row[c], 3 if c.endswith(("_ms", "_per_req")) else 2)
                           for c in COLUMNS) + "\n")
    # one human line for the console
    print(f"  {phase:6s} {args.target:8s} #{args.run}: "
          f"{_fmt(row['rps'], 0):>9s} req/s  p50 {_fmt(row['p50_ms'], 3)} ms  "
          f"p99 {_fmt(row['p99_ms'], 3)} ms  proxy CPU {_fmt(row['proxy_cpu_pct'], 0) or '-'}%  "
          f"backend CPU {_fmt(row['backend_cpu_pct'], 0)}%  wrk CPU {_fmt(row['wrk_cpu_pct'], 0)}%  "
          f"other CPU {_fmt(row['other_cpu_pct'], 0)}%  "
          f"[busy {row['cpu_busy_pct']}]"
          + (f" [steal {row['cpu_steal_pct']}]"
             if any(not kv.endswith("=0") for kv in steal) else "")
          + (f"  ERRORS socket={row['socket_errors']} non2xx={row['non_2xx']}"
             if (row['socket_errors'] or row['non_2xx']) else "")
          + (f"  CPU/req {_fmt(task_us, 2)} us (ticks {_fmt(cpu_us, 2)})" if task_us is not None
             else f"  CPU/req {_fmt(cpu_us, 2)} us (ticks)" if cpu_us is not None else "")
          + (f"  [irq+softirq us/req {' '.join(irq)}]" if irq else "")
          + (f"  syscalls/req {_fmt(per_req['syscalls_per_req'], 2)}"
             if per_req["syscalls_per_req"] is not None else "")
          + ("  (wrk output unparseable!)" if row["rps"] is None else "")
          + (f"  -> discarded: other CPU load >= {args.max_other:.0f}%, will retry" if noisy else ""))
    if wrk.get("timeouts"):
        # wrk counts an answer as a timeout when it came 2 s or more after its request: with
        # -c50, "timeout 50" is what any hop (proxy, backend or wrk itself) stopped for 2 s
        # gives. Run-queue waits tell a starved process from a stuck one (BENCHMARKS.md: the
        # "50 wrk timeouts" stall).
        def waited(name):
            if "wait_ns" not in a["procs"].get(name, {}) or "wait_ns" not in b["procs"].get(name, {}):
                return "?"
            return f"{(b['procs'][name]['wait_ns'] - a['procs'][name]['wait_ns']) / 1e6:.0f} ms"
        print(f"  STALLED: {wrk['timeouts']} answers 2 s or more late (wrk timeouts); "
              f"runnable but waiting for a CPU during the run: proxy {waited(args.proxy) if args.proxy else '-'}, "
              f"backend {waited('backend')}; steal {row['cpu_steal_pct']}; other CPU "
              f"{_fmt(other, 0)}%")
    return 3 if noisy else 0


# --------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------

def _num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def _median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def cmd_summary(args):
    rows = []
    with open(args.tsv) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            if line.strip():
                rows.append(dict(zip(header, line.rstrip("\n").split("\t"))))
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
        col = lambda c: [_num(r.get(c)) for r in rs]  # noqa: E731
        rps = [v for v in col("rps") if v is not None]
        busy = {}
        for r in rs:
            for kv in (r.get("cpu_busy_pct") or "").split(","):
                if "=" in kv:
                    k, v = kv.split("=")
                    busy.setdefault(k, []).append(_num(v))
        med[t] = {
            "n": len(rs),
            "rps": _median(rps),
            "rps_min": min(rps) if rps else None,
            "rps_max": max(rps) if rps else None,
            "p50": _median(col("p50_ms")),
            "p99": _median(col("p99_ms")),
            "cpu": _median(col("proxy_cpu_pct")),
            # requests served per second of proxy CPU time (per-run, then median): from the
            # exact CPU time per request when recorded, else from the sampled CPU %
            "eff": (_median([1e6 / u for u in col("proxy_task_us_per_req") if u])
                    if any(col("proxy_task_us_per_req")) else
                    _median([r_ / (c_ / 100.0) for r_, c_ in zip(col("rps"), col("proxy_cpu_pct"))
                             if r_ is not None and c_ and c_ > 0])),
            "rss": _median(col("proxy_rss_mb")),
            "backend_cpu": _median(col("backend_cpu_pct")),
            "wrk_cpu": _median(col("wrk_cpu_pct")),
            "other_cpu": _median(col("other_cpu_pct")),
            "errors": sum(int(_num(r["socket_errors"]) or 0) + int(_num(r["non_2xx"]) or 0)
                          for r in rs),
            "busy": {k: _median(v) for k, v in sorted(busy.items(), key=lambda kv: int(kv[0][3:]))},
            "cpu_us": _median(col("proxy_cpu_us_per_req")),
            "user_us": _median(col("proxy_user_us_per_req")),
            # Exact CPU time per request (schedstat), run by run: {run number: µs}.
            "task_runs": {r["run"]: _num(r.get("proxy_task_us_per_req")) for r in rs
                          if _num(r.get("proxy_task_us_per_req")) is not None},
            # The operating point of each run: req/s and the proxy's share of a core.
            "point_runs": {r["run"]: (_num(r["rps"]), _num(r["proxy_cpu_pct"])) for r in rs},
        }
        med[t]["task_us"] = _median(list(med[t]["task_runs"].values()))
        # Syscalls are counted during the warm-up run only (perf slows syscalls a little).
        counted = [r for r in rows if r["target"] == t and r["phase"] == "warmup"]
        for c in PERF_COLUMNS.values():
            med[t][c] = _median([_num(r.get(c)) for r in counted])

    def f(v, nd=0, suffix=""):
        return "n/a" if v is None else f"{v:,.{nd}f}{suffix}"

    out = []
    if meta:
        out.append(f"### Proxy benchmark, workers={meta.get('workers')} "
                   f"({meta.get('date', '')})\n")
        out.append(f"- command: `{meta.get('command', '')}`")
        out.append(f"- machine: {meta.get('nproc')} CPUs, {meta.get('cpu_model')}, "
                   f"kernel {meta.get('kernel')}")
        out.append(f"- load: `{meta.get('wrk_cmd', '')}`; 1 warm-up run per target, then "
                   f"{meta.get('runs')} runs per target, in rounds, every other round in reverse order")
        out.append(f"- pinning: proxy CPU {meta.get('proxy_cpus')}, backend CPU "
                   f"{meta.get('backend_cpus')}, wrk CPU {meta.get('wrk_cpus')}"
                   + ("  **(oversubscribed: proxy, backend and wrk share cores)**"
                      if meta.get("oversubscribed") else "")
                   + (f"; each proxy capped at {meta['proxy_quota_pct']} % of one core (CFS quota)"
                      if meta.get("proxy_quota_pct") else ""))
        out.append(f"- versions: {meta.get('versions', '')}")
        if "floor" in meta.get("targets", []):
            out.append(f"- floor: `benches/floor.rs --mode {meta.get('floor_mode', 'duplex')}`")
        if meta.get("skipped"):
            out.append(f"- skipped: {meta['skipped']}")
        out.append("")

    cpu_cols = sorted({c for t in order for c in med[t]["busy"]}, key=lambda c: int(c[3:]))
    out.append("| target | runs | req/s (median) | req/s min–max | p50 ms | p99 ms | "
               "proxy CPU % | req/s per proxy core | proxy RSS MB | backend CPU % | wrk CPU % | other CPU % | "
               + " | ".join(f"{c} busy %" for c in cpu_cols)
               + (" | " if cpu_cols else "") + "errors |")
    out.append("|" + "---|" * (13 + len(cpu_cols)))
    for t in order:
        m = med[t]
        out.append(
            f"| {t} | {m['n']} | {f(m['rps'])} | {f(m['rps_min'])}–{f(m['rps_max'])} | "
            f"{f(m['p50'], 3)} | {f(m['p99'], 3)} | "
            f"{'—' if t == 'direct' else f(m['cpu'], 0)} | "
            f"{'—' if t == 'direct' else f(m['eff'])} | "
            f"{'—' if t == 'direct' else f(m['rss'], 1)} | "
            f"{f(m['backend_cpu'], 0)} | {f(m['wrk_cpu'], 0)} | {f(m['other_cpu'], 0)} | "
            + " | ".join(f(m["busy"].get(c), 0) for c in cpu_cols)
            + (" | " if cpu_cols else "") + f"{m['errors']} |")
    out.append("")

    pairs = [("kedge", "nginx"), ("kedge", "haproxy"), ("nginx", "direct"),
             ("haproxy", "direct"), ("kedge", "direct")]
    if "floor" in med:
        pairs += [("kedge", "floor"), ("nginx", "floor"), ("haproxy", "floor"), ("floor", "direct")]
    out.append("| ratio | req/s ratio | p99 ratio | req/s-per-proxy-core ratio |")
    out.append("|---|---|---|---|")
    for a, b in pairs:
        ma, mb = med.get(a, {}), med.get(b, {})
        rr = _ratio(ma.get("rps"), mb.get("rps"))
        pr = _ratio(ma.get("p99"), mb.get("p99"))
        note = "" if (a in med and b in med) else " (not measured)"
        er = _ratio(ma.get("eff"), mb.get("eff")) if b != "direct" else None
        out.append(f"| {a}/{b}{note} | {f(rr, 3)} | {f(pr, 3)} | "
                   f"{'—' if b == 'direct' else f(er, 3)} |")
    out.append("")

    proxies = [t for t in order if t != "direct"]
    if proxies:
        fl, di = med.get("floor", {}), med.get("direct", {})
        out.append("Per request costs (CPU: median of the measured runs, proxy utime+stime / "
                   "requests; syscalls, io_uring_enter calls, SQEs, poll arms, CQEs (completions "
                   "reaped) and context switches: counted by `perf stat` during the warm-up run, "
                   "per request):\n")
        out.append("| target | CPU µs/req | CPU µs/req (ticks) | of it user space (ticks) | syscalls/req | "
                   "io_uring_enter/req | SQEs/req | poll arms/req | CQEs/req | context switches/req | "
                   "req/s ÷ floor | req/s ÷ direct | req/s per core ÷ floor |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for t in proxies:
            m = med[t]
            out.append(
                f"| {t} | {f(m['task_us'], 2)} | {f(m['cpu_us'], 2)} | {f(m['user_us'], 2)} | "
                f"{f(m['syscalls_per_req'], 2)} | "
                f"{f(m['uring_enter_per_req'], 2)} | {f(m['sqes_per_req'], 2)} | "
                f"{f(m['poll_arm_per_req'], 2)} | {f(m['cqes_per_req'], 2)} | {f(m['cs_per_req'], 2)} | "
                f"{f(_ratio(m['rps'], fl.get('rps')), 3)} | {f(_ratio(m['rps'], di.get('rps')), 3)} | "
                f"{f(_ratio(m['eff'], fl.get('eff')), 3)} |")
        out.append("")

    out += _stability(med, proxies, meta.get("workers") or 1, meta.get("proxy_quota_pct") or 0)

    out.append("req/s ratio > 1 means the first target served more requests/s; "
               "p99 ratio < 1 means the first target had the lower tail latency; "
               "req/s per proxy core = req/s / (proxy CPU % / 100), i.e. requests per "
               "second of proxy CPU time (> 1 ratio: first proxy is cheaper per request).")
    sat = [c for t in order if t != "direct" for c, v in med[t]["busy"].items()
           if v is not None and v >= 95]
    if sat:
        out.append(f"\nNote: CPU(s) {', '.join(sorted(set(sat)))} were >= 95 % busy during proxied "
                   "runs: req/s is capped by whichever core saturates first; compare the "
                   "per-proxy-core column and the busy % columns before reading req/s ratios.")
    discarded = [f"{r['target']}#{r['run']}" for r in rows if r["phase"] == "run-noisy"]
    if discarded:
        out.append(f"\nDiscarded and re-run because other processes were using the CPUs: "
                   f"{', '.join(discarded)} (kept in runs.tsv as phase run-noisy).")
    noisy = [f"{r['target']}#{r['run']}({_num(r.get('other_cpu_pct')):.0f}%)" for r in rows
             if r["phase"] == "run" and (_num(r.get("other_cpu_pct")) or 0) >= 10]
    if noisy:
        out.append(f"\n**Warning:** other processes used >= 10 % of a core during: "
                   f"{', '.join(noisy)}; the machine was not quiet, rerun those.")
    stolen = []
    for r in rows:
        for kv in (r.get("cpu_steal_pct") or "").split(","):
            v = _num(kv.partition("=")[2])
            if v is not None and v >= 5:
                stolen.append(f"{r['target']}#{r['run']}({kv})")
    if stolen:
        out.append(f"\n**Warning:** hypervisor steal time >= 5 % in: {', '.join(stolen)}; "
                   "those runs are noisy.")
    bad = [t for t in order if med[t]["errors"]]
    if bad:
        out.append(f"\n**Warning:** socket errors or non-2xx responses for: {', '.join(bad)} "
                   "(see runs.tsv).")
    print("\n".join(out))


def _spread(vals):
    """(max − min) / median of vals, in %."""
    m = _median(vals)
    return 100.0 * (max(vals) - min(vals)) / m if vals and m else None


def _stability(med, proxies, meta_workers=1, quota_pct=0):
    """The per-core comparison from exact CPU time per request, and how far it moved run by
    run: per target the CPU µs/request of every measured run, and per pair of proxies the ratio
    of their CPU time per request taken within the same round (the two runs closest in time,
    so a drift of the machine touches both), with the median and the min–max of those ratios.
    Judge a ratio by its spread: a target whose spread is larger than the margin it is judged
    on is not settled by this invocation."""
    have = [t for t in proxies if med[t]["task_runs"]]
    if not have:
        return []

    def f(v, nd=2):
        return "n/a" if v is None else f"{v:,.{nd}f}"

    def runs(d):
        return sorted(d, key=lambda k: int(k) if k.isdigit() else k)

    def point(t, k):
        rps, cpu = med[t]["point_runs"].get(k, (None, None))
        return f"{f(med[t]['task_runs'][k])} ({f(rps / 1e3 if rps else None, 1)}k, {f(cpu, 0)} %)"

    out = ["CPU time per request run by run (proxy threads' time on CPU from "
           "/proc/PID/task/*/schedstat, exact; the ticks column above samples it every 4 ms). "
           "Per run: µs/req (req/s, proxy CPU % of a core):\n",
           "| target | runs | CPU µs/req median | min–max | spread (max−min)/median | per run |",
           "|---|---|---|---|---|---|"]
    unsaturated = []
    for t in have:
        d = med[t]["task_runs"]
        v = list(d.values())
        out.append(f"| {t} | {len(v)} | {f(med[t]['task_us'])} | {f(min(v))}–{f(max(v))} | "
                   f"{f(_spread(v), 1)} % | {' '.join(point(t, k) for k in runs(d))} |")
        cpu = _median([c for _, c in med[t]["point_runs"].values()])
        # Saturated: at 90 % of what the proxy may use (its CFS quota, else its cores).
        budget = quota_pct or 100 * (meta_workers or 1)
        if cpu is not None and cpu < 0.9 * budget:
            unsaturated.append(f"{t} ({f(cpu, 0)} %)")
    out.append("")
    if unsaturated:
        out.append("Not saturated (median proxy CPU below 90 % of its cores, or of its quota): "
                   f"{', '.join(unsaturated)}. A proxy that waits for the load generator does "
                   "less per wake-up (fewer completions per io_uring_enter or epoll_wait), so its "
                   "CPU per request rises as its req/s falls; two proxies compare per core only at "
                   "the same operating point. `--proxy-quota PCT` makes every proxy the "
                   "bottleneck at the same CPU budget.\n")
    pairs = [(a, b) for a, b in (("kedge", "nginx"), ("kedge", "haproxy"), ("kedge", "floor"),
                                 ("nginx", "floor"), ("haproxy", "floor"))
             if a in have and b in have]
    if pairs:
        out.append("Per core ratios from CPU time per request, paired by round (ratio = CPU µs/req "
                   "of the second ÷ of the first; > 1: the first is cheaper per request):\n")
        out.append("| per core | median | min–max | spread (max−min)/median | per round |")
        out.append("|---|---|---|---|---|")
        for a, b in pairs:
            da, db = med[a]["task_runs"], med[b]["task_runs"]
            common = [k for k in runs(da) if k in db and da[k]]
            rs = [db[k] / da[k] for k in common]
            if not rs:
                continue
            out.append(f"| {a}/{b} | **{f(_median(rs), 3)}** | {f(min(rs), 3)}–{f(max(rs), 3)} | "
                       f"{f(_spread(rs), 1)} % | {' '.join(f(r, 3) for r in rs)} |")
        out.append("")
    return out


def _medians(d):
    """Median req/s and proxy CPU microseconds per request per target of a results dir."""
    with open(os.path.join(d, "runs.tsv")) as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [dict(zip(header, line.rstrip("\n").split("\t"))) for line in f if line.strip()]
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    out = {}
    for t in dict.fromkeys(r["target"] for r in rows if r["phase"] == "run"):
        rs = [r for r in rows if r["target"] == t and r["phase"] == "run"]
        out[t] = {
            "rps": _median([_num(r["rps"]) for r in rs]),
            "us": _median([_num(r["proxy_cpu_pct"]) / 100.0 / _num(r["rps"]) * 1e6 for r in rs
                           if _num(r["proxy_cpu_pct"]) is not None and _num(r["rps"])]),
            "busy": _median([sum(_num(kv.partition("=")[2]) or 0 for kv in r["cpu_busy_pct"].split(","))
                             for r in rs]),
            "other": _median([_num(r.get("other_cpu_pct")) for r in rs]),
        }
    return meta, out


def cmd_scaling(args):
    m1, one = _medians(args.one)
    m2, two = _medians(args.two)

    def f(v, nd=0):
        return "n/a" if v is None else f"{v:,.{nd}f}"

    def pin(m):
        return (f"proxy CPUs {m.get('proxy_cpus')}, backend CPUs {m.get('backend_cpus')}, "
                f"wrk CPUs {m.get('wrk_cpus')}"
                + (" (oversubscribed)" if m.get("oversubscribed") else ""))

    out = [f"### Two-worker scaling ({m2.get('date', '')})", "",
           f"- 1 worker: `{m1.get('command', '')}` ({pin(m1)}), results {args.one}",
           f"- 2 workers: `{m2.get('command', '')}` ({pin(m2)}), results {args.two}",
           f"- load: `{m2.get('wrk_cmd', '')}`; {m2.get('nproc')} CPUs, {m2.get('cpu_model')}", "",
           "| target | req/s, 1 worker | req/s, 2 workers | scaling efficiency | "
           "proxy CPU µs/request, 1 worker | proxy CPU µs/request, 2 workers | "
           "all CPUs busy %, 1 → 2 workers | other processes' CPU %, 1 → 2 workers |",
           "|---|---|---|---|---|---|---|---|"]
    for t in one:
        if t not in two or t == "direct":
            continue
        a, b = one[t], two[t]
        eff = b["rps"] / (2 * a["rps"]) if a["rps"] and b["rps"] else None
        out.append(f"| {t} | {f(a['rps'])} | {f(b['rps'])} | {f(eff, 3)} | {f(a['us'], 2)} | "
                   f"{f(b['us'], 2)} | {f(a['busy'])} → {f(b['busy'])} | {f(a['other'])} → {f(b['other'])} |")
    out += ["", "Scaling efficiency = req/s with 2 workers ÷ (2 × req/s with 1 worker): 1.0 is "
            "linear. It is only meaningful when the load generator and the backend have cores of "
            "their own (≥ 4 CPUs); on 2 CPUs they share the proxy's cores, so the machine, not the "
            "proxy, caps the 2-worker figure: compare the CPU time per request instead (equal at "
            "1 and 2 workers = no cost from a second worker: no shared state, no contention). "
            "Other processes' CPU % above 10 means the machine was not quiet: rerun."]
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("snap")
    p.add_argument("--out", required=True)
    p.add_argument("--pid", action="append")
    p.set_defaults(fn=cmd_snap)
    p = sub.add_parser("record")
    for a in ("--tsv", "--target", "--phase", "--run", "--before", "--after", "--wrk", "--time"):
        p.add_argument(a, required=True)
    p.add_argument("--proxy")
    p.add_argument("--perf")
    p.add_argument("--max-other", type=float, default=0.0,
                   help="mark the run '<phase>-noisy' and exit 3 when processes other than "
                        "proxy/backend/wrk used >= this %% of a core (0 = off)")
    p.set_defaults(fn=cmd_record)
    p = sub.add_parser("quiet")
    p.add_argument("--max-busy", type=float, default=20.0)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--settle", type=int, default=3)
    p.set_defaults(fn=cmd_quiet)
    p = sub.add_parser("summary")
    p.add_argument("--tsv", required=True)
    p.add_argument("--meta")
    p.set_defaults(fn=cmd_summary)
    p = sub.add_parser("scaling")
    p.add_argument("--one", required=True)
    p.add_argument("--two", required=True)
    p.set_defaults(fn=cmd_scaling)
    args = ap.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
