#!/usr/bin/env python3
# A beacon provider that signs its requests (docs/PROTOCOL.md §8), standard library only. Run:
# BEACON_KEY_FILE=web.key BEACON_REGISTRY=127.0.0.1:8601 examples/signed_provider.py SERVICE PORT [TTL_MS]
import base64, hashlib, hmac, json, os, signal, socket, sys, time
host, port = os.environ.get("BEACON_REGISTRY", "127.0.0.1:8601").rsplit(":", 1)
name, secret = open(os.environ["BEACON_KEY_FILE"]).read().split()[:2]  # a `beacon keygen` line
service, ttl = sys.argv[1], int(sys.argv[3]) if len(sys.argv) > 3 else 10000  # ttl: lease in ms
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sock.settimeout(1); ts = 0
def call(**request):  # sign the JSON with key and ts in it, then add "sig" as the last member
    global ts; ts = max(int(time.time() * 1000), ts + 1)  # every request newer than the last
    body = json.dumps(dict(request, service=service, key=name, ts=ts), separators=(",", ":")).encode()
    sig = base64.b64encode(hmac.new(base64.b64decode(secret), body, hashlib.sha256).digest())
    sock.sendto(body[:-1] + b',"sig":"' + sig + b'"}', (host, int(port)))
    try: reply = json.loads(sock.recv(65535))
    except OSError: return {}  # timeout, or registry unreachable: the next beat tries again
    if reply.get("error") in ("unauthorized", "bad_signature", "forbidden", "clock_skew"):
        sys.exit(f"beacon refused: {reply['message']} ({reply['error']})")  # retrying won't help
    return reply
def stop(*_): me and call(op="deregister", id=me); sys.exit(0)  # SIGTERM: leave DNS at once
me = None; signal.signal(signal.SIGTERM, stop); signal.signal(signal.SIGINT, stop)
while True:  # register at start, and again whenever a heartbeat is answered "unknown_instance"
    if me is None or call(op="heartbeat", id=me).get("error") == "unknown_instance":
        me = call(op="register", port=int(sys.argv[2]), ttl_ms=ttl).get("instance", {}).get("id")
    time.sleep(ttl / 3000)  # heartbeat every ttl/3, so two can be lost before the lease runs out
