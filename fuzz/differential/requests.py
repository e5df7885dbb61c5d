#!/usr/bin/env python3
"""Mutated HTTP/1.1 requests through kedge to a strict backend (h11). Run by run.sh.

requests.py PROXY_PORT BACKEND_PORT N [SEED] [THREADS]   (exit status 1: a finding)

Checks: every request the backend sees parses under h11; every request the backend answers
reaches the client whose bytes carried it (the backend echoes case id + target); every answer
the client gets starts with a valid status line; the proxy process stays up (caller checks).
"""
import random, re, socket, sys, threading, time, collections

from common import EchoBackend, args, mutate, serve

PROXY, BACKEND, N, SEED, THREADS, _ = args(24)
backend = EchoBackend()

SMUGGLE = b"GET /smuggled HTTP/1.1\r\nHost: bench.example.com\r\nX-Fuzz: {id}\r\n\r\n"

def templates(cid):
    f = f"X-Fuzz: zq{cid}q\r\n".encode()
    sm = SMUGGLE.replace(b"{id}", f"zq{cid}q".encode())
    h = b"Host: bench.example.com\r\n"
    return [
        b"GET /a HTTP/1.1\r\n" + h + f + b"\r\n",
        b"GET /a HTTP/1.1\r\n" + h + f + b"Connection: close\r\n\r\n",
        b"POST /p HTTP/1.1\r\n" + h + f + b"Content-Length: 5\r\n\r\nhello",
        b"POST /p HTTP/1.1\r\n" + h + f + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /p HTTP/1.1\r\n" + h + f + b"Content-Length: " + str(len(sm)).encode() + b"\r\n\r\n" + sm,
        b"POST /p HTTP/1.1\r\n" + h + f + b"Transfer-Encoding: chunked\r\n\r\n" + format(len(sm), "x").encode() + b"\r\n" + sm + b"\r\n0\r\n\r\n",
        b"POST /p HTTP/1.1\r\n" + h + f + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + sm,
        b"GET /a HTTP/1.1\r\n" + h + f + b"\r\nGET /b HTTP/1.1\r\n" + h + f + b"\r\n",
        b"GET http://bench.example.com/abs?q=1 HTTP/1.1\r\n" + h + f + b"\r\n",
        b"GET /a HTTP/1.0\r\n" + f + b"\r\n",
        b"POST /p HTTP/1.1\r\n" + h + f + b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n",
        b"GET /a HTTP/1.1\r\n" + h + f + b"Connection: keep-alive, x-drop\r\nX-Drop: 1\r\nUpgrade: websocket\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n" + h + f + b"\r\n",
        b"POST /p HTTP/1.1\r\n" + h + f + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /ws HTTP/1.1\r\n" + h + f + b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        b"GET /a HTTP/1.1\r\n" + h + f + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        b"POST /p HTTP/1.0\r\n" + h + f + b"Connection: keep-alive\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.0\r\n" + f + b"\r\n",
        b"POST /p HTTP/1.1\r\n" + h + f + b"Content-Length: 3\r\n\r\nabcPOST /q HTTP/1.1\r\n" + h + f + b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        b"GET /a HTTP/1.1\r\n" + h + f + b"Cookie: " + b"c" * 2000 + b"\r\nUser-Agent: fuzz\r\n\r\n",
        b"DELETE /d?x=%00&y=%2e%2e HTTP/1.1\r\n" + h + f + b"Content-Length: 0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: bench.example.com:27100\r\n" + f + b"X-Forwarded-For: 203.0.113.1\r\n\r\n",
    ]

PIECES = [b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b";", b",", b"0", b"-1", b"ffffffffffffffffff",
          b"Transfer-Encoding: chunked\r\n", b"Content-Length: 3\r\n", b"Content-Length: 1, 1\r\n",
          b"Transfer-Encoding: chunked, identity\r\n", b"Transfer-Encoding:\tchunked\r\n",
          b" chunked", b"Host: other.example.com\r\n", b"\r\n\r\n", b"HTTP/1.1", b"\x7f", b"\xff", b"a" * 300,
          b"\r\n ", b"GET", b"x:y\r\n", b"0\r\n\r\n", b"Connection: close\r\n", b"Upgrade: h2c\r\n"]

