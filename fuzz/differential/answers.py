#!/usr/bin/env python3
"""Mutated upstream answers through kedge to a strict client (h11). Run by run.sh.

answers.py PROXY_PORT BACKEND_PORT N [SEED] [THREADS] [h2]   (exit status 1: a finding)

With `h2` the client speaks HTTP/2 (h2c, the `h2` library validating what it receives): the
first request on stream 1, the second on stream 3, and a finding is also a frame or field the
library refuses, a content-length that disagrees with the DATA, or a GOAWAY (one stream's bad
upstream answer must not end the connection).

Each case: the client sends GET /a (X-Fuzz: zq<id>q) and the backend answers with a mutated
response; then, on the same client connection if it is still open, GET /check (X-Fuzz: ok<id>),
which the backend answers cleanly with body ok<id>. Checks: every byte stream the client gets
parses under h11 (kedge never sends a malformed answer), and the second answer, if any, is a
502/503/504 from kedge or exactly the backend's clean ok<id> answer (no desync: no leftover of a
mutated answer read as another request's answer).
"""
import random, re, socket, sys, threading, time, collections
import h11
import h2.config, h2.connection, h2.events, h2.exceptions

from common import args, mutate, serve

PROXY, BACKEND, N, SEED, THREADS, more = args(16)
H2 = more[:1] == ["h2"]

def templates(cid):
    m = f"zq{cid}q".encode()
    b = m
    x = b"X-Case: " + m + b"\r\n"
    return [
        b"HTTP/1.1 200 OK\r\n" + x + b"Content-Length: " + str(len(b)).encode() + b"\r\n\r\n" + b,
        b"HTTP/1.1 200 OK\r\n" + x + b"Transfer-Encoding: chunked\r\n\r\n" + format(len(b), "x").encode() + b"\r\n" + b + b"\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + x + b"Transfer-Encoding: chunked\r\n\r\n" + format(len(b), "x").encode() + b";e=1\r\n" + b + b"\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + x + b"Connection: close\r\n\r\n" + b,
        b"HTTP/1.1 204 No Content\r\n" + x + b"\r\n",
        b"HTTP/1.1 304 Not Modified\r\n" + x + b"Content-Length: 10\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n" + x + b"Content-Length: " + str(len(b)).encode() + b"\r\n\r\n" + b,
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n" + x + b"Content-Length: " + str(len(b)).encode() + b"\r\n\r\n" + b,
        b"HTTP/1.0 200 OK\r\n" + x + b"Content-Length: " + str(len(b)).encode() + b"\r\n\r\n" + b,
        b"HTTP/1.1 200 OK\r\n" + x + b"Content-Length: " + str(len(b)).encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + format(len(b), "x").encode() + b"\r\n" + b + b"\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + x + b"Content-Length: " + str(len(b)).encode() + b"\r\n\r\n" + b + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
        b"HTTP/1.1 101 Switching Protocols\r\n" + x + b"Upgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\n" + x + b"Content-Length: 0\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + x + b"Content-Length: " + str(len(b)).encode() + b"\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\n" + b,
    ]

PIECES = [b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b";", b",", b"0", b"-1", b"ffffffffffffffffff",
          b"Transfer-Encoding: chunked\r\n", b"Content-Length: 3\r\n", b"Content-Length: 1, 1\r\n",
          b"Transfer-Encoding: chunked, identity\r\n", b"Transfer-Encoding: gzip\r\n", b"\r\n\r\n",
          b"HTTP/1.1", b"\x7f", b"\xff", b"a" * 300, b"\r\n ", b"x:y\r\n", b"0\r\n\r\n",
          b"Connection: close\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", b"1\r\nz\r\n"]

answers = {}

def answer_for(cid):
    rng = random.Random(SEED * 7919 + cid)
    base = rng.choice(templates(cid))
    return base if rng.random() < 0.1 else mutate(rng, base, PIECES, [1, 1, 2, 3], False)

def backend_conn(s):
    buf = b""
    s.settimeout(30)
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                try:
                    d = s.recv(65536)
                except socket.timeout:
                    return   # idle after a mutated answer: close, which ends a close-delimited one

                if not d:
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            m = re.search(rb"(?im)^x-fuzz: *(zq|ok)(\d+)q?\r?$", head)
            if not m:
                s.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                continue
            cid = int(m.group(2))
            s.settimeout(30)
            if m.group(1) == b"ok":
                body = f"ok{cid}".encode()
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            else:
                a = answer_for(cid)
                answers[cid] = a
                s.sendall(a)
                s.settimeout(1)
    except OSError:
        pass
    finally:
        s.close()

findings = collections.defaultdict(list)
statuses = collections.Counter()

