#!/usr/bin/env python3
"""Hunts the "50 wrk timeouts at ~1 % proxy CPU" stall: proxy.sh's load, many short runs, under
artificial starvation, with a sampler that tells a starved process from a stuck one.

    python3 benches/stall_hunt.py --kedge-bin target/release/kedge --runs 20 \\
        [--driver io_uring|epoll] [--new-conn] [--starve MODE] [--gap S] [--results DIR]

Set-up as benches/proxy.sh: a private nginx backend (1 worker) and wrk -t1 -c50 on CPU 1, kedge
(1 worker) on CPU 0, on 127.0.0.1 ports BASE (kedge) and BASE+10 (backend); BASE from
$STALL_BASE_PORT [27000]. Each run lasts --duration s (3, as in the stalled runs) and gets a
fresh starvation:

  none          nothing added (the machine's own load)
  same          busy loops at nice 0 on both CPUs (2 per CPU)
  high          busy loops at nice -15 on both CPUs
  higher        two busy loops per CPU at nice -19
  quota         kedge in a cgroup with a CFS quota of --quota % of one core (proxy.sh
                --proxy-quota), plus the 'same' hogs
  stop-backend  SIGSTOP/SIGCONT bursts (50-400 ms) on the backend's worker
  stop-kedge    SIGSTOP/SIGCONT bursts (50-400 ms) on kedge
  pageout       before the run, kedge's file-backed pages (its text) are reclaimed
                (process_madvise MADV_PAGEOUT), as a build's memory pressure would: the run
                starts with major faults, read from the (busy) disk
  pause-kedge, pause-backend, pause-wrk
                one SIGSTOP of --pause s (2.5) of that hop, 0.3 s into the run: what a stall of
                each hop looks like in wrk's output
  mixed         a different one of none..stop-kedge and pageout each run

Every --sample s (0.05; the sampler runs at nice -20, so that it does not starve with the
rest) the sampler records, for kedge, the backend worker and wrk: each thread's state, CPU time
and run-queue wait (/proc/PID/task/TID/schedstat), major faults, and the bytes waiting unread in
each hop's sockets (`ss`, by port: kedge's are those with local port BASE or remote port
BASE+10; the backend's local BASE+10; wrk's remote BASE); ksoftirqd's state and wait (it
delivers loopback packets when softirq work overflows); steal and io/memory pressure. A process
is **stuck** when bytes wait for it over --stuck s while none of its threads runs, is runnable,
or uses CPU (a lost wake-up); it is **starved** when its threads are runnable but wait on the
run queue. On the first stuck sample of a run, a snapshot of that process goes to the results
directory (threads' state, wchan and kernel stack, `ss -tinpm`, io_uring fdinfo, gdb
backtraces). Each run's line (stderr, and summary.json) has wrk's requests, timeouts and
worst latency, kedge's CPU, who was stuck, each hop's longest run-queue wait in one sample, the
machine's TCP retransmission counters' increase and major faults; a run with wrk timeouts, a
latency of 1 s or more or a stuck hop keeps its whole timeline (runNNN.timeline.json). Busy
loops last a run (4 s) and, like everything else here, are the script's own processes.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

BASE = int(os.environ.get("STALL_BASE_PORT", "27000"))
PORT_KEDGE, PORT_BACKEND = BASE, BASE + 10

OWN = []  # every process this script started

# Loopback packets are delivered in softirq context, deferred to these threads under load.
KSOFTIRQD = {}
for _pid in os.listdir("/proc"):
    if _pid.isdigit():
        try:
            with open(f"/proc/{_pid}/comm") as _f:
                _comm = _f.read().strip()
        except OSError:
            continue
        if _comm.startswith("ksoftirqd/"):
            KSOFTIRQD[_comm.replace("/", "")] = int(_pid)


def log(*a):
    print(time.strftime("[%H:%M:%S]"), *a, file=sys.stderr, flush=True)


def at_nice(n, then=None):
    """preexec_fn: the child runs at niceness `n` whatever the sampler's own."""
    def f():
        os.setpriority(os.PRIO_PROCESS, 0, n)
        if then:
            then()
    return f


