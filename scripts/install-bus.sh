#!/usr/bin/env bash
# Install the FaceFare bus node as a systemd service on Raspberry Pi OS (bookworm, aarch64) or a
# Jetson (JetPack, Ubuntu aarch64). Run as root from a checkout; safe to run again (upgrades the
# code, keeps /etc/facefare/facefare.toml and everything in /var/lib/facefare).
#
#   sudo scripts/install-bus.sh [options]
#     --models DIR        copy converted model artefacts (facefare models convert, on any machine)
#     --convert           convert the models here instead (installs the 'reference' extra; slow)
#     --system-site-packages  let the venv see apt's python3-picamera2 / gpiozero / OpenCV
#     --picamera2         apt install python3-picamera2 (implies --system-site-packages)
#     --gpio              apt install python3-gpiozero python3-lgpio (implies --system-site-packages)
#     --ort-wheel FILE    install this onnxruntime-gpu wheel instead of the CPU onnxruntime (Jetson)
#     --system-opencv     use apt's OpenCV (built with GStreamer, for Jetson CSI cameras), not PyPI's
#     --readonly-root     refuse to start unless /var/lib/facefare is its own mounted partition
#     --start             start the service now (otherwise: enabled, starts at next boot)
#     --dry-run           print what would be done, change nothing
# See docs/deployment.md.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${FACEFARE_PREFIX:-/opt/facefare}
DATA=/var/lib/facefare
ETC=/etc/facefare
SYSTEMD=/etc/systemd/system
PY=${PYTHON:-python3}
models="" convert=0 site=0 picamera2=0 gpio=0 ort_wheel="" system_opencv=0 readonly_root=0 start=0 dry=0

while [ $# -gt 0 ]; do
    case "$1" in
        --models) models=$2; shift ;;
        --convert) convert=1 ;;
        --system-site-packages) site=1 ;;
        --picamera2) picamera2=1; site=1 ;;
        --gpio) gpio=1; site=1 ;;
        --ort-wheel) ort_wheel=$2; shift ;;
        --system-opencv) system_opencv=1; site=1 ;;
        --readonly-root) readonly_root=1 ;;
        --start) start=1 ;;
        --dry-run) dry=1 ;;
        -h|--help) sed -n '2,/^# See docs/p' "$0"; exit 0 ;;
        *) echo "install-bus: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

run() {  # run a command, or only show it with --dry-run
    if [ "$dry" -eq 1 ]; then echo "+ $*"; else "$@"; fi
}
say() { echo "install-bus: $*"; }

if [ "$dry" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    echo "install-bus: run as root (sudo), or with --dry-run" >&2
    exit 1
fi

board=linux
if [ -f /etc/nv_tegra_release ] || grep -qi jetson /proc/device-tree/model 2>/dev/null; then
    board=jetson
elif grep -qi "raspberry pi" /proc/device-tree/model 2>/dev/null; then
    board=raspberry-pi
fi
say "board: $board ($(uname -m)); source: $SRC; venv: $PREFIX/venv; data: $DATA"
[ "$(uname -m)" = aarch64 ] || say "note: this is not aarch64; continuing (fine for a test machine)"

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
    echo "install-bus: FaceFare needs Python 3.11+; $PY is $("$PY" -V 2>&1)." >&2
    echo "  JetPack 6 ships 3.10: install python3.11 (deadsnakes PPA) and rerun with PYTHON=python3.11" >&2
    exit 1
}

apt_pkgs=(python3-venv)
[ "$picamera2" -eq 1 ] && apt_pkgs+=(python3-picamera2)
[ "$gpio" -eq 1 ] && apt_pkgs+=(python3-gpiozero python3-lgpio)
run apt-get install -y --no-install-recommends "${apt_pkgs[@]}"

# The service user: no shell, no home of its own beyond the data dir.
if ! id facefare >/dev/null 2>&1; then
    run useradd --system --home-dir "$DATA" --no-create-home --shell /usr/sbin/nologin facefare
