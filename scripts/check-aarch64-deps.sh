#!/usr/bin/env bash
# Show that the bus node's dependencies (setup.cfg install_requires only: not the reference, cloud,
# dev or gpu extras) resolve to prebuilt wheels for aarch64 Linux and CPython 3.11, i.e. that
# `pip install` on a Raspberry Pi (Raspberry Pi OS bookworm, glibc 2.36) or a Jetson (glibc 2.31 on
# JetPack 5, 2.35 on JetPack 6) needs no compiler. Nothing is installed: wheels go to a temp dir.
# Prints one line per requirement (ok / FAIL, and the wheels it pulled) and exits 1 if any failed.
#   usage: scripts/check-aarch64-deps.sh [max-glibc-minor, default 31]  (31 = oldest target, JetPack 5)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
GLIBC_MINOR=${1:-31}

platforms=(--platform manylinux2014_aarch64)
for minor in 17 24 26 27 28 29 30 31 32 33 34 35 36; do
    [ "$minor" -le "$GLIBC_MINOR" ] && platforms+=(--platform "manylinux_2_${minor}_aarch64")
done

mapfile -t reqs < <("$PY" - <<'PYEOF'
import configparser
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
for line in cfg["options"]["install_requires"].splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
        print(line)
PYEOF
)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "aarch64 wheels for CPython 3.11, glibc <= 2.$GLIBC_MINOR ($("$PY" -m pip --version | cut -d' ' -f1-2))"
failed=0
for req in "${reqs[@]}"; do
    dest="$tmp/$(echo "$req" | tr -c 'A-Za-z0-9' _)"
    if "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version 3.11 \
        --implementation cp --abi cp311 "${platforms[@]}" --dest "$dest" "$req" >"$dest.log" 2>&1; then
        top=$(ls "$dest" | grep -i "^$(echo "${req%%[<>=!~ ]*}" | tr '-' '_')-" | head -1)
        printf 'ok    %-32s %s (+%d deps)\n' "$req" "${top:-?}" "$(( $(ls "$dest" | wc -l) - 1 ))"
    else
        failed=1
        printf 'FAIL  %-32s %s\n' "$req" "$(grep -m1 -E 'ERROR' "$dest.log")"
    fi
done
# All together, as pip install would resolve them on the bus: the versions it would pick.
joint="$tmp/all"
if "$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version 3.11 \
    --implementation cp --abi cp311 "${platforms[@]}" --dest "$joint" "${reqs[@]}" >"$joint.log" 2>&1; then
    echo "resolved together ($(ls "$joint" | wc -l) wheels):"
    ls "$joint" | sed -E 's/^([^-]+)-([^-]+)-.*/\1==\2/' | sort -f | xargs -n 4 | sed 's/^/  /'
else
    failed=1
    echo "FAIL  resolving all requirements together: $(grep -m1 ERROR "$joint.log")"
fi
if [ "$failed" -eq 0 ]; then
    echo "all ${#reqs[@]} bus-node requirements resolve to aarch64 wheels"
else
    echo "some bus-node requirements do not resolve to aarch64 wheels" >&2
fi
exit "$failed"
