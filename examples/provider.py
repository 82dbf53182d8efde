#!/usr/bin/env python3
# A beacon provider in plain Python (standard library only), speaking the raw UDP protocol of
# docs/PROTOCOL.md. Run: BEACON_REGISTRY=127.0.0.1:8601 examples/provider.py SERVICE PORT [TTL_MS]
import json, os, signal, socket, sys, time
host, port = os.environ.get("BEACON_REGISTRY", "127.0.0.1:8601").rsplit(":", 1)
service, ttl = sys.argv[1], int(sys.argv[3]) if len(sys.argv) > 3 else 10000  # ttl: lease in ms
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sock.settimeout(1)
def call(**request):  # one JSON object per datagram, one reply datagram ({} when it was lost)
    # Padded with spaces (JSON whitespace) to 128 bytes: over UDP the registry replies with at
    # most 3x the request's bytes, and a register's reply (~200 bytes) repeats the instance.
    sock.sendto(json.dumps(dict(request, service=service)).ljust(128).encode(), (host, int(port)))
    try: return json.loads(sock.recv(65535))
    except OSError: return {}  # timeout, or registry unreachable: the next beat tries again
def stop(*_):  # SIGTERM/SIGINT: deregister, so DNS drops us now, not when the lease runs out
    if me: call(op="deregister", id=me)
    sys.exit(0)
me = None; signal.signal(signal.SIGTERM, stop); signal.signal(signal.SIGINT, stop)
while True:  # register at start, and again whenever a heartbeat is answered "unknown_instance"
    if me is None or call(op="heartbeat", id=me).get("error") == "unknown_instance":
        me = call(op="register", port=int(sys.argv[2]), ttl_ms=ttl).get("instance", {}).get("id")
    time.sleep(ttl / 3000)  # heartbeat every ttl/3, so two can be lost before the lease runs out
