#!/usr/bin/env python3
"""Servers and probes for the NetworkPolicy truth tables (run inside pod namespaces).

    probe.py serve PORT...            TCP listeners, UDP echo and an SCTP responder on each port, until killed
    probe.py probe IP:PROTO:PORT...   tries each at once (IPv6 too: the last two fields split off); prints {"IP:PROTO:PORT": true|false}

SCTP without an SCTP stack (the test kernel has none): the probe sends a real INIT chunk from a
raw socket and the server answers it with an INIT ACK carrying the INIT's tag, also from a raw
socket. Both cross the node's firewall and connection tracking as an association's first two
packets do; "open" means the INIT ACK came back.
"""
import json
import os
import random
import select
import socket
import struct
import sys
import threading
import time

TIMEOUT = 0.7
SCTP = 132


def _crc32c_table():
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


CRC32C = _crc32c_table()


def sctp_packet(sport, dport, vtag, chunk_type, init_tag, params=b""):
    """Common header and one INIT or INIT ACK chunk, with its CRC32c (stored little-endian)."""
    body = struct.pack("!IIHHI", init_tag, 65535, 1, 1, random.getrandbits(32)) + params
    chunk = struct.pack("!BBH", chunk_type, 0, 4 + len(body)) + body
    packet = struct.pack("!HHII", sport, dport, vtag, 0) + chunk
    crc = 0xFFFFFFFF
    for byte in packet:
        crc = CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return packet[:8] + struct.pack("<I", crc ^ 0xFFFFFFFF) + packet[12:]


def sctp_parse(data, family):
    """(sport, dport, vtag, chunk type, first chunk's initiate tag) of a received packet."""
    if family == socket.AF_INET:  # IPv4 raw sockets deliver the IP header too
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < 20:
        return None
    sport, dport, vtag = struct.unpack("!HHI", data[:8])
    chunk_type = data[12]
    init_tag = struct.unpack("!I", data[16:20])[0]
    return sport, dport, vtag, chunk_type, init_tag


def sctp_serve(ports, family):
    try:
        s = socket.socket(family, socket.SOCK_RAW, SCTP)
    except OSError:
        return
    while True:
        data, peer = s.recvfrom(2048)
        parsed = sctp_parse(data, family)
        if not parsed:
            continue
        sport, dport, _vtag, chunk_type, init_tag = parsed
        if chunk_type == 1 and dport in ports:  # INIT
            cookie = struct.pack("!HH", 7, 8) + os.urandom(4)  # State Cookie parameter
            reply = sctp_packet(dport, sport, init_tag, 2, random.getrandbits(32) | 1, cookie)
            s.sendto(reply, (peer[0], 0))


def sctp_probe(ip, port):
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_RAW, SCTP) as s:
        sport = random.randint(20000, 60000)
        tag = random.getrandbits(32) | 1
        s.sendto(sctp_packet(sport, port, 0, 1, tag), (ip, 0))
        deadline = time.monotonic() + TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                return False
            data, peer = s.recvfrom(2048)
            parsed = sctp_parse(data, family)
            if parsed and peer[0] == ip and parsed[:4] == (port, sport, tag, 2):
                return True


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

    threads = [
        threading.Thread(target=sctp_serve, args=(set(ports), family), daemon=True)
        for family in (socket.AF_INET, socket.AF_INET6)
    ]
    for t in threads:
        t.start()
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
            if proto == "sctp":
                ok = sctp_probe(ip, int(port))
            elif proto == "tcp":
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
