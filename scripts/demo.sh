#!/usr/bin/env bash
# End-to-end demo of patroni-dr-watchdog's whole story on a fresh machine,
# with real Patroni and etcd on loopback and the product's one binary in its
# three roles: the witness (a third place), the guard (beside Gold's Patroni)
# and the DR watchdog (beside GoldDR), plus the gate (Gold's pre_promote).
# In both acts a sampler asks both sites several times a second whether they
# take writes (not in recovery AND an INSERT succeeds): never two may.
#
#   scripts/demo.sh
#
# Installs what is missing (the Debian packages of scripts/packages/tests.txt
# and demo.txt through scripts/install-system-deps.sh; `cargo build --release
# --locked` and the three-places harness, `cargo build --locked --example
# three-places`), then, narrated:
#
# Act 1, Gold cut off, not killed:
#   1. starts etcd, Gold (a one-member Patroni cluster, use_pg_rewind, behind
#      a leader router standing in for its Service), GoldDR (a one-member
#      Patroni standby cluster replicating from Gold through the Transport
#      Service) and a fault proxy on every route between the places, through
#      the end-to-end tests' own harness (examples/three-places.rs); shows
#      the rows on GoldDR, its role standby_leader, and that it is read-only;
#   2. starts the release binary three times: the witness (observing Gold
#      through its own routes), the guard (probes GoldDR through the reverse
#      TS, asks the witness) and the DR watchdog (promoter patroni-api, one
#      witness, paired with the guard: (PROMOTE_AFTER - 1) x INTERVAL >=
#      FENCE_AFTER + 10 s); runs the gate once: it allows;
#   3. starts an application writing a row on Gold every 100 ms through
#      Gold's Service, and the write sampler;
#   4. cuts every link of Gold (the TS both ways, the witness's routes to
#      Gold's PostgreSQL and Patroni API, the guard's route to the witness)
#      and prints what each place sees every second: the guard fences Gold
#      (read-only within seconds), the witness says Gold's site is lost, the
#      DR watchdog declares Gold lost after its longer bound and promotes
#      GoldDR; the gate now refuses a Gold promotion;
#   5. brings the links back: Gold rewinds and streams from GoldDR (a standby
#      leader following it); prints the guard's rejoin report if it serves
#      one ("(rejoin report not available)" otherwise);
#   6. counts the rows Gold acknowledged that are not on GoldDR: the lost
#      writes, on Gold's old timeline only (gone from Gold after the rewind);
#   7. the sampler's verdict, "never two writable sites: N samples", and
#      stops the three processes with SIGTERM (each must exit 0).
# Act 2, Gold killed (its whole site crashes) and brought back:
#   8. fresh three places and processes, the gate installed as Gold's
#      postgresql.pre_promote, the sampler, rows written on Gold;
#   9. kills Gold's Patroni and PostgreSQL and its guard (SIGKILL): the
#      witness agrees the site is lost, the DR watchdog promotes GoldDR,
#      which holds every row;
#  10. restarts Gold's site (Patroni and the guard): the gate refuses Gold's
#      promotion, the guard fences Gold, Gold follows GoldDR; the DR watchdog
#      never sees a writable Gold (no split-brain); the sampler's verdict,
#      and SIGTERM for the three processes.
# Then the timings of both acts. Everything it starts is stopped, by PID, and
# its temporary directory removed on exit, also on Ctrl-C or a failure. Exits
# non-zero (with the relevant log tails) when an expected step did not
# happen. About a minute and a half after the build on a 2-core machine.
#
# Only loopback addresses and random free ports are used. Run it as root
# (PostgreSQL and Patroni then run as the `postgres` user) or as an ordinary
# user who can install the packages (sudo) or has them.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"
use_harness three-places

# Demo settings. The guard fences Gold once it has been cut off from GoldDR
# and the witness FENCE_AFTER without a break; the DR watchdog may declare
# Gold lost (PROMOTE_AFTER - 1) x DR_INTERVAL after Gold fell silent, at the
# earliest: 12 s >= 2 s + 10 s, the pairing rule it checks at start-up.
GUARD_INTERVAL=500ms
GUARD_TIMEOUT=450ms
FENCE_AFTER=2s
DR_INTERVAL=1s
DR_TIMEOUT=800ms
PROMOTE_AFTER=13
WITNESS_PROMOTE_AFTER=5
FALL=2
RISE=2
WRITE_EVERY_MS=100
CUT_TIMEOUT=90     # seconds allowed from the cut (or the crash) to a writable GoldDR and a read-only Gold
REJOIN_TIMEOUT=120 # seconds allowed from the links' (or the site's) return to Gold streaming from GoldDR

# Set from the harness's first answer (examples/three-places.rs).
GOLD_SCOPE="" GOLD_STARTUP_S="" GOLD_API_URL="" GOLD_PG_PORT="" ROUTER_PORT="" RTS_PORT="" W_PG_PORT=""
W_HEARTBEAT="" PROBE_USER="" GUARD_W_PORT="" DR_W_PORT=""

ACT=1
WD_LOG=""
GUARD_LOG=""
WITNESS_LOG=""
GUARD_PID=""
GUARD_URL=""
WITNESS_PID=""
WITNESS_URL=""
GUARD_ENV=()
FAILED=()
T_START=$(date +%s)

