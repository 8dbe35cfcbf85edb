#!/usr/bin/env bash
# Benchmark of patroni-dr-watchdog against a throwaway local PostgreSQL.
# Not a test: it measures and reports. See bench/README.md.
#
#   bench/probe-bench.sh                                  # defaults: 180 s steady state, 3 runs
#   BENCH_DURATION=30 BENCH_RUNS=2 bench/probe-bench.sh   # quick
#
# Measures
#   a) steady state at a 1 s interval: RSS (max, final) and CPU time per probe
#   b) detection time: Gold stopped (refused) and a blackholed port (timeout),
#      time until verdict "lost" vs promote_after x interval
#   c) connections left open on Gold and the watchdog's sockets toward Gold
# Prints the report and writes it to bench/results.md (overwritten each run).
# Only loopback addresses are used; everything started is stopped on exit.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep '^WATCHDOG_' || true)

BENCH_DURATION=${BENCH_DURATION:-180}
BENCH_RUNS=${BENCH_RUNS:-3}
[[ "$BENCH_DURATION" =~ ^[0-9]+$ && "$BENCH_DURATION" -ge 5 ]] || { echo "BENCH_DURATION must be a whole number of seconds >= 5" >&2; exit 2; }
[[ "$BENCH_RUNS" =~ ^[0-9]+$ && "$BENCH_RUNS" -ge 1 ]] || { echo "BENCH_RUNS must be a whole number >= 1" >&2; exit 2; }
WARMUP=10
SAMPLE_EVERY=5

# Targets.
RSS_TARGET_MIB=20
CPU_TARGET_MS=5

# Detection settings: theoretical bound = PROMOTE_AFTER x INTERVAL.
DET_INTERVAL_S=1
DET_TIMEOUT_MS=500
DET_FALL=2
DET_RISE=2
DET_PROMOTE_AFTER=5

BIN="$REPO_ROOT/target/release/patroni-dr-watchdog"
RESULTS="$REPO_ROOT/bench/results.md"
CLK_TCK=$(getconf CLK_TCK)

WORK=""
PG_BIN=""
GOLD_DATA=""
GOLD_SOCK=""
GOLD_PORT=""
BH_PID=""
declare -A WD_PIDS=() # pid -> 1 for every watchdog this script started
REPORT=""             # markdown report being built (file in $WORK)
COMPLETE=0
T_START=$(date +%s)

