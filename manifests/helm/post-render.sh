#!/usr/bin/env bash
# Helm post-renderer: adds the patroni-dr-watchdog sidecar (../base/sidecar)
# and its Role/RoleBinding (./rbac, without the ServiceAccount the chart
# already has) to the manifests the seed chart renders. No fork of the chart.
#
# Helm 3:  helm upgrade --install --namespace abc123-dev -f values-golddr.yaml \
#              --post-renderer /path/to/manifests/helm/post-render.sh patroni .
# Helm 4:  post-renderers must be plugins: `helm plugin install
#              /path/to/manifests/helm` (plugin.yaml beside this script), then
#              --post-renderer patroni-dr-watchdog
#
# The sidecar also takes over the chart's install-time Job: in enforce mode it
# keeps standby_cluster.port in patroni-config on the Transport Service's
# current port (docs/operations.md, "The Transport Service moves"); this
# script leaves the Job in the release, harmless once the sidecar enforces.
#
# Reads the rendered manifests on stdin, writes the result on stdout, exits
# non-zero on any error (Helm then aborts). Needs kubectl (kubectl kustomize)
# or kustomize on the PATH. Everyone who upgrades the release must use it,
# or the next `helm upgrade` without it removes the sidecar again.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
# The manifests/ directory of a checkout (override if this script was copied
# away from it, e.g. by a Helm 4 plugin install that copies).
manifests="${PATRONI_DR_WATCHDOG_MANIFESTS:-$here/..}"
if [[ ! -d "$manifests/base/sidecar" || ! -d "$manifests/helm/rbac" ]]; then
    echo "post-render.sh: $manifests/base/sidecar or $manifests/helm/rbac not found;" \
        "set PATRONI_DR_WATCHDOG_MANIFESTS to the repository's manifests/ directory" >&2
    exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Kustomize takes other directories only by relative path.
rel="$(realpath --relative-to="$work" "$manifests")"

cat > "$work/chart.yaml"
cat > "$work/kustomization.yaml" <<KUSTOMIZATION
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - chart.yaml
  - $rel/helm/rbac
components:
  - $rel/base/sidecar
KUSTOMIZATION

if command -v kubectl > /dev/null 2>&1; then
    kubectl kustomize "$work"
elif command -v kustomize > /dev/null 2>&1; then
    kustomize build "$work"
else
    echo "post-render.sh: needs kubectl or kustomize on the PATH" >&2
    exit 1
fi
