#!/usr/bin/env bash
# The test command of the README, for a machine with nothing but cargo (Debian or Ubuntu):
#
#   bash tests/run.sh [ARGS...]
#
# installs the Debian packages of the commands the tests run that are not on the PATH, with
# apt-get (as root, or through sudo), then runs `cargo test --features etcd ARGS...`. The etcd
# client's protoc comes from crates.io (tools/protoc), so nothing else is installed. A test whose
# tool is missing fails, naming its package; none skips. .ci/run ends with this command.
set -euo pipefail
cd "$(dirname "$0")/.."
# ip lives in /usr/sbin, which the PATH of a user other than root often leaves out.
export PATH=$PATH:/usr/sbin:/sbin

# Each command the tests run, and the package that has it.
tools=(
  dig:bind9-dnsutils  # DNS answers checked with dig; nsupdate sends DNS UPDATEs
  knsupdate:knot-dnsutils # Knot's UPDATE client
  etcd:etcd-server    # cluster tests and the etcd client's unit tests start real members
  etcdctl:etcd-client # cluster tests read and change etcd directly
  python3:python3     # the Python example providers
  openssl:openssl     # the signing shell provider; the TLS cluster test's certificates
  ip:iproute2         # protected mode's network namespace
  kill:procps         # SIGHUP sent as an operator would
  unshare:util-linux  # the system-resolver test's mount namespace...
  mount:mount         # ...its bind-mounted resolv.conf...
  getent:libc-bin     # ...and glibc's resolver
  curl:curl           # the curl examples of docs/HTTP.md
  chromium:chromium   # the web view, rendered headless
  node:nodejs         # drives Chromium; Consul's Node.js client
  npm:npm             # installs Consul's Node.js client
  pip3:python3-pip    # installs Consul's Python client
)

missing_packages() {
  local tool
  for tool in "${tools[@]}"; do
    command -v "${tool%%:*}" >/dev/null || echo "${tool#*:}"
  done
  # dnspython, a module rather than a command: the UPDATE tests (tests/it/update.py) run it
  # with Debian's /usr/bin/python3.
  /usr/bin/python3 -c 'import dns.update' 2>/dev/null || echo python3-dnspython
}

mapfile -t missing < <(missing_packages)
if ((${#missing[@]})); then
  if ((EUID == 0)); then
    as_root=()
  elif command -v sudo >/dev/null; then
    as_root=(sudo)
  else
    echo "tests/run.sh: the tests need ${missing[*]}; run this as root, or with sudo installed," \
      "to install them with apt-get" >&2
    exit 1
  fi
  echo "tests/run.sh: installing ${missing[*]} with apt-get" >&2
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  mapfile -t still < <(missing_packages)
  if ((${#still[@]})); then
    echo "tests/run.sh: installed, but their commands are still not on the PATH: ${still[*]}" >&2
    exit 1
  fi
fi

# Consul's client libraries, from their registries, for the HTTP tests (tests/consul/).
if ! python3 -c 'import consul' 2>/dev/null; then
  echo "tests/run.sh: installing py-consul with pip" >&2
  pip3 install -q py-consul 2>/dev/null || pip3 install -q --break-system-packages py-consul
fi
if [ ! -d tests/consul/node_modules/consul ]; then
  echo "tests/run.sh: installing Consul's Node.js client with npm" >&2
  npm install --prefix tests/consul --no-audit --no-fund --silent
fi

if ((EUID != 0)); then
  echo "tests/run.sh: not root: the protected-mode and system-resolver tests need root" \
    "(a network namespace, port 53) and will fail" >&2
fi
exec cargo test --features etcd "$@"