fi
for group in video gpio dialout render; do
    if getent group "$group" >/dev/null; then
        run usermod -aG "$group" facefare
    fi
done

# The code: a virtual environment under $PREFIX with the bus node's dependencies only.
venv_opts=()
[ "$site" -eq 1 ] && venv_opts+=(--system-site-packages)
run mkdir -p "$PREFIX/docs"
[ -x "$PREFIX/venv/bin/python" ] || run "$PY" -m venv "${venv_opts[@]}" "$PREFIX/venv"
run "$PREFIX/venv/bin/python" -m pip install -q --upgrade pip
if [ "$system_opencv" -eq 1 ]; then
    # PyPI's opencv-python-headless has no GStreamer and would shadow apt's cv2: install the rest only.
    mapfile -t reqs < <("$PY" -c 'import configparser; c = configparser.ConfigParser(); c.read("'"$SRC"'/setup.cfg")
for r in c["options"]["install_requires"].splitlines():
    r = r.split("#")[0].strip()
    if r and not r.startswith("opencv"): print(r)')
    run "$PREFIX/venv/bin/python" -m pip install -q --no-deps "$SRC"
    run "$PREFIX/venv/bin/python" -m pip install -q "${reqs[@]}"
else
    run "$PREFIX/venv/bin/python" -m pip install -q "$SRC"
fi
if [ -n "$ort_wheel" ]; then
    run "$PREFIX/venv/bin/python" -m pip uninstall -y -q onnxruntime
    run "$PREFIX/venv/bin/python" -m pip install -q "$ort_wheel"
fi
run cp "$SRC/docs/deployment.md" "$PREFIX/docs/"

# Config (kept if present) and the data dir (a partition of its own on a read-only root).
run install -d -m 0755 "$ETC"
if [ ! -f "$ETC/facefare.toml" ]; then
    run install -m 0644 "$SRC/facefare.example.toml" "$ETC/facefare.toml"
    say "wrote $ETC/facefare.toml from facefare.example.toml: set [camera], [feedback], [ledger] bus_id"
fi
run install -d -m 0750 -o facefare -g facefare "$DATA" "$DATA/models"
if [ -n "$models" ]; then
    run cp "$models"/* "$DATA/models/"
    run chown -R facefare:facefare "$DATA/models"
elif [ "$convert" -eq 1 ]; then
    run "$PREFIX/venv/bin/python" -m pip install -q "$SRC[reference]"
    run "$PREFIX/venv/bin/facefare" models convert --out "$DATA/models" --quiet
    run chown -R facefare:facefare "$DATA/models"
fi
if [ "$dry" -eq 0 ] && ! "$PREFIX/venv/bin/facefare" models verify --dir "$DATA/models" >/dev/null 2>&1; then
    say "WARNING: no verified models in $DATA/models yet: rerun with --models DIR or --convert"
fi

# systemd unit, journald limits, logrotate.
run install -m 0644 "$SRC/deploy/facefare-bus.service" "$SYSTEMD/facefare-bus.service"
run install -d -m 0755 "$SYSTEMD/facefare-bus.service.d" /etc/systemd/journald.conf.d
if [ "$readonly_root" -eq 1 ]; then
    run install -m 0644 "$SRC/deploy/readonly-root.conf" "$SYSTEMD/facefare-bus.service.d/readonly-root.conf"
fi
run install -m 0644 "$SRC/deploy/journald-facefare.conf" /etc/systemd/journald.conf.d/facefare.conf
run install -m 0644 "$SRC/deploy/logrotate-facefare" /etc/logrotate.d/facefare
run systemctl daemon-reload
run systemctl try-restart systemd-journald
if [ "$start" -eq 1 ]; then
    run systemctl enable --now facefare-bus.service
else
    run systemctl enable facefare-bus.service
fi
say "done: 'systemctl status facefare-bus' and 'journalctl -u facefare-bus -f' show the node"
