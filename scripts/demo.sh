#!/usr/bin/env bash
# End-to-end demo of patroni-dr-watchdog's main job on a fresh machine:
# Gold dies, the watchdog beside the DR site sees it, every guard agrees, and
# it promotes GoldDR's Patroni standby cluster.
#
#   scripts/demo.sh
#
# Installs what is missing (the Debian packages of scripts/packages/tests.txt
# and demo.txt through scripts/install-system-deps.sh; `cargo build --release
# --locked` and the two-sites harness, `cargo build --locked --example
# two-sites`), then, narrated:
#   1. starts etcd, Gold (a plain PostgreSQL primary with a table and a few
#      rows, a replication role and a permanent slot) and GoldDR (a
#      one-member Patroni standby cluster replicating from Gold) through the
#      end-to-end tests' own harness (examples/two-sites.rs); shows the rows
#      arriving on GoldDR, its role standby_leader, and that it is read-only;
#   2. starts the watchdog beside GoldDR with fast settings (probe every 1 s,
#      timeout 800 ms, fall 2, promote_after 5, promoter patroni-api);
#   3. kills Gold (pg_ctl stop -m immediate) and prints a line a second from
#      /status while the verdict goes down -> lost, the watchdog PATCHes
#      GoldDR's Patroni config and Patroni promotes it; checks GoldDR is a
#      writable primary holding every row, and prints the timings;
#   4. restarts Gold as a primary: the watchdog raises split-brain;
#   5. stops the watchdog with SIGTERM (must exit 0) and everything else.
# Everything it starts is stopped, by PID, and its temporary directory
# removed on exit, also on Ctrl-C or a failure. Exits non-zero (with the
# relevant log tails) when an expected step did not happen.
#
# Only loopback addresses and random free ports are used. Run it as root
# (PostgreSQL and Patroni then run as the `postgres` user) or as an ordinary
# user who can install the packages (sudo) or has them.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"

# Demo settings.
INTERVAL=1s
TIMEOUT=800ms
FALL=2
RISE=2
PROMOTE_AFTER=5
WAL_RECEIVER_FRESH=3s
FAILOVER_TIMEOUT=60 # seconds allowed from Gold's death to a writable GoldDR

WD_LOG=""
FAILED=()
T_START=$(date +%s)

expect() { # expect DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then
        ok "$what"
    else
        bad "$what: did NOT happen"
        FAILED+=("$what")
    fi
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if ((rc != 0)); then
        # The evidence, before it is removed.
        [[ -n "$WD_LOG" ]] && log_tail "$WD_LOG" 30 "the watchdog's log"
        sites_log_tail golddr 30
        sites_log_tail gold 10
        [[ -n "$SITES_LOG" ]] && log_tail "$SITES_LOG" 20 "the two-sites harness's log"
    fi
    if [[ -n "$WORK" ]]; then
        info "cleanup: stopping the watchdog, Patroni and its PostgreSQL, etcd and Gold; removing $WORK"
    fi
    lib_cleanup
    lib_remove_work
    if ((rc != 0)); then
        printf '\n%sdemo FAILED (exit %d)%s\n' "$R" "$rc" "$N" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# status_line: one line from the watchdog's /status, for a human.
read -r -d '' STATUS_LINE_PY <<'PY' || true
import json, sys
s = json.load(sys.stdin)
c, p, lp = s.get("cluster") or {}, s.get("promotion") or {}, s.get("last_probe") or {}
role = (c.get("role") or {}).get("role", "?")
age = lambda v: "-" if v is None else f"{v:.1f}s"
vetoes = ",".join(v.get("guard", "?") for v in p.get("vetoes") or []) or "-"
print(f"verdict={s['verdict']:<7} failures={s['consecutive_failures']} "
      f"last={lp.get('outcome', '-')}/{lp.get('reason', '-')}  "
      f"GoldDR: role={role} wal_receiver={c.get('wal_receiver') or '-'} "
      f"last_msg={age(c.get('wal_last_message_age_seconds'))} data_age={age(c.get('data_age_seconds'))}  "
      f"vetoes={vetoes} promotion={p.get('result') or '-'} split_brain={str(p.get('split_brain')).lower()}")
PY
status_line() {
    curl -fsS --max-time 2 "$WD_URL/status" 2>/dev/null | python3 -c "$STATUS_LINE_PY" 2>/dev/null ||
        echo "(no answer from /status)"
}
wait_up() { wait_verdict "$WD_URL" up 30 >/dev/null; }

# ----------------------------------------------------- 0. prerequisites ----
say "Step 0: prerequisites (PostgreSQL, Patroni, etcd, curl; release build, two-sites harness)"
ensure_packages tests demo
require_tools curl python3 etcd patroni
info "Patroni: $(patroni --version 2>&1 | head -n1); etcd: $(etcd --version 2>&1 | head -n1)"
ensure_build
info "watchdog: $("$BIN" --version)"
ensure_harness
T_READY=$(date +%s)

# ------------------------------------------------- 1. Gold and GoldDR up ----
say "Step 1: etcd, Gold (plain PostgreSQL primary) and GoldDR (Patroni standby cluster), all on loopback"
make_workdir patroni-dr-demo
info "work dir: $WORK"
# Gold gets wal_sender_timeout 2s: its walsender pings GoldDR's WAL receiver
# at least every second while idle, so "last message from Gold" stays fresh
# as long as Gold is alive (the wal_receiver_streaming guard's evidence).
sites_start --no-golddr
info "PostgreSQL: $("$PG_BIN/postgres" --version) ($PG_BIN)"
ok "etcd up on 127.0.0.1:$ETCD_PORT (Patroni's DCS)"

gold_sql "CREATE TABLE orders (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item text NOT NULL,
                               placed_at timestamptz NOT NULL DEFAULT now());
          INSERT INTO orders (item) VALUES ('anvil'), ('rocket skates'), ('giant magnet');"
