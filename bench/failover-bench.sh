#!/usr/bin/env bash
# Failover benchmark: time from Gold's death to a writable GoldDR, with fast
# and with default watchdog settings, split into what the watchdog takes
# (detection, then its decision: guards and PATCH) and what Patroni takes.
# Not a test: it measures and reports. See bench/README.md.
#
#   bench/failover-bench.sh                          # fast x3, default x1 (about 4 minutes)
#   BENCH_SKIP_DEFAULT=1 bench/failover-bench.sh     # fast profile only (about 40 s)
#   BENCH_RUNS=5 BENCH_DEFAULT_RUNS=2 bench/failover-bench.sh
#
# Same set-up as scripts/demo.sh, through the same two-sites harness (the
# end-to-end tests' own, examples/two-sites.rs): etcd, Gold (a plain
# PostgreSQL primary) and GoldDR (a one-member Patroni standby cluster
# replicating from Gold through a permanent slot), the watchdog beside GoldDR
# with the patroni-api promoter.
# Each run builds a fresh GoldDR, waits for verdict up and a streaming WAL
# receiver, waits a random part of one probe interval, kills Gold
# (pg_ctl stop -m immediate) at T0, and records
#   T_lost      the watchdog's verdict_since when /status says lost,
#   T_promoted  the watchdog's promotion.at (stamped after the guards passed,
#               just before its PATCH /config {"standby_cluster": null}),
#   T_writable  the first 50 ms poll of `SELECT pg_is_in_recovery()` on
#               GoldDR (a fresh connection each time) that says false;
# then tears GoldDR down and restarts Gold for the next run.
# Prints the report and writes it to bench/failover-results.md (overwritten
# each run, marked INCOMPLETE when the run stopped early). Only loopback
# addresses are used; everything started is stopped on exit.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
LIB_FD=2 # narration on stderr, the report on stdout
# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"

num() { [[ "$2" =~ ^[0-9]+$ && "$2" -ge "$3" ]] || { echo "$1 must be a whole number >= $3" >&2; exit 2; }; }
FAST_RUNS=${BENCH_RUNS:-3}
DEFAULT_RUNS=${BENCH_DEFAULT_RUNS:-${BENCH_RUNS:-1}}
SKIP_DEFAULT=${BENCH_SKIP_DEFAULT:-0}
num BENCH_RUNS "$FAST_RUNS" 1
num BENCH_DEFAULT_RUNS "$DEFAULT_RUNS" 1

RESULTS="$REPO_ROOT/bench/failover-results.md"
REPORT=""
COMPLETE=0
FAILED_RUNS=0
T_START=$(date +%s)

# Profiles: name interval_s timeout fall rise promote_after wal_receiver_fresh.
# quorum: the quorum-mode defaults, with one witness process; default: the
# single-observer defaults.
PROFILES=("fast 1 800ms 2 2 5 3s" "quorum 5 3s 2 2 4 15s")
if [[ "$SKIP_DEFAULT" != 1 ]]; then
    PROFILES+=("default 10 5s 3 2 18 60s")
fi

rep() { printf '%s\n' "$*" | tee -a "$REPORT"; }

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

# =============================================================== setup ====
say "Setup"
ensure_packages tests demo
require_tools curl python3 etcd patroni awk
ensure_build
ensure_harness
make_workdir patroni-dr-failover-bench
REPORT="$WORK/report.md"
: >"$REPORT"
sites_start --no-golddr
gold_sql "CREATE TABLE bench (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"
info "etcd on 127.0.0.1:$ETCD_PORT, Gold on 127.0.0.1:$GOLD_PORT, work dir $WORK"

PG_VERSION=$("$PG_BIN/postgres" --version | sed 's/^postgres (PostgreSQL)/PostgreSQL/')
rep "# patroni-dr-watchdog failover benchmark"
rep ""
rep "Time from Gold's death to a writable GoldDR, and how much of it is the watchdog versus Patroni. Written by \`bench/failover-bench.sh\`; method in [README.md](README.md#failover-benchmark)."
rep ""
rep "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
rep "- machine: $(machine_desc)"
rep "- watchdog: $("$BIN" --version) (release build), commit $(commit_desc)"
rep "- Gold: $PG_VERSION, plain primary on 127.0.0.1, \`wal_sender_timeout = 2s\`, killed with \`pg_ctl stop -m immediate\`"
rep "- GoldDR: Patroni $(patroni --version 2>&1 | awk '{print $2}') one-member standby cluster (ttl 20, loop_wait 2, retry_timeout 9), DCS etcd $(etcd --version 2>&1 | awk '/etcd Version/{print $3}') (etcd3 API), same $PG_VERSION"
rep "- watchdog beside GoldDR: \`WATCHDOG_PROMOTER=patroni-api\`, \`WATCHDOG_MODE=enforce\`, default \`WATCHDOG_MAX_DATA_AGE\` (5m); no witnesses except in the \`quorum\` profile"
rep "- \`quorum\` profile: one witness (\`patroni-dr-watchdog witness\`, the same release binary, its own defaults) probing Gold directly (its own route) with Gold's PostgreSQL port as the site heartbeat (\`WATCHDOG_GOLD_HEARTBEAT=tcp://…\`: the plain Gold of this harness has no Patroni API), listed in \`WATCHDOG_WITNESSES\`; the quorum is 1 of 1"
rep "- runs: fast ×$FAST_RUNS$([[ "$SKIP_DEFAULT" == 1 ]] && echo ', default skipped (BENCH_SKIP_DEFAULT=1)' || echo ", default ×$DEFAULT_RUNS")"

