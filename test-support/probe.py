#!/usr/bin/env python3
"""Servers and probes for the NetworkPolicy truth tables (run inside pod namespaces).

    probe.py serve PORT...            TCP listeners and UDP echo on each port, until killed
    probe.py probe IP:PROTO:PORT...   tries each at once (IPv6 too: the last two fields split off); prints {"IP:PROTO:PORT": true|false}
"""
import json
import socket
import sys
import threading

TIMEOUT = 0.7


def serve(ports):
    # One dual-stack socket per port and protocol: IPv4 arrives v4-mapped.
    def tcp(port):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        s.listen(64)
        while True:
            c, _ = s.accept()
            try:
                c.sendall(b"ok")
            finally:
                c.close()

    def udp(port):
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        while True:
            data, peer = s.recvfrom(64)
            s.sendto(b"ok", peer)

    threads = []
    for p in ports:
        for fn in (tcp, udp):
            t = threading.Thread(target=fn, args=(p,), daemon=True)
            t.start()
            threads.append(t)
    print("serving", flush=True)
    for t in threads:
        t.join()


def probe(targets):
    results = {}

    def one(target):
        ip, proto, port = target.rsplit(":", 2)
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        ok = False
        try:
            if proto == "tcp":
                with socket.create_connection((ip, int(port)), timeout=TIMEOUT) as s:
                    s.settimeout(TIMEOUT)
                    ok = s.recv(2) == b"ok"
            else:
                with socket.socket(family, socket.SOCK_DGRAM) as s:
                    s.settimeout(TIMEOUT)
                    s.sendto(b"hi", (ip, int(port)))
                    ok = s.recvfrom(64)[0] == b"ok"
        except OSError:
            ok = False
        results[target] = ok

    threads = [threading.Thread(target=one, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(results))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve([int(p) for p in sys.argv[2:]])
    else:
        probe(sys.argv[2:])