STATUS = re.compile(rb"HTTP/1\.[01] [1-5]\d\d [^\r\n]*\r\n")
got = collections.defaultdict(list)   # case -> [body lines] the client received
bad_answers, hangs, statuses = [], [], collections.Counter()

def run_case(cid, rng):
    base = rng.choice(templates(cid))
    data = base if rng.random() < 0.1 else mutate(rng, base, PIECES, [1, 1, 2, 3, 5], True)
    s = socket.create_connection(("127.0.0.1", PROXY))
    s.settimeout(3)
    out = b""
    try:
        try:
            if rng.random() < 0.2 and len(data) > 2:
                cut = rng.randrange(1, len(data))
                s.sendall(data[:cut]); time.sleep(0.01); s.sendall(data[cut:])
            else:
                s.sendall(data)
            if rng.random() < 0.3:
                s.shutdown(socket.SHUT_WR)
        except OSError:   # kedge closed before all was sent: what it answered is still to read
            pass
        deadline = time.time() + 6
        while time.time() < deadline:
            try:
                d = s.recv(65536)
            except socket.timeout:
                break
            if not d:
                break
            out += d
            s.settimeout(0.4)  # after the first bytes, idle 0.4 s ends it
        else:
            hangs.append((cid, data))
    except OSError:   # a reset while reading
        pass
    finally:
        s.close()
    if out and not STATUS.match(out):
        bad_answers.append((cid, data, out[:200]))
    for m in re.finditer(rb"HTTP/1\.[01] (\d\d\d)", out):
        statuses[m.group(1).decode()] += 1
    for m in re.finditer(rb"\r\n\r\n(\d+ \S+ \d+)\n", out):
        c, t, _ = m.group(1).decode().split(" ")
        got[c].append(t)
    return data, out

def worker(start, step, results):
    rng = random.Random(SEED * 1000003 + start)
    for cid in range(start, N, step):
        results[cid] = run_case(cid, rng)

serve(BACKEND, backend.handle)
results = {}
ts = [threading.Thread(target=worker, args=(i, THREADS, results)) for i in range(THREADS)]
t0 = time.time()
[t.start() for t in ts]; [t.join() for t in ts]
time.sleep(1)
lost, misrouted = [], []
with backend.lock:
    for c, targets in backend.seen.items():
        m = re.fullmatch(r"zq(\d+)q", c)
        if not m or int(m.group(1)) not in results:
            continue
        mine = results[int(m.group(1))][1]
        for t in targets:
            echo = f"{c} {t} ".encode("latin1")
            if echo in mine:
                continue
            others = [k for k, (_, o) in results.items() if echo in o]
            # The token was mutated into another case's: fine when the client that got the
            # answer sent that token itself.
            if others and all(c.encode() in results[k][0] for k in others):
                continue
            (misrouted if others else lost).append((c, t, others[:3]))
print(f"{N} cases in {time.time() - t0:.1f}s; statuses {dict(statuses)}; backend saw {sum(len(v) for v in backend.seen.values())} requests")
print(f"backend protocol errors: {len(backend.errors)}; lost answers: {len(lost)}; bad answers: {len(bad_answers)}; hangs: {len(hangs)}")
for e in backend.errors[:8]:
    print("BACKEND", e)
print(f"misrouted answers: {len(misrouted)}")
for c, t, o in (misrouted + lost)[:10]:
    k = int(re.fullmatch(r"zq(\d+)q", c).group(1))
    print("LOST/MISROUTED", repr(c), repr(t), o, "\n   sent:", results[k][0], "\n   got:", results[k][1][:400])
for b in bad_answers[:5]:
    print("BAD", b)
for h in hangs[:5]:
    print("HANG", h)
sys.exit(1 if backend.errors or lost or misrouted or bad_answers or hangs else 0)
