#!/usr/bin/env bash
# mailveil vs nginx proxy_cache on cache hits, side by side in one run.
#
#   bench/load.sh [--quick]        # from the repository root (or anywhere: it cd's there)
#
# Needs: cargo, python3, curl, wrk, nginx (nginx-light is enough). On Debian:
#   apt-get install -y wrk nginx-light
# It installs nothing itself.
#
# What it does:
#   1. cargo build --release (binary: target/release/mailveil).
#   2. In a temp dir: writes a ~2 KB GIF and a ~40 KB PNG (bench/make_images.py).
#   3. Starts one nginx (its own config file, never the system's) with two server blocks:
#        upstream  127.0.0.1:PORT_UP   static files
#        cache     127.0.0.1:PORT_NGX  proxy_cache in front of the upstream
#      and `mailveil serve` on 127.0.0.1:PORT_MV with the same upstream
#      (fetch.allow_networks = ["127.0.0.1/32"]).
#   4. Warms both caches, checks that they answer from cache (nginx X-Cache-Status: HIT,
#      mailveil's mailveil_cache_hits_total{tier="memory"} grows).
#   5. For each image x connections (1 16 64 256) runs wrk against mailveil, then nginx
#      (alternating, so drift hits both), and prints req/s, the ratio and p99 latency.
#      Then the same at equal offered load: 16 and 48 connections that each wait 1 ms
#      between requests (bench/pace.lua; about 10k and 20k req/s, the second close to
#      nginx's ceiling), so p99 is compared at the same request rate.
#   6. Reports mailveil's RSS (idle, warm, after the run) and nginx's.
#   With PIN=1 the servers run on one CPU and wrk on another (taskset), so the load
#   generator does not take CPU from the server it measures.
#
# Environment: DURATION (seconds per wrk step, default 8; --quick sets 2), CONNS
# (default "1 16 64 256"), THREADS (wrk threads, default 2), REPEAT (runs per cell and
# system, default 1; with more, the table shows the median req/s and the median p99, each
# taken on its own), PACED_CONNS (connection counts for the equal-load steps, default
# "16 48", none with PIN=1; empty skips them), PACE_MS (think time per connection in
# those steps, default 1), PIN=1 (servers on the CPUs listed in PIN_SERVER, default 0,
# with nginx's worker_processes set to their count; wrk on PIN_WRK, default 1, with one
# thread per CPU), KEEP=1 keeps the temp dir.
# Everything listens on 127.0.0.1 only; ports are picked free at start.
# Default run: 24 steps x 8 s, about 3.5 minutes plus the build.
set -euo pipefail

DURATION=${DURATION:-8}
REPEAT=${REPEAT:-1}
if [[ ${PIN:-0} == 1 ]]; then
    # Pinned, wrk keeps off the servers' CPUs anyway, and with one wrk thread per CPU the
    # 1 ms pacing gave erratic figures for both servers: no equal-load steps unless asked.
    PACED_CONNS=${PACED_CONNS-""}
else
    PACED_CONNS=${PACED_CONNS-"16 48"}
fi
export PACE_MS=${PACE_MS:-1}
CONNS=${CONNS:-"1 16 64 256"}
THREADS=${THREADS:-2}
# PIN=1: servers on the CPUs in PIN_SERVER (default 0), wrk on PIN_WRK (default 1), so the
# load generator does not compete with the server it measures.
PIN=${PIN:-0}
PIN_SERVER=${PIN_SERVER:-0}
PIN_WRK=${PIN_WRK:-1}
SERVER_RUN=()
WRK_RUN=()
NGX_WORKERS=auto
if [[ $PIN == 1 ]]; then
    command -v taskset >/dev/null || { echo "PIN=1 needs taskset (util-linux)" >&2; exit 1; }
    SERVER_RUN=(taskset -c "$PIN_SERVER")
    WRK_RUN=(taskset -c "$PIN_WRK")
    # nginx's "auto" counts the machine's CPUs, not the ones it may run on.
    NGX_WORKERS=$("${SERVER_RUN[@]}" nproc)
    THREADS=$("${WRK_RUN[@]}" nproc)
