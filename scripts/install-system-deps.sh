#!/usr/bin/env bash
# Installs the missing Debian packages of the given concerns, each listed in
# scripts/packages/CONCERN.txt:
#
#   scripts/install-system-deps.sh tests [demo] [image] [manifests]
#
# Idempotent: does nothing (and needs no network) when all are there.
# Otherwise it needs root (or sudo) and Debian's package registry.
#
# Nothing it installs is left running or enabled: apt-get runs under a
# policy-rc.d that forbids starting services (Debian's postgresql, etcd-server,
# patroni and prometheus packages would each start a server), and afterwards
# every service shipped by a package it newly installed (dependencies
# included) is stopped and disabled: with systemctl where systemd runs, else
# through its init script and update-rc.d. The tests and scripts start their
# own servers, on random loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -eq 0 ]]; then
    concerns=(scripts/packages/*.txt)
    concerns=("${concerns[@]##*/}")
    echo "usage: $0 CONCERN... (one of: ${concerns[*]%.txt})" >&2
    exit 2
fi
wanted=()
for concern in "$@"; do
    list="scripts/packages/$concern.txt"
    [[ -f "$list" ]] || {
        echo "install-system-deps: no package list $list" >&2
        exit 2
    }
    mapfile -t -O "${#wanted[@]}" wanted < <(grep -Ev '^\s*(#|$)' "$list")
done
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for pkg in "${wanted[@]}"; do
    installed "$pkg" || [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

as_root=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || {
        echo "install-system-deps: need root or sudo to install: ${missing[*]}" >&2
        exit 1
    }
    as_root=(sudo)
fi
apt() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq "$@"; }

# policy-rc.d exiting 101 forbids invoke-rc.d and deb-systemd-invoke to start
# anything. Keep the system's own if it already forbids; else put it aside
# for the duration of the install and restore it afterwards.
policy=/usr/sbin/policy-rc.d
policy_saved=""
policy_ours=0
restore_policy() {
    if [[ $policy_ours -eq 1 ]]; then
        "${as_root[@]}" rm -f "$policy"
        if [[ -n "$policy_saved" ]]; then "${as_root[@]}" mv "$policy_saved" "$policy"; fi
    fi
}
trap restore_policy EXIT
rc=0
[[ -x "$policy" ]] && { "$policy" patroni-dr-watchdog-check start >/dev/null 2>&1 || rc=$?; }
if [[ $rc -ne 101 ]]; then
    if [[ -e "$policy" ]]; then
        policy_saved="$policy.patroni-dr-watchdog.$$"
        "${as_root[@]}" mv "$policy" "$policy_saved"
    fi
    policy_ours=1
    # shellcheck disable=SC2016 # $1 is the inner shell's
    "${as_root[@]}" sh -c 'printf "#!/bin/sh\n# installing for patroni-dr-watchdog: start no service\nexit 101\n" > "$1" && chmod 755 "$1"' sh "$policy"
fi

before=$(dpkg-query -W -f='${Package} ${Status}\n' | awk '$NF == "installed" {print $1}' | sort)
echo "install-system-deps: installing ${missing[*]} (for: $*)" >&2
apt update
apt install -y --no-install-recommends "${missing[@]}" >/dev/null
after=$(dpkg-query -W -f='${Package} ${Status}\n' | awk '$NF == "installed" {print $1}' | sort)
restore_policy
policy_ours=0

# The services of every package that is new now: stopped (should one have
# started anyway) and disabled.
systemd_running=0
[[ -d /run/systemd/system ]] && command -v systemctl >/dev/null && systemd_running=1
services=()
while read -r pkg; do
    [[ -n "$pkg" ]] || continue
    while read -r file; do
        case $file in
            /lib/systemd/system/*.service | /usr/lib/systemd/system/*.service)
                unit=${file##*/}
                [[ "$unit" == *@.service ]] && continue # templates have no instance to stop
                if [[ $systemd_running -eq 1 ]]; then
                    "${as_root[@]}" systemctl disable --now "$unit" >/dev/null 2>&1 || true
                elif command -v systemctl >/dev/null; then
                    # No systemd running (a container): only the links.
                    "${as_root[@]}" systemctl disable "$unit" >/dev/null 2>&1 || true
                fi
                services+=("${unit%.service}")
                ;;
            /etc/init.d/*)
                name=${file##*/}
                if [[ $systemd_running -eq 0 ]]; then
                    if "${as_root[@]}" "$file" status >/dev/null 2>&1; then
                        "${as_root[@]}" "$file" stop >/dev/null 2>&1 || true
                    fi
                    "${as_root[@]}" update-rc.d "$name" disable >/dev/null 2>&1 || true
                fi
                services+=("$name")
                ;;
        esac
    done < <(dpkg -L "$pkg" 2>/dev/null)
done < <(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after"))
if [[ ${#services[@]} -gt 0 ]]; then
    echo "install-system-deps: services not started, and disabled: $(printf '%s\n' "${services[@]}" | sort -u | tr '\n' ' ')" >&2
fi