ok "Gold up on 127.0.0.1:$GOLD_PORT: table orders with $(gold_sql 'SELECT count(*) FROM orders') rows, role $REPLICATION_USER"

info "starting GoldDR: Patroni $(patroni --version 2>&1 | awk '{print $2}') with bootstrap.dcs.standby_cluster -> Gold (base backup, then streaming through the permanent slot '$SLOT')"
golddr_start golddr
ok "GoldDR up in $(fmt '%.1f' "$GOLDDR_STARTUP_S") s: Patroni REST $GOLDDR_URL, PostgreSQL 127.0.0.1:$GOLDDR_PG_PORT"

gold_sql "INSERT INTO orders (item) VALUES ('tornado seeds'), ('earthquake pills');"
GOLD_ROWS=$(gold_sql 'SELECT count(*) FROM orders')
info "2 more rows inserted on Gold ($GOLD_ROWS now); waiting for them on GoldDR"
dr_rows=""
for _ in $(seq 100); do
    dr_rows=$(golddr_sql 'SELECT count(*) FROM orders' 2>/dev/null || true)
    [[ "$dr_rows" == "$GOLD_ROWS" ]] && break
    sleep 0.1
done
expect "GoldDR has all $GOLD_ROWS rows (has ${dr_rows:-none})" test "$dr_rows" = "$GOLD_ROWS"
golddr_sql 'SELECT id, item FROM orders ORDER BY id' 2>/dev/null | sed 's/^/      GoldDR orders: /' || true
ROLE=$(patroni_get role)
expect "GoldDR's Patroni role is standby_leader (GET /patroni: $ROLE)" test "$ROLE" = standby_leader
REPL=$(golddr_sql "SELECT pg_is_in_recovery() || ' / ' || coalesce((SELECT status FROM pg_stat_wal_receiver), 'no WAL receiver')" 2>/dev/null || true)
info "GoldDR pg_is_in_recovery() / WAL receiver: $REPL"
if out=$(golddr_sql "INSERT INTO orders (item) VALUES ('should fail')" 2>&1); then
    bad "an INSERT on GoldDR succeeded: it is not read-only"
    FAILED+=("GoldDR read-only")
else
    ok "GoldDR is read-only: ${out##*ERROR:  }"
fi

