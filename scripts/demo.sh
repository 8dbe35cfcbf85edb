#!/usr/bin/env bash
# End-to-end demo of patroni-dr-watchdog on a fresh machine.
#
#   scripts/demo.sh
#
# Installs PostgreSQL if it is missing, builds the watchdog, starts a
# throwaway PostgreSQL ("Gold") on a random loopback port, points the watchdog
# at it with fast settings, then stops and restarts Gold while printing the
# verdict from /status every second: unknown -> up -> down -> lost -> up.
# Everything it starts is stopped and removed on exit, also on Ctrl-C or on a
# failure. Exits non-zero when an expected transition did not happen.
#
# Only loopback addresses are used. Run it as root (PostgreSQL then runs as the
# `postgres` user) or as an ordinary user (PostgreSQL runs as that user).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

# The watchdog rejects unknown WATCHDOG_* variables, and any inherited one
# would change the demo: start from a clean slate.
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep '^WATCHDOG_' || true)

# Demo settings.
INTERVAL=1s
TIMEOUT=800ms
FALL=2
RISE=2
PROMOTE_AFTER=5
PHASE_TIMEOUT=30 # seconds allowed for each expected transition

BIN="$REPO_ROOT/target/release/patroni-dr-watchdog"
WORK=""
PG_BIN=""
GOLD_DATA=""
GOLD_SOCK=""
GOLD_PORT=""
WD_PID=""
WD_LOG=""
URL=""
FAILED=()
T_START=$(date +%s)

# ---------------------------------------------------------------- output ----
if [[ -t 1 ]]; then
    B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' Y=$'\e[33m' N=$'\e[0m'
else
    B="" G="" R="" Y="" N=""
fi
say() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
info() { printf '    %s\n' "$*"; }
ok() { printf '    %s✔ %s%s\n' "$G" "$*" "$N"; }
bad() { printf '    %s✘ %s%s\n' "$R" "$*" "$N" >&2; }
die() {
    bad "$*"
    exit 1
}

# --------------------------------------------------------------- cleanup ----
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n "$WD_PID" ]] && kill -0 "$WD_PID" 2>/dev/null; then
        info "cleanup: stopping the watchdog (pid $WD_PID)"
        kill -TERM "$WD_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$WD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$WD_PID" 2>/dev/null
        wait "$WD_PID" 2>/dev/null
    fi
    if [[ -n "$GOLD_DATA" && -f "$GOLD_DATA/postmaster.pid" ]]; then
        info "cleanup: stopping PostgreSQL"
        as_pg "$PG_BIN/pg_ctl" -D "$GOLD_DATA" -m immediate -w -t 20 stop >/dev/null 2>&1
    fi
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        rm -rf -- "$WORK"
    fi
    if ((rc != 0)); then
        printf '\n%sdemo FAILED (exit %d)%s\n' "$R" "$rc" "$N" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --------------------------------------------------------------- helpers ----
is_root() { [[ $(id -u) -eq 0 ]]; }

# Runs a PostgreSQL server binary as the postgres user when we are root
# (initdb and postgres refuse to run as root), else as ourselves.
as_pg() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

newest_pg_bin() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
    [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]] && printf '%s\n' "$d"
}