def judge_second(cid, st, body):
    """The clean request after case `cid`'s answer must get the backend's own answer (a
    desync otherwise) or one of kedge's 5xx."""
    if st == 200 and body != f"ok{cid}".encode():
        findings["DESYNC second answer"].append((cid, body[:80]))
    elif st != 200 and st not in (502, 503, 504):
        findings[f"second answer {st}"].append((cid, body[:80]))


def read_answer(s, conn, raw):
    """Reads one complete answer (skipping 1xx) with h11; returns (status, body) or None on close."""
    status, body = None, b""
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            try:
                d = s.recv(65536)
            except socket.timeout:
                raise TimeoutError
            raw.append(d)
            conn.receive_data(d)
            continue
        if isinstance(ev, h11.InformationalResponse):
            continue
        if isinstance(ev, h11.Response):
            status = ev.status_code
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            return status, body
        elif isinstance(ev, h11.ConnectionClosed):
            return None

def run_case(cid):
    s = socket.create_connection(("127.0.0.1", PROXY))
    s.settimeout(8)
    conn = h11.Connection(h11.CLIENT)
    raw = []
    try:
        s.sendall(conn.send(h11.Request(method="GET", target="/a", headers=[("Host", "r.example.com"), ("X-Fuzz", f"zq{cid}q")])) + conn.send(h11.EndOfMessage()))
        first = read_answer(s, conn, raw)
        if first is None:
            findings["closed without an answer"].append(cid)
            return
        statuses[first[0]] += 1
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()
        s.sendall(conn.send(h11.Request(method="GET", target="/check", headers=[("Host", "r.example.com"), ("X-Fuzz", f"ok{cid}q")])) + conn.send(h11.EndOfMessage()))
        second = read_answer(s, conn, raw)
        if second is None:
            return
        judge_second(cid, *second)
    except TimeoutError:
        findings["timeout"].append(cid)
    except h11.RemoteProtocolError as e:
        if "without sending complete message body" in str(e):
            findings["(cut short, as the upstream's answer was)"].append(cid)
            return
        if "Only Transfer-Encoding: chunked" in str(e):
            findings["(h11 cannot read other codings)"].append(cid)
            return
        findings["MALFORMED from kedge: " + str(e)].append((cid, b"".join(raw)[:300]))
    except (ConnectionResetError, BrokenPipeError):
        findings["reset"].append(cid)
    except OSError as e:
        findings[f"client error {e}"].append(cid)
    finally:
        s.close()

def h2_exchange(s, c, stream, fuzz):
    """One GET on `stream`; returns (status, body, how) with how "ended", "reset" or "goaway"."""
    c.send_headers(stream, [(":method", "GET"), (":scheme", "http"), (":authority", "r.example.com"),
                            (":path", "/a" if fuzz.startswith("zq") else "/check"), ("x-fuzz", fuzz)], end_stream=True)
    s.sendall(c.data_to_send())
    status, body = None, b""
    while True:
        d = s.recv(65536)
        if not d:
            return status, body, "closed"
        for ev in c.receive_data(d):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == stream:
                status = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == stream:
                return status, body, "ended"
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == stream:
                return status, body, "reset"
            elif isinstance(ev, h2.events.ConnectionTerminated):
                return status, body, "goaway"
        s.sendall(c.data_to_send())

def run_case_h2(cid):
    s = socket.create_connection(("127.0.0.1", PROXY))
    s.settimeout(8)
    c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding=None))
    try:
        c.initiate_connection()
        status, body, how = h2_exchange(s, c, 1, f"zq{cid}q")
        statuses[f"{status} {how}"] += 1
        if how in ("goaway", "closed"):
            findings[f"connection ended ({how}) over one stream's answer"].append(cid)
            return
        st, body, how = h2_exchange(s, c, 3, f"ok{cid}q")
        if how != "ended":
            findings[f"second stream {how}"].append(cid)
        else:
            judge_second(cid, st, body)
    except TimeoutError:
        findings["timeout"].append(cid)
    except h2.exceptions.ProtocolError as e:
        findings[f"MALFORMED h2 from kedge: {type(e).__name__} {e}"].append(cid)
    except OSError as e:
        findings[f"client error {e}"].append(cid)
    finally:
        s.close()

def worker(start):
    for cid in range(start, N, THREADS):
        (run_case_h2 if H2 else run_case)(cid)

serve(BACKEND, backend_conn)
t0 = time.time()
ts = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
[t.start() for t in ts]; [t.join() for t in ts]
print(f"{N} cases in {time.time() - t0:.1f}s; first answers {dict(statuses)}")
for k, v in sorted(findings.items()):
    print(f"{k}: {len(v)}")
    for item in v[:4]:
        cid = item[0] if isinstance(item, tuple) else item
        print("   ", item, "| upstream sent:", answers.get(cid, b"?")[:200])
# Categories in parentheses are expected (the upstream's own answer was incomplete; h11 reads
# no transfer coding but chunked); any other is a finding.
sys.exit(1 if any(not k.startswith("(") for k in findings) else 0)