say() { printf '\n==> %s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
die() {
    printf '    ERROR: %s\n' "$*" >&2
    exit 1
}
# Appends a line to the report and shows it.
rep() {
    printf '%s\n' "$*" | tee -a "$REPORT"
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local pid
    for pid in "${!WD_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
        fi
    done
    if [[ -n "$BH_PID" ]] && kill -0 "$BH_PID" 2>/dev/null; then
        kill -TERM "$BH_PID" 2>/dev/null
        wait "$BH_PID" 2>/dev/null
    fi
    if [[ -n "$GOLD_DATA" && -f "$GOLD_DATA/postmaster.pid" ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$GOLD_DATA" -m immediate -w -t 20 stop >/dev/null 2>&1
    fi
    if [[ -n "$REPORT" && -f "$REPORT" ]]; then
        if ((COMPLETE == 0)); then
            printf '\n**INCOMPLETE: the benchmark stopped early (exit %d).**\n' "$rc" >>"$REPORT"
        fi
        cp "$REPORT" "$RESULTS" && printf '\n(report written to %s)\n' "${RESULTS#"$REPO_ROOT"/}" >&2
    fi
    [[ -n "$WORK" && -d "$WORK" ]] && rm -rf -- "$WORK"
    printf '(total bench runtime %d s)\n' "$(($(date +%s) - T_START))" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

is_root() { [[ $(id -u) -eq 0 ]]; }
as_pg() {
    if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}
free_port() {
    python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}
newest_pg_bin() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
    [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]] && printf '%s\n' "$d"
}
# Floating-point arithmetic: calc 'expression' (awk syntax).
calc() { awk "BEGIN{ printf \"%s\", $1 }"; }
fmt() { awk -v x="$2" "BEGIN{ printf \"$1\", x }"; } # fmt '%.3f' value
# Reads JSON on stdin, prints the value at a dotted path (e.g. counters.probes).
json_get() {
    if command -v jq >/dev/null 2>&1; then
        jq -r ".$1 | tostring"
    else
        python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[k] if isinstance(v, dict) else None
print("null" if v is None else str(v).lower() if isinstance(v, bool) else v)
' "$1"
    fi
}
status_get() { # status_get URL PATH
    curl -fsS --max-time 2 "$1/status" | json_get "$2"
}

# ---------------------------------------------------------- Gold ----
start_gold() {
    as_pg "$PG_BIN/pg_ctl" -D "$GOLD_DATA" -l "$WORK/gold.log" -w -t 60 start >/dev/null ||
        {
            tail -n 20 "$WORK/gold.log" >&2
            die "PostgreSQL did not start"
        }
}
stop_gold() { # stop_gold MODE
    as_pg "$PG_BIN/pg_ctl" -D "$GOLD_DATA" -m "$1" -w -t 60 stop >/dev/null
}
gold_sql() {
    as_pg "$PG_BIN/psql" -h "$GOLD_SOCK" -p "$GOLD_PORT" -U postgres -d postgres -XAtq -c "$1"
}

# ------------------------------------------------------ watchdog ----
WD_PID=""
WD_URL=""
WD_T0=""
# start_watchdog HOST_PORT INTERVAL TIMEOUT FALL RISE PROMOTE_AFTER LOGFILE
# Sets WD_PID, WD_URL and WD_T0 (epoch just before the exec); returns once
# /readyz answers.
start_watchdog() {
    local port
    port=$(free_port)
    WD_T0=$(date +%s.%N)
    NO_COLOR=1 \
        WATCHDOG_GOLD_HOST=127.0.0.1 \
        WATCHDOG_GOLD_PORT="$1" \
        WATCHDOG_GOLD_USER=postgres \
        WATCHDOG_GOLD_DATABASE=postgres \
        WATCHDOG_GOLD_SSLMODE=disable \
        WATCHDOG_PROBE_INTERVAL="$2" \
        WATCHDOG_PROBE_TIMEOUT="$3" \
        WATCHDOG_FALL="$4" \
        WATCHDOG_RISE="$5" \
        WATCHDOG_PROMOTE_AFTER="$6" \
        WATCHDOG_LISTEN_ADDR="127.0.0.1:$port" \
        WATCHDOG_LOG_FORMAT=text \
        "$BIN" run >>"$7" 2>&1 &
    WD_PID=$!
    WD_PIDS[$WD_PID]=1
    WD_URL="http://127.0.0.1:$port"
    for _ in $(seq 200); do
        curl -fsS --max-time 1 "$WD_URL/readyz" >/dev/null 2>&1 && return 0
        kill -0 "$WD_PID" 2>/dev/null || {
            cat "$7" >&2
            die "the watchdog exited at start-up"
        }
        sleep 0.05
    done
    die "the watchdog is not ready after 10 s"
}
# stop_watchdog PID: SIGTERM, then sets STOP_RC (999 = still running after
# 5 s, killed) and STOP_MS. Runs in this shell: `wait` needs the child.
STOP_RC=""
STOP_MS=""
stop_watchdog() {
    local pid=$1 t0
    t0=$(date +%s%N)
    STOP_RC=0
    kill -TERM "$pid"
    for _ in $(seq 250); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid"
        wait "$pid" 2>/dev/null || true
        STOP_RC=999
    else
        wait "$pid" || STOP_RC=$?
    fi
    STOP_MS=$((($(date +%s%N) - t0) / 1000000))
    unset "WD_PIDS[$pid]"
}

# wait_verdict URL VERDICT TIMEOUT_S [T0_EPOCH]
# Polls /status every 50 ms until the verdict is VERDICT. Prints
#   "<poll_s> <since_s> <reason> <probes>"
# where poll_s is when the poll saw it and since_s when the watchdog says the
# verdict changed (verdict_since), both in seconds after T0 (default: now).
# Returns 1 on timeout.
wait_verdict() {
    local t0=${4:-$(date +%s.%N)}
    python3 - "$1" "$2" "$3" "$t0" <<'PY'
import datetime, json, sys, time, urllib.request
url, want, limit, t0 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
deadline = time.time() + limit
last = None
while time.time() < deadline:
    try:
        with urllib.request.urlopen(url + "/status", timeout=1) as r:
            s = json.load(r)
    except Exception:
        time.sleep(0.05)
        continue
    now = time.time()
    last = s
    if s["verdict"] == want:
        since = datetime.datetime.fromisoformat(s["verdict_since"].replace("Z", "+00:00")).timestamp()
        lp = s.get("last_probe") or {}
        print(f"{now - t0:.3f} {since - t0:.3f} {lp.get('reason', '-')} {s['counters']['probes']}")
        sys.exit(0)
    time.sleep(0.05)
v = last["verdict"] if last else "no answer"
print(f"timeout: verdict still {v} after {limit:.0f} s", file=sys.stderr)
sys.exit(1)
PY
}

# stats VALUES...: "min median max"
stats() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{
        m = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2
        printf "%.3f %.3f %.3f", a[1], m, a[NR]}'
}

# ------------------------------------------------- /proc readings ----
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/{print $2}' "/proc/$1/status"; }
cpu_ticks() { # utime + stime of the whole process (all threads)
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) } # drop "pid (comm) ": field 3 (state) is now field 1
    awk '{print $12 + $13}' <<<"$stat"
}
# TCP sockets of PID toward 127.0.0.1:PORT (any state). Falls back to the
# number of socket fds when ss is missing (that count includes the listener
# and the runtime's internal socket pair).
gold_sockets() {
    if command -v ss >/dev/null 2>&1; then
        { ss -tanpH "( dport = :$2 )" 2>/dev/null || true; } | { grep -c "pid=$1," || true; }
    else
        { ls -l "/proc/$1/fd" 2>/dev/null || true; } | { grep -c 'socket:' || true; }
    fi
}
socket_fds() { { ls -l "/proc/$1/fd" 2>/dev/null || true; } | { grep -c 'socket:' || true; }; }
# min over 3 samples 300 ms apart: a probe in flight (a few ms each second)
# is not a leak, a leaked connection stays.
min3() {
    local a b c
    a=$("$@"); sleep 0.3
    b=$("$@"); sleep 0.3
    c=$("$@")
    printf '%s\n' "$a" "$b" "$c" | sort -n | head -n1
}
client_backends() {
    gold_sql "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
}
pass() { if awk "BEGIN{exit !($1)}"; then echo PASS; else echo FAIL; fi; }

