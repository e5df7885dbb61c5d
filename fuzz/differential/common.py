"""What the differential fuzzers share: their command line, a listener that serves each
connection on a thread of its own, the h11 backend that echoes what it saw, and the byte
mutations."""
import collections
import socket
import sys
import threading

import h11


def args(threads):
    """PROXY_PORT BACKEND_PORT N [SEED] [THREADS] [more...] from the command line: the ports,
    the number of cases, the seed (1), the client threads (`threads`) and what follows."""
    a = sys.argv
    seed = int(a[4]) if len(a) > 4 else 1
    return int(a[1]), int(a[2]), int(a[3]), seed, int(a[5]) if len(a) > 5 else threads, a[6:]


def serve(port, handle):
    """Listens on 127.0.0.1:`port` (bound when this returns) and runs `handle(socket)` for each
    connection on a daemon thread of its own."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(512)

    def accept():
        while True:
            s, _ = ls.accept()
            threading.Thread(target=handle, args=(s,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


class EchoBackend:
    """A strict HTTP/1.1 server (h11) answering every request with the body
    `token target body-length\\n`, the token being its X-Fuzz value. Under `lock` it records the
    targets it answered by token (`seen`) and what it could not parse (`errors`: why, and the
    bytes since the last request). `inspect(token, fields, request, raw)`, when given, sees each
    request head first (fields: names lower-case)."""

    def __init__(self, inspect=None):
        self.lock = threading.Lock()
        self.seen = collections.defaultdict(list)
        self.errors = []
        self.inspect = inspect

    def handle(self, s):
        conn = h11.Connection(h11.SERVER)
        raw = b""
        s.settimeout(30)
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    d = s.recv(65536)
                    raw += d
                    conn.receive_data(d)
                    if not d:
                        return
                    continue
                if isinstance(ev, h11.Request):
                    fields = dict((k.lower(), v) for k, v in ev.headers)
                    token = fields.get(b"x-fuzz", b"?").decode("latin1")
                    target = ev.target.decode("latin1")
                    if self.inspect:
                        self.inspect(token, fields, ev, raw)
                    body = 0
                elif isinstance(ev, h11.Data):
                    body += len(ev.data)
                elif isinstance(ev, h11.EndOfMessage):
                    text = f"{token} {target} {body}\n".encode()
                    with self.lock:
                        self.seen[token].append(target)
                    s.sendall(conn.send(h11.Response(status_code=200, headers=[("Content-Length", str(len(text)))]))
                              + conn.send(h11.Data(data=text)) + conn.send(h11.EndOfMessage()))
                    conn.start_next_cycle()
                    raw = b""
                elif isinstance(ev, h11.ConnectionClosed):
                    return
        except h11.RemoteProtocolError as e:
            with self.lock:
                self.errors.append((str(e), raw[:400]))
        except (OSError, h11.LocalProtocolError):
            pass
        finally:
            s.close()


def mutate(rng, data, pieces, rounds, change_case):
    """`data` with `rng.choice(rounds)` mutations: a byte changed, one of `pieces` inserted, up
    to 7 bytes deleted, a CRLF-delimited line doubled, a line's case changed (when
    `change_case`), or the first CRLF made a bare LF."""
    data = bytearray(data)
    ops = 6 if change_case else 5
    for _ in range(rng.choice(rounds)):
        op = rng.randrange(ops)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[pos:pos] = rng.choice(pieces)
        elif op == 2 and data:
            del data[pos:pos + rng.randrange(1, 8)]
        elif op == 3:
            lines = bytes(data).split(b"\r\n")
            i = rng.randrange(len(lines))
            lines.insert(i, lines[rng.randrange(len(lines))])
            data = bytearray(b"\r\n".join(lines))
        elif op == 4 and change_case:
            lines = bytes(data).split(b"\r\n")
            i = rng.randrange(len(lines))
            lines[i] = lines[i].upper() if rng.random() < .5 else lines[i].lower()
            data = bytearray(b"\r\n".join(lines))
        else:
            data = bytearray(bytes(data).replace(b"\r\n", b"\n", 1))
    return bytes(data)