fi
for arg in "$@"; do
    case $arg in
        --quick) DURATION=2 ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

for tool in cargo python3 curl wrk nginx; do
    command -v "$tool" >/dev/null || {
        echo "missing: $tool (Debian: apt-get install -y wrk nginx-light curl python3)" >&2
        exit 1
    }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mailveil-load.XXXXXX")
MV_PID=""
NGX_PID=""
cleanup() {
    local rc=$?
    set +e
    if [[ -n $MV_PID ]] && kill -0 "$MV_PID" 2>/dev/null; then
        kill -TERM "$MV_PID"
        for _ in $(seq 50); do kill -0 "$MV_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$MV_PID" 2>/dev/null
    fi
    if [[ -n $NGX_PID ]] && kill -0 "$NGX_PID" 2>/dev/null; then
        kill -QUIT "$NGX_PID"   # graceful: master stops its workers
        for _ in $(seq 50); do kill -0 "$NGX_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NGX_PID" 2>/dev/null
    fi
    wait 2>/dev/null
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "load.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

log() { printf '== %s\n' "$*" >&2; }

# ---------------------------------------------------------------- build, images, ports
log "cargo build --release"
cargo build --release --quiet
MV=$ROOT/target/release/mailveil

mkdir -p "$WORK/www" "$WORK/ngx/cache" "$WORK/ngx/tmp" "$WORK/mv"
python3 "$ROOT/bench/make_images.py" "$WORK/www" >/dev/null
IMAGES=(small.gif medium.png)

read -r PORT_UP PORT_NGX PORT_MV < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)

# ---------------------------------------------------------------- nginx
NGX_USER=""
if [[ $(id -u) == 0 ]]; then
    # Workers would otherwise run as nobody and could not write the cache in $WORK.
    NGX_USER="user $(id -un) $(id -gn);"
fi
cat >"$WORK/nginx.conf" <<EOF
$NGX_USER
worker_processes $NGX_WORKERS;
daemon off;
pid $WORK/ngx/nginx.pid;
error_log $WORK/ngx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    types { image/gif gif; image/png png; }
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    # wrk holds its connections open; nginx's default (1000 requests) would make it
    # reconnect, which mailveil (hyper, no limit) never asks for.
    keepalive_requests 1000000;
    client_body_temp_path $WORK/ngx/tmp/client;
    proxy_temp_path $WORK/ngx/tmp/proxy;
    fastcgi_temp_path $WORK/ngx/tmp/fastcgi;
    uwsgi_temp_path $WORK/ngx/tmp/uwsgi;
    scgi_temp_path $WORK/ngx/tmp/scgi;
    proxy_cache_path $WORK/ngx/cache levels=1:2 keys_zone=imgs:10m max_size=1g
                     inactive=1d use_temp_path=off;

    upstream origin {
        server 127.0.0.1:$PORT_UP;
        keepalive 16;
    }

    # The origin: static files.
    server {
        listen 127.0.0.1:$PORT_UP;
        root $WORK/www;
    }

    # The caching reverse proxy compared with mailveil.
    server {
        listen 127.0.0.1:$PORT_NGX;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache imgs;
            proxy_cache_valid 200 1d;
            proxy_cache_lock on;
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
            add_header X-Cache-Status \$upstream_cache_status always;
        }
    }
}
EOF
log "nginx on 127.0.0.1:$PORT_UP (origin) and 127.0.0.1:$PORT_NGX (proxy_cache)"
nginx -t -q -c "$WORK/nginx.conf" -p "$WORK/ngx/" 2>"$WORK/ngx/test.log" || {
    cat "$WORK/ngx/test.log" >&2
    exit 1
}
"${SERVER_RUN[@]}" nginx -c "$WORK/nginx.conf" -p "$WORK/ngx/" 2>>"$WORK/ngx/error.log" &
NGX_PID=$!

# ---------------------------------------------------------------- mailveil
cat >"$WORK/mailveil.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT_MV"
public_url = "http://127.0.0.1:$PORT_MV"

[keys]
key_file = "$WORK/mv/key"

[cache]
dir = "$WORK/mv/cache"

[prefetch]
spool_dir = "$WORK/mv/spool"

