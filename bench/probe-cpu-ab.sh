#!/usr/bin/env bash
# A/B benchmark of the probe's CPU cost: two watchdog binaries probe the same
# Gold side by side, so both see the same machine load, and the CPU time
# each spends per probe is compared. Not a test: it measures and reports.
#
#   bench/probe-cpu-ab.sh BASELINE_BINARY                 # vs this tree's release build
#   BENCH_DURATION=60 BENCH_RUNS=3 bench/probe-cpu-ab.sh /tmp/old-patroni-dr-watchdog
#
# Each run starts both watchdogs (no promoter, probe every 200 ms), the
# baseline first in odd runs and the candidate first in even ones, both
# from copies in the work directory (the same binary run from the build
# directory and from /tmp differed by half here), waits until both see Gold up, warms up 5 s, then reads utime+stime from
# /proc/PID/stat and the probe counter from /status at the start and the end
# of BENCH_DURATION seconds. Prints the report and writes it to
# bench/results-probe-ab.md. Loopback only; everything started is stopped on
# exit.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
LIB_FD=2
# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"

BASELINE=${1:-}
[[ -n "$BASELINE" && -x "$BASELINE" ]] || {
    echo "usage: $0 BASELINE_BINARY (an executable patroni-dr-watchdog to compare with)" >&2
    exit 2
}
BENCH_DURATION=${BENCH_DURATION:-120}
BENCH_RUNS=${BENCH_RUNS:-4}
[[ "$BENCH_DURATION" =~ ^[0-9]+$ && "$BENCH_DURATION" -ge 10 ]] || { echo "BENCH_DURATION must be >= 10" >&2; exit 2; }
[[ "$BENCH_RUNS" =~ ^[0-9]+$ && "$BENCH_RUNS" -ge 1 ]] || { echo "BENCH_RUNS must be >= 1" >&2; exit 2; }
RESULTS="$REPO_ROOT/bench/results-probe-ab.md"
CLK_TCK=$(getconf CLK_TCK)
REPORT=""
COMPLETE=0
T_START=$(date +%s)

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    lib_cleanup
    finish_bench_report "$rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cpu_ticks() { # utime + stime of the whole process (all threads)
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    awk '{print $12 + $13}' <<<"$stat"
}
rep() { printf '%s\n' "$*" | tee -a "$REPORT"; }

say "Setup"
ensure_packages demo
require_tools curl python3 awk
ensure_build
ensure_harness
CANDIDATE=$BIN
make_workdir patroni-dr-ab
REPORT="$WORK/report.md"
: >"$REPORT"
# Both run from copies on the same filesystem: where a binary's pages come
# from (a shared or overlay mount against a local disk) shows in its CPU.
cp "$BASELINE" "$WORK/a-patroni-dr-watchdog"
cp "$CANDIDATE" "$WORK/b-patroni-dr-watchdog"
sites_start --gold-only

rep "# Probe CPU, A/B"
rep ""
rep "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
rep "- machine: $(machine_desc)"
rep "- A (baseline): $BASELINE, $("$BASELINE" --version)"
rep "- B (candidate): this tree's release build, $("$CANDIDATE" --version), commit $(commit_desc)"
rep "- both probe the same Gold (127.0.0.1, sslmode=disable) every 200 ms, side by side; ${BENCH_DURATION} s measured per run, ${BENCH_RUNS} run(s)"
rep ""
rep "| run | started first | A probes | A CPU per probe | B probes | B CPU per probe | B / A |"
rep "|---|---|---|---|---|---|---|"

ratios=()
a_ms=()
b_ms=()
for run in $(seq "$BENCH_RUNS"); do
    say "run $run: A and B side by side for ${BENCH_DURATION} s"
    pids=(0 0) urls=("" "")
    order=(0 1)
    ((run % 2 == 0)) && order=(1 0)
    bins=("$WORK/a-patroni-dr-watchdog" "$WORK/b-patroni-dr-watchdog")
    for i in "${order[@]}"; do
        BIN=${bins[$i]} wd_start "$WORK/ab-$run-$i.log" \
            WATCHDOG_PROBE_INTERVAL=200ms WATCHDOG_PROBE_TIMEOUT=150ms \
            WATCHDOG_FALL=3 WATCHDOG_RISE=2 WATCHDOG_PROMOTE_AFTER=50
        pids[i]=$WD_PID
        urls[i]=$WD_URL
    done
    for url in "${urls[@]}"; do
        wait_verdict "$url" up 30 >/dev/null || die "a watchdog never saw Gold up"
    done
    sleep 5
    t0=() p0=()
    for i in 0 1; do
        t0+=("$(cpu_ticks "${pids[$i]}")")
        p0+=("$(status_get "${urls[$i]}" counters.probes)")
    done
    sleep "$BENCH_DURATION"
    per=() n=()
    for i in 0 1; do
        t1=$(cpu_ticks "${pids[$i]}")
        p1=$(status_get "${urls[$i]}" counters.probes)
        probes=$((p1 - p0[i]))
        ((probes > 0)) || die "no probes in the window"
        n+=("$probes")
        per+=("$(calc "($t1 - ${t0[$i]}) * 1000 / $CLK_TCK / $probes")")
        wd_stop "${pids[$i]}"
    done
    ratio=$(calc "${per[1]} / ${per[0]}")
    ratios+=("$ratio")
    a_ms+=("${per[0]}")
    b_ms+=("${per[1]}")
    first=A
    ((run % 2 == 0)) && first=B
    rep "| $run | $first | ${n[0]} | $(fmt '%.3f' "${per[0]}") ms | ${n[1]} | $(fmt '%.3f' "${per[1]}") ms | $(fmt '%.3f' "$ratio") |"
done

mmm() { # min / median / max of the arguments
    printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{m=(NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2; printf "%.3f / %.3f / %.3f", v[1], m, v[NR]}'
}
rep ""
rep "min / median / max: A $(mmm "${a_ms[@]}") ms, B $(mmm "${b_ms[@]}") ms per probe; B / A $(mmm "${ratios[@]}")."
rep "One clock tick is $(fmt '%.1f' "$(calc "1000 / $CLK_TCK")") ms of CPU spread over the run's probes."
COMPLETE=1