# =============================================================== setup ====
say "Setup"
PG_BIN=$(newest_pg_bin || true)
if [[ -z "$PG_BIN" ]]; then
    info "PostgreSQL is not installed: installing it with apt-get"
    SUDO=()
    if ! is_root; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: install PostgreSQL first"
        SUDO=(sudo)
    fi
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
    PG_BIN=$(newest_pg_bin || true)
    [[ -n "$PG_BIN" ]] || die "no /usr/lib/postgresql/*/bin/initdb after installing"
fi
for tool in curl python3 awk; do command -v "$tool" >/dev/null 2>&1 || die "$tool is required"; done
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then PATH="$HOME/.cargo/bin:$PATH"; fi
info "cargo build --release --locked"
cargo build --release --locked
[[ -x "$BIN" ]] || die "no binary at $BIN"

WORK=$(mktemp -d -t patroni-dr-bench.XXXXXX)
if is_root; then
    chown postgres: "$WORK"
    if ! runuser -u postgres -- test -w "$WORK"; then
        rm -rf -- "$WORK"
        WORK=$(mktemp -d -p /tmp patroni-dr-bench.XXXXXX)
        chown postgres: "$WORK"
    fi
fi
REPORT="$WORK/report.md"
: >"$REPORT"
GOLD_DATA="$WORK/gold"
GOLD_SOCK="$WORK/sock"
as_pg mkdir -p "$GOLD_SOCK"
GOLD_PORT=$(free_port)
as_pg "$PG_BIN/initdb" -D "$GOLD_DATA" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >"$WORK/initdb.log" 2>&1 ||
    {
        cat "$WORK/initdb.log" >&2
        die "initdb failed"
    }