# ------------------------------------------------------ 2. watchdog up ----
say "Step 2: the watchdog beside GoldDR, probing Gold"
WD_LOG="$WORK/watchdog.log"
info "interval=$INTERVAL timeout=$TIMEOUT fall=$FALL rise=$RISE promote_after=$PROMOTE_AFTER promoter=patroni-api ($GOLDDR_URL)"
info "guards: local Patroni must be standby_leader and not paused; local WAL receiver not streaming-fresh (< $WAL_RECEIVER_FRESH); data from Gold not older than 5m"
wd_start "$WD_LOG" \
    WATCHDOG_PROBE_INTERVAL="$INTERVAL" \
    WATCHDOG_PROBE_TIMEOUT="$TIMEOUT" \
    WATCHDOG_FALL="$FALL" \
    WATCHDOG_RISE="$RISE" \
    WATCHDOG_PROMOTE_AFTER="$PROMOTE_AFTER" \
    WATCHDOG_PROMOTER=patroni-api \
    WATCHDOG_PATRONI_URL="$GOLDDR_URL" \
    WATCHDOG_LOCAL_PG_HOST=127.0.0.1 \
    WATCHDOG_LOCAL_PG_PORT="$GOLDDR_PG_PORT" \
    WATCHDOG_LOCAL_PG_USER=postgres \
    WATCHDOG_WAL_RECEIVER_FRESH="$WAL_RECEIVER_FRESH"
ok "watchdog running (pid $WD_PID) on $WD_URL; log $WD_LOG"
expect "verdict became up" wait_up
for _ in 1 2 3; do
    info "$(date +%H:%M:%S)  $(status_line)"
    sleep 1
done

# -------------------------------------------------------- 3. Gold dies ----
say "Step 3: killing Gold (pg_ctl stop -m immediate): expect down after $FALL failed probes, lost after $PROMOTE_AFTER, then the promotion"
T0=$(now_s)
gold_kill
info "Gold killed at $(date +%H:%M:%S.%3N)"
RES="$WORK/failover.json"
watch_ok=1
watch_failover "$RES" "$T0" "$FAILOVER_TIMEOUT" 1 || watch_ok=0
r() { json_get "$1" <"$RES"; }

VERDICTS=$(python3 -c 'import json,sys; print(" -> ".join(json.load(open(sys.argv[1]))["verdicts"]))' "$RES")
info "verdicts seen: $VERDICTS"
expect "verdict went down" grep -qw down <<<"$VERDICTS"
expect "verdict went lost" test "$(r lost_since)" != null
expect "the watchdog promoted GoldDR (promotion.result: $(r promotion_result))" test "$(r promotion_result)" = promoted
if [[ "$(r vetoes)" != "[]" ]]; then
    warn "vetoes seen on the way (each held the promotion back for a while): $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["vetoes"])' "$RES")"
fi
if ((watch_ok == 0)); then
    bad "no writable, promoted GoldDR within $FAILOVER_TIMEOUT s of Gold's death; the watchdog's last /status said:"
    python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))["last_status"] or {}
print(json.dumps({k: s.get(k) for k in ("state", "verdict", "verdict_since", "consecutive_failures", "last_probe", "cluster", "promotion")}, indent=1))
' "$RES" | sed 's/^/      /' >&2
    FAILED+=("failover within $FAILOVER_TIMEOUT s")
fi
ROLE=""
for _ in $(seq $((watch_ok ? 40 : 1))); do # Patroni's role may lag the end of recovery by a loop
    ROLE=$(patroni_get role)
    [[ "$ROLE" == master || "$ROLE" == primary ]] && break
    sleep 0.25
done
expect "GoldDR's Patroni role is now $ROLE (Patroni 3.0 says master, later versions primary)" \
    grep -qxE 'master|primary' <<<"$ROLE"
REC=$(golddr_sql 'SELECT pg_is_in_recovery()' 2>/dev/null || echo "no answer")
expect "GoldDR pg_is_in_recovery() = $REC" test "$REC" = f
DR_ROWS=$(golddr_sql 'SELECT count(*) FROM orders' 2>/dev/null || echo "no answer")
expect "all $GOLD_ROWS rows written on Gold before its death are on GoldDR ($DR_ROWS)" test "$DR_ROWS" = "$GOLD_ROWS"
if NEW=$(golddr_sql "INSERT INTO orders (item) VALUES ('written on GoldDR after the failover') RETURNING id" 2>&1); then
    ok "GoldDR is writable: inserted order id $NEW"
    if [[ "$NEW" =~ ^[0-9]+$ ]] && ((NEW > GOLD_ROWS + 1)); then
        info "(the id jumps: PostgreSQL WAL-logs sequence values 32 ahead, so a promoted standby skips some)"
    fi
