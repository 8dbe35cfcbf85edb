# shellcheck shell=bash
# shellcheck disable=SC2034 # most globals set here are read by the sourcing scripts
# Shell helpers shared by scripts/demo.sh, scripts/check-image.sh,
# bench/probe-bench.sh and bench/failover-bench.sh: narration, package
# install and builds, free loopback ports, the sites (etcd, Gold, the
# proxies, GoldDR) through the end-to-end tests' own harness
# (examples/two-sites.rs, or examples/three-places.rs after
# `use_harness three-places`), the product's processes (the watchdog, the
# witness, the guard), and the cleanup of exactly the processes started
# through these functions (by PID).
#
# Every Python snippet here dies of SIGINT (SIG_DFL) instead of raising
# KeyboardInterrupt: bash runs a script's INT trap only when the foreground
# command died of the signal, so Ctrl-C would otherwise be swallowed.
#
# Source it from a bash script that runs with `set -euo pipefail`:
#
#   REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
#   LIB_FD=2                      # optional: narrate on stderr (default stdout)
#   source "$REPO_ROOT/scripts/lib.sh"
#   trap 'lib_cleanup; lib_remove_work' EXIT   # or a cleanup calling both
#
# Sourcing only defines functions and variables, and unsets inherited
# WATCHDOG_* variables (the watchdog rejects unknown ones, and any inherited
# one would change what the script shows). Functions that start a process
# set global variables instead of printing, because they must run in the
# calling shell (not in a $(...) subshell) for `wait` and cleanup to work.
#
# Only loopback addresses are used.

: "${REPO_ROOT:?set REPO_ROOT before sourcing scripts/lib.sh}"
BIN="$REPO_ROOT/target/release/patroni-dr-watchdog"
HARNESS_NAME=two-sites
HARNESS="$REPO_ROOT/target/debug/examples/$HARNESS_NAME"
LIB_FD=${LIB_FD:-1}

while IFS= read -r _v; do unset "$_v"; done < <(compgen -e | grep '^WATCHDOG_' || true)
unset _v

