#!/usr/bin/env bash
# A beacon provider in bash, speaking the raw UDP protocol of docs/PROTOCOL.md through /dev/udp.
# Run: BEACON_REGISTRY=127.0.0.1:8601 examples/provider.sh SERVICE PORT [TTL_MS]
registry=${BEACON_REGISTRY:-127.0.0.1:8601} service=$1 port=$2 ttl=${3:-10000} id=
printf -v beat '%d.%03d' $((ttl / 3000)) $((ttl / 3 % 1000))  # heartbeat every ttl/3 (seconds)
exec 3<>"/dev/udp/${registry%:*}/${registry##*:}"  # fd 3: a UDP socket to the registry
call() {  # send {"op":OP,"service":...,MEMBERS} as one datagram; reply = the reply datagram, or ""
  printf -v request '{"op":"%s","service":"%s"%s}' "$1" "$service" "$2"
  printf '%-128s' "$request" >&3  # padded with spaces (JSON whitespace): replies are <= 3x requests
  reply=$(timeout 1 dd bs=64k count=1 <&3 2>/dev/null); }  # bash's read would take 1 byte of it
trap '[ -n "$id" ] && call deregister ",\"id\":\"$id\""; kill $! 2>/dev/null; exit 0' TERM INT
while :; do  # register at start, and again whenever a heartbeat is answered "unknown_instance"
  if [ -n "$id" ]; then call heartbeat ",\"id\":\"$id\""
    [[ $reply == *'"error":"unknown_instance"'* ]] && id=; fi
  if [ -z "$id" ]; then call register ",\"port\":$port,\"ttl_ms\":$ttl"
    [[ $reply =~ \"id\":\"([^\"]+)\" ]] && id=${BASH_REMATCH[1]}; fi  # the id the registry gave us
  sleep "$beat" & wait $!  # a lost reply is simply retried on the next beat
done