def spawn(cmd, nice=0, **kw):
    kw["preexec_fn"] = at_nice(nice, kw.get("preexec_fn"))
    p = subprocess.Popen(cmd, **kw)
    OWN.append(p)
    return p


def cleanup():
    for p in OWN:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
            except ProcessLookupError:
                pass
    for p in OWN:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()


def port_open(port):
    import socket

    s = socket.socket()
    s.settimeout(0.2)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_port(port, what, proc):
    """Waits until `what` answers GET / (an open port is not enough: kedge binds its listeners
    before its workers run)."""
    import urllib.request

    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"{what} exited during start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                if b"hello from backend" in r.read():
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{what} does not answer on {port}")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


# --------------------------------------------------------------------------- sampling

def threads_of(pid):
    """[(tid, comm, state, cpu_ns, run_delay_ns)] of every thread of pid."""
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                st = f.read()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                sched = f.read().split()
        except OSError:
            continue
        comm = st[st.index("(") + 1 : st.rindex(")")]
        rest = st[st.rindex(")") + 2 :].split()
        out.append((int(tid), comm, rest[0], int(sched[0]), int(sched[1])))
    return out


def system():
    """Per-CPU steal and iowait ticks, and the io/memory 'full' pressure totals (µs)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3] != " ":
                v = line.split()
                out[v[0]] = (int(v[5]), int(v[8]))  # iowait, steal
    for kind in ("io", "memory"):
        try:
            with open(f"/proc/pressure/{kind}") as f:
                full = f.read().splitlines()[1]
            out[kind] = int(full.rsplit("total=", 1)[1])
        except (OSError, IndexError):
            out[kind] = 0
    return out


NET_KEYS = ("ListenOverflows", "ListenDrops", "TCPTimeouts", "TCPSynRetrans", "TCPLossProbes", "RetransSegs",
            "SyncookiesSent", "TCPReqQFullDoCookies", "TCPAbortOnTimeout")


def net_counters():
    """The machine's TCP counters that tell of a dropped or retransmitted segment (all
    processes': on a shared machine a delta is an upper bound for this script's)."""
    out = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        with open(path) as f:
            lines = f.read().splitlines()
        for names, values in zip(lines[::2], lines[1::2]):
            for k, v in zip(names.split()[1:], values.split()[1:]):
                if k in NET_KEYS:
                    out[k] = int(v)
    return out


def majflt(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return int(st[st.rindex(")") + 2 :].split()[9])
    except (OSError, ValueError):
        return 0


def wchan(pid, tid):
    try:
        with open(f"/proc/{pid}/task/{tid}/wchan") as f:
            return f.read()
    except OSError:
        return "?"


SS_FILTER = f"( sport = :{PORT_KEDGE} or dport = :{PORT_KEDGE} or sport = :{PORT_BACKEND} or dport = :{PORT_BACKEND} )"


def queues():
    """Bytes (and sockets) waiting unread per owner, and the listeners' accept queues."""
    r = subprocess.run(
        ["ss", "-tnH", "exclude", "time-wait", SS_FILTER], capture_output=True, text=True
    )
    q = {"kedge": [0, 0], "backend": [0, 0], "wrk": [0, 0], "kedge_acceptq": 0, "backend_acceptq": 0,
         "kedge_sendq": 0, "kedge_from_clients": 0, "kedge_from_upstream": 0}
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) < 5:
            continue
        state, recvq, sendq, local, peer = f[0], int(f[1]), int(f[2]), f[3], f[4]
        lport = int(local.rsplit(":", 1)[1])
        pport = int(peer.rsplit(":", 1)[1]) if peer[-1] != "*" else 0
        if state == "SYN-SENT":
            key = "syn_sent_to_kedge" if pport == PORT_KEDGE else "syn_sent_to_backend"
            q[key] = q.get(key, 0) + 1
            continue
        if state == "LISTEN":
            key = "kedge_acceptq" if lport == PORT_KEDGE else "backend_acceptq"
            q[key] += recvq
            continue
        if lport == PORT_KEDGE or pport == PORT_BACKEND:
            owner = "kedge"
            q["kedge_sendq"] += sendq
        elif lport == PORT_BACKEND:
            owner = "backend"
        else:
            owner = "wrk"
        if recvq and owner == "kedge":
            q["kedge_from_clients" if lport == PORT_KEDGE else "kedge_from_upstream"] += 1
        if recvq:
            q[owner][0] += recvq
            q[owner][1] += 1
    return q


