# shellcheck shell=bash
# shellcheck disable=SC2034 # most globals set here are read by the sourcing scripts
# Shell helpers shared by scripts/demo.sh, bench/probe-bench.sh and
# bench/failover-bench.sh: narration, package install and build, free
# loopback ports, a throwaway PostgreSQL primary ("Gold"), etcd, a one-member
# Patroni standby cluster ("GoldDR"), the watchdog itself, and the cleanup of
# exactly the processes started through these functions (by PID).
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
# Only loopback addresses are used. As root, PostgreSQL and Patroni run as
# the `postgres` OS user (through setpriv, which execs the program itself, so
# a signal reaches it directly: runuser would SIGKILL its child 2 s after a
# SIGTERM and cut Patroni's own shutdown of PostgreSQL short).

: "${REPO_ROOT:?set REPO_ROOT before sourcing scripts/lib.sh}"
BIN="$REPO_ROOT/target/release/patroni-dr-watchdog"
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
# env_minus REGEX: sets ENV_MINUS to `-u NAME` for every exported variable
# whose name matches REGEX, for `env "${ENV_MINUS[@]}" cmd`.
ENV_MINUS=()
env_minus() {
    local v
    ENV_MINUS=()
    while IFS= read -r v; do ENV_MINUS+=(-u "$v"); done < <(compgen -e | grep -E "$1" || true)
}

# Reads JSON on stdin, prints the value at a dotted path (e.g. counters.probes).
json_get() {
    if command -v jq >/dev/null 2>&1; then
        jq -r ".$1 | tostring"
    else
        python3 -c '
import json, sys
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

newest_pg_bin() {
    local d
    d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1)
    [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]] && printf '%s\n' "$d"
}

# ensure_packages PKG...: apt-get installs those that are not installed (and
# nothing, without touching the network, when all are).
ensure_packages() {
    "$(dirname "${BASH_SOURCE[0]}")/install-system-deps.sh" "$@"
}

# Sets PG_BIN, installing PostgreSQL first when there is none.
ensure_postgres() {
    PG_BIN=$(newest_pg_bin || true)
    if [[ -z "$PG_BIN" ]]; then
        ensure_packages postgresql
        PG_BIN=$(newest_pg_bin || true)
        [[ -n "$PG_BIN" ]] || die "PostgreSQL installed but no /usr/lib/postgresql/*/bin/initdb found"
    fi
    if is_root; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run PostgreSQL as"
    fi
}

# cargo build --release --locked (a no-op when up to date); checks BIN.
ensure_build() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo is required to build the watchdog (https://rustup.rs)"
    info "building: cargo build --release --locked (a no-op when up to date)"
    (cd "$REPO_ROOT" && cargo build --release --locked) >&"$LIB_FD" 2>&1 || die "cargo build failed"
    [[ -x "$BIN" ]] || die "no binary at $BIN after the build"
}

require_tools() {
    local t
    for t in "$@"; do command -v "$t" >/dev/null 2>&1 || die "$t is required"; done
}

# ------------------------------------------------------ postgres user ----
PG_OS_HOME=""
AS_PG=()
# as_pg_prefix: sets AS_PG to the command prefix that runs a program as the
# postgres OS user when we are root (initdb, postgres and Patroni refuse to
# run as root), else as ourselves; in $WORK (or /) so the postgres user can
# always read its working directory. Every part execs the next, so
# `"${AS_PG[@]}" prog &` then `$!` is prog's own PID (a shell function run in
# the background would leave `$!` pointing at a subshell instead).
as_pg_prefix() {
    local dir=${WORK:-/}
    [[ -d "$dir" ]] || dir=/
    if is_root; then
        if [[ -z "$PG_OS_HOME" ]]; then
            PG_OS_HOME=$(getent passwd postgres | cut -d: -f6)
            PG_OS_HOME=${PG_OS_HOME:-/tmp}
        fi
        AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups
            env -C "$dir" HOME="$PG_OS_HOME" USER=postgres LOGNAME=postgres)
    else
        AS_PG=(env -C "$dir")
    fi
}
# as_pg CMD...: runs CMD (in the foreground) as above.
as_pg() {
    as_pg_prefix
    "${AS_PG[@]}" "$@"
}