# witness_start LOG: a witness process with its defaults, observing Gold
# directly; sets WITNESS_URL and WITNESS_PID (stopped like a watchdog).
witness_start() {
    local log=$1 port
    free_port port
    WITNESS_URL="http://127.0.0.1:$port"
    env NO_COLOR=1 \
        WATCHDOG_GOLD_HOST=127.0.0.1 \
        WATCHDOG_GOLD_PORT="$GOLD_PORT" \
        WATCHDOG_GOLD_USER=postgres \
        WATCHDOG_GOLD_SSLMODE=disable \
        WATCHDOG_GOLD_HEARTBEAT="tcp://127.0.0.1:$GOLD_PORT" \
        WATCHDOG_LISTEN_ADDR="127.0.0.1:$port" \
        "$BIN" witness >>"$log" 2>&1 &
    WITNESS_PID=$!
    LIB_WD_PIDS[$WITNESS_PID]=1
    for _ in $(seq 200); do
        curl -fsS --max-time 1 "$WITNESS_URL/readyz" >/dev/null 2>&1 && return 0
        kill -0 "$WITNESS_PID" 2>/dev/null || { log_tail "$log" 40 "the witness's log"; die "the witness exited at start-up"; }
        sleep 0.05
    done
    log_tail "$log" 40 "the witness's log"
    die "the witness is not ready after 10 s"
}

