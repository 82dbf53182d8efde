#!/usr/bin/env python3
"""Registers the data set of ../shared/bench/gen-zone.py in a beacon registry, through its own
protocol (UDP, one request at a time, each reply checked): service sN, id iI,
10.(N>>8).(N&255).(I+1), port 8000+I, weight 1 -- the names and records gen-zone.py writes for
NSD and Knot.

    python3 bench/register.py PORT [SERVICES=100] [INSTANCES=10]
"""
import json
import socket
import sys

port = int(sys.argv[1])
services = int(sys.argv[2]) if len(sys.argv) > 2 else 100
instances = int(sys.argv[3]) if len(sys.argv) > 3 else 10
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
for n in range(services):
    for i in range(instances):
        req = {"op": "register", "service": f"s{n}", "id": f"i{i}", "port": 8000 + i,
               "address": f"10.{(n >> 8) & 255}.{n & 255}.{i + 1}", "ttl_ms": 3600000}
        s.sendto(json.dumps(req).encode(), ("127.0.0.1", port))
        reply = json.loads(s.recv(65535))
        assert reply["ok"], reply