as_pg tee -a "$GOLD_DATA/postgresql.conf" >/dev/null <<EOF

# patroni-dr-watchdog bench
listen_addresses = '127.0.0.1'
port = $GOLD_PORT
unix_socket_directories = '$GOLD_SOCK'
fsync = off
EOF
start_gold
info "Gold: $("$PG_BIN/postgres" --version) on 127.0.0.1:$GOLD_PORT, work dir $WORK"

CPU_MODEL=$(awk -F': *' '/^model name/{print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
rep "# patroni-dr-watchdog probe benchmark"
rep ""
rep "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
rep "- machine: $(nproc) CPU(s), ${CPU_MODEL:-unknown CPU}, kernel $(uname -r)"
rep "- watchdog: $("$BIN" --version) (release build), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' + uncommitted changes')"
rep "- Gold: $("$PG_BIN/postgres" --version | sed 's/^postgres (PostgreSQL)/PostgreSQL/') on 127.0.0.1 (loopback), trust auth, sslmode=disable"
rep "- settings: BENCH_DURATION=${BENCH_DURATION}s, BENCH_RUNS=${BENCH_RUNS}, CLK_TCK=${CLK_TCK}"

# ======================================================= a) steady state ====
say "a) steady state: interval 1s, ${WARMUP}s warm-up, then ${BENCH_DURATION}s measured"
start_watchdog "$GOLD_PORT" 1s 500ms 3 2 18 "$WORK/steady.log"
SPID=$WD_PID
SURL=$WD_URL
wait_verdict "$SURL" up 30 >/dev/null || die "steady-state watchdog never reached up"
sleep "$WARMUP"
kill -0 "$SPID" 2>/dev/null || die "the steady-state watchdog died"
sockets_before=$(min3 gold_sockets "$SPID" "$GOLD_PORT")
sockfds_before=$(min3 socket_fds "$SPID")
ticks0=$(cpu_ticks "$SPID")
probes0=$(status_get "$SURL" counters.probes)
t0=$(date +%s.%N)
rss_max=$(rss_kib "$SPID")
rss_first=$rss_max
elapsed=0
while ((elapsed < BENCH_DURATION)); do
    step=$((BENCH_DURATION - elapsed < SAMPLE_EVERY ? BENCH_DURATION - elapsed : SAMPLE_EVERY))
    sleep "$step"
    elapsed=$((elapsed + step))
    kill -0 "$SPID" 2>/dev/null || die "the steady-state watchdog died during the run"
    r=$(rss_kib "$SPID")
    ((r > rss_max)) && rss_max=$r
    info "t+${elapsed}s RSS $(fmt '%.2f' "$(calc "$r/1024")") MiB"
done
ticks1=$(cpu_ticks "$SPID")
probes1=$(status_get "$SURL" counters.probes)
t1=$(date +%s.%N)
rss_final=$(rss_kib "$SPID")
((rss_final > rss_max)) && rss_max=$rss_final
rss_hwm=$(hwm_kib "$SPID")
steady_up=$(status_get "$SURL" counters.up)
steady_verdict=$(status_get "$SURL" verdict)
dprobes=$((probes1 - probes0))
dticks=$((ticks1 - ticks0))
window=$(calc "$t1 - $t0")
((dprobes > 0)) || die "no probes during the measured window"
cpu_ms=$(calc "$dticks * 1000 / $CLK_TCK / $dprobes")
cpu_res_ms=$(calc "1000 / $CLK_TCK / $dprobes") # one clock tick spread over the probes
rss_max_mib=$(calc "$rss_max/1024")
rss_final_mib=$(calc "$rss_final/1024")

rep ""
rep "## a) Steady state (interval 1s, timeout 500ms, Gold up)"
rep ""
rep "Measured window $(fmt '%.1f' "$window") s after a ${WARMUP} s warm-up; RSS sampled every ${SAMPLE_EVERY} s from /proc/PID/status."
rep ""
rep "| figure | value | target | result |"
rep "|---|---|---|---|"
rep "| max RSS (samples) | $(fmt '%.2f' "$rss_max_mib") MiB | < ${RSS_TARGET_MIB} MiB | $(pass "$rss_max_mib < $RSS_TARGET_MIB") |"
rep "| final RSS | $(fmt '%.2f' "$rss_final_mib") MiB | < ${RSS_TARGET_MIB} MiB | $(pass "$rss_final_mib < $RSS_TARGET_MIB") |"
rep "| RSS at window start / peak ever (VmHWM) | $(fmt '%.2f' "$(calc "$rss_first/1024")") / $(fmt '%.2f' "$(calc "$rss_hwm/1024")") MiB | | |"
rep "| probes in window | $dprobes (all-time up: $steady_up, verdict: $steady_verdict) | | |"
rep "| CPU (utime+stime) in window | $dticks ticks = $(fmt '%.0f' "$(calc "$dticks*1000/$CLK_TCK")") ms | | |"
rep "| CPU per probe | $(fmt '%.3f' "$cpu_ms") ms (resolution ±$(fmt '%.3f' "$cpu_res_ms") ms) | < ${CPU_TARGET_MS} ms | $(pass "$cpu_ms < $CPU_TARGET_MS") |"

# ===================================================== c) connections ====
say "c) connections left open on Gold after the steady-state run"
backends_running=$(min3 client_backends)
backends_list=$(gold_sql "SELECT coalesce(string_agg(application_name || '@' || coalesce(client_addr::text, 'socket') || ' ' || state, ', '), '') FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
sockets_after=$(min3 gold_sockets "$SPID" "$GOLD_PORT")
sockfds_after=$(min3 socket_fds "$SPID")
total_probes=$(status_get "$SURL" counters.probes)
stop_watchdog "$SPID"
s_rc=$STOP_RC s_ms=$STOP_MS
backends_stopped=$(client_backends)
sock_method="ss, TCP sockets of the watchdog's pid with destination port $GOLD_PORT"
command -v ss >/dev/null 2>&1 || sock_method="ss missing: all socket fds"

rep ""
rep "## c) Connections left open"
rep ""
rep "After $total_probes probes (from /status). Counts are the minimum of 3 samples 300 ms apart, so a probe in flight (a few ms per second) does not count as a leak."
rep ""
rep "| figure | value | target | result |"
rep "|---|---|---|---|"
rep "| client backends on Gold, watchdog running | $backends_running | 0 | $(pass "$backends_running == 0") |"
rep "| client backends on Gold, after the watchdog stopped | $backends_stopped | 0 | $(pass "$backends_stopped == 0") |"
rep "| watchdog TCP sockets toward Gold, before / after the window ($sock_method) | $sockets_before / $sockets_after | 0 / 0 | $(pass "$sockets_after == 0 && $sockets_before == 0") |"
rep "| watchdog socket fds in total (listener + runtime internals), before / after | $sockfds_before / $sockfds_after | equal | $(pass "$sockfds_before == $sockfds_after") |"
rep "| SIGTERM → exit | code $s_rc in $s_ms ms | 0 | $(pass "$s_rc == 0") |"
[[ -n "$backends_list" ]] && rep "" && rep "Client backends seen: $backends_list"

# ======================================================= b) detection ====
bound=$(calc "$DET_PROMOTE_AFTER * $DET_INTERVAL_S")
timeout_s=$(calc "$DET_TIMEOUT_MS / 1000")
say "b) detection time, refused: Gold stopped with pg_ctl stop -m immediate, $BENCH_RUNS run(s)"
start_watchdog "$GOLD_PORT" "${DET_INTERVAL_S}s" "${DET_TIMEOUT_MS}ms" "$DET_FALL" "$DET_RISE" "$DET_PROMOTE_AFTER" "$WORK/refused.log"
RPID=$WD_PID
RURL=$WD_URL
poll_times=()
since_times=()
stop_ms=()
reasons=()
for run in $(seq "$BENCH_RUNS"); do
    wait_verdict "$RURL" up 60 >/dev/null || die "run $run: verdict never became up"
    # A random phase between Gold's death and the probe schedule.
    sleep "$(calc "1 + $RANDOM / 32768")"
    ts=$(date +%s.%N)
    stop_gold immediate
    stop_ms+=("$(fmt '%.0f' "$(calc "($(date +%s.%N) - $ts) * 1000")")")
    out=$(wait_verdict "$RURL" lost 30 "$ts") || die "run $run: verdict never became lost after Gold stopped"
    read -r p s reason probes <<<"$out"
    poll_times+=("$p")
    since_times+=("$s")
    reasons+=("$reason")
    info "run $run: lost after $s s (watchdog's verdict_since), seen by the 50 ms poll after $p s; last reason $reason; pg_ctl stop took ${stop_ms[-1]} ms"
    start_gold
done
wait_verdict "$RURL" up 60 >/dev/null || die "verdict never became up after the last run"
stop_watchdog "$RPID"
r_rc=$STOP_RC r_ms=$STOP_MS
read -r smin smed smax <<<"$(stats "${since_times[@]}")"
read -r pmin pmed pmax <<<"$(stats "${poll_times[@]}")"

rep ""
rep "## b) Detection time (interval ${DET_INTERVAL_S}s, timeout ${DET_TIMEOUT_MS}ms, fall $DET_FALL, promote_after $DET_PROMOTE_AFTER)"
rep ""
rep "Theoretical bound: promote_after × interval = $(fmt '%.1f' "$bound") s. Target: overhead (measured − bound) < 100 ms + one timeout = $(fmt '%.0f' "$(calc "100 + $DET_TIMEOUT_MS")") ms."
rep ""
rep "### Refused (Gold stopped, \`pg_ctl stop -m immediate\`), $BENCH_RUNS run(s)"
rep ""
rep "Measured from just before \`pg_ctl stop\` (which itself took ${stop_ms[*]} ms) to the verdict change as the watchdog stamped it (\`verdict_since\`) and as a 50 ms poll of /status first saw it. Last probe reasons: ${reasons[*]}."
rep ""
rep "| | min | median | max |"
rep "|---|---|---|---|"
rep "| time to lost (verdict_since) | $smin s | $smed s | $smax s |"
rep "| time to lost (50 ms poll) | $pmin s | $pmed s | $pmax s |"
rep "| overhead vs $(fmt '%.0f' "$bound") s bound (poll) | $(fmt '%+.0f' "$(calc "($pmin-$bound)*1000")") ms | $(fmt '%+.0f' "$(calc "($pmed-$bound)*1000")") ms | $(fmt '%+.0f' "$(calc "($pmax-$bound)*1000")") ms |"
rep ""
rep "Result: $(pass "$pmax - $bound < 0.1 + $timeout_s") (worst overhead $(fmt '%+.0f' "$(calc "($pmax-$bound)*1000")") ms vs target < $(fmt '%.0f' "$(calc "100 + $DET_TIMEOUT_MS")") ms). A negative overhead is expected: Gold dies at a random point between two probes, so the first failed probe comes 0–1 interval later and lost follows (promote_after − 1) intervals after it: the expected range is [$(fmt '%.1f' "$(calc "($DET_PROMOTE_AFTER-1)*$DET_INTERVAL_S")"), $(fmt '%.1f' "$bound")] s plus up to interval/20 of jitter. Watchdog SIGTERM exit: code $r_rc in $r_ms ms."

# -------------------------------------------------------- blackhole ----
say "b) detection time, blackhole: a listening socket that never accepts nor answers, $BENCH_RUNS run(s)"
BH_PORTFILE="$WORK/blackhole.port"
python3 -c '
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(4096)          # connects complete through the backlog; nothing is ever read
open(sys.argv[1] + ".tmp", "w").write(str(s.getsockname()[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(3600)
' "$BH_PORTFILE" &
BH_PID=$!
for _ in $(seq 100); do [[ -s "$BH_PORTFILE" ]] && break; sleep 0.05; done
[[ -s "$BH_PORTFILE" ]] || die "the blackhole listener did not start"
BH_PORT=$(<"$BH_PORTFILE")
bh_theory=$(calc "($DET_PROMOTE_AFTER - 1) * $DET_INTERVAL_S + $timeout_s")
bh_times=()
bh_polls=()
bh_reasons=()
bh_exit=()
for run in $(seq "$BENCH_RUNS"); do
    start_watchdog "$BH_PORT" "${DET_INTERVAL_S}s" "${DET_TIMEOUT_MS}ms" "$DET_FALL" "$DET_RISE" "$DET_PROMOTE_AFTER" "$WORK/blackhole.log"
    out=$(wait_verdict "$WD_URL" lost 30 "$WD_T0") || die "blackhole run $run: verdict never became lost"
    read -r p s reason probes <<<"$out"
    bh_times+=("$s")
    bh_polls+=("$p")
    bh_reasons+=("$reason")
    stop_watchdog "$WD_PID"
    b_rc=$STOP_RC b_ms=$STOP_MS
    bh_exit+=("$b_rc/${b_ms}ms")
    info "run $run: lost after $s s from watchdog start (poll saw it after $p s); $probes probes, last reason $reason; SIGTERM exit $b_rc in $b_ms ms"
done
kill -TERM "$BH_PID" 2>/dev/null || true
wait "$BH_PID" 2>/dev/null || true
BH_PID=""
read -r bmin bmed bmax <<<"$(stats "${bh_times[@]}")"
read -r bpmin bpmed bpmax <<<"$(stats "${bh_polls[@]}")"

rep ""
rep "### Blackhole (port accepts the TCP handshake via the backlog, never answers), $BENCH_RUNS run(s)"
rep ""
rep "A fresh watchdog is started against the blackhole each run; measured from just before its start. Every probe ends at the ${DET_TIMEOUT_MS} ms timeout and the first probe runs at start-up, so lost is expected at (promote_after − 1) × interval + timeout = $(fmt '%.1f' "$bh_theory") s, i.e. within the $(fmt '%.1f' "$bound") s bound. Last probe reasons: ${bh_reasons[*]}. SIGTERM exits (code/time): ${bh_exit[*]}."
rep ""
rep "| | min | median | max |"
rep "|---|---|---|---|"
rep "| time to lost (verdict_since) | $bmin s | $bmed s | $bmax s |"
rep "| time to lost (50 ms poll) | $bpmin s | $bpmed s | $bpmax s |"
rep "| vs expected $(fmt '%.1f' "$bh_theory") s (verdict_since) | $(fmt '%+.0f' "$(calc "($bmin-$bh_theory)*1000")") ms | $(fmt '%+.0f' "$(calc "($bmed-$bh_theory)*1000")") ms | $(fmt '%+.0f' "$(calc "($bmax-$bh_theory)*1000")") ms |"
rep "| overhead vs $(fmt '%.0f' "$bound") s bound (poll) | $(fmt '%+.0f' "$(calc "($bpmin-$bound)*1000")") ms | $(fmt '%+.0f' "$(calc "($bpmed-$bound)*1000")") ms | $(fmt '%+.0f' "$(calc "($bpmax-$bound)*1000")") ms |"
rep ""
rep "Result: $(pass "$bpmax - $bound <= $timeout_s") (worst overhead vs bound $(fmt '%+.0f' "$(calc "($bpmax-$bound)*1000")") ms, target ≤ one timeout = ${DET_TIMEOUT_MS} ms)."

rep ""
rep "Total runtime: $(($(date +%s) - T_START)) s (including the build check and PostgreSQL set-up)."
COMPLETE=1