# ============================================================ one run ====
# run_once PROFILE RUN INTERVAL_S TIMEOUT FALL RISE PROMOTE_AFTER FRESH
# Appends "detect decide patroni total role_s visible_s" to RUN_ROWS, or
# records a failure.
RUN_ROWS=()
RUN_NOTES=()
run_once() {
    local profile=$1 run=$2 interval=$3 timeout=$4 fall=$5 rise=$6 promote_after=$7 fresh=$8
    local scope="golddr-$profile-$run" log="$WORK/watchdog-$profile-$run.log" res="$WORK/failover-$profile-$run.json"
    local phase t0 limit rows_gold rows_dr wal every
    local witness_env=()
    say "$profile run $run: fresh GoldDR"
    gold_sql "INSERT INTO bench DEFAULT VALUES" >/dev/null
    golddr_start "$scope"
    info "GoldDR standby_leader after $(fmt '%.1f' "$GOLDDR_STARTUP_S") s (REST $GOLDDR_URL, PostgreSQL 127.0.0.1:$GOLDDR_PG_PORT)"
    if [[ "$profile" == quorum ]]; then
        witness_start "$WORK/witness-$profile-$run.log"
        witness_env=(WATCHDOG_WITNESSES="$WITNESS_URL")
    fi
    wd_start "$log" "${witness_env[@]}" \
        WATCHDOG_PROBE_INTERVAL="${interval}s" \
        WATCHDOG_PROBE_TIMEOUT="$timeout" \
        WATCHDOG_FALL="$fall" \
        WATCHDOG_RISE="$rise" \
        WATCHDOG_PROMOTE_AFTER="$promote_after" \
        WATCHDOG_PROMOTER=patroni-api \
        WATCHDOG_PATRONI_URL="$GOLDDR_URL" \
        WATCHDOG_LOCAL_PG_HOST=127.0.0.1 \
        WATCHDOG_LOCAL_PG_PORT="$GOLDDR_PG_PORT" \
        WATCHDOG_LOCAL_PG_USER=postgres \
        WATCHDOG_WAL_RECEIVER_FRESH="$fresh"
    wait_verdict "$WD_URL" up $((interval * rise * 3 + 10)) >/dev/null || die "$profile run $run: verdict never became up"
    # The stale-data guard remembers when it last saw the WAL receiver
    # streaming: wait for the watchdog's cluster view to say so.
    wal=""
    for _ in $(seq $((interval * 40 + 40))); do
        wal=$(status_get "$WD_URL" cluster.wal_receiver 2>/dev/null || true)
        [[ "$wal" == streaming ]] && break
        sleep 0.05
    done
    [[ "$wal" == streaming ]] || die "$profile run $run: the watchdog never saw GoldDR's WAL receiver streaming (last: ${wal:-no answer})"
    rows_gold=$(gold_sql "SELECT count(*) FROM bench")
    # Gold dies at a random phase of the probe schedule.
    phase=$(calc "$interval * $RANDOM / 32768")
    info "verdict up, WAL receiver streaming; killing Gold in $(fmt '%.2f' "$phase") s"
    sleep "$phase"
    t0=$(now_s)
    gold_kill
    info "Gold killed; polling /status and GoldDR every 50 ms"
    limit=$((interval * promote_after + interval * 2 + 60))
    every=$interval
    ((interval < 5)) || every=$((interval * 2))
    if watch_failover "$res" "$t0" "$limit" "$every" >&2; then
        local lost prom wr role seen detect decide patroni
        lost=$(json_get lost_since <"$res")
        prom=$(json_get promoted_at <"$res")
        wr=$(json_get writable <"$res")
        role=$(json_get role_primary_seen <"$res")
        seen=$(json_get promoted_seen <"$res")
        detect=$lost
        decide=$(calc "$prom - $lost")
        patroni=$(calc "$wr - $prom")
        [[ "$role" == null ]] && role=NaN || role=$(calc "$role - $prom")
        rows_dr=$(golddr_sql "SELECT count(*) FROM bench" 2>/dev/null || echo "?")
        RUN_ROWS+=("$profile $run $detect $decide $patroni $wr $role $(calc "$seen - $prom") $rows_gold $rows_dr $(fmt '%.2f' "$phase")")
        info "$(printf 'death->lost %.2f s, lost->PATCH %.3f s, PATCH->writable %.3f s, total %.2f s (rows %s/%s)' \
            "$detect" "$decide" "$patroni" "$wr" "$rows_dr" "$rows_gold")"
        [[ "$rows_dr" == "$rows_gold" ]] || RUN_NOTES+=("$profile run $run: GoldDR has $rows_dr rows of Gold's $rows_gold")
        if [[ "$(json_get vetoes <"$res")" != "[]" ]]; then
            RUN_NOTES+=("$profile run $run: vetoes seen before the promotion: $(json_get vetoes <"$res" | tr -d '\n ')")
        fi
    else
        FAILED_RUNS=$((FAILED_RUNS + 1))
        local last
        last=$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("last_status") or {}
print(json.dumps({"verdicts_seen": r["verdicts"], "writable_after_s": r["writable"],
                  "verdict": s.get("verdict"), "state": s.get("state"), "cluster": s.get("cluster"),
                  "promotion": s.get("promotion"), "watchdog_exited": r["watchdog_exited"]}))' "$res")
        bad "$profile run $run: no writable, promoted GoldDR within $limit s; /status said: $last"
        log_tail "$log" 20 "the watchdog's log"
        sites_log_tail golddr 20
        RUN_NOTES+=("$profile run $run FAILED: no writable, promoted GoldDR within $limit s. Last /status: \`$last\`")
    fi
    wd_stop "$WD_PID"
    ((STOP_RC == 0)) || RUN_NOTES+=("$profile run $run: watchdog SIGTERM exit code $STOP_RC")
    if [[ "$profile" == quorum ]]; then
        wd_stop "$WITNESS_PID"
        ((STOP_RC == 0)) || RUN_NOTES+=("$profile run $run: witness SIGTERM exit code $STOP_RC")
    fi
    golddr_stop
    gold_start
}

