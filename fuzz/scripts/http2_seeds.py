#!/usr/bin/env python3
"""Writes the binary seeds of the hbone_server and waypoint_stream fuzz
targets: HTTP/2 frames as a node agent sends them on an HBONE connection
(after the connection preface, which the hbone_server target sends itself),
and the bytes of waypoint streams (the first byte picks the port and when
the client ends its side, see fuzz_targets/waypoint_stream.rs).

HPACK literals are written without Huffman coding, so the requests can be
read in a hex dump. Run it from anywhere: it writes into ../corpus/.
"""
import os
import struct

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'corpus')
PREFACE = b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# HPACK's static table entries the seeds name.
STATIC = {':authority': 1, ':method': 2, ':path': 4, ':scheme': 6}


def frame(kind, flags, stream, payload=b''):
    return struct.pack('>I', len(payload))[1:] + bytes([kind, flags]) + struct.pack('>I', stream) + payload


def integer(value, prefix_bits, first):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7f) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def string(text):
    raw = text.encode()
    return integer(len(raw), 7, 0) + raw


def literal(name, value, indexed=False):
    """A literal header field, without indexing (or with incremental indexing)."""
    if name in STATIC:
        head = integer(STATIC[name], 6, 0x40) if indexed else integer(STATIC[name], 4, 0x00)
        return head + string(value)
    return (b'\x40' if indexed else b'\x00') + string(name) + string(value)


def indexed(index):
    return integer(index, 7, 0x80)


def connect(authority, extra=()):
    block = literal(':method', 'CONNECT') + literal(':authority', authority)
    for name, value in extra:
        block += literal(name, value)
    return block


def settings(pairs=()):
    return frame(SETTINGS, 0, 0, b''.join(struct.pack('>HI', k, v) for k, v in pairs))


def window_update(stream, increment):
    return frame(WINDOW_UPDATE, 0, stream, struct.pack('>I', increment))


def write(target, name, data):
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), 'wb') as out:
        out.write(data)


# What a node agent's HBONE client sends: no push, HBONE's windows.
AGENT_SETTINGS = settings([(0x2, 0), (0x4, 4 * 1024 * 1024), (0x3, 100)])
SETTINGS_ACK = frame(SETTINGS, ACK, 0)


def hbone_seeds():
    seed = lambda name, data: write('hbone_server', name, data)
    seed('connect-early-data.bin',
         AGENT_SETTINGS + window_update(0, 16 * 1024 * 1024)
         + frame(HEADERS, END_HEADERS, 1, connect('10.10.2.11:8080'))
         + frame(DATA, 0, 1, b'GET / HTTP/1.1\r\nHost: backend\r\n\r\n')
         + SETTINGS_ACK + frame(DATA, END_STREAM, 1))
    seed('connect-ipv6.bin',
         AGENT_SETTINGS + frame(HEADERS, END_HEADERS, 1, connect('[fd00:10:10:2::11]:443'))
         + frame(DATA, END_STREAM, 1, b'\x16\x03\x01\x00\x05hello'))
    seed('connect-ipv4-mapped.bin',
         AGENT_SETTINGS + frame(HEADERS, END_HEADERS, 1, connect('[::ffff:10.10.2.11]:80'))
         + frame(DATA, END_STREAM, 1, b'ping'))
    seed('connect-mesh-port-400.bin',
         AGENT_SETTINGS + frame(HEADERS, END_HEADERS | END_STREAM, 1, connect('10.10.2.11:15008')))
    seed('connect-other-pod-400.bin',
         AGENT_SETTINGS + frame(HEADERS, END_HEADERS, 1, connect('10.10.2.12:8080'))
         + frame(DATA, END_STREAM, 1, b'early data to a refused stream'))
    seed('connect-hostname-400.bin',
         AGENT_SETTINGS + frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                connect('backend.shop.svc.cluster.local:8080')))
    get = (literal(':method', 'GET') + literal(':scheme', 'https') + literal(':path', '/')
           + literal(':authority', '10.10.2.11:8080'))
    seed('get-405.bin', AGENT_SETTINGS + frame(HEADERS, END_HEADERS | END_STREAM, 1, get))
    seed('connect-with-path.bin',
         AGENT_SETTINGS + frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                connect('10.10.2.11:8080', [(':path', '/x'), (':scheme', 'http')])))
    # Three streams at once, one reset, a ping, window updates, then GOAWAY.
    many = AGENT_SETTINGS
    for stream, authority in [(1, '10.10.2.11:8080'), (3, '10.10.2.11:9090'), (5, '10.10.2.11:15006')]:
        many += frame(HEADERS, END_HEADERS, stream, connect(authority))
    many += frame(DATA, 0, 1, b'one') + frame(DATA, 0, 3, b'three')
    many += frame(RST_STREAM, 0, 3, struct.pack('>I', 8))
    many += frame(PING, 0, 0, b'12345678') + window_update(1, 65535)
    many += frame(DATA, END_STREAM, 1, b'end') + frame(GOAWAY, 0, 0, struct.pack('>II', 5, 0))
    seed('three-streams-reset-ping-goaway.bin', many)
    # A header block split over CONTINUATION, added to the dynamic table,
    # then reused by index on the next stream.
    block = literal(':method', 'CONNECT', True) + literal(':authority', '10.10.2.11:8080', True)
    seed('continuation-and-dynamic-table.bin',
         AGENT_SETTINGS + frame(HEADERS, 0, 1, block[:5]) + frame(CONTINUATION, END_HEADERS, 1, block[5:])
         + frame(DATA, END_STREAM, 1, b'a')
         + frame(HEADERS, END_HEADERS | END_STREAM, 3, indexed(63) + indexed(62)))
    # Padding and a priority on HEADERS, padding on DATA.
    padded = bytes([4]) + struct.pack('>IB', 0, 15) + connect('10.10.2.11:8080') + b'\0' * 4
    seed('padded-priority-headers.bin',
         AGENT_SETTINGS + frame(HEADERS, END_HEADERS | PADDED | PRIORITY_FLAG, 1, padded)
         + frame(DATA, PADDED | END_STREAM, 1, bytes([2]) + b'xy' + b'\0\0'))
    # A header block over HBONE's 16 KiB limit (431).
    seed('oversized-headers-431.bin',
         AGENT_SETTINGS + frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                connect('10.10.2.11:8080', [('x-big', 'a' * 17000)])))