[fetch]
allow_networks = ["127.0.0.1/32"]
EOF
log "mailveil on 127.0.0.1:$PORT_MV"
"$MV" --config "$WORK/mailveil.toml" check-config >/dev/null
# Under taskset tokio sizes its worker pool to the CPUs it may use.
"${SERVER_RUN[@]}" "$MV" serve --config "$WORK/mailveil.toml" 2>"$WORK/mv/serve.log" &
MV_PID=$!

wait_http() { # URL NAME PID
    for _ in $(seq 100); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || { echo "$2 exited during start-up" >&2; return 1; }
        sleep 0.1
    done
    echo "$2 did not answer $1 within 10 s" >&2
    return 1
}
wait_http "http://127.0.0.1:$PORT_MV/healthz" mailveil "$MV_PID" || { cat "$WORK/mv/serve.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$PORT_UP/small.gif" nginx "$NGX_PID" || { cat "$WORK/ngx/error.log" >&2; exit 1; }

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
ngx_workers() { pgrep -P "$NGX_PID" -f 'worker process' || true; }
ngx_workers_rss_kb() {
    local total=0 pid
    for pid in $(ngx_workers); do total=$((total + $(rss_kb "$pid"))); done
    echo "$total"
}
mb() { awk -v kb="$1" 'BEGIN {printf "%.1f MiB", kb / 1024}'; }

RSS_IDLE=$(rss_kb "$MV_PID")

# ---------------------------------------------------------------- URLs, warm-up
declare -A URL_MV URL_NGX SIZE_UP SIZE_MV SIZE_NGX
for img in "${IMAGES[@]}"; do
    URL_MV[$img]=$("$MV" sign --config "$WORK/mailveil.toml" "http://127.0.0.1:$PORT_UP/$img")
    URL_NGX[$img]="http://127.0.0.1:$PORT_NGX/$img"
    SIZE_UP[$img]=$(stat -c %s "$WORK/www/$img")
done

metric() { # NAME-WITH-LABELS: value from mailveil's /metrics, 0 when absent
    curl -fsS "http://127.0.0.1:$PORT_MV/metrics" \
        | awk -v m="$1" '$1 == m {v = $2} END {print v + 0}'
}
HITS_METRIC='mailveil_cache_hits_total{tier="memory"}'

log "warming both caches"
for img in "${IMAGES[@]}"; do
    for _ in 1 2 3 4 5; do
        curl -fsS -o /dev/null "${URL_MV[$img]}"
        curl -fsS -o /dev/null "${URL_NGX[$img]}"
    done
    hits_before=$(metric "$HITS_METRIC")
    read -r code size ctype < <(curl -sS -o /dev/null -w '%{http_code} %{size_download} %{content_type}\n' "${URL_MV[$img]}")
    hits_after=$(metric "$HITS_METRIC")
    [[ $code == 200 ]] || { echo "mailveil answered $code for $img" >&2; cat "$WORK/mv/serve.log" >&2; exit 1; }
    (( hits_after > hits_before )) || { echo "mailveil: $img was not a memory hit" >&2; exit 1; }
    SIZE_MV[$img]="$size ($ctype)"
    status=$(curl -fsS -o /dev/null -D - "${URL_NGX[$img]}" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-cache-status" {print $2}')
    [[ $status == HIT ]] || { echo "nginx: $img X-Cache-Status=$status, expected HIT" >&2; exit 1; }
    SIZE_NGX[$img]=$(curl -fsS -o /dev/null -w '%{size_download} (%{content_type})' "${URL_NGX[$img]}")
done
FETCHES_WARM=$(metric 'mailveil_upstream_fetches_total{result="ok"}')
RSS_WARM=$(rss_kb "$MV_PID")
NGX_RSS_WARM=$(ngx_workers_rss_kb)

# ---------------------------------------------------------------- the run
run_wrk() { # URL CONNS [SCRIPT] -> "req/s p99-in-us errors"
    local out rps p99 errs t=$THREADS script=()
    (( t > $2 )) && t=$2   # wrk wants at least one connection per thread
    [[ -n ${3:-} ]] && script=(-s "$3")
    out=$("${WRK_RUN[@]}" wrk -t"$t" -c"$2" -d"${DURATION}s" --latency "${script[@]}" "$1" 2>&1) || {
        echo "wrk failed: $out" >&2
        return 1
    }
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    # wrk prints e.g. "241.00us", "2.66ms", "1.02s"; keep microseconds.
    p99=$(awk '$1 == "99%" {
              v = $2 + 0
              if ($2 ~ /ms$/) v *= 1000; else if ($2 ~ /[0-9]s$/) v *= 1000000
              printf "%.0f", v }' <<<"$out")
    errs=$(awk '/Non-2xx or 3xx responses:/ {n += $NF} /Socket errors:/ {
               for (i = 4; i <= NF; i += 2) n += $i } END {print n + 0}' <<<"$out" | tr -d ',')
    printf '%s %s %s\n' "${rps:-0}" "${p99:-0}" "$errs"
}

median_of() { # "req/s p99 errors"... -> median req/s, median p99 (each on its own), summed errors
    printf '%s\n' "$@" | awk '{r[NR] = $1; p[NR] = $2; e += $3}
        function med(a, n,    i, j, t) {
            for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) {
                t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        END {print med(r, NR), med(p, NR), e}'
}

us() { # microseconds -> "241us" / "2.66ms"
    awk -v v="$1" 'BEGIN {if (v < 1000) printf "%dus", v; else printf "%.2fms", v / 1000}'
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOAD_BEFORE%% *}" -v n="$(nproc)" 'BEGIN {exit !(l > n / 4)}'; then
    log "note: load average is $LOAD_BEFORE before the run; other work on this machine skews the figures"
fi
steps=$(( ${#IMAGES[@]} * ($(wc -w <<<"$CONNS") + $(wc -w <<<"$PACED_CONNS")) * 2 * REPEAT ))
log "running $steps wrk steps of ${DURATION}s (wrk -t$THREADS; each cell $REPEAT time(s) per system)"
[[ $PIN == 1 ]] && log "pinned: nginx and mailveil on CPU(s) $PIN_SERVER ($NGX_WORKERS nginx workers), wrk on CPU(s) $PIN_WRK"
pair=0
cell() { # IMG CONNS [WRK-SCRIPT] -> CELL_ROW: medians over REPEAT runs per system
    local img=$1 c=$2 mv_all=() ng_all=() mv_rps mv_p99 mv_err ng_rps ng_p99 ng_err ratio
    for _ in $(seq "$REPEAT"); do
        # Alternate which system goes first, so slow drift (thermal, neighbours) hits both.
        if (( pair % 2 == 0 )); then
            mv_all+=("$(run_wrk "${URL_MV[$img]}" "$c" "${3:-}")")
            ng_all+=("$(run_wrk "${URL_NGX[$img]}" "$c" "${3:-}")")
        else
            ng_all+=("$(run_wrk "${URL_NGX[$img]}" "$c" "${3:-}")")
            mv_all+=("$(run_wrk "${URL_MV[$img]}" "$c" "${3:-}")")
        fi
        pair=$((pair + 1))
        log "$img c=$c${3:+ paced}  mailveil ${mv_all[-1]% *}  nginx ${ng_all[-1]% *}   (req/s p99-us)"
    done
    read -r mv_rps mv_p99 mv_err < <(median_of "${mv_all[@]}")
    read -r ng_rps ng_p99 ng_err < <(median_of "${ng_all[@]}")
    ratio=$(awk -v a="$mv_rps" -v b="$ng_rps" 'BEGIN {if (b > 0) printf "%.2f", a / b; else printf "-"}')
    # In how many of the back-to-back pairs mailveil's p99 was at most nginx's.
    local i a b won=0
    for i in "${!mv_all[@]}"; do
        read -r _ a _ <<<"${mv_all[$i]}"
        read -r _ b _ <<<"${ng_all[$i]}"
        (( a <= b )) && won=$((won + 1))
    done
    CELL_ROW="$img $c $mv_rps $ng_rps $ratio $mv_p99 $ng_p99 $mv_err $ng_err $won/$REPEAT"
}
ROWS=()
for img in "${IMAGES[@]}"; do
    for c in $CONNS; do
        cell "$img" "$c"
        ROWS+=("$CELL_ROW")
    done
done
# Equal offered load: every connection waits PACE_MS between requests (bench/pace.lua), so
# both systems see about the same request rate and p99 compares latency alone.
PACED_ROWS=()
for img in "${IMAGES[@]}"; do
    for c in $PACED_CONNS; do
        cell "$img" "$c" "$ROOT/bench/pace.lua"
        PACED_ROWS+=("$CELL_ROW")
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
RSS_AFTER=$(rss_kb "$MV_PID")
NGX_RSS_AFTER=$(ngx_workers_rss_kb)
FETCHES_AFTER=$(metric 'mailveil_upstream_fetches_total{result="ok"}')

# ---------------------------------------------------------------- report
echo
echo "mailveil vs nginx proxy_cache, cache hits, wrk -t$THREADS (fewer threads than connections: one per connection) -d${DURATION}s, median of $REPEAT run(s) per cell, $(date -u +%Y-%m-%d)"
if [[ $PIN == 1 ]]; then
    echo "pinned: servers on CPU(s) $PIN_SERVER (nginx worker_processes $NGX_WORKERS), wrk on CPU(s) $PIN_WRK"
else
    echo "not pinned: wrk, nginx (worker_processes auto) and mailveil share all CPUs"
fi
echo "$(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)); $(nginx -v 2>&1 | sed 's/.*: //'); $(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}'); $(rustc --version | awk '{print $1 " " $2}')"
echo
echo "| image | upstream bytes | served by mailveil | served by nginx |"
echo "| --- | ---: | --- | --- |"
for img in "${IMAGES[@]}"; do
    echo "| $img | ${SIZE_UP[$img]} | ${SIZE_MV[$img]} | ${SIZE_NGX[$img]} |"
done
echo
echo "| image | conns | mailveil req/s | nginx req/s | ratio mv/nginx | mailveil p99 | nginx p99 | pairs with mv p99 <= nginx |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
errors=0
for row in "${ROWS[@]}"; do
    read -r img c mv_rps ng_rps ratio mv_p99 ng_p99 mv_err ng_err won <<<"$row"
    printf '| %s | %s | %.0f | %.0f | %s | %s | %s | %s |\n' "$img" "$c" "$mv_rps" "$ng_rps" "$ratio" "$(us "$mv_p99")" "$(us "$ng_p99")" "$won"
    errors=$((errors + mv_err + ng_err))
done
if (( ${#PACED_ROWS[@]} > 0 )); then
    echo
    echo "Equal offered load: each connection waits ${PACE_MS} ms before each request (bench/pace.lua)."
    echo
    echo "| image | conns | mailveil req/s | nginx req/s | mailveil p99 | nginx p99 | pairs with mv p99 <= nginx |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for row in "${PACED_ROWS[@]}"; do
        read -r img c mv_rps ng_rps ratio mv_p99 ng_p99 mv_err ng_err won <<<"$row"
        printf '| %s | %s | %.0f | %.0f | %s | %s | %s |\n' "$img" "$c" "$mv_rps" "$ng_rps" "$(us "$mv_p99")" "$(us "$ng_p99")" "$won"
        errors=$((errors + mv_err + ng_err))
    done
fi
echo
echo "mailveil RSS: idle $(mb "$RSS_IDLE"), after warm-up $(mb "$RSS_WARM"), after the run $(mb "$RSS_AFTER")"
echo "nginx workers' total RSS ($(ngx_workers | wc -l) workers; cache manager not counted): after warm-up $(mb "$NGX_RSS_WARM"), after the run $(mb "$NGX_RSS_AFTER"); master $(mb "$(rss_kb "$NGX_PID")")"
echo "load average (1/5/15 min) before the run: $LOAD_BEFORE; after: $LOAD_AFTER"
echo "mailveil upstream fetches: $FETCHES_WARM during warm-up, $((FETCHES_AFTER - FETCHES_WARM)) during the run"
if (( errors > 0 )); then
    echo "WARNING: $errors non-2xx responses or socket errors during the run (see wrk)"
fi