# ============================================================ profiles ====
SUMMARY=()
for p in "${PROFILES[@]}"; do
    read -r name interval timeout fall rise promote_after fresh <<<"$p"
    runs=$FAST_RUNS
    [[ "$name" == default ]] && runs=$DEFAULT_RUNS
    say "profile $name: interval ${interval}s, timeout $timeout, fall $fall, rise $rise, promote_after $promote_after, wal_receiver_fresh $fresh; $runs run(s)"
    first=${#RUN_ROWS[@]}
    for run in $(seq "$runs"); do
        run_once "$name" "$run" "$interval" "$timeout" "$fall" "$rise" "$promote_after" "$fresh"
    done
    SUMMARY+=("$name|$interval|$timeout|$fall|$rise|$promote_after|$fresh|$runs|$first|${#RUN_ROWS[@]}")
done

# ============================================================== report ====
for entry in "${SUMMARY[@]}"; do
    IFS='|' read -r name interval timeout fall rise promote_after fresh runs first last <<<"$entry"
    bound=$((promote_after * interval))
    low=$(((promote_after - 1) * interval))
    jitter=$(calc "($interval / 20 > 0.5) ? 0.5 : $interval / 20")
    det=() dec=() pat=() tot=() share=()
    for ((i = first; i < last; i++)); do
        read -r _ _ d1 d2 d3 d4 _ _ _ _ _ <<<"${RUN_ROWS[i]}"
        det+=("$d1") dec+=("$d2") pat+=("$d3") tot+=("$d4") share+=("$(calc "100 * ($d1 + $d2) / $d4")")
    done
    rep ""
    rep "## Profile \`$name\`: interval ${interval}s, timeout $timeout, fall $fall, rise $rise, promote_after $promote_after"
    rep ""
    rep "Other settings: \`WATCHDOG_WAL_RECEIVER_FRESH=$fresh\`. Detection bound: promote_after × interval = **$bound s**; since Gold dies at a random point between two probes, lost is expected $low–$bound s after the death (plus probe jitter ≤ $(fmt '%.2f' "$jitter") s). $((last - first)) of $runs run(s) measured."
    rep ""
    if ((last > first)); then
        read -r a1 a2 a3 <<<"$(stats "${det[@]}")"
        read -r b1 b2 b3 <<<"$(stats "${dec[@]}")"
        read -r c1 c2 c3 <<<"$(stats "${pat[@]}")"
        read -r e1 e2 e3 <<<"$(stats "${tot[@]}")"
        read -r f1 f2 f3 <<<"$(stats "${share[@]}")"
        rep "| phase | who | min | median | max |"
        rep "|---|---|---|---|---|"
        rep "| Gold killed → verdict lost (detection) | watchdog | $(fmt '%.2f' "$a1") s | $(fmt '%.2f' "$a2") s | $(fmt '%.2f' "$a3") s |"
        rep "| lost → PATCH (guards, then the request) | watchdog | $(fmt '%.3f' "$b1") s | $(fmt '%.3f' "$b2") s | $(fmt '%.3f' "$b3") s |"
        rep "| PATCH → GoldDR writable | Patroni (+ the PATCH round trip) | $(fmt '%.3f' "$c1") s | $(fmt '%.3f' "$c2") s | $(fmt '%.3f' "$c3") s |"
        rep "| **Gold killed → GoldDR writable** | total | **$(fmt '%.2f' "$e1") s** | **$(fmt '%.2f' "$e2") s** | **$(fmt '%.2f' "$e3") s** |"
        rep "| detection − bound ($bound s) | | $(fmt '%+.2f' "$(calc "$a1 - $bound")") s | $(fmt '%+.2f' "$(calc "$a2 - $bound")") s | $(fmt '%+.2f' "$(calc "$a3 - $bound")") s |"
        rep "| watchdog's share of the total (detection + decision) | | $(fmt '%.1f' "$f1") % | $(fmt '%.1f' "$f2") % | $(fmt '%.1f' "$f3") % |"
        rep ""
        rep "Per run (seconds after Gold's death unless noted; *phase*: random wait before the kill; *role*: Patroni's GET /patroni said master/primary, after the PATCH; *in /status*: when /status first showed \`promotion.result\`, after the PATCH):"
        rep ""
        rep "| run | phase | lost | PATCH | writable | lost→PATCH | PATCH→writable | PATCH→role | PATCH→in /status | rows Gold/GoldDR |"
        rep "|---|---|---|---|---|---|---|---|---|---|"
        for ((i = first; i < last; i++)); do
            read -r _ run d1 d2 d3 d4 d5 d6 rg rd ph <<<"${RUN_ROWS[i]}"
            rep "| $run | $ph s | $(fmt '%.2f' "$d1") | $(fmt '%.2f' "$(calc "$d1 + $d2")") | $(fmt '%.2f' "$d4") | $(fmt '%.3f' "$d2") | $(fmt '%.3f' "$d3") | $(fmt '%.2f' "$d5") | $(fmt '%.2f' "$d6") | $rg/$rd |"
        done
    fi
done
if ((${#RUN_NOTES[@]})); then
    rep ""
    rep "## Notes"
    rep ""
    for n in "${RUN_NOTES[@]}"; do rep "- $n"; done
fi
rep ""
rep "Total runtime: $(($(date +%s) - T_START)) s (including the build check and set-up)."
COMPLETE=1
if ((FAILED_RUNS > 0)); then
    bad "$FAILED_RUNS run(s) did not end with a writable, promoted GoldDR"
    exit 1
fi
