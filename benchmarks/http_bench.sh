#!/usr/bin/env bash
# Static files over HTTP/1.1: socklab (each engine asked for) beside python -m http.server, aiohttp's
# static handler and nginx with one worker, all measured by wrk in one run.
#
#   benchmarks/http_bench.sh                                   # the full run: 10 s per server and file
#   DURATION=2 ENGINES=epoll benchmarks/http_bench.sh          # a short smoke run
#
# Every server is pinned to core 0 and wrk (one thread, 50 connections) to core 1; files are a
# 1 KiB and a 1 MiB random file in a temporary directory. Compare ratios measured in one run, on
# an otherwise idle machine. Prints a Markdown table (also saved under benchmarks/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
ENGINES=${ENGINES:-"epoll uvloop"}
PEERS=${PEERS:-"http.server aiohttp nginx"}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-benchmarks/results/http-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
WORK=$(mktemp -d)
SITE="$WORK/site"
mkdir -p "$SITE"
head -c 1024 /dev/urandom > "$SITE/1k.bin"
head -c 1048576 /dev/urandom > "$SITE/1m.bin"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# start_server NAME CMD...: runs CMD pinned to SERVER_CPU, stdout to $WORK/NAME.out; sets SERVER_PID
start_server() {
    local name=$1; shift
    taskset -c "$SERVER_CPU" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" &
    SERVER_PID=$!
}
# wait_line NAME REGEX: the readiness line, printed by the server itself (up to 15 s)
wait_line() {
    local i
    for i in $(seq 150); do
        if grep -Eo "$2" "$WORK/$1.out" > "$WORK/$1.port" 2>/dev/null; then return 0; fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$WORK/$1.err" >&2; return 1; fi
        sleep 0.1
    done
    echo "no readiness line from $1" >&2; return 1
}
stop_server() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; }

# measure NAME PORT: wrk on both files, one line of JSON each into $OUT/results.jsonl
measure() {
    local name=$1 port=$2 file out
    for file in 1k.bin 1m.bin; do
        out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/$file")
        echo "$out" > "$OUT/${name// /_}-$file.txt"
        "$PY" - "$name" "$file" "$OUT/results.jsonl" "$OUT/${name// /_}-$file.txt" <<'PYEOF'
import json, re, sys
name, file, path, wrk_out = sys.argv[1:5]
text = open(wrk_out).read()
def num(rx, default=0.0):
    m = re.search(rx, text)
    return float(m.group(1)) if m else default
def ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text)
transfer = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", text)
mb = float(transfer.group(1)) * {"B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}[transfer.group(2)] if transfer else 0
errors = re.search(r"Socket errors: (.*)", text)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
rec = {"server": name, "file": file, "rps": num(r"Requests/sec:\s+([\d.]+)"), "mb_s": mb,
       "p99_ms": ms(*p99.groups()) if p99 else None, "errors": errors.group(1) if errors else "",
       "non2xx": int(non2xx.group(1)) if non2xx else 0}
with open(path, "a") as f:
    f.write(json.dumps(rec) + "\n")
print(f"  {name:22} {file:7} {rec['rps']:>10,.0f} req/s {mb:>9,.1f} MB/s  p99 {rec['p99_ms']} ms {rec['errors']}")
PYEOF
    done
}

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), duration ${DURATION}s x ${CONNS} connections"
: > "$OUT/results.jsonl"

for engine in $ENGINES; do
    start_server "socklab-$engine" "$PY" -m socklab http serve "$SITE" --port 0 --engine "$engine" --log-format none \
        --max-connections 10000
    wait_line "socklab-$engine" '127\.0\.0\.1:[0-9]+'
    measure "socklab $engine" "$(cut -d: -f2 "$WORK/socklab-$engine.port")"
    stop_server
done

for peer in $PEERS; do
    case $peer in
    http.server)
        start_server httpserver "$PY" -u -m http.server 0 --bind 127.0.0.1 --directory "$SITE"
        wait_line httpserver 'port [0-9]+'
        measure "python -m http.server" "$(cut -d' ' -f2 "$WORK/httpserver.port")"
        stop_server ;;
    aiohttp)
        start_server aiohttp "$PY" benchmarks/http_aiohttp_static.py "$SITE"
        wait_line aiohttp 'ready [0-9]+'
        measure "aiohttp static" "$(cut -d' ' -f2 "$WORK/aiohttp.port")"
        stop_server ;;
    nginx)
        # nginx cannot report a port-0 bind: ask the kernel for a free port, and retry if it was taken.
        mkdir -p "$WORK/nginx/logs"
        for attempt in 1 2 3; do
            port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
            cat > "$WORK/nginx/nginx.conf" <<NGINX
user root;
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    default_type application/octet-stream;
    server { listen 127.0.0.1:$port; root $SITE; }
}
NGINX
            start_server nginx nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
            if curl -s -o /dev/null --retry 30 --retry-connrefused --retry-delay 0 --retry-max-time 10 \
                    "http://127.0.0.1:$port/1k.bin" && kill -0 "$SERVER_PID" 2>/dev/null; then
                measure "nginx (1 worker)" "$port"
                stop_server
                break
            fi
            stop_server
        done ;;
    esac
done

"$PY" - "$OUT/results.jsonl" <<'PYEOF' | tee "$OUT/table.md"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
by = {(r["server"], r["file"]): r for r in rows}
servers = list(dict.fromkeys(r["server"] for r in rows))
nginx = next((s for s in servers if s.startswith("nginx")), None)
print("| server | 1 KiB req/s | vs nginx | 1 KiB p99 ms | 1 MiB MB/s | vs nginx | 1 MiB p99 ms | errors |")
print("|---|---|---|---|---|---|---|---|")
for s in servers:
    a, b = by.get((s, "1k.bin")), by.get((s, "1m.bin"))
    if not a or not b:
        continue
    na, nb = (by.get((nginx, "1k.bin")), by.get((nginx, "1m.bin"))) if nginx else (None, None)
    ra = f"{a['rps'] / na['rps']:.2f}" if na and na["rps"] else "-"
    rb = f"{b['mb_s'] / nb['mb_s']:.2f}" if nb and nb["mb_s"] else "-"
    err = "; ".join(x for x in (a["errors"], b["errors"]) if x) or (f"{a['non2xx'] + b['non2xx']} non-2xx"
                                                                   if a["non2xx"] + b["non2xx"] else "")
    print(f"| {s} | {a['rps']:,.0f} | {ra} | {a['p99_ms']} | {b['mb_s']:,.0f} | {rb} | {b['p99_ms']} | {err} |")
PYEOF
echo "== results in $OUT"