# ---------------------------------------------------------------- output ----
if [[ -t $LIB_FD && -z "${NO_COLOR:-}" ]]; then
    B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' Y=$'\e[33m' N=$'\e[0m'
else
    B="" G="" R="" Y="" N=""
fi
say() { printf '\n%s==> %s%s\n' "$B" "$*" "$N" >&"$LIB_FD"; }
info() { printf '    %s\n' "$*" >&"$LIB_FD"; }
ok() { printf '    %s✔ %s%s\n' "$G" "$*" "$N" >&"$LIB_FD"; }
warn() { printf '    %s! %s%s\n' "$Y" "$*" "$N" >&"$LIB_FD"; }
bad() { printf '    %s✘ %s%s\n' "$R" "$*" "$N" >&2; }
die() {
    bad "$*"
    exit 1
}
# Indented tail of a log file on stderr: log_tail FILE [LINES] [TITLE]
log_tail() {
    local file=$1 n=${2:-30} title=${3:-$1}
    [[ -f "$file" ]] || return 0
    printf '    --- last %s lines of %s ---\n' "$n" "$title" >&2
    tail -n "$n" "$file" | sed 's/^/      /' >&2
}

# ------------------------------------------------------------ arithmetic ----
# Floating-point arithmetic: calc 'expression' (awk syntax).
calc() { awk "BEGIN{ printf \"%s\", $1 }"; }
fmt() { awk -v x="$2" "BEGIN{ printf \"$1\", x }"; } # fmt '%.3f' value
# stats VALUES...: "min median max"
stats() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{
        m = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2
        printf "%.3f %.3f %.3f", a[1], m, a[NR]}'
}
now_s() { date +%s.%N; }
# Reads JSON on stdin, prints the value at a dotted path (e.g. counters.probes).
json_get() {
    if command -v jq >/dev/null 2>&1; then
        jq -r ".$1 | tostring"
    else
        python3 -c '
import json, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("null" if v is None else str(v).lower() if isinstance(v, bool) else v)
' "$1"
    fi
}
status_get() { # status_get URL PATH
    curl -fsS --max-time 2 "$1/status" | json_get "$2"
}

# ------------------------------------------------------- prerequisites ----
is_root() { [[ $(id -u) -eq 0 ]]; }

# ensure_packages CONCERN...: installs the Debian packages of
# scripts/packages/CONCERN.txt that are missing (nothing, without touching
# the network, when all are there).
ensure_packages() {
    "$REPO_ROOT/scripts/install-system-deps.sh" "$@"
}

lib_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo is required to build the watchdog (https://rustup.rs)"
}

# cargo build --release --locked (a no-op when up to date); checks BIN.
ensure_build() {
    lib_cargo
    info "building: cargo build --release --locked (a no-op when up to date)"
    (cd "$REPO_ROOT" && cargo build --release --locked) >&"$LIB_FD" 2>&1 || die "cargo build failed"
    [[ -x "$BIN" ]] || die "no binary at $BIN after the build"
}

# use_harness NAME: drive examples/NAME.rs (two-sites, the default, or
# three-places); call it before ensure_harness and sites_start.
use_harness() {
    HARNESS_NAME=$1
    HARNESS="$REPO_ROOT/target/debug/examples/$HARNESS_NAME"
}

# Builds the harness: a cargo example made of the tests' own support code,
# in the dev profile the tests are built in.
ensure_harness() {
    lib_cargo
    info "building the $HARNESS_NAME harness: cargo build --locked --example $HARNESS_NAME (a no-op when up to date)"
    (cd "$REPO_ROOT" && cargo build --locked --example "$HARNESS_NAME") >&"$LIB_FD" 2>&1 ||
        die "cargo build --example $HARNESS_NAME failed"
    [[ -x "$HARNESS" ]] || die "no harness at $HARNESS after the build"
}

require_tools() {
    local t
    for t in "$@"; do command -v "$t" >/dev/null 2>&1 || die "$t is required"; done
}

# make_workdir PREFIX: sets WORK to a new directory under /tmp that anyone
# may traverse (check-image's sandboxed UIDs do).
WORK=""
make_workdir() {
    WORK=$(mktemp -d -p /tmp "$1.XXXXXX")
    chmod 755 "$WORK"
}
lib_remove_work() {
    if [[ -n "$WORK" && -d "$WORK" ]]; then rm -rf -- "$WORK"; fi
}

# --------------------------------------------------------------- ports ----
LIB_PORTS=() # every port handed out by free_port in this script
# free_port VAR: a loopback port that was free a moment ago and was not
# handed out before in this script, picked below the kernel's ephemeral range
# (so outgoing connections cannot grab it meanwhile) when there is room.
free_port() {
    local _fp_port # not `port`: the caller's variable may be called that
    _fp_port=$(python3 - "${LIB_PORTS[@]}" <<'PY'
import signal; signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: die of it, so bash runs its INT trap
import random, socket, sys
taken = {int(p) for p in sys.argv[1:]}
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except Exception:
    low = 32768
for _ in range(500):
    if low > 12000:
        port = random.randrange(10000, low)
    else:
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    if port in taken:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    sys.exit(0)
sys.exit("no free loopback port found")
PY
    ) || die "no free loopback port"
    LIB_PORTS+=("$_fp_port")
    printf -v "$1" '%s' "$_fp_port"
}

# --------------------------------------------------------------- sites ----
# The end-to-end tests' harness (examples/two-sites.rs or, after
# `use_harness three-places`, examples/three-places.rs; their heads document
# the protocol and the commands) as a coprocess on two FIFOs in $WORK: plain
# file descriptors, so that $(gold_sql ...) in a subshell can talk to it too.
SITES_PID=""
SITES_IN=""
SITES_OUT=""
SITES_LOG=""
SITES_REPLY=() # payload lines of the last answer
SITES_ERROR="" # why the last command failed
SITES_DIRS=()  # data directories of what it started, for the leftover check
PG_BIN=""
GOLD_PORT=""
TS_PORT=""
ETCD_PORT=""
REPLICATION_USER=""
SLOT=""
GOLDDR_URL=""
GOLDDR_PG_PORT=""
GOLDDR_SCOPE=""
GOLDDR_STARTUP_S=""

# sites_start [ARGS...]: starts the harness (two-sites: --gold-only,
# --no-golddr, --golddr-via-ts; three-places: --members N), waits until
# everything is up and sets the variables named by its first answer's
# KEY=value lines (two-sites: PG_BIN, GOLD_PORT, TS_PORT, REPLICATION_USER,
# SLOT, ETCD_PORT and, with GoldDR, GOLDDR_*). Needs make_workdir first; may
# be called again after sites_stop.
sites_start() {
    [[ -n "$WORK" ]] || die "sites_start: call make_workdir first"
    SITES_LOG="$WORK/$HARNESS_NAME.log"
    # A harness started again after sites_stop gets fresh FIFOs.
    rm -f "$WORK/$HARNESS_NAME.in" "$WORK/$HARNESS_NAME.out"
    mkfifo "$WORK/$HARNESS_NAME.in" "$WORK/$HARNESS_NAME.out"
    # Both ends are opened in the same order on both sides (in, then out):
    # each open of a FIFO waits for the other side's.
    "$HARNESS" "$@" <"$WORK/$HARNESS_NAME.in" >"$WORK/$HARNESS_NAME.out" 2>>"$SITES_LOG" &
    SITES_PID=$!
    exec {SITES_IN}>"$WORK/$HARNESS_NAME.in" {SITES_OUT}<"$WORK/$HARNESS_NAME.out"
    if ! sites_read 900; then
        log_tail "$SITES_LOG" 60 "the $HARNESS_NAME harness's log"
        die "the sites did not start: $SITES_ERROR"
    fi
    sites_vars
}

# sites_read [TIMEOUT_S]: reads one answer into SITES_REPLY; returns 1 (with
# SITES_ERROR) on `error: ...`, end of output or no line for TIMEOUT_S (300).
sites_read() {
    local line limit=${1:-300}
    SITES_REPLY=()
    SITES_ERROR=""
    while IFS= read -r -t "$limit" line <&"$SITES_OUT"; do
        case $line in
            "| "*) SITES_REPLY+=("${line#| }") ;;
            ok) return 0 ;;
            "error: "*)
                SITES_ERROR=${line#error: }
                return 1
                ;;
            *)
                SITES_ERROR="unexpected line from the harness: $line"
                return 1
                ;;
        esac
    done
    SITES_ERROR="no answer from the $HARNESS_NAME harness (see $SITES_LOG)"
    return 1
}

