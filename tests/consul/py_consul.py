"""Consul's Python client (py-consul, from PyPI) against beacon's HTTP listener, as a discovery
consumer uses it. Run by tests/it/http.rs: `python3 py_consul.py HOST PORT`, then it reads
commands on standard input and answers on standard output, one JSON line each:

  services                 -> {"index": I, "services": {...}}      catalog.services()
  health SERVICE [TAG]     -> {"index": I, "ids": [...]}           health.service(passing=True)
  block SERVICE INDEX      -> {"index": I, "ids": [...]}           the same, blocking on INDEX, wait 10s
"""
import json
import sys

import consul

host, port = sys.argv[1], int(sys.argv[2])
client = consul.Consul(host=host, port=port)
for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    if words[0] == "services":
        index, services = client.catalog.services()
        print(json.dumps({"index": int(index), "services": services}), flush=True)
    elif words[0] == "health":
        tag = words[2] if len(words) > 2 else None
        index, entries = client.health.service(words[1], passing=True, tag=tag)
        ids = sorted(e["Service"]["ID"] for e in entries)
        print(json.dumps({"index": int(index), "ids": ids}), flush=True)
    elif words[0] == "block":
        index, entries = client.health.service(words[1], passing=True, index=words[2], wait="10s")
        ids = sorted(e["Service"]["ID"] for e in entries)
        print(json.dumps({"index": int(index), "ids": ids}), flush=True)
