"""The ``[dashboard]`` configuration section (pydantic only, so the bus can load it without the cloud extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DashboardConfig(BaseModel):
    """The fleet dashboard: where it listens, who may log in, and when it raises alerts."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    host: str = Field("127.0.0.1", description="Address the web server listens on")
    port: int = Field(8080, ge=0, le=65535, description="TCP port of the web server (0: any free port)")
    users_file: Path | None = Field(
        None,
        description="Users and password hashes (facefare dashboard add-user); default <data_dir>/dashboard/users.json",
    )
    secret_file: Path | None = Field(
        None, description="Key that signs session cookies, created if missing; default <data_dir>/dashboard/session.key"
    )
    bus_keys_file: Path | None = Field(
        None,
        description="Registered bus public keys, one 'bus-id base64-key' per line; messages from others are refused",
    )
    tls_cert_file: Path | None = Field(None, description="Serve https with this certificate (PEM)")
    tls_key_file: Path | None = Field(None, description="Private key of tls_cert_file (PEM)")
    cookie_secure: Literal["auto", "always", "never"] = Field(
        "auto", description="Secure flag of the session cookie; auto = when the page is served over https"
    )
    session_hours: int = Field(12, ge=1, le=24 * 30, description="A login lasts this long")
    offline_after_s: int = Field(
        90, ge=1, description="A bus with no heartbeat for this long (or whose last will arrived) is offline: alert"
    )
    backlog_alert_min: int = Field(50, ge=0, description="Backlog alert only above this many unsent fares")
    backlog_rising_beats: int = Field(
        3, ge=2, description="Backlog alert when the backlog rose across this many heartbeats in a row"
    )
    refusal_alert_rate: float = Field(
        0.2, ge=0, le=1, description="Refusal alert: a bus not charging at least this share of boardings in an hour"
    )
    refusal_alert_factor: float = Field(
        2.0, ge=1, description="Refusal alert: ... and at least this many times the rest of the fleet's share today"
    )
    refusal_alert_min_boardings: int = Field(
        20, ge=1, description="Refusal alert: ... over at least this many boardings in the last hour"
    )
    recent_decisions: int = Field(50, ge=1, le=1000, description="Door decisions kept for the page")
    chart_bucket_s: int = Field(300, ge=60, le=86400, description="Width of one bar of the revenue chart, seconds")
