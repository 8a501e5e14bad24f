#!/usr/bin/env python3
"""Writes the seeds of the bpf_map_values fuzz target: map keys and values
packed as the kernel holds them (native byte order, addresses as eBPF
contexts carry them), each seed one or two of them back to back. The target
reads every map's types from the same bytes, so each seed reaches several
decoders. Run it from anywhere: it writes into ../corpus/bpf_map_values/.
"""
import os
import socket
import struct

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'corpus', 'bpf_map_values')
AF_INET, AF_INET6 = 2, 10


def words(address):
    if ':' in address:
        return struct.unpack('=4I', socket.inet_pton(socket.AF_INET6, address))
    return (struct.unpack('=I', socket.inet_aton(address))[0], 0, 0, 0)


def socket_tuple(cookie, src, src_port, dst, dst_port, family=AF_INET):
    return struct.pack('=Q4I4IHHHH', cookie, *words(src), *words(dst), src_port, dst_port, family, 0)


def original_dst(address, port, cookie, family=AF_INET):
    return struct.pack('=4IHHIQ', *words(address), port, family, 0, cookie)


def enrolled(ipv4, flags, ipv6):
    return struct.pack('=II4I', words(ipv4)[0] if ipv4 else 0, flags, *(words(ipv6) if ipv6 else (0, 0, 0, 0)))


def splice_stats(sent, received, opened_ns, flags, cookie):
    return struct.pack('=5Q', sent, received, opened_ns, flags, cookie)


def direct_key(src, dst, port, family=AF_INET):
    return struct.pack('=4I4IHHI', *words(src), *words(dst), port, family, 0)


SEEDS = {
    'enrolled-v4-v6-strict-kernel-path.bin': struct.pack('=Q', 4099) + enrolled('10.10.1.11', 3, 'fd00:10:10:1::11'),
    'odst-by-tuple.bin': socket_tuple(7, '10.10.1.11', 40000, '127.0.0.1', 15001) + original_dst('10.10.2.11', 8080, 7),
    'odst-by-socket-v6.bin': struct.pack('=Q', 0xdeadbeef) + original_dst('fd00:10:10:2::11', 443, 9, AF_INET6),
    'splice-event-opened.bin': socket_tuple(0, '10.10.1.11', 40000, '10.10.1.12', 80)
    + splice_stats(1024, 4096, 123456789, 1, 0x1234) + struct.pack('=II', 1, 0),
    'splice-event-closed-pod-leg.bin': socket_tuple(0, '10.10.1.11', 40001, '127.0.0.1', 15001)
    + splice_stats(1 << 20, 2 << 20, 987654321, 2, 0x5678) + struct.pack('=II', 2, 0),
    'direct-allow.bin': direct_key('10.10.1.11', '10.10.1.12', 0) + struct.pack('=II', 1, 0),
    'direct-deny-port-v6.bin': direct_key('fd00::1', 'fd00::2', 9090, AF_INET6) + struct.pack('=II', 0, 0),
    'counters-per-cpu.bin': struct.pack('=I', 3) + struct.pack('=4Q', 10, 20, 0, 5),
    'inbound-listener.bin': struct.pack('=4IHH', *words('10.10.2.11'), AF_INET, 0),
    'corrupt-family.bin': socket_tuple(1, '10.0.0.1', 1, '10.0.0.2', 2, family=99) + original_dst('10.0.0.3', 3, 1, family=7),
}

if __name__ == '__main__':
    os.makedirs(CORPUS, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(CORPUS, name), 'wb') as out:
            out.write(data)
