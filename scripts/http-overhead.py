#!/usr/bin/env python3
"""The HTTP path's overhead over the Unix socket for a short request, on a running daemon.

Usage: scripts/http-overhead.py SOCKET_PATH HTTP_PORT [RUNS]

Interleaves the same greedy streamed request (max_tokens 8) over the socket's JSON lines and
over POST /v1/chat/completions (SSE), and prints the median time to first token and total of
each, and their difference. Python's standard library only; loopback only.
"""

import http.client
import json
import socket
import statistics
import sys
import time

sock_path, port = sys.argv[1], int(sys.argv[2])
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 50
messages = [{"role": "user", "content": "Hello there"}]


def over_socket(conn, reader, i):
    start = time.perf_counter()
    request = {"id": f"r{i}", "messages": messages, "max_tokens": 8, "temperature": 0}
    conn.sendall((json.dumps(request) + "\n").encode())
    first = None
    for line in reader:
        event = json.loads(line)
        if "token" in event and first is None:
            first = time.perf_counter() - start
        if event.get("done") or "error" in event:
            assert event.get("done"), event
            return first, time.perf_counter() - start


def over_http(i):
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port)
    body = {"messages": messages, "max_tokens": 8, "temperature": 0, "stream": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    first = None
    for line in response:
        if line.startswith(b"data: {") and first is None:
            first = time.perf_counter() - start
        if line.strip() == b"data: [DONE]":
            break
    total = time.perf_counter() - start
    conn.close()
    return first, total


conn = socket.socket(socket.AF_UNIX)
conn.connect(sock_path)
reader = conn.makefile("r")
results = {"socket": [], "http": []}
for i in range(runs + 2):
    # Which goes first alternates, so that neither always follows the other.
    if i % 2:
        s, h = over_socket(conn, reader, i), over_http(i)
    else:
        h, s = over_http(i), over_socket(conn, reader, i)
    if i >= 2:  # the first runs warm the prefix cache and the allocator
        results["socket"].append(s)
        results["http"].append(h)
ms = lambda xs: statistics.median(xs) * 1e3
for name, rs in results.items():
    print(f"{name:6}: ttft {ms([r[0] for r in rs]):6.2f} ms, total {ms([r[1] for r in rs]):6.2f} ms"
          f" (median of {len(rs)})")
for k, label in [(0, "ttft"), (1, "total")]:
    s, h = ms([r[k] for r in results["socket"]]), ms([r[k] for r in results["http"]])
    print(f"http - socket {label}: {h - s:+.2f} ms ({h / s:.2f}x)")
