#!/usr/bin/env python3
"""Durable single node: registrations/s with and without --data-dir, and restart-to-answering
after kill -9 with N instances on disk. Run: cargo build --release && python3 bench/restart.py
Knobs: N (default 100000); BEACON, the binary (default target/release/beacon). Also reports the
durable server's resident memory per instance after registering and after the restart.
Loopback only."""
import json, os, signal, socket, subprocess, sys, tempfile, time

BIN = os.environ.get("BEACON") or os.path.join(os.path.dirname(__file__), "..", "target", "release", "beacon")
N = int(os.environ.get("N", "100000"))

def start(args):
    p = subprocess.Popen([BIN, "serve", "--resolv-conf", "/dev/null", "--log-level", "warn"] + args,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    f = dict(w.split("=", 1) for w in line.split() if "=" in w)
    host, port = f["registry"].rsplit(":", 1)
    dhost, dport = f["dns"].rsplit(":", 1)
    return p, (host, int(port)), (dhost, int(dport)), f

def register_all(registry, n):
    s = socket.create_connection(registry)
    t = time.monotonic()
    chunk = 2000
    for base in range(0, n, chunk):
        lines = "".join(json.dumps({"op": "register", "service": f"s{i % 1000}", "id": f"i{i}",
                                    "port": 80, "address": "10.0.0.1", "ttl_ms": 3600000}) + "\n"
                        for i in range(base, min(n, base + chunk)))
        s.sendall(lines.encode())
        want, got = min(n, base + chunk) - base, b""
        while got.count(b"\n") < want:
            got += s.recv(1 << 20)
        assert got.count(b'"ok":true') == want, got[:200]
    return time.monotonic() - t

def rss_kib(p, field="VmRSS"):
    with open(f"/proc/{p.pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))

def dns_answers(dns, name):
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"".join(
        bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00\x00\x01\x00\x01"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.05)
    try:
        s.sendto(q, dns); r = s.recv(4096)
        return (r[3] & 0xF) == 0 and int.from_bytes(r[6:8], "big") > 0
    except OSError:
        return False

def main():
    print(f"machine: nproc={os.cpu_count()}; N={N}; 1000 services; registers pipelined over one TCP connection")
    servers = []  # killed on every exit path, so a failure leaves nothing running
    def serve(args, dns="127.0.0.1:0", listen="127.0.0.1:0"):
        p, reg, dns, fields = start(["--dns", dns, "--listen", listen] + args)
        servers.append(p)
        return p, reg, dns, fields
    try:
        p, reg, _, _ = serve([])
        mem = register_all(reg, N); p.kill(); p.wait()
        print(f"in memory:   {N} registrations in {mem:.2f} s = {N / mem:.0f}/s")
        with tempfile.TemporaryDirectory() as d:
            p, reg, _, fields = serve(["--data-dir", d])
            empty = rss_kib(p)
            dur = register_all(reg, N)
            registered = rss_kib(p)
            print(f"--data-dir:  {N} registrations in {dur:.2f} s = {N / dur:.0f}/s (each acknowledged only once on disk)")
            p.send_signal(signal.SIGKILL); p.wait()
            size = os.path.getsize(os.path.join(d, "beacon.redb"))
            t = time.monotonic()
            p, _, dns, _ = serve(["--data-dir", d], dns=fields["dns"], listen=fields["registry"])
            name = f"s{(N - 1) % 1000}.service.local"
            while not dns_answers(dns, name):
                assert time.monotonic() - t < 60, f"{name} not answered 60 s after the restart"
            took = time.monotonic() - t
            print(f"kill -9 → restart → {name} answered: {took * 1000:.0f} ms with {N} instances on disk ({size / N:.0f} B/instance in beacon.redb)")
            time.sleep(1)
            restarted, peak = rss_kib(p), rss_kib(p, "VmHWM")
            per = lambda kib: (kib - empty) * 1024 / N
            print(f"memory (VmRSS): {empty / 1024:.1f} MiB empty; {registered / 1024:.1f} MiB after registering ({per(registered):.0f} B/instance); "
                  f"{restarted / 1024:.1f} MiB 1 s after the restart answered ({per(restarted):.0f} B/instance), "
                  f"its peak {peak / 1024:.1f} MiB")
    finally:
        for p in servers:
            p.kill(); p.wait()

main()