class Sampler(threading.Thread):
    def __init__(self, pids, every, stuck_after, on_stuck):
        super().__init__(daemon=True)
        self.pids, self.every, self.stuck_after, self.on_stuck = pids, every, stuck_after, on_stuck
        self.rows, self.halt = [], threading.Event()
        self.stuck = {}  # name -> first stuck time
        self.max_stuck = {n: 0.0 for n in ("kedge", "backend", "wrk")}
        self.max_starved = {n: 0.0 for n in pids}
        self.majflt, self.dstate = {}, {}  # major faults, and samples in D state, by process

    def run(self):
        prev = {}
        since = {n: None for n in self.max_stuck}
        t0 = time.monotonic()
        while not self.halt.is_set():
            now = time.monotonic() - t0
            q = queues()
            row = {"t": round(now, 3), "q": q}
            sysnow = system()
            if "sys" in prev:
                ps = prev["sys"]
                row["sys"] = {k: (v[0] - ps[k][0], v[1] - ps[k][1]) if isinstance(v, tuple) else v - ps[k]
                              for k, v in sysnow.items()}
            prev["sys"] = sysnow
            for name, pid in self.pids.items():
                th = threads_of(pid)
                if name == "kedge":
                    th = [x for x in th if x[1].startswith("kedge-worker")]
                cpu = sum(x[3] for x in th)
                delay = sum(x[4] for x in th)
                states = "".join(x[2] for x in th)
                p = prev.get(name)
                dcpu = round((cpu - p[0]) / 1e6, 2) if p else 0
                ddelay = (delay - p[1]) / 1e6 if p else 0.0
                row[name] = {"st": states, "cpu_ms": dcpu, "wait_ms": round(ddelay, 1)}
                mf = majflt(pid)
                row[name]["majflt"] = mf - p[2] if p else 0
                self.majflt[name] = self.majflt.get(name, 0) + row[name]["majflt"]
                if "D" in states:
                    self.dstate[name] = self.dstate.get(name, 0) + 1
                prev[name] = (cpu, delay, mf)
                if name == "kedge":
                    row[name]["wchan"] = ",".join(wchan(pid, x[0]) for x in th)
                if p:
                    self.max_starved[name] = max(self.max_starved[name], ddelay)
                if name not in q:
                    continue  # recorded only (ksoftirqd)
                pending = q[name][0] > 0 or (name == "kedge" and q["kedge_acceptq"] > 0) or (
                    name == "backend" and q["backend_acceptq"] > 0
                )
                idle = "R" not in states and "T" not in states and dcpu == 0 and ddelay < 1.0
                if pending and idle:
                    if since[name] is None:
                        since[name] = now
                    dur = now - since[name]
                    self.max_stuck[name] = max(self.max_stuck[name], dur)
                    if dur >= self.stuck_after and name not in self.stuck:
                        self.stuck[name] = now
                        row["event"] = f"{name} STUCK {dur:.2f}s"
                        self.on_stuck(name, pid)
                else:
                    since[name] = None
            self.rows.append(row)
            self.halt.wait(self.every)