# Prints "verdict<TAB>failures<TAB>successes<TAB>outcome<TAB>reason<TAB>duration_s<TAB>probes"
# from /status, or nothing when the watchdog does not answer.
status_tsv() {
    local body
    body=$(curl -fsS --max-time 2 "$URL/status" 2>/dev/null) || return 0
    if command -v jq >/dev/null 2>&1; then
        jq -r '[.verdict, .consecutive_failures, .consecutive_successes,
                (.last_probe.outcome // "-"), (.last_probe.reason // "-"),
                (.last_probe.duration_seconds // 0), .counters.probes] | map(tostring) | @tsv' \
            <<<"$body"
    else
        python3 -c '
import json, sys
s = json.load(sys.stdin)
lp = s.get("last_probe") or {}
print("\t".join(str(x) for x in [s["verdict"], s["consecutive_failures"], s["consecutive_successes"],
      lp.get("outcome", "-"), lp.get("reason", "-"), lp.get("duration_seconds", 0), s["counters"]["probes"]]))
' <<<"$body"
    fi
}

SEEN="" # verdicts seen by the last watch_until, space separated, in order

# watch_until VERDICT TIMEOUT_S: polls /status 4x a second, prints one line a
# second (and on every verdict change) until the verdict is VERDICT.
watch_until() {
    local want=$1 limit=$2 start now last_print=0 last_verdict="" line
    local verdict fails succ outcome reason dur probes
    SEEN=""
    start=$(date +%s.%N)
    while :; do
        if ! kill -0 "$WD_PID" 2>/dev/null; then
            bad "the watchdog exited unexpectedly; its log:"
            sed 's/^/      /' "$WD_LOG" >&2
            WD_PID=""
            exit 1
        fi
        line=$(status_tsv)
        now=$(date +%s.%N)
        if [[ -n "$line" ]]; then
            IFS=$'\t' read -r verdict fails succ outcome reason dur probes <<<"$line"
            if [[ "$verdict" != "$last_verdict" ]]; then
                SEEN+="$verdict "
            fi
            if [[ "$verdict" != "$last_verdict" ]] || awk -v a="$now" -v b="$last_print" 'BEGIN{exit !(a-b>=0.95)}'; then
                printf '    %s  verdict=%-8s failures=%-2s successes=%-2s last=%s/%s (%.1f ms)  probes=%s\n' \
                    "$(date +%H:%M:%S)" "$verdict" "$fails" "$succ" "$outcome" "$reason" \
                    "$(awk -v d="$dur" 'BEGIN{print d*1000}')" "$probes"
                last_print=$now
            fi
            last_verdict=$verdict
            if [[ "$verdict" == "$want" ]]; then
                return 0
            fi
        fi
        if awk -v a="$now" -v b="$start" -v l="$limit" 'BEGIN{exit !(a-b>=l)}'; then
            return 1
        fi
        sleep 0.25
    done
}

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

# ----------------------------------------------------- 1. prerequisites ----
say "Step 1: prerequisites (PostgreSQL server binaries, release build)"
PG_BIN=$(newest_pg_bin || true)
if [[ -z "$PG_BIN" ]]; then
    info "PostgreSQL is not installed: installing it with apt-get"
    SUDO=()
    if ! is_root; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: install PostgreSQL (apt-get install postgresql) and re-run"
        SUDO=(sudo)
    fi
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
    PG_BIN=$(newest_pg_bin || true)
    [[ -n "$PG_BIN" ]] || die "PostgreSQL installed but no /usr/lib/postgresql/*/bin/initdb found"
fi
info "PostgreSQL: $("$PG_BIN/postgres" --version) ($PG_BIN)"
for tool in curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
if is_root; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run PostgreSQL as"
fi

if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo is required to build the watchdog (https://rustup.rs)"
info "building: cargo build --release --locked (a no-op when up to date)"
cargo build --release --locked
[[ -x "$BIN" ]] || die "no binary at $BIN after the build"
info "watchdog: $("$BIN" --version)"

# ---------------------------------------------------------- 2. Gold up ----
say "Step 2: start a throwaway PostgreSQL (\"Gold\") on loopback"
WORK=$(mktemp -d -t patroni-dr-demo.XXXXXX)
if is_root; then
    chown postgres: "$WORK"
    if ! runuser -u postgres -- test -w "$WORK"; then
        # A private TMPDIR (e.g. under /root) the postgres user cannot reach.
        rm -rf -- "$WORK"
        WORK=$(mktemp -d -p /tmp patroni-dr-demo.XXXXXX)
        chown postgres: "$WORK"
    fi
fi
GOLD_DATA="$WORK/gold"
GOLD_SOCK="$WORK/sock"
WD_LOG="$WORK/watchdog.log"
as_pg mkdir -p "$GOLD_SOCK"
GOLD_PORT=$(free_port)
info "work dir: $WORK"
as_pg "$PG_BIN/initdb" -D "$GOLD_DATA" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >"$WORK/initdb.log" 2>&1 ||
    {
        cat "$WORK/initdb.log" >&2
        die "initdb failed"
    }
as_pg tee -a "$GOLD_DATA/postgresql.conf" >/dev/null <<EOF

# patroni-dr-watchdog demo
listen_addresses = '127.0.0.1'
port = $GOLD_PORT
unix_socket_directories = '$GOLD_SOCK'
fsync = off
EOF
start_gold() {
    as_pg "$PG_BIN/pg_ctl" -D "$GOLD_DATA" -l "$WORK/gold.log" -w -t 30 start >/dev/null ||
        {
            tail -n 20 "$WORK/gold.log" >&2
            die "PostgreSQL did not start"
        }
}
start_gold
ok "Gold is up on 127.0.0.1:$GOLD_PORT (trust auth, socket in $GOLD_SOCK)"

# ------------------------------------------------------- 3. watchdog up ----
say "Step 3: start the watchdog against Gold"
WD_PORT=$(free_port)
URL="http://127.0.0.1:$WD_PORT"
info "interval=$INTERVAL timeout=$TIMEOUT fall=$FALL rise=$RISE promote_after=$PROMOTE_AFTER listen=127.0.0.1:$WD_PORT"
info "log: $WD_LOG"
NO_COLOR=1 \
    WATCHDOG_GOLD_HOST=127.0.0.1 \
    WATCHDOG_GOLD_PORT="$GOLD_PORT" \
    WATCHDOG_GOLD_USER=postgres \
    WATCHDOG_GOLD_DATABASE=postgres \
    WATCHDOG_GOLD_SSLMODE=disable \
    WATCHDOG_PROBE_INTERVAL="$INTERVAL" \
    WATCHDOG_PROBE_TIMEOUT="$TIMEOUT" \
    WATCHDOG_FALL="$FALL" \
    WATCHDOG_RISE="$RISE" \
    WATCHDOG_PROMOTE_AFTER="$PROMOTE_AFTER" \
    WATCHDOG_LISTEN_ADDR="127.0.0.1:$WD_PORT" \
    WATCHDOG_LOG_FORMAT=text \
    "$BIN" run >"$WD_LOG" 2>&1 &
WD_PID=$!
for _ in $(seq 100); do
    curl -fsS --max-time 1 "$URL/readyz" >/dev/null 2>&1 && break
    kill -0 "$WD_PID" 2>/dev/null || {
        sed 's/^/      /' "$WD_LOG" >&2
        WD_PID=""
        die "the watchdog exited at start-up"
    }
    sleep 0.1
done
curl -fsS --max-time 1 "$URL/readyz" >/dev/null 2>&1 || die "the watchdog is not ready after 10 s"
ok "watchdog running (pid $WD_PID), /readyz says ready"

# ------------------------------------------------- 4. the verdict story ----
say "Step 4a: Gold is healthy: waiting for verdict 'up' (needs $RISE good probes)"
expect "verdict became up" watch_until up "$PHASE_TIMEOUT"

say "Step 4b: stopping Gold (pg_ctl stop -m fast): expect 'down' after $FALL failed probes, 'lost' after $PROMOTE_AFTER"
as_pg "$PG_BIN/pg_ctl" -D "$GOLD_DATA" -m fast -w -t 30 stop >/dev/null
info "Gold stopped at $(date +%H:%M:%S)"
lost_reached=0
watch_until lost "$PHASE_TIMEOUT" && lost_reached=1
expect "verdict went to down" grep -qw down <<<"$SEEN"
expect "verdict went to lost" test "$lost_reached" = 1

say "Step 4c: starting Gold again: expect 'down' at the first good probe, 'up' after $RISE"
start_gold
info "Gold started at $(date +%H:%M:%S)"
expect "verdict back to up" watch_until up "$PHASE_TIMEOUT"

# ------------------------------------------------------------ 5. metrics ----
say "Step 5: a few lines of $URL/metrics"
METRICS=$(curl -fsS --max-time 2 "$URL/metrics")
grep -E '^patroni_dr_watchdog_verdict\{' <<<"$METRICS" | sed 's/^/    /' || true
grep -E '^patroni_dr_watchdog_verdict_changes_total\{' <<<"$METRICS" | awk '$NF != 0' | sed 's/^/    /' || true
grep -E '^patroni_dr_watchdog_probes_total\{' <<<"$METRICS" | awk '$NF != 0' | sed 's/^/    /' || true
grep -E '^patroni_dr_watchdog_(probe_success|consecutive_failures|consecutive_successes) ' <<<"$METRICS" | sed 's/^/    /' || true

# ---------------------------------------------------------- 6. shutdown ----
say "Step 6: stopping the watchdog with SIGTERM"
t0=$(date +%s%N)
kill -TERM "$WD_PID"
for _ in $(seq 50); do kill -0 "$WD_PID" 2>/dev/null || break; sleep 0.05; done
if kill -0 "$WD_PID" 2>/dev/null; then
    bad "still running 2.5 s after SIGTERM"
    FAILED+=("clean exit on SIGTERM")
else
    rc=0
    wait "$WD_PID" || rc=$?
    WD_PID=""
    ms=$((($(date +%s%N) - t0) / 1000000))
    if ((rc == 0)); then
        ok "watchdog exited 0 after ${ms} ms"
    else
        bad "watchdog exited $rc after ${ms} ms"
        FAILED+=("clean exit on SIGTERM (exit $rc)")
    fi
fi

say "The watchdog's log (info level: start, probe result changes, verdict changes, shutdown)"
sed 's/^/    /' "$WD_LOG"

# Stop Gold now so the closing line is accurate; the trap removes the rest.
as_pg "$PG_BIN/pg_ctl" -D "$GOLD_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || true

say "Summary ($(($(date +%s) - T_START)) s including the build)"
if ((${#FAILED[@]})); then
    for f in "${FAILED[@]}"; do bad "$f"; done
    exit 1
fi
ok "unknown -> up -> down -> lost -> up, metrics served, clean SIGTERM exit"
