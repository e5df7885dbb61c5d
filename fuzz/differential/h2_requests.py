#!/usr/bin/env python3
"""Mutated HTTP/2 requests (h2c, prior knowledge) through kedge to a strict HTTP/1.1 backend
(h11): the downgrade path. Run by run.sh.

h2_requests.py PROXY_PORT BACKEND_PORT N [SEED] [THREADS]   (exit status 1: a finding)

Checks: every request the backend sees parses under h11 and carries no field a value smuggled in
(`x-injected`) and no target a body smuggled in (`/smuggled`); every answer the backend gave
reaches the HTTP/2 stream that carried the request.
"""
import random, socket, sys, threading, time, collections
import h2.connection, h2.config, h2.events, h2.exceptions

from common import EchoBackend, args, serve

PROXY, BACKEND, N, SEED, THREADS, _ = args(16)
findings = collections.defaultdict(list)

def injected(token, fields, request, raw):
    if b"x-injected" in fields or b"smuggled" in request.target:
        with backend.lock:
            findings["INJECTED into the upstream request"].append((token, raw[:300]))

backend = EchoBackend(inspect=injected)

INJECT = [b"a\r\nX-Injected: 1", b"a\nX-Injected: 1", b"a\rX-Injected: 1", b"\x00", b"a\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
          b" a ", b"\t", b"", b"a" * 9000, b"\x7f", b"\xff\xfe"]
NAMES = [b"X-Upper", b"x y", b"x:y", b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te", b"host",
         b"content-length", b":unknown", b":path", b":authority", b"cookie", b"x-forwarded-for", b"proxy-connection",
         b"x-injected\r\nfoo", b"", b"expect"]

def request(rng, token):
    h = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"h2.example.com"),
         (b":path", b"/a-" + token.encode()), (b"x-fuzz", token.encode())]
    body = None
    kind = rng.randrange(4)
    if kind == 1:
        h[0] = (b":method", b"POST"); body = b"hello"
        h.append((b"content-length", b"5"))
    elif kind == 2:
        h[0] = (b":method", b"POST"); body = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(rng.choice([1, 1, 2, 3])):
        op = rng.randrange(7)
        if op == 0:      # a value gets an injection
            i = rng.randrange(len(h)); n, v = h[i]
            h[i] = (n, v + rng.choice(INJECT) if rng.random() < .7 else rng.choice(INJECT))
        elif op == 1:    # a field with an odd name
            h.insert(rng.randrange(len(h) + 1), (rng.choice(NAMES), rng.choice([b"1", b"chunked", b"close", b"trailers", b"gzip", b"h2c", b"100-continue", b"999"] + INJECT[:3])))
        elif op == 2:    # a pseudo-header goes or doubles
            i = rng.randrange(4)
            if rng.random() < .5: del h[i]
            else: h.insert(rng.randrange(len(h) + 1), h[i])
        elif op == 3:    # odd method, scheme, path or authority
            choices = {0: [b"CONNECT", b"OPTIONS", b"DELETE", b"G ET", b"get", b"PRI", b""],
                       1: [b"https", b"ftp", b"", b"HTTP"],
                       2: [b"h2.example.com:8080", b"user@h2.example.com", b"", b"h2.example.com:", b"[::1]:80", b"a b", b"other.example.com"],
                       3: [b"*", b"", b"a", b"/b c", b"http://h2.example.com/abs", b"//x", b"/%00", b"/a?b#c"]}
            i = rng.randrange(4)
            for j, (n, _) in enumerate(h):
                if n == [b":method", b":scheme", b":authority", b":path"][i]:
                    v = rng.choice(choices[i])
                    if i == 3 and v not in (b"*", b""):
                        v += b"-" + token.encode()
                    h[j] = (n, v)
                    break
        elif op == 4 and body is not None:   # the length says otherwise
            h = [x for x in h if x[0] != b"content-length"] + [(b"content-length", rng.choice([b"0", b"3", b"99", b"5, 5", b"-1", b"abc"]))]
        elif op == 5:    # cookie crumbs
            h += [(b"cookie", b"a=1"), (b"cookie", b"b=2" + (rng.choice(INJECT) if rng.random() < .3 else b""))]
        else:            # a pseudo-header after a regular field
            h.append((b":path", b"/late-" + token.encode()))
    return h, body

def run_case(cid, rng):
    token = f"zq{cid}q"
    headers, body = request(rng, token)
    cfg = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                    normalize_outbound_headers=False, validate_inbound_headers=False)
    c = h2.connection.H2Connection(config=cfg)
    s = socket.create_connection(("127.0.0.1", PROXY))
    s.settimeout(4)
    got = b""
    status = None
    how = "?"
    try:
        c.initiate_connection()
        c.send_headers(1, headers, end_stream=body is None)
        if body is not None:
            c.send_data(1, body, end_stream=True)
        s.sendall(c.data_to_send())
        done = False
        deadline = time.time() + 8
        while not done and time.time() < deadline:
            d = s.recv(65536)
            if not d:
                break
            for ev in c.receive_data(d):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers).get(b":status")
                elif isinstance(ev, h2.events.DataReceived):
                    got += ev.data
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    done, how = True, "ended"
                elif isinstance(ev, h2.events.StreamReset):
                    done, how = True, f"reset {ev.error_code!r}"
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    done, how = True, f"goaway {ev.error_code!r}"
            s.sendall(c.data_to_send())
        if not done:
            findings["no end of stream"].append((token, headers))
    except (socket.timeout, TimeoutError):
        findings["timeout"].append((token, headers))
    except h2.exceptions.ProtocolError as e:
        findings[f"client protocol error {type(e).__name__}"].append((token, headers))
    except OSError as e:
        how = f"socket {type(e).__name__}"
    finally:
        s.close()
    return headers, status, got, how

results = {}
statuses = collections.Counter()

def worker(start):
    rng = random.Random(SEED * 1000003 + start)
    for cid in range(start, N, THREADS):
        results[cid] = run_case(cid, rng)
        statuses[(results[cid][1] or b"-").decode() + " " + results[cid][3]] += 1

serve(BACKEND, backend.handle)
t0 = time.time()
ts = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
[t.start() for t in ts]; [t.join() for t in ts]
time.sleep(0.5)
with backend.lock:
    for why, raw in backend.errors:
        findings["BACKEND cannot parse: " + why].append(raw[:300])
    for token, targets in backend.seen.items():
        if not (token.startswith("zq") and token.endswith("q") and token[2:-1].isdigit()):
            continue
        cid = int(token[2:-1])
        r = results.get(cid)
        # A stream the client broke (a body longer than its content-length, say) is reset after
        # its request went on: the answer is lost then, as it should be.
        if r is None or r[3] != "ended":
            continue
        for t in targets:
            if f"{token} {t} ".encode() not in r[2]:
                findings["an answer did not reach its stream"].append((token, t, r))
print(f"{N} cases in {time.time() - t0:.1f}s; backend saw {sum(len(v) for v in backend.seen.values())} requests; answers:")
for k, v in statuses.most_common():
    print(f"  {v:6}  {k}")
for k, v in sorted(findings.items()):
    print(f"{k}: {len(v)}")
    for item in v[:4]:
        print("   ", item)
sys.exit(1 if findings else 0)
