#!/usr/bin/env bash
# Shell jobs end to end: `scripts/bench-shell-jobs.sh BINARY N` starts `BINARY server` on SQLite and one
# `BINARY agent --slots 16`, posts N `true` shell jobs in batches of 100 and prints the wall time
# until nothing is queued or running. Used for the fencing figures in BENCHMARKS.md until
# `orchion bench` has a shell-jobs bench.
set -u
BIN=$1; N=$2
D=$(mktemp -d); HP=$(( 20000 + RANDOM % 20000 )); GP=$(( HP + 1 ))
$BIN server --http-port $HP --port $GP --metrics-port 0 --data-dir $D --join-token shell-bench-token-0123456789 >/dev/null 2>&1 &
S=$!
until curl -sf http://127.0.0.1:$HP/readyz >/dev/null; do sleep 0.1; done
$BIN agent --server http://127.0.0.1:$GP --join-token shell-bench-token-0123456789 --name b --slots 16 --state-dir $D/agent >/dev/null 2>&1 &
A=$!
until [ "$(curl -s http://127.0.0.1:$HP/api/v1/status | python3 -c 'import sys,json; print(json.load(sys.stdin)["nodes"].get("ready",0))')" -ge 1 ]; do sleep 0.1; done
python3 - "$HP" "$N" <<'PY'
import json,sys,time,urllib.request
hp,n=sys.argv[1],int(sys.argv[2])
job={"executor":"shell","spec":{"command":"true"}}
start=time.time()
for i in range(0,n,100):
    body=json.dumps({"jobs":[job]*min(100,n-i)}).encode()
    req=urllib.request.Request(f"http://127.0.0.1:{hp}/api/v1/jobs/batch",data=body,headers={"Content-Type":"application/json"})
    urllib.request.urlopen(req).read()
while True:
    s=json.load(urllib.request.urlopen(f"http://127.0.0.1:{hp}/api/v1/status"))
    if s["tasks"]["queued"]+s["tasks"]["running"]==0: break
    time.sleep(0.05)
el=time.time()-start
print(f"{n} shell jobs in {el:.2f} s, {n/el:.0f} jobs/s")
PY
kill $A $S 2>/dev/null; wait $A $S 2>/dev/null; rm -rf $D