# The waypoint target's first byte: the port (0 HTTP, 1 undeclared, 2 TCP,
# 3 not served), plus 4 when the client ends its side with its last bytes.
HTTP, UNDECLARED, TCP, NOT_SERVED, HALF_CLOSE = 0, 1, 2, 3, 4
# Where the waypoint target cuts the payload into DATA frames.
SEPARATOR = b'\xff\xff\xff\xfe'


def waypoint_seeds():
    seed = lambda name, first, payload: write('waypoint_stream', name, bytes([first]) + payload)
    seed('http-get-api.txt', HTTP, b'GET /api/items?page=2 HTTP/1.1\r\nHost: backend.shop.svc.cluster.local\r\n'
         b'User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n')
    seed('http-redirect-old.txt', HTTP, b'GET /old/page?q=1 HTTP/1.1\r\nHost: backend.shop\r\n\r\n')
    seed('http-canary-header-post.txt', HTTP, b'POST /orders HTTP/1.1\r\nHost: backend\r\nx-canary: yes\r\n'
         b'x-debug: 1\r\nContent-Length: 13\r\n\r\n{"item": 42}\n')
    seed('http-delete-denied.txt', HTTP, b'DELETE /api/items/7 HTTP/1.1\r\nHost: backend\r\n\r\n')
    seed('http-admin-path-denied.txt', HTTP, b'GET /admin/users HTTP/1.1\r\nHost: backend\r\n\r\n')
    seed('http-keepalive-two-requests.txt', HTTP, b'GET /api/a HTTP/1.1\r\nHost: backend\r\n\r\n'
         b'GET /old/b HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n')
    seed('http-chunked-in-pieces.txt', HTTP, b'PUT /api/x HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n'
         + SEPARATOR + b'5\r\nhello\r\n' + SEPARATOR + b'0\r\n\r\n')
    seed('http-bad-request-line.txt', HTTP, b'hello there\r\n\r\n')
    seed('detect-http1.txt', UNDECLARED, b'GET / HTTP/1.1\r\nHost: backend:9000\r\n\r\n')
    seed('detect-delete.txt', UNDECLARED, b'DELETE /api/1 HTTP/1.1\r\nHost: backend:9000\r\n\r\n')
    seed('detect-opaque-tls.bin', UNDECLARED, b'\x16\x03\x01\x00\x2a\x01\x00\x00\x26\x03\x03' + bytes(32))
    seed('detect-nothing.bin', UNDECLARED, b'')
    seed('tcp-declared.bin', TCP, b'\x00\x00\x00\x08\x04\xd2\x16\x2f')  # a PostgreSQL SSLRequest
    seed('not-served.txt', NOT_SERVED, b'GET / HTTP/1.1\r\n\r\n')
    seed('half-close-get.txt', HTTP | HALF_CLOSE, b'GET /api/items HTTP/1.1\r\nHost: backend\r\n\r\n')
    seed('half-close-delete-http10.txt', HTTP | HALF_CLOSE, b'DELETE /api/items/7 HTTP/1.0\r\n\r\n')
    seed('half-close-detect.txt', UNDECLARED | HALF_CLOSE, b'GET /old/x HTTP/1.1\r\nHost: backend:9000\r\n\r\n')
    # HTTP/2 in the stream (prior knowledge): a GET, a DELETE, a redirect.
    def request(stream, method, path, extra=()):
        block = (literal(':method', method) + literal(':scheme', 'http') + literal(':path', path)
                 + literal(':authority', 'backend.shop.svc.cluster.local'))
        for name, value in extra:
            block += literal(name, value)
        return frame(HEADERS, END_HEADERS | END_STREAM, stream, block)
    inner = (PREFACE + settings([(0x2, 0)])
             + request(1, 'GET', '/api/items', [('user-agent', 'grpc-go/1.60')])
             + request(3, 'DELETE', '/api/items/1') + request(5, 'GET', '/old/x') + SETTINGS_ACK)
    seed('http2-prior-knowledge.bin', HTTP, inner)
    seed('detect-http2.bin', UNDECLARED, inner)


if __name__ == '__main__':
    hbone_seeds()
    waypoint_seeds()
