#!/usr/bin/env bash
# A beacon provider in bash that signs its requests with openssl (docs/PROTOCOL.md §8). Run:
# BEACON_KEY_FILE=web.key BEACON_REGISTRY=127.0.0.1:8601 examples/signed_provider.sh SERVICE PORT [TTL_MS]
registry=${BEACON_REGISTRY:-127.0.0.1:8601} service=$1 port=$2 ttl=${3:-10000} id= last=0
read -r name secret _ < "$BEACON_KEY_FILE"  # a `beacon keygen` line: NAME SECRET [SERVICES]
hexkey=$(printf %s "$secret" | base64 -d | od -An -vtx1 | tr -d ' \n')  # the secret's bytes, in hex
printf -v beat '%d.%03d' $((ttl / 3000)) $((ttl / 3 % 1000))  # heartbeat every ttl/3 (seconds)
exec 3<>"/dev/udp/${registry%:*}/${registry##*:}"  # fd 3: a UDP socket to the registry
call() {  # sign {"op":OP,"service":...,MEMBERS,"key":...,"ts":...}, add "sig" last, send; reply=
  ts=$(date +%s%3N); ((ts > last)) || ts=$((last + 1)); last=$ts  # every request newer than the last
  body=$(printf '{"op":"%s","service":"%s"%s,"key":"%s","ts":%s}' "$1" "$service" "$2" "$name" "$ts")
  sig=$(printf %s "$body" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$hexkey" -binary | base64)
  printf '%s,"sig":"%s"}' "${body%\}}" "$sig" >&3
  reply=$(timeout 1 dd bs=64k count=1 <&3 2>/dev/null)  # bash's read would take 1 byte of it
  if [[ $reply =~ \"error\":\"(unauthorized|bad_signature|forbidden|clock_skew)\" ]]; then
    echo "beacon refused: $reply" >&2; exit 1; fi; }  # retrying would not help
trap '[ -n "$id" ] && call deregister ",\"id\":\"$id\""; kill $! 2>/dev/null; exit 0' TERM INT
while :; do  # register at start, and again whenever a heartbeat is answered "unknown_instance"
  if [ -n "$id" ]; then call heartbeat ",\"id\":\"$id\""
    [[ $reply == *'"error":"unknown_instance"'* ]] && id=; fi
  if [ -z "$id" ]; then call register ",\"port\":$port,\"ttl_ms\":$ttl"
    [[ $reply =~ \"id\":\"([^\"]+)\" ]] && id=${BASH_REMATCH[1]}; fi  # the id the registry gave us
  sleep "$beat" & wait $!  # a lost reply is simply retried on the next beat
done