def snapshot(dirpath, name, pid):
    """State of a stuck process: threads, kernel stacks, sockets, io_uring, gdb."""
    os.makedirs(dirpath, exist_ok=True)
    out = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task")):
        base = f"/proc/{pid}/task/{tid}"
        for leaf in ("stat", "wchan", "stack", "schedstat"):
            try:
                with open(f"{base}/{leaf}") as f:
                    out.append(f"== {tid} {leaf}\n{f.read()}")
            except OSError as e:
                out.append(f"== {tid} {leaf}: {e}")
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "io_uring" in target or "eventfd" in target or "eventpoll" in target:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    out.append(f"== fd {fd} {target}\n{f.read()}")
            except OSError:
                pass
    out.append("== ss -tinpm\n" + subprocess.run(["ss", "-tinpmH", "exclude", "time-wait", SS_FILTER],
                                                 capture_output=True, text=True).stdout)
    out.append("== ss -ltn\n" + subprocess.run(["ss", "-ltnH", SS_FILTER], capture_output=True, text=True).stdout)
    with open(f"{dirpath}/{name}-{pid}.txt", "w") as f:
        f.write("\n".join(out))
    if shutil.which("gdb"):
        g = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"],
                           capture_output=True, text=True, timeout=60)
        with open(f"{dirpath}/{name}-{pid}.gdb", "w") as f:
            f.write(g.stdout + g.stderr)


# --------------------------------------------------------------------------- starvation

def hogs(nice, cpus, per_cpu, secs):
    ps = []
    for cpu in cpus:
        for _ in range(per_cpu):
            ps.append(spawn(["taskset", "-c", str(cpu), "timeout", str(secs), "sh", "-c", "while :; do :; done"],
                            nice=nice))
    return ps


def page_out(pid):
    """Reclaims the pages of pid's file mappings (its executable's text and data), as memory
    pressure from other builds would: process_madvise(MADV_PAGEOUT). Its next touches of them are
    major faults, read from disk. Returns the bytes advised."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    class Iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    pidfd = libc.syscall(434, pid, 0)  # pidfd_open
    if pidfd < 0:
        return 0
    total = 0
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read().splitlines()
        for line in maps:
            parts = line.split()
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            iov = Iovec(lo, hi - lo)
            if libc.syscall(440, pidfd, ctypes.byref(iov), 1, 21, 0) > 0:  # MADV_PAGEOUT
                total += hi - lo
    finally:
        os.close(pidfd)
    return total


def pause_once(pid, after, secs):
    """One SIGSTOP of `secs` s, `after` s from now: what a hop that stalls looks like to wrk."""
    time.sleep(after)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(secs)
    finally:
        os.kill(pid, signal.SIGCONT)


def stop_bursts(pid, until, halt):
    rng = random.Random()
    while time.monotonic() < until and not halt.is_set():
        time.sleep(rng.uniform(0.05, 0.5))
        try:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(rng.uniform(0.05, 0.4))
        finally:
            os.kill(pid, signal.SIGCONT)


# --------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kedge-bin", default="target/release/kedge")
    ap.add_argument("--driver", default="io_uring")
    ap.add_argument("--new-conn", action="store_true")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--starve", default="mixed")
    ap.add_argument("--quota", type=int, default=5, help="%% of one core for --starve quota")
    ap.add_argument("--pause", type=float, default=2.5, help="seconds of the pause-* modes' SIGSTOP")
    ap.add_argument("--sample", type=float, default=0.05)
    ap.add_argument("--stuck", type=float, default=0.5)
    ap.add_argument("--results", default=None)
    ap.add_argument("--gap", type=float, default=0.0,
                    help="idle seconds between runs (proxy.sh runs the other targets meanwhile: "
                         "kedge's pool sweep and liveness checks then run between its runs)")
    ap.add_argument("--restart-each", action="store_true", help="a fresh kedge every run")
    a = ap.parse_args()
    # Stopped by SIGTERM or SIGINT (even started in the background, where SIGINT is ignored),
    # the script still stops what it started.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(143))

    # The sampler must see what happens while everything else starves: it runs at -20, what
    # it starts at 0 (the hogs at their own).
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -20)
    except PermissionError:
        log("cannot raise the sampler's priority (not root): under --starve high it starves too")
    res = a.results or tempfile.mkdtemp(prefix="stall-hunt.")
    os.makedirs(res, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="stall-tmp.")
    os.chmod(tmp, 0o755)
    log("results in", res)
    for p in (PORT_KEDGE, PORT_BACKEND):
        if port_open(p):
            sys.exit(f"port {p} in use")

    with open(f"{tmp}/backend.conf", "w") as f:
        f.write(f"""daemon off; master_process on; worker_processes 1;
