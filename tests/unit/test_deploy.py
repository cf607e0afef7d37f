"""Deployment files (deploy/, scripts/install-bus.sh, scripts/check-aarch64-deps.sh) are complete and valid."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "facefare-bus.service"


def unit_keys(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values...]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_has_watchdog_restart_state_dir_and_hardening() -> None:
    unit = unit_keys(UNIT)
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert int(service["WatchdogSec"][0]) > 0
    assert service["Restart"] == ["always"]
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]
    assert service["StateDirectory"] == ["facefare"]
    assert "/var/lib/facefare" in service["ReadWritePaths"][0].split()
    assert "FACEFARE_HOME=/var/lib/facefare" in service["Environment"]
    assert service["User"] == ["facefare"]
    assert service["ProtectSystem"] == ["strict"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictSUIDSGID"):
        assert service[key] == ["yes"], key
    assert service["CapabilityBoundingSet"] == [""]
    assert "SupplementaryGroups" not in service  # a group missing on one board would stop the start
    assert unit["Unit"]["RequiresMountsFor"] == ["/var/lib/facefare"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit_and_its_drop_in(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this Python instead of /opt/facefare/venv/bin/facefare.
    text = UNIT.read_text().replace("/opt/facefare/venv/bin/facefare bus run", f"{sys.executable} -c pass")
    assert text != UNIT.read_text()
    (tmp_path / UNIT.name).write_text(text)
    drop_in = tmp_path / f"{UNIT.name}.d"
    drop_in.mkdir()
    shutil.copy(ROOT / "deploy" / "readonly-root.conf", drop_in)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / UNIT.name)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown key" not in result.stderr and "Unknown section" not in result.stderr, result.stderr


def test_journald_and_logrotate_limits() -> None:
    journald = configparser.ConfigParser()
    journald.read(ROOT / "deploy" / "journald-facefare.conf")
    assert journald["Journal"]["SystemMaxUse"] and journald["Journal"]["RuntimeMaxUse"]
    rotate = (ROOT / "deploy" / "logrotate-facefare").read_text()
    assert "/var/log/facefare/*.log" in rotate and "rotate 14" in rotate and "compress" in rotate


def test_install_script_dry_run_creates_user_venv_and_enables_the_unit() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-bus.sh"), "--dry-run", "--gpio", "--readonly-root", "--start"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    steps = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
    joined = "\n".join(steps)
    assert "apt-get install -y --no-install-recommends python3-venv python3-gpiozero python3-lgpio" in joined
    assert "--system-site-packages /opt/facefare/venv" in joined
    assert "/etc/systemd/system/facefare-bus.service" in joined
    assert "facefare-bus.service.d/readonly-root.conf" in joined
    assert "/etc/logrotate.d/facefare" in joined and "journald.conf.d/facefare.conf" in joined
    assert steps[-1] == "systemctl enable --now facefare-bus.service"
    if subprocess.run(["id", "facefare"], capture_output=True).returncode != 0:
        assert any(s.startswith("useradd --system") and s.endswith("facefare") for s in steps)


def test_install_script_refuses_unknown_options() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-bus.sh"), "--dry-run", "--frobnicate"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and "unknown option --frobnicate" in result.stderr


def test_scripts_parse() -> None:
    for script in ("install-bus.sh", "check-aarch64-deps.sh", "gpu-check.sh"):
        path = ROOT / "scripts" / script
        assert path.stat().st_mode & 0o111, f"{script} is not executable"
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr


CLOUD_UNITS = ("facefare-cloud.service", "facefare-enrollment.service", "facefare-dashboard.service")


@pytest.mark.parametrize("name", CLOUD_UNITS)
def test_cloud_services_have_units_with_the_bus_units_hardening(name: str, tmp_path: Path) -> None:
    """Issue 19, defect 14: the cloud services had no units; they get the bus's hardening and UMask 0077."""
    bus, unit = unit_keys(UNIT)["Service"], unit_keys(ROOT / "deploy" / name)["Service"]
    hardening = ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "ProtectKernelTunables",
                 "ProtectKernelModules", "ProtectControlGroups", "RestrictSUIDSGID", "RestrictNamespaces",
                 "LockPersonality", "CapabilityBoundingSet", "User")  # fmt: skip
    for key in hardening:
        assert unit[key] == bus[key], key
    assert unit["UMask"] == ["0077"] and unit["Restart"] == ["always"]
    if shutil.which("systemd-analyze") is not None:
        text = (ROOT / "deploy" / name).read_text()
        text = text.replace("/opt/facefare/venv/bin/facefare", f"{sys.executable} -m facefare.cli")
        (tmp_path / name).write_text(text)
        result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True,
                                timeout=30)  # fmt: skip
        assert "Unknown key" not in result.stderr and "Unknown section" not in result.stderr, result.stderr


def test_the_production_broker_config_has_the_settings_the_broker_tests_check() -> None:
    """Issue 19, defect 7: the reference Mosquitto config binds client ids to users on the bus
    listener, caps messages at the protocol's limit and gives the dashboard no write rule."""
    from cloud_sync.devservers.mosquitto_server import DASHBOARD_TOPICS
    from cloud_sync.protocol import MAX_PAYLOAD_BYTES, PREFIX

    conf = (ROOT / "deploy" / "mosquitto" / "facefare.conf").read_text()
    lines = [line.strip() for line in conf.splitlines() if line.strip() and not line.startswith("#")]
    assert f"message_size_limit {MAX_PAYLOAD_BYTES}" in lines
    assert "per_listener_settings true" in lines and lines.count("allow_anonymous false") == 2
    bus_listener = lines[lines.index("listener 8883") : lines.index("listener 8884")]
    assert "use_username_as_clientid true" in bus_listener
    acl = (ROOT / "deploy" / "mosquitto" / "acl.example").read_text()
    assert "pattern" not in [w for line in acl.splitlines() if not line.startswith("#") for w in line.split()[:1]]
    dashboard = acl.split("user dashboard", 1)[1]
    assert "write" not in dashboard
    assert all(f"topic read {PREFIX}/{t}" in dashboard for t in DASHBOARD_TOPICS)
