#!/usr/bin/env bash
# Install the servers the tests and the demo start themselves (Mosquitto, PostgreSQL, Chromium, and
# Prometheus, whose promtool checks the alert rules) from Debian's archive, as root. Safe to run
# again: it installs only what is missing.
#
# FaceFare never uses the system-wide instances Debian may start: cloud_sync.devservers.mosquitto_server and
# cloud_sync.devservers.postgres_server run their own processes on free loopback ports in a work directory. So that
# no stray service starts at all, packages are installed under a policy-rc.d that forbids it.
set -euo pipefail

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
dpkg -s mosquitto-clients >/dev/null 2>&1 || missing+=(mosquitto-clients)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
# shellcheck disable=SC2207
missing=($(printf '%s\n' "${missing[@]}" | sort -u))
if [ "$(id -u)" -ne 0 ]; then
    echo "install-servers: ${missing[*]} missing; run this script as root to install them" >&2
    exit 1
fi

echo "install-servers: installing ${missing[*]} with apt-get" >&2
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# temporary, from FaceFare scripts/install-servers.sh: start no services\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
fi
cleanup() { if [ "$made_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}"
