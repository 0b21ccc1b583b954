"""A DNS server with known behaviour per name, for the dns program's tests and bench.

Run in a network namespace: `python dns_server.py PORT`; prints "ready" once it
listens on UDP and TCP [::]:PORT (dual stack). Names (any qtype):

    *.ok.test       NOERROR with one answer of the asked type (A, AAAA, TXT; others empty)
    big.ok.test     NOERROR with TXT answers of ~1400 bytes (over UDP only with EDNS0)
    slow.ok.test    NOERROR after 80 ms
    late.ok.test    NOERROR after 1.5 s
    tc.ok.test      over UDP: an empty answer with the TC bit; over TCP: the answer
    fail.test       SERVFAIL
    refused.test    REFUSED
    drop.test       no response at all (UDP: ignored; TCP: the connection stays silent)
    short.test      5 bytes: a response shorter than the DNS header (malformed)
    anything else   NXDOMAIN

Messages it cannot parse are ignored. Every request is handled in a thread
of its own, so a slow or dropped name delays nothing else.
"""
from __future__ import annotations

import socket
import struct
import sys
import threading
import time

from dnslib import AAAA, QTYPE, RCODE, RR, TXT, A, DNSRecord

DELAY = 0.080
LATE = 1.5


def answer(data: bytes, tcp: bool) -> bytes | None:
    try:
        query = DNSRecord.parse(data)
    except Exception:
        return None
    name = str(query.q.qname).rstrip(".").lower()
    qtype = query.q.qtype
    reply = query.reply()
    if name == "drop.test":
        return None
    if name == "short.test":
        return reply.pack()[:5]
    if name == "fail.test":
        reply.header.rcode = RCODE.SERVFAIL
    elif name == "refused.test":
        reply.header.rcode = RCODE.REFUSED
    elif name.endswith(".ok.test"):
        if name == "slow.ok.test":
            time.sleep(DELAY)
        elif name == "late.ok.test":
            time.sleep(LATE)
        if name == "tc.ok.test" and not tcp:
            reply.header.tc = 1
            return reply.pack()
        if name == "big.ok.test":
            for i in range(6):
                reply.add_answer(RR(query.q.qname, QTYPE.TXT, rdata=TXT(f"{i}" * 230), ttl=60))
        elif qtype == QTYPE.A:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
        elif qtype == QTYPE.AAAA:
            reply.add_answer(RR(query.q.qname, QTYPE.AAAA, rdata=AAAA("2001:db8::1"), ttl=60))
        elif qtype == QTYPE.TXT:
            reply.add_answer(RR(query.q.qname, QTYPE.TXT, rdata=TXT("hello"), ttl=60))
    else:
        reply.header.rcode = RCODE.NXDOMAIN
    return reply.pack()


def serve_udp(sock: socket.socket) -> None:
    def handle(data, peer):
        out = answer(data, tcp=False)
        if out is not None:
            sock.sendto(out, peer)
    while True:
        data, peer = sock.recvfrom(65535)
        threading.Thread(target=handle, args=(data, peer), daemon=True).start()


def serve_tcp_conn(conn: socket.socket) -> None:
    conn.settimeout(30)
    try:
        while True:
            head = conn.recv(2, socket.MSG_WAITALL)
            if len(head) < 2:
                return
            (length,) = struct.unpack("!H", head)
            data = conn.recv(length, socket.MSG_WAITALL)
            out = answer(data, tcp=True)
            if out is None:
                continue          # dropped: the client times out
            conn.sendall(struct.pack("!H", len(out)) + out)
    except OSError:
        pass
    finally:
        conn.close()


def main() -> None:
    port = int(sys.argv[1])
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", port))
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    tcp.bind(("::", port))
    tcp.listen(128)
    threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, _ = tcp.accept()
        threading.Thread(target=serve_tcp_conn, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
