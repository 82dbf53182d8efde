"""dnspython's side of tests/it/update.rs: sends one DNS UPDATE and prints, as JSON, the request's
and the reply's bytes (hex) and what dnspython made of the reply's TSIG. The Rust test reads the
rcode, the TSIG error, the EDE and the Update Lease option from the bytes itself.

    python3 update.py '{"port": 5353, "zone": "service.local", "key": ["web-key", "SECRET"],
                        "add": [["web-1._web._tcp", 60, "SRV", "0 5 8080 host-1"]],
                        "delete": [["web-1._web._tcp"]], "lease": 60, "clock": -600,
                        "tcp": false, "replay": "HEX"}'

`key` signs with hmac-sha256; `lease` adds the Update Lease option (RFC 9664); `clock` shifts
the signing time by that many seconds (a BADTIME); `replay` sends those bytes instead.
"""

import binascii
import json
import socket
import struct
import sys
import time

import dns.edns
import dns.message
import dns.query
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

args = json.loads(sys.argv[1])
port = args["port"]
server = args.get("server", "127.0.0.1")
keyring = None
keyname = None
if args.get("key"):
    keyname, secret = args["key"]
    keyring = dns.tsigkeyring.from_text({keyname: secret})

if args.get("clock"):
    real = time.time
    time.time = lambda: real() + args["clock"]

if args.get("replay"):
    wire = binascii.unhexlify(args["replay"])
    request = None
else:
    request = dns.update.UpdateMessage(
        args.get("zone", "service.local"),
        keyring=keyring,
        keyname=keyname,
        keyalgorithm=dns.tsig.HMAC_SHA256,
    )
    for owner, ttl, rtype, rdata in args.get("add", []):
        request.add(owner, ttl, rtype, rdata)
    for item in args.get("delete", []):
        request.delete(*item)
    for owner, rtype in args.get("absent", []):
        request.absent(owner, rtype)
    for owner, rtype in args.get("present", []):
        request.present(owner, rtype)
    if args.get("lease") is not None:
        request.use_edns(0, options=[dns.edns.GenericOption(2, struct.pack("!I", args["lease"]))])
    wire = request.to_wire()

if args.get("tcp"):
    with socket.create_connection((server, port), timeout=5) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        length = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
        reply = s.recv(length, socket.MSG_WAITALL)
else:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(wire, (server, port))
        reply, _ = s.recvfrom(65535)

validated = "unsigned"
if request is not None and keyring is not None:
    try:
        dns.message.from_wire(reply, keyring=keyring, request_mac=request.mac)
        validated = "ok"
    except Exception as e:  # the class names the TSIG failure: PeerBadKey, PeerBadTime, ...
        validated = type(e).__name__

print(json.dumps({
    "request": binascii.hexlify(wire).decode(),
    "reply": binascii.hexlify(reply).decode(),
    "validated": validated,
}))