else
    bad "INSERT on GoldDR failed: $NEW"
    FAILED+=("GoldDR writable")
fi
CFG=$(curl -fsS --max-time 2 "$GOLDDR_URL/config" | python3 -c 'import json,sys; print("standby_cluster" in json.load(sys.stdin))' 2>/dev/null || echo "?")
info "standby_cluster still in GoldDR's dynamic config: $CFG"
grep -E 'gold verdict changed|PROMOTED|vetoed' "$WD_LOG" | sed 's/^/      watchdog: /' | cut -c1-260 || true

# ------------------------------------------------------ 4. split brain ----
say "Step 4: Gold comes back as a primary: two writable primaries, the watchdog must raise split-brain"
if [[ "$(r promotion_result)" != promoted ]]; then
    bad "skipped: the watchdog did not promote GoldDR"
    FAILED+=("split-brain (skipped)")
else
    gold_start
    info "Gold restarted at $(date +%H:%M:%S)"
    sb=""
    for _ in $(seq 100); do
        sb=$(status_get "$WD_URL" promotion.split_brain 2>/dev/null || true)
        [[ "$sb" == true ]] && break
        sleep 0.1
    done
    expect "/status promotion.split_brain: ${sb:-?}" test "$sb" = true
    METRIC=$(curl -fsS --max-time 2 "$WD_URL/metrics" | grep -E '^patroni_dr_watchdog_split_brain ' || true)
    expect "metric: ${METRIC:-patroni_dr_watchdog_split_brain missing}" grep -qE ' 1$' <<<"$METRIC"
    info "$(status_line)"
    curl -fsS --max-time 2 "$WD_URL/metrics" | grep -E '^patroni_dr_watchdog_(promotions_total|vetoes_total)\{' | awk '$NF != 0' | sed 's/^/      /' || true
    grep -E 'SPLIT BRAIN' "$WD_LOG" | sed 's/^/      watchdog: /' | cut -c1-260 || true
fi

# ---------------------------------------------------------- 5. shutdown ----
say "Step 5: stopping the watchdog with SIGTERM"
wd_stop "$WD_PID"
if ((STOP_RC == 0)); then
    ok "watchdog exited 0 after $STOP_MS ms"
else
    bad "watchdog exit code $STOP_RC after $STOP_MS ms (999: still running after 5 s, killed)"
    FAILED+=("clean exit on SIGTERM")
fi
info "stopping GoldDR (Patroni), etcd and Gold"
lib_cleanup

# ----------------------------------------------------------- summary ----
say "Summary ($(($(date +%s) - T_READY)) s after the build, $(($(date +%s) - T_START)) s in all)"
t_lost=$(r lost_since) t_prom=$(r promoted_at) t_wr=$(r writable)
if [[ "$t_lost" != null && "$t_prom" != null && "$t_wr" != null ]]; then
    info "$(printf '%-48s %6.2f s   (bound: promote_after x interval = %s x %s)' 'Gold killed -> verdict lost (the watchdog):' "$t_lost" "$PROMOTE_AFTER" "$INTERVAL")"
    info "$(printf '%-48s %6.2f s' 'lost -> promoted (guards + PATCH /config):' "$(calc "$t_prom - $t_lost")")"
    info "$(printf '%-48s %6.2f s   (seen by a 50 ms poll of pg_is_in_recovery())' 'promoted -> GoldDR writable (Patroni):' "$(calc "$t_wr - $t_prom")")"
    info "$(printf '%-48s %6.2f s' 'Gold killed -> GoldDR writable:' "$t_wr")"
else
    info "timings incomplete: lost $t_lost s, promoted $t_prom s, writable $t_wr s after Gold's death"
fi
if ((${#FAILED[@]})); then
    for f in "${FAILED[@]}"; do bad "$f"; done
    exit 1
fi
ok "Gold lost -> GoldDR promoted by the watchdog -> writable with every row; split-brain raised when Gold came back; clean SIGTERM exit"