# make_workdir PREFIX: sets WORK to a new directory under /tmp (unix socket
# paths must stay short) that the postgres user owns when we are root.
WORK=""
make_workdir() {
    WORK=$(mktemp -d -p /tmp "$1.XXXXXX")
    if is_root; then chown postgres: "$WORK"; fi
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

# ------------------------------------------------------------------ Gold ----
GOLD_DATA=""
GOLD_SOCK=""
GOLD_PORT=""
GOLD_LOG=""
# gold_init [CONF_LINE...]: initdb of a trust-auth PostgreSQL in $WORK/gold
# listening on 127.0.0.1 on a free port; extra postgresql.conf lines may be
# given. Sets GOLD_DATA, GOLD_SOCK, GOLD_PORT, GOLD_LOG. Does not start it.
gold_init() {
    GOLD_DATA="$WORK/gold"
    GOLD_SOCK="$WORK/gold-sock"
    GOLD_LOG="$WORK/gold.log"
    free_port GOLD_PORT
    as_pg mkdir -p "$GOLD_SOCK"
    as_pg "$PG_BIN/initdb" -D "$GOLD_DATA" -U postgres --auth=trust -E UTF8 --locale=C --no-sync \
        >"$WORK/gold-initdb.log" 2>&1 || {
        log_tail "$WORK/gold-initdb.log" 30 initdb
        die "initdb failed"
    }
    {
        printf '\n# patroni-dr-watchdog scripts\n'
        printf "listen_addresses = '127.0.0.1'\n"
        printf 'port = %s\n' "$GOLD_PORT"
        printf "unix_socket_directories = '%s'\n" "$GOLD_SOCK"
        printf 'fsync = off\n'
        local line
        for line in "$@"; do printf '%s\n' "$line"; done
    } | as_pg tee -a "$GOLD_DATA/postgresql.conf" >/dev/null
}
gold_start() {
    as_pg "$PG_BIN/pg_ctl" -D "$GOLD_DATA" -l "$GOLD_LOG" -w -t 60 start >/dev/null || {
        log_tail "$GOLD_LOG" 20 "Gold's log"
        die "Gold (PostgreSQL) did not start"
    }
}
gold_stop() { # gold_stop MODE (fast, immediate, ...)
    as_pg "$PG_BIN/pg_ctl" -D "$GOLD_DATA" -m "$1" -w -t 60 stop >/dev/null
}
gold_running() { [[ -n "$GOLD_DATA" && -f "$GOLD_DATA/postmaster.pid" ]]; }
# gold_sql SQL: runs SQL (several statements allowed) over Gold's unix socket.
gold_sql() {
    as_pg "$PG_BIN/psql" -h "$GOLD_SOCK" -p "$GOLD_PORT" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 -c "$1"
}

# ------------------------------------------------------------------ etcd ----
ETCD_PID=""
ETCD_PORT=""
ETCD_LOG=""
# etcd_start: a single-member etcd on random loopback ports (v2 API enabled
# too), data in $WORK/etcd; waits until /health is healthy. Sets ETCD_PID,
# ETCD_PORT, ETCD_LOG.
etcd_start() {
    local peer attempt
    ETCD_LOG="$WORK/etcd.log"
    for attempt in 1 2 3; do
        free_port ETCD_PORT
        free_port peer
        env_minus '^ETCD_'
        env "${ENV_MINUS[@]}" etcd --name etcd0 --data-dir "$WORK/etcd-$attempt" \
            --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
            --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
            --listen-peer-urls "http://127.0.0.1:$peer" \
            --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
            --initial-cluster "etcd0=http://127.0.0.1:$peer" \
            --initial-cluster-state new --enable-v2=true \
            --logger zap --log-outputs stderr \
            </dev/null >>"$ETCD_LOG" 2>&1 &
        ETCD_PID=$!
        for _ in $(seq 300); do
            if curl -fsS --max-time 1 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; then
                return 0
            fi
            kill -0 "$ETCD_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$ETCD_PID" 2>/dev/null; then
            log_tail "$ETCD_LOG" 30 "etcd's log"
            die "etcd not healthy on 127.0.0.1:$ETCD_PORT after 30 s"
        fi
        wait "$ETCD_PID" 2>/dev/null || true
        ETCD_PID=""
        grep -q 'address already in use' "$ETCD_LOG" || break
    done
    log_tail "$ETCD_LOG" 30 "etcd's log"
    die "etcd exited at start-up"
}
etcd_stop() {
    if [[ -n "$ETCD_PID" ]]; then
        kill -TERM "$ETCD_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$ETCD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$ETCD_PID" 2>/dev/null || true
        wait "$ETCD_PID" 2>/dev/null || true
        ETCD_PID=""
    fi
}

# ---------------------------------------------------------------- GoldDR ----
GOLDDR_DIR=""
GOLDDR_DATA=""
GOLDDR_SOCK=""
GOLDDR_PG_PORT=""
GOLDDR_API_PORT=""
GOLDDR_URL=""
GOLDDR_LOG=""
GOLDDR_SCOPE=""
GOLDDR_STARTUP_S=""
PATRONI_PID=""
REPLICATION_USER=replicator

# gold_prepare_replication SLOT: the replication role and a permanent
# physical slot (reserving WAL from now on) on the running Gold.
gold_prepare_replication() {
    gold_sql "DO \$\$ BEGIN
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$REPLICATION_USER') THEN
                  CREATE ROLE $REPLICATION_USER LOGIN REPLICATION;
                END IF; END \$\$;
              SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$1';
              SELECT pg_create_physical_replication_slot('$1', true);" >/dev/null
}

# golddr_start SCOPE SLOT: a one-member Patroni standby cluster (etcd3 DCS on
# $ETCD_PORT) replicating from Gold through SLOT, data in $WORK/SCOPE; waits
# up to 90 s until GET /patroni says standby_leader and running. Sets the
# GOLDDR_* variables and PATRONI_PID.
golddr_start() {
    local scope=$1 slot=$2 t0 body role state
    t0=$(now_s)
    GOLDDR_SCOPE=$scope
    GOLDDR_DIR="$WORK/$scope"
    GOLDDR_DATA="$GOLDDR_DIR/data"
    GOLDDR_SOCK="$GOLDDR_DIR/sock"
    GOLDDR_LOG="$GOLDDR_DIR/patroni.log"
    free_port GOLDDR_PG_PORT
    free_port GOLDDR_API_PORT
    GOLDDR_URL="http://127.0.0.1:$GOLDDR_API_PORT"
    as_pg mkdir -p "$GOLDDR_SOCK"
    python3 - "$GOLDDR_DIR/patroni.yml" <<PY
import json, sys
api = "127.0.0.1:$GOLDDR_API_PORT"
pg = "127.0.0.1:$GOLDDR_PG_PORT"
config = {
    "scope": "$scope",
    "name": "$scope-0",
    "restapi": {"listen": api, "connect_address": api},
    "etcd3": {"hosts": ["127.0.0.1:$ETCD_PORT"], "protocol": "http"},
    "bootstrap": {
        "dcs": {
            "ttl": 20,
            "loop_wait": 2,
            "retry_timeout": 9,
            "standby_cluster": {
                "host": "127.0.0.1",
                "port": $GOLD_PORT,
                "primary_slot_name": "$slot",
                "create_replica_methods": ["basebackup"],
            },
            "postgresql": {"use_pg_rewind": False, "use_slots": True},
        },
    },
    "postgresql": {
        "listen": pg,
        "connect_address": pg,
        "data_dir": "$GOLDDR_DATA",
        "bin_dir": "$PG_BIN",
        "pgpass": "$GOLDDR_DIR/pgpass",
        "use_unix_socket": True,
        "authentication": {
            "superuser": {"username": "postgres"},
            "replication": {"username": "$REPLICATION_USER"},
        },
        # Don't wait for a spread checkpoint on Gold.
        "basebackup": [{"checkpoint": "fast"}],
        "pg_hba": [
            "local all all trust",
            "host all all 127.0.0.1/32 trust",
            "host replication all 127.0.0.1/32 trust",
        ],
        "parameters": {
            "unix_socket_directories": "$GOLDDR_SOCK",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_wal_size": "64MB",
            "wal_receiver_status_interval": "1s",
        },
    },
    # No /dev/watchdog here.
    "watchdog": {"mode": "off"},
}
# JSON is YAML.
open(sys.argv[1], "w").write(json.dumps(config, indent=2) + "\n")
PY
    if is_root; then chown postgres: "$GOLDDR_DIR/patroni.yml"; fi
    # Patroni, libpq and etcd settings from our environment must not apply.
    env_minus '^(PATRONI_|PG)'
    as_pg_prefix
    "${AS_PG[@]}" env "${ENV_MINUS[@]}" patroni "$GOLDDR_DIR/patroni.yml" </dev/null >>"$GOLDDR_LOG" 2>&1 &
    PATRONI_PID=$!
    for _ in $(seq 450); do
        body=$(curl -fsS --max-time 2 "$GOLDDR_URL/patroni" 2>/dev/null || true)
        if [[ -n "$body" ]]; then
            role=$(json_get role <<<"$body" 2>/dev/null || true)
            state=$(json_get state <<<"$body" 2>/dev/null || true)
            if [[ "$role" == standby_leader && "$state" == running ]]; then
                GOLDDR_STARTUP_S=$(calc "$(now_s) - $t0")
                return 0
            fi
        fi
        if ! kill -0 "$PATRONI_PID" 2>/dev/null; then
            wait "$PATRONI_PID" 2>/dev/null || true
            PATRONI_PID=""
            log_tail "$GOLDDR_LOG" 40 "Patroni's log"
            die "Patroni exited before GoldDR became standby_leader"
        fi
        sleep 0.2
    done
    log_tail "$GOLDDR_LOG" 40 "Patroni's log"
    die "GoldDR is not standby_leader/running after 90 s (last GET /patroni: ${body:-no answer})"
}

# PID of the postmaster running on data dir $1, if it is still that one.
postmaster_pid() {
    local pid
    [[ -f "$1/postmaster.pid" ]] || return 1
    pid=$(head -n1 "$1/postmaster.pid" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$1" || return 1
    printf '%s\n' "$pid"
}

# golddr_stop: SIGTERM to Patroni (which stops its PostgreSQL), SIGKILL after
# 10 s, then an immediate shutdown of any postmaster left on the data dir.
golddr_stop() {
    local pid
    if [[ -n "$PATRONI_PID" ]]; then
        if kill -0 "$PATRONI_PID" 2>/dev/null; then
            kill -TERM "$PATRONI_PID" 2>/dev/null || true
            for _ in $(seq 100); do kill -0 "$PATRONI_PID" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$PATRONI_PID" 2>/dev/null || true
        fi
        wait "$PATRONI_PID" 2>/dev/null || true
        PATRONI_PID=""
    fi
    if [[ -n "$GOLDDR_DATA" ]] && pid=$(postmaster_pid "$GOLDDR_DATA"); then
        as_pg "$PG_BIN/pg_ctl" -D "$GOLDDR_DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
        if [[ "$(postmaster_pid "$GOLDDR_DATA" || true)" == "$pid" ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
}

# golddr_sql SQL: runs SQL over GoldDR's unix socket.
golddr_sql() {
    as_pg "$PG_BIN/psql" -h "$GOLDDR_SOCK" -p "$GOLDDR_PG_PORT" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 -c "$1"
}
# patroni_get FIELD: a field of GoldDR's GET /patroni ("unreachable" if none).
patroni_get() {
    curl -fsS --max-time 2 "$GOLDDR_URL/patroni" 2>/dev/null | json_get "$1" 2>/dev/null || echo unreachable
}

# -------------------------------------------------------------- watchdog ----
declare -A LIB_WD_PIDS=() # pid -> 1 for every watchdog started and not yet stopped
WD_PID=""
WD_URL=""
WD_T0=""
# wd_start LOGFILE [WATCHDOG_X=VALUE...]: starts the watchdog against Gold
# (127.0.0.1:$GOLD_PORT unless WATCHDOG_GOLD_PORT is given, user postgres,
# sslmode disable, text logs) listening on a free loopback port, with the
# given settings on top. Sets WD_PID, WD_URL and WD_T0 (epoch just before the
# exec); returns once /readyz answers.
wd_start() {
    local log=$1 port
    shift
    free_port port
    WD_URL="http://127.0.0.1:$port"
    WD_T0=$(now_s)
    env NO_COLOR=1 \
        WATCHDOG_GOLD_HOST=127.0.0.1 \
        WATCHDOG_GOLD_PORT="$GOLD_PORT" \
        WATCHDOG_GOLD_USER=postgres \
        WATCHDOG_GOLD_DATABASE=postgres \
        WATCHDOG_GOLD_SSLMODE=disable \
        WATCHDOG_LISTEN_ADDR="127.0.0.1:$port" \
        WATCHDOG_LOG_FORMAT=text \
        "$@" "$BIN" run >>"$log" 2>&1 &
    WD_PID=$!
    LIB_WD_PIDS[$WD_PID]=1
    for _ in $(seq 200); do
        curl -fsS --max-time 1 "$WD_URL/readyz" >/dev/null 2>&1 && return 0
        if ! kill -0 "$WD_PID" 2>/dev/null; then
            wait "$WD_PID" 2>/dev/null || true
            unset "LIB_WD_PIDS[$WD_PID]"
            log_tail "$log" 40 "the watchdog's log"
            die "the watchdog exited at start-up"
        fi
        sleep 0.05
    done
    log_tail "$log" 40 "the watchdog's log"
    die "the watchdog is not ready after 10 s"
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
# Stops every process started through these functions, by PID: watchdogs,
# Patroni (and any postmaster left on its data dir), etcd, Gold. Idempotent.
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
    golddr_stop
    etcd_stop
    if gold_running; then
        as_pg "$PG_BIN/pg_ctl" -D "$GOLD_DATA" -m immediate -w -t 20 stop >/dev/null 2>&1
    fi
    local left
    left=$(lib_leftovers)
    if [[ -n "$left" ]]; then
        bad "processes still running from $WORK (a bug in the scripts; stop them by PID):"
        printf '      %s\n' "$left" >&2
    fi
    return 0
}

# "PID command line" of every process whose command line mentions $WORK.
# Bash builtins only, so the search cannot find itself.
lib_leftovers() {
    [[ -n "$WORK" ]] || return 0
    local f pid args
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
        mapfile -d '' args 2>/dev/null <"$f" || continue
        ((${#args[@]})) || continue
        [[ "${args[*]}" == *"$WORK"* ]] && printf '%s %s\n' "$pid" "${args[*]}"
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