# sites COMMAND...: sends one command (newlines become spaces) and reads its
# answer (SITES_REPLY, SITES_ERROR).
sites() {
    local cmd="$*"
    if [[ -z "$SITES_PID" ]] || ! kill -0 "$SITES_PID" 2>/dev/null; then
        SITES_ERROR="the $HARNESS_NAME harness is not running"
        return 1
    fi
    printf '%s\n' "${cmd//$'\n'/ }" >&"$SITES_IN"
    sites_read
}

# Sets the variables named by the KEY=value lines of the last answer.
sites_vars() {
    local line key
    for line in "${SITES_REPLY[@]}"; do
        key=${line%%=*}
        [[ "$line" == *=* && "$key" =~ ^[A-Z][A-Z0-9_]*$ ]] || continue
        printf -v "$key" '%s' "${line#*=}"
        case $key in *_DATA) SITES_DIRS+=("${line#*=}") ;; esac
    done
}

sites_print_reply() {
    if ((${#SITES_REPLY[@]})); then printf '%s\n' "${SITES_REPLY[@]}"; fi
}
# sites_do COMMAND...: like sites, but dies when it fails.
sites_do() { sites "$@" || die "$HARNESS_NAME: $* failed: $SITES_ERROR"; }

# gold_sql SQL / golddr_sql SQL: runs SQL (several statements allowed) as
# superuser and prints the rows (columns separated by |); on failure prints
# the server's message on stderr and returns 1.
gold_sql() { sites sql gold "$1" || { printf '%s\n' "$SITES_ERROR" >&2 && return 1; } && sites_print_reply; }
golddr_sql() { sites sql golddr "$1" || { printf '%s\n' "$SITES_ERROR" >&2 && return 1; } && sites_print_reply; }
gold_kill() { sites_do kill-gold; }   # immediate shutdown: a crash
gold_start() { sites_do start-gold; } # on the same port
# golddr_start [SCOPE]: a fresh GoldDR (the slot re-created), sets GOLDDR_*.
golddr_start() {
    sites start-golddr "$@" || die "GoldDR did not start: $SITES_ERROR"
    sites_vars
}
golddr_stop() { sites_do stop-golddr; }
# sites_log_tail SITE LINES: the tail of gold's, golddr's or etcd's log on stderr.
sites_log_tail() {
    sites log "$1" "$2" 2>/dev/null || return 0
    printf '    --- last %s lines of the %s log ---\n' "$2" "$1" >&2
    sites_print_reply | sed 's/^/      /' >&2
}

# sites_stop: asks the harness to stop everything (Patroni's own shutdown of
# its PostgreSQL included), SIGTERM after 60 s, SIGKILL after 30 more.
sites_stop() {
    [[ -n "$SITES_PID" ]] || return 0
    if kill -0 "$SITES_PID" 2>/dev/null; then
        { printf 'stop\n' >&"$SITES_IN"; } 2>/dev/null || true
        for _ in $(seq 600); do kill -0 "$SITES_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$SITES_PID" 2>/dev/null; then
            bad "the $HARNESS_NAME harness did not stop within 60 s; SIGTERM"
            kill -TERM "$SITES_PID" 2>/dev/null || true
            for _ in $(seq 300); do kill -0 "$SITES_PID" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$SITES_PID" 2>/dev/null || true
        fi
    fi
    wait "$SITES_PID" 2>/dev/null || true
    SITES_PID=""
    exec {SITES_IN}>&- {SITES_OUT}<&-
}

# patroni_get FIELD: a field of GoldDR's GET /patroni ("unreachable" if none).
patroni_get() {
    curl -fsS --max-time 2 "$GOLDDR_URL/patroni" 2>/dev/null | json_get "$1" 2>/dev/null || echo unreachable
}

# ------------------------------------------------ the product's processes ----
declare -A LIB_WD_PIDS=() # pid -> 1 for every process of the binary started and not yet stopped
BIN_PID=""
BIN_URL=""
BIN_T0=""
# bin_start ROLE LOGFILE [WATCHDOG_X=VALUE...]: starts `$BIN ROLE` (run,
# witness, guard) with only the given settings on top of text logs and a
# free loopback listen port (and the inherited environment, whose WATCHDOG_*
# sourcing removed). Sets BIN_PID, BIN_URL and BIN_T0 (epoch just before the
# exec); returns once /readyz answers. Stopped by lib_cleanup, or wd_stop.
bin_start() {
    local role=$1 log=$2 port what
    shift 2
    what="the $role"
    [[ "$role" == run ]] && what="the watchdog"
    free_port port
    BIN_URL="http://127.0.0.1:$port"
    BIN_T0=$(now_s)
    env NO_COLOR=1 \
        WATCHDOG_LISTEN_ADDR="127.0.0.1:$port" \
        WATCHDOG_LOG_FORMAT=text \
        "$@" "$BIN" "$role" >>"$log" 2>&1 &
    BIN_PID=$!
    LIB_WD_PIDS[$BIN_PID]=1
    for _ in $(seq 200); do
        curl -fsS --max-time 1 "$BIN_URL/readyz" >/dev/null 2>&1 && return 0
        if ! kill -0 "$BIN_PID" 2>/dev/null; then
            wait "$BIN_PID" 2>/dev/null || true
            unset "LIB_WD_PIDS[$BIN_PID]"
            log_tail "$log" 40 "$what's log"
            die "$what exited at start-up"
        fi
        sleep 0.05
    done
    log_tail "$log" 40 "$what's log"
    die "$what is not ready after 10 s"
}

WD_PID=""
WD_URL=""
WD_T0=""
# wd_start LOGFILE [WATCHDOG_X=VALUE...]: starts the watchdog against Gold
# (127.0.0.1:$GOLD_PORT unless WATCHDOG_GOLD_PORT is given, user postgres,
# sslmode disable, text logs) listening on a free loopback port, with the
# given settings on top. Sets WD_PID, WD_URL and WD_T0 (epoch just before the
# exec); returns once /readyz answers.
wd_start() {
    local log=$1
    shift
    bin_start run "$log" \
        WATCHDOG_GOLD_HOST=127.0.0.1 \
        WATCHDOG_GOLD_PORT="$GOLD_PORT" \
        WATCHDOG_GOLD_USER=postgres \
        WATCHDOG_GOLD_DATABASE=postgres \
        WATCHDOG_GOLD_SSLMODE=disable \
        "$@"
    WD_PID=$BIN_PID
    WD_URL=$BIN_URL
    WD_T0=$BIN_T0
}
# wd_stop PID: SIGTERM, then sets STOP_RC (999 = still running after 5 s,
# killed) and STOP_MS.
STOP_RC=""
STOP_MS=""
wd_stop() {
    local pid=$1 t0
    t0=$(date +%s%N)
    STOP_RC=0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 250); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        STOP_RC=999
    else
        wait "$pid" || STOP_RC=$?
    fi
    STOP_MS=$((($(date +%s%N) - t0) / 1000000))
    unset "LIB_WD_PIDS[$pid]"
}

# wait_verdict URL VERDICT TIMEOUT_S [T0_EPOCH]
# Polls /status every 50 ms until the verdict is VERDICT. Prints
#   "<poll_s> <since_s> <reason> <probes>"
# where poll_s is when the poll saw it and since_s when the watchdog says the
# verdict changed (verdict_since), both in seconds after T0 (default: now).
# Returns 1 on timeout.
wait_verdict() {
    local t0=${4:-$(now_s)}
    python3 - "$1" "$2" "$3" "$t0" <<'PY'
import signal; signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: die of it, so bash runs its INT trap
import datetime, json, sys, time, urllib.request
url, want, limit, t0 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
deadline = time.time() + limit
last = None
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
while time.time() < deadline:
    try:
        with opener.open(url + "/status", timeout=1) as r:
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

# The python3 that has psycopg2 (Debian's, which Patroni uses), else python3.
lib_python() {
    local p
    for p in /usr/bin/python3 python3; do
        if "$p" -c 'import psycopg2' >/dev/null 2>&1; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    printf 'python3\n'
}

# watch_failover OUT_JSON T0 TIMEOUT_S EVERY_S
# After Gold was killed at epoch T0: polls the watchdog's /status ($WD_URL)
# and `SELECT pg_is_in_recovery()` on GoldDR (127.0.0.1:$GOLDDR_PG_PORT, a
# fresh connection each time) every 50 ms, until GoldDR is writable and the
# watchdog reports its promotion, or TIMEOUT_S. Unless EVERY_S is 0, prints a
# line every EVERY_S seconds and on every change of verdict, promotion
# result, Patroni role or writability.
# Writes to OUT_JSON, all times in seconds after T0 (null when not seen):
#   lost_since (verdict_since of "lost"), lost_seen, down_since,
#   promoted_at (promotion.at), promoted_seen, writable (first poll that saw
#   pg_is_in_recovery() = false), role_primary_seen (Patroni's role
#   master/primary), verdicts (sequence), vetoes (every distinct one seen),
#   last_status (the last /status). Returns 0 when writable and promoted.
watch_failover() {
    "$(lib_python)" - "$1" "$2" "$3" "$4" "$WD_URL" "$GOLDDR_URL" "$GOLDDR_PG_PORT" "$WD_PID" "$PG_BIN" <<'PY'
import signal; signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: die of it, so bash runs its INT trap
import datetime, json, os, subprocess, sys, time, urllib.request
out, t0, limit, narrate, wd_url, patroni_url, pg_port, wd_pid, pg_bin = sys.argv[1:10]
t0, limit, every, wd_pid = float(t0), float(limit), float(narrate), int(wd_pid)
narrate = every > 0
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    import psycopg2
except ImportError:
    psycopg2 = None

def get(url):
    try:
        with opener.open(url, timeout=1) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # Patroni answers 503 for some roles
        try:
            return json.load(e)
        except Exception:
            return None
    except Exception:
        return None

def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() - t0 if s else None

def in_recovery():
    """True/False, or None when GoldDR does not answer."""
    if psycopg2 is not None:
        try:
            c = psycopg2.connect(host="127.0.0.1", port=int(pg_port), user="postgres", dbname="postgres",
                                 connect_timeout=1, application_name="failover-watch")
            try:
                cur = c.cursor()
                cur.execute("SELECT pg_is_in_recovery()")
                return cur.fetchone()[0]
            finally:
                c.close()
        except Exception:
            return None
    try:
        r = subprocess.run([os.path.join(pg_bin, "psql"), "-h", "127.0.0.1", "-p", pg_port, "-U", "postgres",
                            "-d", "postgres", "-XAtq", "-c", "SELECT pg_is_in_recovery()"],
                           capture_output=True, text=True, timeout=2, env=dict(os.environ, PGCONNECT_TIMEOUT="1"))
        return {"t": True, "f": False}.get(r.stdout.strip())
    except Exception:
        return None

res = {"lost_since": None, "lost_seen": None, "down_since": None, "promoted_at": None, "promoted_seen": None,
       "writable": None, "role_primary_seen": None, "verdicts": [], "vetoes": [], "last_status": None,
       "watchdog_exited": False, "poller": "psycopg2" if psycopg2 else "psql"}
deadline = t0 + limit
last_print = 0.0
last_key = None
role = "?"
next_role = 0.0
while True:
    now = time.time()
    if now > deadline:
        break
    try:
        os.kill(wd_pid, 0)
    except OSError:
        res["watchdog_exited"] = True
        break
    s = get(wd_url + "/status")
    if s is not None:
        res["last_status"] = s
        v = s.get("verdict")
        if not res["verdicts"] or res["verdicts"][-1] != v:
            res["verdicts"].append(v)
            if v == "down" and res["down_since"] is None:
                res["down_since"] = ts(s.get("verdict_since"))
        if v == "lost" and res["lost_seen"] is None:
            res["lost_seen"] = now - t0
            res["lost_since"] = ts(s.get("verdict_since"))
        p = s.get("promotion") or {}
        for veto in p.get("vetoes") or []:
            if veto not in res["vetoes"]:
                res["vetoes"].append(veto)
        if p.get("result") and res["promoted_seen"] is None:
            res["promoted_seen"] = now - t0
            res["promoted_at"] = ts(p.get("at"))
            res["promotion_result"] = p.get("result")
            if res["lost_since"] is None and v == "lost":
                res["lost_since"] = ts(s.get("verdict_since"))
    if now >= next_role:  # Patroni's own view, 4 times a second
        pj = get(patroni_url + "/patroni")
        role = (pj or {}).get("role", "unreachable")
        if role in ("master", "primary") and res["role_primary_seen"] is None:
            res["role_primary_seen"] = now - t0
        next_role = now + 0.25
    if res["writable"] is None and in_recovery() is False:
        res["writable"] = time.time() - t0
    if narrate and s is not None:
        p = s.get("promotion") or {}
        lp = s.get("last_probe") or {}
        key = (s.get("verdict"), p.get("result"), role, res["writable"] is not None)
        if key != last_key or now - last_print >= every - 0.05:
            vetoes = ",".join(x.get("guard", "?") for x in p.get("vetoes") or []) or "-"
            wal = (s.get("cluster") or {}).get("wal_receiver") or "none"
            print(f"    t+{now - t0:5.1f}s  verdict={s.get('verdict'):<7} failures={s.get('consecutive_failures'):<2} "
                  f"last={str(lp.get('outcome', '-')) + '/' + str(lp.get('reason', '-')):<15} | GoldDR: role={role:<14} "
                  f"wal_receiver={wal:<9} writable={'yes' if res['writable'] is not None else 'no '} | "
                  f"vetoes={vetoes} promotion={p.get('result') or '-'}", flush=True)
            last_print, last_key = now, key
    if res["writable"] is not None and res["promoted_seen"] is not None and res["role_primary_seen"] is not None:
        break
    time.sleep(0.05)
json.dump(res, open(out, "w"), indent=1)
sys.exit(0 if res["writable"] is not None and res["promoted_seen"] is not None else 1)
PY
}

# ------------------------------------------------------------- machine ----
machine_desc() {
    local cpu
    cpu=$(awk -F': *' '/^model name/{print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
    printf '%s CPU(s), %s, kernel %s' "$(nproc)" "${cpu:-unknown CPU}" "$(uname -r)"
}
commit_desc() {
    printf '%s' "$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    git -C "$REPO_ROOT" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || printf ' + uncommitted changes'
}

# --------------------------------------------------------------- cleanup ----
# Stops every process started through these functions, by PID: the
# product's (watchdogs, witnesses, guards), then the harness (GoldDR, etcd,
# Gold). Idempotent.
lib_cleanup() {
    local pid
    for pid in "${!LIB_WD_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
        unset "LIB_WD_PIDS[$pid]"
    done
    sites_stop
    local left
    left=$(lib_leftovers)
    if [[ -n "$left" ]]; then
        bad "processes still running from this script (a bug in the scripts; stop them by PID):"
        printf '      %s\n' "$left" >&2
    fi
    return 0
}

# "PID command line" of every process whose command line mentions $WORK,
# a data directory of the sites or etcd's client address. Bash builtins
# only, so the search cannot find itself.
lib_leftovers() {
    local f pid args cmdline marks=() m d
    [[ -n "$WORK" ]] && marks+=("$WORK")
    for d in "${SITES_DIRS[@]}"; do marks+=("${d%/data}"); done
    [[ -n "$ETCD_PORT" ]] && marks+=("127.0.0.1:$ETCD_PORT")
    ((${#marks[@]})) || return 0
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
        mapfile -d '' args 2>/dev/null <"$f" || continue
        ((${#args[@]})) || continue
        cmdline="${args[*]}"
        for m in "${marks[@]}"; do
            if [[ "$cmdline" == *"$m"* ]]; then
                printf '%s %s\n' "$pid" "$cmdline"
                break
            fi
        done
    done
    return 0
}

# finish_bench_report RC: for the benchmarks' exit traps. Marks the report
# ($REPORT) incomplete unless $COMPLETE is 1, publishes it to $RESULTS,
# removes the work directory and prints the total runtime since $T_START.
finish_bench_report() {
    local rc=$1
    if [[ -n "$REPORT" && -f "$REPORT" ]]; then
        if ((COMPLETE == 0)); then
            printf '\n**INCOMPLETE: the benchmark stopped early (exit %d).**\n' "$rc" >>"$REPORT"
        fi
        cp "$REPORT" "$RESULTS" && printf '\n(report written to %s)\n' "${RESULTS#"$REPO_ROOT"/}" >&2
    fi
    lib_remove_work
    printf '(total bench runtime %d s)\n' "$(($(date +%s) - T_START))" >&2
}
