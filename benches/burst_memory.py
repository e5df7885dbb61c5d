# Memory after bursts: 3 bursts of N keep-alive connections to a running kedge, RSS after each.
#   python3 benches/burst_memory.py PORT KEDGE_PID [N=1000]   (BENCHMARKS.md, "Memory after bursts")
import socket, sys, time, os
port=int(sys.argv[1]); pid=int(sys.argv[2]); n=int(sys.argv[3]) if len(sys.argv)>3 else 1000
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])//1024
print("idle", rss(), "MB")
for rnd in range(3):
    socks=[]
    for i in range(n):
        s=socket.create_connection(("127.0.0.1",port)); s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"); socks.append(s)
    for s in socks:
        s.recv(65536)
    print("burst", rnd, "open", rss(), "MB")
    for s in socks: s.close()
    time.sleep(7)
    print("burst", rnd, "after 7s", rss(), "MB")