quiet() { "$@" >/dev/null; }
# signed SECONDS: "+1.23" or "-0.10"
signed() { [[ "$1" == -* ]] && printf '%s' "$1" || printf '+%s' "$1"; }
expect() { # expect DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then
        ok "$what"
    else
        bad "$what: did NOT happen"
        FAILED+=("act $ACT: $what")
    fi
}
failed() { # failed WHAT: an expected step that did not happen
    bad "$1"
    FAILED+=("act $ACT: $1")
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if ((rc != 0)); then
        # The evidence, before it is removed.
        [[ -n "$WITNESS_LOG" ]] && log_tail "$WITNESS_LOG" 15 "the witness's log"
        [[ -n "$GUARD_LOG" ]] && log_tail "$GUARD_LOG" 30 "the guard's log"
        [[ -n "$WD_LOG" ]] && log_tail "$WD_LOG" 30 "the DR watchdog's log"
        sites_log_tail gold 30
        sites_log_tail golddr 30
        [[ -n "$SITES_LOG" ]] && log_tail "$SITES_LOG" 20 "the three-places harness's log"
    fi
    if [[ -n "$WORK" ]]; then
        info "cleanup: stopping the witness, the guard, the DR watchdog, both Patroni clusters and their PostgreSQL, etcd; removing $WORK"
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

# kv [PREFIX]: the KEY=value lines of the last harness answer as shell
# variables (PREFIXKEY).
kv() {
    local line key
    for line in "${SITES_REPLY[@]}"; do
        key=${line%%=*}
        [[ "$line" == *=* && "$key" =~ ^[A-Z][A-Z0-9_]*$ ]] || continue
        printf -v "${1:-}$key" '%s' "${line#*=}"
    done
}
# The harness's view of both sites (roles, writable, the writer's count).
STATE_LINE=""
state() {
    if sites state; then STATE_LINE="${SITES_REPLY[*]}"; else STATE_LINE=""; fi
}

# poll_json URL TIMEOUT_S PYTHON_CONDITION: polls URL (JSON) every 100 ms
# until the condition on `s` holds; prints the document; returns 1 on timeout
# (printing the last one seen).
poll_json() {
    python3 - "$@" <<'PY'
import signal; signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: die of it, so bash runs its INT trap
import json, sys, time, urllib.request
url, limit, cond = sys.argv[1], float(sys.argv[2]), sys.argv[3]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline, s = time.time() + limit, None
while True:
    try:
        with opener.open(url, timeout=1) as r:
            s = json.load(r)
        if eval(cond, {"s": s}):
            print(json.dumps(s))
            sys.exit(0)
    except Exception:
        pass
    if time.time() > deadline:
        print(json.dumps(s))
        sys.exit(1)
    time.sleep(0.1)
PY
}

# What every place sees, in two lines, then the facts the script acts on as
# one line of KEY=value words.
read -r -d '' NARRATE_PY <<'PY' || true
import signal; signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: die of it, so bash runs its INT trap
import json, sys, urllib.request
guard_url, witness_url, dr_url, promote_after, t, state = sys.argv[1:7]
st = dict(w.split("=", 1) for w in state.split() if "=" in w)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def get(u):
    try:
        with opener.open(u, timeout=1) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        try:
            return json.load(e)
        except Exception:
            return None
    except Exception:
        return None
g = get(guard_url + "/status") or {}
o = get(witness_url + "/v1/observation") or {}
d = get(dr_url + "/status") or {}
wg = (o.get("sites") or {}).get("gold") or {}
p = d.get("promotion") or {}
fence = g.get("fence") or {}
vetoes = ",".join(v.get("guard", "?") for v in p.get("vetoes") or []) or "-"
rw = lambda k: "writable" if st.get(k) == "yes" else "read-only"
if "WRITES_OK" not in st:
    writer = ""
elif st.get("WRITES_OK_AFTER_CUT", "-") == "-":
    writer = f" (the writer: {st['WRITES_OK']} rows, last {st.get('WRITER_LAST', '-')})"
else:
    writer = f" (the writer: {st['WRITES_OK_AFTER_CUT']} rows since the cut, last {st.get('WRITER_LAST', '-')})"
gold = "down" if st.get("GOLD_ROLE") == "unreachable" else f"{st.get('GOLD_ROLE', '?')}, {rw('GOLD_WRITABLE')}"
if g:
    iso = g.get("isolated_for_seconds")
    isolated = ("yes (%.1fs)" % iso if iso is not None else "yes") if g.get("isolated") else "no"
    fenced = fence.get("reason", "yes") if g.get("fenced") else "no"
    guard = f"GoldDR {g.get('golddr') or '?'}, isolated {isolated}, fenced {fenced}"
else:
    guard = "no answer"
print(f"    t+{float(t):5.1f}s  Gold: {gold}{writer}   GoldDR: {st.get('GOLDDR_ROLE', '?')}, {rw('GOLDDR_WRITABLE')}")
print(f"              guard: {guard} | witness: Gold {wg.get('verdict', '?')}, says {wg.get('says', '?')} | "
      f"DR watchdog: {d.get('verdict', '?')} {d.get('consecutive_failures', '?')}/{promote_after}, "
      f"vetoes {vetoes}, promotion {p.get('result') or '-'}")
print(f"guard_fenced={'yes' if g.get('fenced') else 'no'} guard_reason={fence.get('reason') or '-'} "
      f"dr_verdict={d.get('verdict') or '-'} dr_result={p.get('result') or '-'} witness_says={wg.get('says') or '-'}")
PY
NARRATE_FACTS=""
narrate() { # narrate T STATE_LINE
    local out lines=()
    out=$(python3 -c "$NARRATE_PY" "$GUARD_URL" "$WITNESS_URL" "$WD_URL" "$PROMOTE_AFTER" "$1" "$2" 2>/dev/null) ||
        out=$'    (no answer)\n\n'
    mapfile -t lines <<<"$out"
    printf '%s\n' "${lines[0]:-}" "${lines[1]:-}" >&"$LIB_FD"
    NARRATE_FACTS=${lines[2]:-}
}
fact() { # fact NAME: a word of the last narration's facts
    local w
    for w in $NARRATE_FACTS; do [[ "$w" == "$1="* ]] && printf '%s' "${w#*=}" && return 0; done
    printf '%s' -
}

# gate: Gold's pre_promote, run here with the guard's settings; prints its
# line, returns its exit code.
gate() {
    local out rc=0
    out=$(env -i PATH="$PATH" NO_COLOR=1 "${GUARD_ENV[@]}" "$BIN" gate 2>&1) || rc=$?
    printf '%s\n' "$out" | grep -E 'gate: ' | sed -E 's/^/      /' | cut -c1-260 || true
    return "$rc"
}

# places_up: the harness's three places, and what they hold.
places_up() {
    sites_start --members 1
    ok "etcd up on 127.0.0.1:$ETCD_PORT (the DCS of both Patroni clusters)"
    ok "Gold up in $(fmt '%.1f' "$GOLD_STARTUP_S") s: Patroni cluster $GOLD_SCOPE (REST $GOLD_API_URL, PostgreSQL 127.0.0.1:$GOLD_PG_PORT, use_pg_rewind), its Service 127.0.0.1:$ROUTER_PORT (follows the leader)"
    ok "GoldDR up in $(fmt '%.1f' "$GOLDDR_STARTUP_S") s: Patroni standby cluster $GOLDDR_SCOPE (REST $GOLDDR_URL, PostgreSQL 127.0.0.1:$GOLDDR_PG_PORT), streaming from Gold through the TS"
    info "routes (fault proxies): TS GoldDR->Gold 127.0.0.1:$TS_PORT, reverse TS Gold->GoldDR 127.0.0.1:$RTS_PORT, witness->Gold's PostgreSQL 127.0.0.1:$W_PG_PORT, witness->Gold's Patroni ${W_HEARTBEAT%/liveness}"
    local rows
    rows=$(golddr_sql 'SELECT count(*) FROM orders' 2>/dev/null || echo "?")
    expect "GoldDR has Gold's $rows orders" test "$rows" = "$(gold_sql 'SELECT count(*) FROM orders')"
    local role
    role=$(patroni_get role)
    expect "GoldDR's Patroni role is standby_leader" test "$role" = standby_leader
    role=$(curl -fsS --max-time 2 "$GOLD_API_URL/patroni" 2>/dev/null | json_get role 2>/dev/null || echo unreachable)
    expect "Gold's Patroni role is $role (Patroni 3.0 says master)" grep -qxE 'master|primary' <<<"$role"
}

# product_up: the witness, its routes, the guard and the DR watchdog, each
# ready; sets *_PID, *_URL, *_LOG and GUARD_ENV.
product_up() {
    local timing=(WATCHDOG_FALL="$FALL" WATCHDOG_RISE="$RISE")
    WITNESS_LOG="$WORK/act$ACT-witness.log"
    bin_start witness "$WITNESS_LOG" "${timing[@]}" \
        WATCHDOG_PROBE_INTERVAL="$DR_INTERVAL" \
        WATCHDOG_PROBE_TIMEOUT="$DR_TIMEOUT" \
        WATCHDOG_PROMOTE_AFTER="$WITNESS_PROMOTE_AFTER" \
        WATCHDOG_GOLD_HOST=127.0.0.1 \
        WATCHDOG_GOLD_PORT="$W_PG_PORT" \
        WATCHDOG_GOLD_USER="$PROBE_USER" \
        WATCHDOG_GOLD_SSLMODE=disable \
        WATCHDOG_GOLD_HEARTBEAT="$W_HEARTBEAT" \
        HOSTNAME=witness-a
    WITNESS_PID=$BIN_PID WITNESS_URL=$BIN_URL
    sites_do witness-routes "${WITNESS_URL##*:}"
    kv
    ok "witness (pid $WITNESS_PID, $WITNESS_URL): probes Gold's PostgreSQL every $DR_INTERVAL, Gold's Patroni API is its site heartbeat; reached by the guard through 127.0.0.1:$GUARD_W_PORT, by GoldDR through 127.0.0.1:$DR_W_PORT"

    GUARD_LOG="$WORK/act$ACT-guard.log"
    GUARD_ENV=(
        "${timing[@]}"
        WATCHDOG_PROBE_INTERVAL="$GUARD_INTERVAL"
        WATCHDOG_PROBE_TIMEOUT="$GUARD_TIMEOUT"
        WATCHDOG_GOLDDR_HOST=127.0.0.1
        WATCHDOG_GOLDDR_PORT="$RTS_PORT"
        WATCHDOG_GOLDDR_USER="$PROBE_USER"
        WATCHDOG_GOLDDR_SSLMODE=disable
        WATCHDOG_PATRONI_URL="$GOLD_API_URL"
        WATCHDOG_WITNESSES="http://127.0.0.1:$GUARD_W_PORT"
        WATCHDOG_FENCE_AFTER="$FENCE_AFTER"
        HOSTNAME=gold-0-guard
    )
    guard_start
    ok "guard (pid $GUARD_PID, $GUARD_URL): probes GoldDR through the reverse TS every $GUARD_INTERVAL, fences Gold after $FENCE_AFTER cut off from GoldDR and the witness"

    WD_LOG="$WORK/act$ACT-watchdog.log"
    wd_start "$WD_LOG" "${timing[@]}" \
        WATCHDOG_PROBE_INTERVAL="$DR_INTERVAL" \
        WATCHDOG_PROBE_TIMEOUT="$DR_TIMEOUT" \
        WATCHDOG_PROMOTE_AFTER="$PROMOTE_AFTER" \
        WATCHDOG_GUARD_FENCE_AFTER="$FENCE_AFTER" \
        WATCHDOG_GOLD_PORT="$TS_PORT" \
        WATCHDOG_GOLD_USER="$PROBE_USER" \
        WATCHDOG_PROMOTER=patroni-api \
        WATCHDOG_PATRONI_URL="$GOLDDR_URL" \
        WATCHDOG_LOCAL_PG_HOST=127.0.0.1 \
        WATCHDOG_LOCAL_PG_PORT="$GOLDDR_PG_PORT" \
        WATCHDOG_LOCAL_PG_USER=postgres \
        WATCHDOG_WAL_RECEIVER_FRESH=3s \
        WATCHDOG_WITNESSES="http://127.0.0.1:$DR_W_PORT" \
        HOSTNAME=golddr-0
    ok "DR watchdog (pid $WD_PID, $WD_URL): probes Gold through the TS every $DR_INTERVAL, Gold lost after $PROMOTE_AFTER failures, promotes (patroni-api) only if the witness agrees"

    expect "the DR watchdog: Gold up, beside the standby leader" \
        quiet poll_json "$WD_URL/status" 30 's["verdict"] == "up" and s["cluster"]["role"]["role"] == "standby_leader"'
    expect "the witness: Gold's primary writable" \
        quiet poll_json "$WITNESS_URL/v1/observation" 30 's["sites"]["gold"]["says"] == "primary_writable"'
    expect "the guard: GoldDR a standby, Gold not fenced" \
        quiet poll_json "$GUARD_URL/status" 30 's["state"] == "watching" and s["golddr"] == "standby" and s["fenced"] is False'
}
guard_start() {
    bin_start guard "$GUARD_LOG" "${GUARD_ENV[@]}"
    GUARD_PID=$BIN_PID GUARD_URL=$BIN_URL
}

# product_down: SIGTERM to the DR watchdog, the guard and the witness; each
# must exit 0.
product_down() {
    local who
    for who in "DR watchdog:$WD_PID" "guard:$GUARD_PID" "witness:$WITNESS_PID"; do
        [[ -n "${who#*:}" ]] || continue
        wd_stop "${who#*:}"
        if ((STOP_RC == 0)); then
            ok "the ${who%%:*} exited 0 after $STOP_MS ms"
        else
            failed "the ${who%%:*}: exit code $STOP_RC after $STOP_MS ms on SIGTERM (999: still running after 5 s, killed)"
        fi
    done
    WD_PID="" GUARD_PID="" WITNESS_PID=""
}

# sampler_verdict PREFIX: stops the sampler; its numbers as PREFIX* variables.
sampler_verdict() {
    local line rounds sampled two
    sites_do sampler-report
    kv "$1"
    for line in "${SITES_REPLY[@]}"; do [[ "$line" == *=* ]] || info "$line"; done
    rounds=${1}ROUNDS sampled=${1}SAMPLED two=${1}TWO_WRITABLE
    expect "the sampler may vouch: ${!rounds} rounds, every site answered, at least 3 a second" test "${!sampled}" = yes
    if [[ "${!two}" == 0 ]]; then
        ok "never two writable sites: ${!rounds} samples"
    else
        failed "two writable sites in ${!two} of ${!rounds} samples"
    fi
}

# follow_gold ORDER_ID: waits until Gold follows GoldDR (Patroni standby
# leader or replica, streaming, the order replayed), narrating; sets
# FOLLOW_S (since the harness's heal-gold / restart-gold), empty on timeout.
# Every second: follow_tick, if defined by the caller.
FOLLOW_S=""
follow_gold() {
    local mark=$1 t t0 last=-1 reason
    FOLLOW_S=""
    t0=$(now_s)
    while :; do
        sites gold-follows "$mark" || true
        F_FOLLOWS="" F_ROLE="" F_RECEIVER="" F_REPLAYED="" F_SINCE_HEAL_S=""
        kv F_
        t=$F_SINCE_HEAL_S
        [[ "$t" =~ ^[0-9.]+$ ]] || t=$(calc "$(now_s) - $t0")
        if [[ "$F_FOLLOWS" == yes ]]; then
            FOLLOW_S=$F_SINCE_HEAL_S
            info "$(printf 't+%5.1fs  Gold: %s, WAL receiver %s, order %s replayed: %s' "$t" "$F_ROLE" "$F_RECEIVER" "$mark" "$F_REPLAYED")"
            return 0
        fi
        if (($(calc "(int($t) > $last)") == 1)); then
            last=$(calc "int($t)")
            reason=$(status_get "$GUARD_URL" fence.reason 2>/dev/null || echo "no answer")
            [[ "$reason" == null ]] && reason=none
            info "$(printf 't+%5.1fs  Gold: %s, WAL receiver %s, order %s replayed: %s | guard: fence %s' \
                "$t" "${F_ROLE:-?}" "${F_RECEIVER:-?}" "$mark" "${F_REPLAYED:-?}" "$reason")"
            declare -F follow_tick >/dev/null && follow_tick
        fi
        if (($(calc "($t > $REJOIN_TIMEOUT)") == 1)); then
            failed "Gold does not follow GoldDR $REJOIN_TIMEOUT s later"
            return 1
        fi
        sleep 0.2
    done
}

# watch_until_promoted T0 WHAT: a narrated line a second until GoldDR is
# promoted and writable and Gold read-only; sets SEEN_* (seconds after T0).
SEEN_FENCED="" SEEN_RO="" SEEN_SITE_LOST="" SEEN_LOST="" SEEN_PROM="" SEEN_WR=""
watch_until_promoted() {
    local t0=$1 it t
    SEEN_FENCED="" SEEN_RO="" SEEN_SITE_LOST="" SEEN_LOST="" SEEN_PROM="" SEEN_WR=""
    while :; do
        it=$(now_s)
        t=$(calc "$it - $t0")
        state
        narrate "$t" "$STATE_LINE"
        t=$(fmt '%.1f' "$t")
        if [[ -z "$SEEN_FENCED" && "$(fact guard_fenced)" == yes ]]; then
            SEEN_FENCED=$t
            ok "t+${t}s: the guard fenced Gold ($(fact guard_reason)): standby_cluster -> GoldDR in Gold's dynamic config"
        fi
        if [[ -z "$SEEN_RO" && "$STATE_LINE" == *GOLD_WRITABLE=no* ]]; then
            SEEN_RO=$t
            ok "t+${t}s: Gold takes no writes"
        fi
        if [[ -z "$SEEN_SITE_LOST" && "$(fact witness_says)" == site_lost ]]; then
            SEEN_SITE_LOST=$t
            ok "t+${t}s: the witness says Gold's site is lost (Gold's PostgreSQL and Patroni API silent on its routes)"
        fi
        if [[ -z "$SEEN_LOST" && "$(fact dr_verdict)" == lost ]]; then
            SEEN_LOST=$t
            ok "t+${t}s: the DR watchdog declared Gold lost"
        fi
        if [[ -z "$SEEN_PROM" && "$(fact dr_result)" == promoted ]]; then
            SEEN_PROM=$t
            ok "t+${t}s: the DR watchdog promoted GoldDR (PATCH /config: standby_cluster removed)"
        fi
        if [[ -z "$SEEN_WR" && "$STATE_LINE" == *GOLDDR_WRITABLE=yes* ]]; then
            SEEN_WR=$t
            ok "t+${t}s: GoldDR takes writes"
        fi
        [[ -n "$SEEN_WR" && -n "$SEEN_RO" && -n "$SEEN_PROM" ]] && return 0
        if (($(calc "($t > $CUT_TIMEOUT)") == 1)); then
            failed "no read-only Gold and promoted, writable GoldDR within $CUT_TIMEOUT s of $2"
            return 1
        fi
        sleep "$(calc "(1 - ($(now_s) - $it) < 0.05) ? 0.05 : 1 - ($(now_s) - $it)")"
    done
}

promotion_checks() {
    local reason
    reason=$(status_get "$WD_URL" promotion.reason 2>/dev/null || echo "?")
    expect "the promotion needed the witness: \"$reason\"" grep -q "witnesses agree" <<<"$reason"
    grep -E 'gold verdict changed.*to=lost|PROMOTED' "$WD_LOG" | sed 's/^/      DR watchdog: /' | cut -c1-240 || true
}

# rejoin_report WAIT_S: prints the guard's rejoin report (/status.rejoin,
# waited for up to WAIT_S), or "(rejoin report not available)" when this
# build serves none; sets REJOIN_BYTES (WAL only Gold's old timeline had).
REJOIN_BYTES=""
rejoin_report() {
    local out
    out=$(python3 - "$GUARD_URL" "$1" <<'PY'
import signal; signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: die of it, so bash runs its INT trap
import json, sys, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.time() + float(sys.argv[2])
while True:
    try:
        with opener.open(sys.argv[1] + "/status", timeout=1) as r:
            s = json.load(r)
    except Exception:
        s = {}
    if "rejoin" not in s or s["rejoin"] is not None or time.time() > deadline:
        break  # not served by this build, or there
    time.sleep(0.2)
r = s.get("rejoin")
if not r:
    print("(rejoin report not available)")
    sys.exit(0)
lost = r.get("lost")
v = lambda k: "-" if r.get(k) is None else r.get(k)
print(f"at {v('at')}: Gold timeline {v('gold_timeline')}, GoldDR timeline {v('golddr_timeline')}, "
      f"switchpoint {v('switchpoint')}, Gold's last position {v('gold_last')}")
if lost:
    print(f"WAL on Gold's old timeline only: {lost.get('from')} .. {lost.get('to')} ({lost.get('bytes')} bytes)")
elif not r.get("error"):
    print("WAL on Gold's old timeline only: none")
if r.get("summary"):
    print(f"summary: {r['summary']}")
if r.get("error"):
    print(f"could not be computed: {r['error']}")
PY
    ) || out="(rejoin report not available)"
    info "the guard's rejoin report:"
    printf '%s\n' "$out" | sed 's/^/      /' >&"$LIB_FD"
    REJOIN_BYTES=""
    if [[ "$out" =~ \(([0-9]+)\ bytes\) ]]; then REJOIN_BYTES=${BASH_REMATCH[1]}; fi
    return 0
}

# ----------------------------------------------------- 0. prerequisites ----
say "Step 0: prerequisites (PostgreSQL, Patroni, etcd, curl; release build, three-places harness)"
ensure_packages tests demo
require_tools curl python3 etcd patroni
info "Patroni: $(patroni --version 2>&1 | head -n1); etcd: $(etcd --version 2>&1 | head -n1)"
ensure_build
info "patroni-dr-watchdog: $("$BIN" --version) (one binary: run, witness, guard, gate)"
ensure_harness
T_READY=$(date +%s)
make_workdir patroni-dr-demo
info "work dir: $WORK"

# ===================================================================== ACT 1
printf '\n%s######## Act 1: Gold cut off from everything, not killed ########%s\n' "$B" "$N" >&"$LIB_FD"
say "Step 1: etcd, Gold (a Patroni cluster) and GoldDR (a Patroni standby cluster), a fault proxy on every route"
places_up
info "PostgreSQL: $("$PG_BIN/postgres" --version) ($PG_BIN)"
golddr_sql 'SELECT id, item FROM orders ORDER BY id' 2>/dev/null | sed 's/^/      GoldDR orders: /' || true
if out=$(golddr_sql "INSERT INTO orders VALUES (99, 'should fail')" 2>&1); then
    failed "an INSERT on GoldDR succeeded: it is not read-only"
else
    ok "GoldDR is read-only: ${out##*ERROR:  }"
fi
info "every probe logs in as '$PROBE_USER' (LOGIN only), granted EXECUTE on pg_read_file(text) on Gold (replicated): the guard may read GoldDR's timeline history"

say "Step 2: one binary, three roles: the witness (third place), the guard (beside Gold's Patroni), the DR watchdog (beside GoldDR)"
product_up
info "pairing rule: (PROMOTE_AFTER - 1) x INTERVAL = ($PROMOTE_AFTER - 1) x $DR_INTERVAL >= the guard's FENCE_AFTER $FENCE_AFTER + 10 s (the DR watchdog checks it at start-up)"
info "the gate, Gold's postgresql.pre_promote (Patroni runs it before promoting a Gold member), with the guard's settings:"
if gate; then ok "the gate allows a Gold promotion: GoldDR is a standby"; else failed "the gate refused a Gold promotion while GoldDR is a standby"; fi

say "Step 3: an application writing on Gold every ${WRITE_EVERY_MS} ms, and the write sampler on both sites"
sites_do writer-start "$WRITE_EVERY_MS"
ok "writer: INSERT INTO ticks through Gold's Service (127.0.0.1:$ROUTER_PORT), one row every $WRITE_EVERY_MS ms"
sites_do sampler-start
ok "sampler: every 150 ms on each site: writable = not in recovery AND an INSERT succeeds"
sleep 2
state
narrate 0 "$STATE_LINE"

say "Step 4: Gold cut off, not killed: the TS both ways, the witness's routes to Gold, the guard's route to the witness"
sites_do isolate-gold blackhole
T_CUT=$(now_s)
kv CUT_
info "blackholed at $(date +%H:%M:%S.%3N): $CUT_ROUTES; Gold's Patroni and PostgreSQL run on, its application keeps writing"
watch_until_promoted "$T_CUT" "the cut" || true
expect "the guard fenced Gold for isolation" test "$(fact guard_reason)" = isolated
expect "Gold took no writes before GoldDR took any (as polled here: t+${SEEN_RO:-?}s, t+${SEEN_WR:-?}s)" \
    test -n "$SEEN_RO" -a -n "$SEEN_WR" -a "$(calc "(${SEEN_RO:-0} < ${SEEN_WR:-0})")" = 1
promotion_checks
grep -E 'FENCED' "$GUARD_LOG" | head -n 1 | sed 's/^/      guard: /' | cut -c1-240 || true
info "the gate now, with the guard's settings (GoldDR out of reach, Gold fenced):"
if gate; then failed "the gate allowed a Gold promotion while Gold is fenced and cut off"; else ok "the gate refuses a Gold promotion"; fi

say "Step 5: the links come back: Gold must rewind and follow GoldDR"
sites_do writer-stop
kv WRITER_
info "the writer stopped: $WRITER_WRITES_OK of $WRITER_WRITES inserts acknowledged by Gold"
MARK=100
if out=$(golddr_sql "INSERT INTO orders (id, item) VALUES ($MARK, 'written on GoldDR while Gold was cut off')" 2>&1); then
    ok "order $MARK written on GoldDR, the new primary"
else
    failed "INSERT on GoldDR failed: $out"
fi
sites_do heal-gold
info "links back at $(date +%H:%M:%S.%3N): the guard sees GoldDR writable through the reverse TS"
follow_gold "$MARK" || true
A1_FOLLOW_S=$FOLLOW_S
[[ -n "$FOLLOW_S" ]] && ok "Gold rewound and streams from GoldDR through the reverse TS, $(fmt '%.1f' "$FOLLOW_S") s after the links came back"
GUARD_ST=$(poll_json "$GUARD_URL/status" 30 's["fenced"] is True and (s.get("fence") or {}).get("reason") == "golddr_promoted"') || true
expect "the guard keeps Gold fenced, its record raised to golddr_promoted" \
    test "$(json_get fence.reason <<<"${GUARD_ST:-null}" 2>/dev/null)" = golddr_promoted
if sites log gold 400; then
    sites_print_reply | grep -E 'pg_rewind|rewind' | grep -vE '^ *(File|Traceback|raise)' | head -n 3 |
        sed 's/^/      Gold: /' | cut -c1-220 || true
fi
rejoin_report 15
A1_REJOIN_BYTES=$REJOIN_BYTES

say "Step 6: the writes Gold acknowledged that GoldDR never got (on Gold's old timeline only)"
sites_do writer-report
kv L_
info "acknowledged by Gold: $L_WRITES_OK rows, $L_WRITES_OK_AFTER_CUT of them after the cut (the last at t$(signed "$L_LAST_OK_S")s); failed: $L_WRITES_FAILED"
info "rows of ticks on GoldDR now: $L_ON_GOLDDR; on Gold now: $L_ON_GOLD"
if [[ "$L_LOST" =~ ^[0-9]+$ ]] && ((L_LOST > 0)); then
    ok "lost writes: $L_LOST rows acknowledged by Gold are not on GoldDR: ids $L_LOST_IDS, written t$(signed "$L_LOST_FROM_S")s .. t$(signed "$L_LOST_TO_S")s ($L_LOST_BEFORE_CUT of them before the cut, not yet streamed)"
else
    failed "no lost writes counted (LOST=$L_LOST): Gold took no write after GoldDR's last received position?"
fi
expect "none of them is on Gold any more (rewound to the switchpoint): $L_LOST_STILL_ON_GOLD left" test "$L_LOST_STILL_ON_GOLD" = 0
expect "Gold holds exactly GoldDR's rows" test "$L_GOLD_SAME_AS_GOLDDR" = yes
[[ "$L_UNACKNOWLEDGED_KEPT" == 0 ]] || info "($L_UNACKNOWLEDGED_KEPT inserts that failed on the client's side were committed all the same)"

say "Step 7: the sampler's verdict; SIGTERM for the three processes"
sampler_verdict A1_
product_down
info "stopping GoldDR and Gold (Patroni), etcd"
sites_stop

# ===================================================================== ACT 2
ACT=2
printf '\n%s######## Act 2: Gold killed (its whole site crashes), then brought back ########%s\n' "$B" "$N" >&"$LIB_FD"
say "Step 8: fresh three places and processes; the gate installed as Gold's postgresql.pre_promote"
places_up
product_up
# The gate runs as Patroni's user: a copy of the binary it may execute.
mkdir -p "$WORK/bin"
cp "$BIN" "$WORK/bin/patroni-dr-watchdog"
chmod 755 "$WORK/bin" "$WORK/bin/patroni-dr-watchdog"
sites_do set-pre-promote "exec env -i NO_COLOR=1 ${GUARD_ENV[*]} $WORK/bin/patroni-dr-watchdog gate"
ok "Gold's pre_promote: exec env -i <the guard's settings> patroni-dr-watchdog gate"
sites_do sampler-start
ok "sampler running"
gold_sql "INSERT INTO orders (id, item) VALUES (6, 'dehydrated boulders'), (7, 'jet-propelled pogo stick')" >/dev/null
ROWS=$(gold_sql 'SELECT count(*) FROM orders')
dr_rows=""
for _ in $(seq 100); do
    dr_rows=$(golddr_sql 'SELECT count(*) FROM orders' 2>/dev/null || true)
    [[ "$dr_rows" == "$ROWS" ]] && break
    sleep 0.1
done
expect "2 more orders written on Gold; GoldDR has all $ROWS" test "$dr_rows" = "$ROWS"

say "Step 9: Gold's site crashes: Patroni and PostgreSQL SIGKILLed, its guard with them"
kill -KILL "$GUARD_PID" 2>/dev/null || true
wait "$GUARD_PID" 2>/dev/null || true
unset "LIB_WD_PIDS[$GUARD_PID]"
GUARD_PID=""
sites_do kill-gold
T_KILL=$(now_s)
info "killed at $(date +%H:%M:%S.%3N)"
watch_until_promoted "$T_KILL" "the crash" || true
promotion_checks
DR_ROWS=$(golddr_sql 'SELECT count(*) FROM orders' 2>/dev/null || echo "no answer")
expect "all $ROWS orders written on Gold before its death are on GoldDR ($DR_ROWS)" test "$DR_ROWS" = "$ROWS"
MARK=101
if out=$(golddr_sql "INSERT INTO orders (id, item) VALUES ($MARK, 'written on GoldDR after the failover')" 2>&1); then
    ok "order $MARK written on GoldDR, the new primary"
else
    failed "INSERT on GoldDR failed: $out"
fi

say "Step 10: Gold's site comes back (Patroni and its guard restart): Gold must not be promoted, and must follow GoldDR"
sites_do restart-gold
info "Patroni restarted at $(date +%H:%M:%S.%3N), on Gold's old data"
guard_start
ok "guard restarted (pid $GUARD_PID, $GUARD_URL)"
GATE_SEEN=""
GOLD_WRITABLE_SEEN=""
follow_tick() { # each second while waiting: the gate's verdicts in Gold's log, a writable Gold
    if [[ -z "$GATE_SEEN" ]] && sites log gold 400; then
        local line
        line=$(sites_print_reply | grep -E 'gate: promotion (refused|allowed)' | tail -n 1 || true)
        if [[ -n "$line" ]]; then
            GATE_SEEN=$line
            info "      Gold's Patroni ran its pre_promote: ${line:0:220}"
        fi
    fi
    state
    [[ "$STATE_LINE" == *GOLD_WRITABLE=yes* ]] && GOLD_WRITABLE_SEEN=1
    return 0
}
follow_gold "$MARK" || true
unset -f follow_tick
A2_FOLLOW_S=$FOLLOW_S
[[ -n "$FOLLOW_S" ]] && ok "Gold follows GoldDR (rewound where needed), $(fmt '%.1f' "$FOLLOW_S") s after its site came back"
if [[ -z "$GATE_SEEN" ]] && sites log gold 1000; then
    GATE_SEEN=$(sites_print_reply | grep -E 'gate: promotion (refused|allowed)' | tail -n 1 || true)
fi
if [[ "$GATE_SEEN" == *"promotion refused"* ]]; then
    ok "the gate refused Gold's promotion: ${GATE_SEEN##*reason=}"
elif [[ -n "$GATE_SEEN" ]]; then
    failed "the gate allowed Gold's promotion: $GATE_SEEN"
else
    info "(Patroni did not try to promote Gold: the guard's fence came first)"
fi
GUARD_ST=$(poll_json "$GUARD_URL/status" 30 '(s.get("fence") or {}).get("reason") == "golddr_promoted"') || true
expect "the guard fenced Gold: GoldDR was promoted" \
    test "$(json_get fence.reason <<<"${GUARD_ST:-null}" 2>/dev/null)" = golddr_promoted
expect "Gold took no writes since it came back (as polled here)" test -z "$GOLD_WRITABLE_SEEN"
info "(the guard restarted with Gold's site: it never saw this Gold as a primary, so it may have no last position of Gold's to report)"
rejoin_report 5
SB=$(status_get "$WD_URL" promotion.split_brain 2>/dev/null || echo "?")
expect "the DR watchdog never saw a writable Gold beside GoldDR (promotion.split_brain: $SB)" test "$SB" = false
sampler_verdict A2_
product_down
info "stopping GoldDR and Gold (Patroni), etcd"
lib_cleanup

# ----------------------------------------------------------- summary ----
say "Summary ($(($(date +%s) - T_READY)) s after the build, $(($(date +%s) - T_START)) s in all)"
row() { info "$(printf '%-52s %11s   %s' "$1:" "$2" "${3:-}")"; }
secs() { if [[ "$1" =~ ^-?[0-9.]+$ ]]; then fmt '%.2f s' "$1"; else printf '%s' "${1:-?}"; fi; }
info "Act 1, Gold cut off:"
row "  Gold isolated -> Gold read-only" "$(secs "${A1_GOLD_READ_ONLY_S:-}")" "(the guard: fenced after $FENCE_AFTER isolated, probing every $GUARD_INTERVAL; Patroni's demotion)"
row "  Gold isolated -> GoldDR writable" "$(secs "${A1_GOLDDR_WRITABLE_S:-}")" "(the DR watchdog: lost after $PROMOTE_AFTER x $DR_INTERVAL, the witness agreeing; Patroni)"
row "  links back -> Gold streaming from GoldDR" "$(secs "${A1_FOLLOW_S:-}")" "(Patroni: pg_rewind, a standby leader following GoldDR)"
row "  lost writes (acknowledged by Gold, not on GoldDR)" "${L_LOST:-?} rows" "(one row every $WRITE_EVERY_MS ms through Gold's Service)"
if [[ -n "${A1_REJOIN_BYTES:-}" ]]; then
    row "  rejoin report: WAL on Gold's old timeline only" "$A1_REJOIN_BYTES bytes" "(the guard's report: the range the lost writes lie in)"
else
    row "  rejoin report: WAL on Gold's old timeline only" "-" "(not reported by the guard)"
fi
row "  never two writable sites" "${A1_ROUNDS:-?} samples" "(${A1_RATE:-?}/s over ${A1_LIFETIME_S:-?} s)"
info "Act 2, Gold killed:"
row "  Gold killed -> GoldDR writable" "$(secs "${A2_GOLDDR_WRITABLE_S:-}")" "(the same bound; the witness agreeing)"
row "  Gold's site back -> Gold streaming from GoldDR" "$(secs "${A2_FOLLOW_S:-}")" "(the gate refusing, the guard fencing, Patroni)"
row "  never two writable sites" "${A2_ROUNDS:-?} samples" "(${A2_RATE:-?}/s over ${A2_LIFETIME_S:-?} s)"
info "(read-only and writable moments from the sampler's rounds, every 150 ms; following from polls every 200 ms)"
if ((${#FAILED[@]})); then
    for f in "${FAILED[@]}"; do bad "$f"; done
    exit 1
fi
ok "cut off: fenced by its guard, GoldDR promoted with the witness, Gold follows GoldDR, lost writes counted; killed: GoldDR promoted with every row, Gold kept from promoting and following GoldDR; never two writable sites"