pid {tmp}/backend.pid; error_log {tmp}/backend.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {tmp}/cb; proxy_temp_path {tmp}/px;
  fastcgi_temp_path {tmp}/fc; uwsgi_temp_path {tmp}/uw; scgi_temp_path {tmp}/sc;
  keepalive_requests 1000000; keepalive_timeout 300s; tcp_nodelay on;
  server {{ listen 127.0.0.1:{PORT_BACKEND} backlog=4096;
    location / {{ default_type text/plain; return 200 "hello from backend\\n"; }} }} }}
""")
    backend = spawn(["taskset", "-c", "1", "nginx", "-p", tmp, "-e", f"{tmp}/backend.err", "-c", f"{tmp}/backend.conf"])
    wait_port(PORT_BACKEND, "backend", backend)
    bworker = children(backend.pid)[0]

    with open(f"{tmp}/kedge.toml", "w") as f:
        f.write(f"""[proxy]\nworkers = 1\ndriver = "{a.driver}"\n\n[admin]\nenabled = false\n\n[log]
access_log = false\nlevel = "warn"\n\n[[listener]]\naddress = "127.0.0.1:{PORT_KEDGE}"\n\n[[route]]
path = "/"\nupstreams = ["127.0.0.1:{PORT_BACKEND}"]\n""")
    cg = None  # kedge's cgroup for --starve quota (cgroup v1 cpu controller, else v2)
    v1 = os.path.isdir("/sys/fs/cgroup/cpu")
    if a.starve in ("quota", "mixed"):
        cg = f"/sys/fs/cgroup{'/cpu' if v1 else ''}/kedge-stall-{os.getpid()}"
        os.makedirs(cg, exist_ok=True)

    def set_quota(pct):
        if not cg:
            return
        if v1:
            with open(f"{cg}/cpu.cfs_period_us", "w") as f:
                f.write("100000")
            with open(f"{cg}/cpu.cfs_quota_us", "w") as f:
                f.write(str(pct * 1000 if pct else -1))
        else:
            with open(f"{cg}/cpu.max", "w") as f:
                f.write(f"{pct * 1000 if pct else 'max'} 100000")

    def start_kedge():
        def enter_cg():
            if cg:
                with open(f"{cg}/cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))
        k = spawn(["taskset", "-c", "0", a.kedge_bin, "run", "--config", f"{tmp}/kedge.toml"],
                  stdout=open(f"{tmp}/kedge.log", "ab"), stderr=subprocess.STDOUT, preexec_fn=enter_cg)
        wait_port(PORT_KEDGE, "kedge", k)
        return k

    kedge = start_kedge()
    modes = ["none", "same", "high", "quota", "stop-backend", "stop-kedge", "pageout"]
    summary = []
    wrk_hdr = ["-H", "Connection: close"] if a.new_conn else []
    try:
        for run in range(1, a.runs + 1):
            if run > 1 and a.gap:
                time.sleep(a.gap)
            if a.restart_each and run > 1:
                kedge.terminate()
                kedge.wait(10)
                kedge = start_kedge()
            mode = modes[(run - 1) % len(modes)] if a.starve == "mixed" else a.starve
            secs = a.duration + 1
            started, halt = [], threading.Event()
            set_quota(a.quota if mode == "quota" else 0)
            if mode in ("same", "quota"):
                started += hogs(0, [0, 1], 2, secs)
            elif mode == "high":
                started += hogs(-15, [0, 1], 1, secs)
            elif mode == "higher":
                started += hogs(-19, [0, 1], 2, secs)
            bursts = None
            if mode == "pageout":
                page_out(kedge.pid)
            if mode.startswith("stop-"):
                target = bworker if mode == "stop-backend" else kedge.pid
                bursts = threading.Thread(target=stop_bursts, args=(target, time.monotonic() + a.duration, halt), daemon=True)
                bursts.start()
            pause = None
            snapdir = f"{res}/run{run:03d}"
            sampler = Sampler({"kedge": kedge.pid, "backend": bworker, "wrk": 0, **KSOFTIRQD}, a.sample, a.stuck,
                              lambda name, pid: snapshot(snapdir, name, pid))
            w = spawn(["taskset", "-c", "1", "wrk", "-t1", f"-c{a.connections}", f"-d{a.duration}s", "--latency",
                       *wrk_hdr, f"http://127.0.0.1:{PORT_KEDGE}/"], stdout=subprocess.PIPE, text=True)
            sampler.pids["wrk"] = w.pid
            sampler.start()
            if mode.startswith("pause-"):
                target = {"pause-kedge": kedge.pid, "pause-backend": bworker, "pause-wrk": w.pid}[mode]
                pause = threading.Thread(target=pause_once, args=(target, 0.3, a.pause), daemon=True)
                pause.start()
            k0 = sum(x[3] for x in threads_of(kedge.pid))
            n0 = net_counters()
            out, _ = w.communicate()
            k1 = sum(x[3] for x in threads_of(kedge.pid))
            n1 = net_counters()
            sampler.halt.set()
            sampler.join()
            halt.set()
            if pause:
                pause.join()
            if bursts:
                bursts.join()
            for h in started:
                if h.poll() is None:
                    h.terminate()
                h.wait()
            set_quota(0)
            reqs = int(re.search(r"(\d+) requests in", out).group(1))
            tmo = re.search(r"timeout (\d+)", out)
            tmo = int(tmo.group(1)) if tmo else 0
            lmax = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
            lmax = lmax.group(1) if lmax else "?"
            cpu_pct = 100.0 * (k1 - k0) / 1e9 / a.duration
            slow = tmo > 0 or lmax.endswith("s") and not lmax.endswith("ms") and not lmax.endswith("us")
            rec = {"run": run, "mode": mode, "driver": a.driver, "new_conn": a.new_conn, "requests": reqs,
                   "timeouts": tmo, "lat_max": lmax, "kedge_cpu_pct": round(cpu_pct, 1),
                   "stuck": sorted(sampler.stuck), "max_stuck_s": {k: round(v, 2) for k, v in sampler.max_stuck.items()},
                   "max_runq_wait_ms_per_sample": {k: round(v, 1) for k, v in sampler.max_starved.items()},
                   "net": {k: n1[k] - n0[k] for k in n1 if n1[k] != n0[k]},
                   "majflt": {k: v for k, v in sampler.majflt.items() if v},
                   "d_state_samples": sampler.dstate, "samples": len(sampler.rows)}
            summary.append(rec)
            log(json.dumps(rec))
            if slow or sampler.stuck or max(sampler.max_stuck.values()) >= 0.1:
                with open(f"{res}/run{run:03d}.timeline.json", "w") as f:
                    json.dump({"rec": rec, "wrk": out, "rows": sampler.rows}, f)
                with open(f"{res}/run{run:03d}.wrk.txt", "w") as f:
                    f.write(out)
            if kedge.poll() is not None:
                log("kedge exited!")
                break
    finally:
        cleanup()
        if cg:
            try:
                os.rmdir(cg)
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    with open(f"{res}/summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    slow = [r for r in summary if r["timeouts"] or r["stuck"]]
    log(f"{len(summary)} runs, {len(slow)} with timeouts or a stuck process; results in {res}")


if __name__ == "__main__":
    main()
