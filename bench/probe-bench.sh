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
LIB_FD=2 # narration on stderr, the report on stdout
# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"

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

RESULTS="$REPO_ROOT/bench/results.md"
CLK_TCK=$(getconf CLK_TCK)

BH_PID=""
REPORT="" # markdown report being built (file in $WORK)
COMPLETE=0
T_START=$(date +%s)

# Appends a line to the report and shows it.
rep() {
    printf '%s\n' "$*" | tee -a "$REPORT"
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n "$BH_PID" ]] && kill -0 "$BH_PID" 2>/dev/null; then
        kill -TERM "$BH_PID" 2>/dev/null
        wait "$BH_PID" 2>/dev/null
    fi
    lib_cleanup # every watchdog started, and Gold
    finish_bench_report "$rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_watchdog GOLD_PORT INTERVAL TIMEOUT FALL RISE PROMOTE_AFTER LOGFILE
# (no promoter): sets WD_PID, WD_URL and WD_T0 (see wd_start in scripts/lib.sh).
start_watchdog() {
    wd_start "$7" \
        WATCHDOG_GOLD_PORT="$1" \
        WATCHDOG_PROBE_INTERVAL="$2" \
        WATCHDOG_PROBE_TIMEOUT="$3" \
        WATCHDOG_FALL="$4" \
        WATCHDOG_RISE="$5" \
        WATCHDOG_PROMOTE_AFTER="$6"
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
ensure_packages demo
require_tools curl python3 awk
ensure_build
ensure_harness
make_workdir patroni-dr-bench
REPORT="$WORK/report.md"
: >"$REPORT"
sites_start --gold-only
info "Gold: $("$PG_BIN/postgres" --version) on 127.0.0.1:$GOLD_PORT, work dir $WORK"

rep "# patroni-dr-watchdog probe benchmark"
rep ""
rep "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
rep "- machine: $(machine_desc)"
rep "- watchdog: $("$BIN" --version) (release build), commit $(commit_desc)"
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
wd_stop "$SPID"
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
    gold_kill
    stop_ms+=("$(fmt '%.0f' "$(calc "($(date +%s.%N) - $ts) * 1000")")")
    out=$(wait_verdict "$RURL" lost 30 "$ts") || die "run $run: verdict never became lost after Gold stopped"
    read -r p s reason probes <<<"$out"
    poll_times+=("$p")
    since_times+=("$s")
    reasons+=("$reason")
    info "run $run: lost after $s s (watchdog's verdict_since), seen by the 50 ms poll after $p s; last reason $reason; pg_ctl stop took ${stop_ms[-1]} ms"
    gold_start
done
wait_verdict "$RURL" up 60 >/dev/null || die "verdict never became up after the last run"
wd_stop "$RPID"
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
    wd_stop "$WD_PID"
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
