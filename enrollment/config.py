"""The ``[enrollment]`` config section: template store, keys, photo checks, HTTP API and bus gallery."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class EnrollmentConfig(BaseModel):
    """The ``[enrollment]`` section. Paths left empty live under the process's ``data_dir``.

    The cloud signs deltas with ``[cloud] key_file``; a bus checks them with ``[sync] cloud_public_key``
    and signs its acks with ``[sync] key_file``.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)

    store: Path | None = Field(
        None, description="Cloud template store (SQLite); default <data_dir>/enrollment/store.db"
    )
    key_file: Path | None = Field(
        None,
        description="AES-256 key of the template store (created on first use, mode 0600); "
        "default <data_dir>/enrollment/store.key",
    )
    keep_photos: bool = Field(
        False, description="Keep enrollment photos (encrypted) after enrollment, for --reembed; off: none is kept"
    )
    min_photos: int = Field(1, ge=1, le=20, description="Accepted photos a rider needs, at least")
    max_photos: int = Field(5, ge=1, le=20, description="Templates kept per rider (the first accepted photos)")
    upsample: int = Field(
        0, ge=0, le=2, description="HOG upsampling when finding the face (photos are scaled to 640 px first)"
    )
    duplicate_threshold: float = Field(
        0.5, gt=0, description="A new rider this close to an enrolled one is flagged as a possible duplicate"
    )
    same_person_threshold: float = Field(
        0.6, gt=0, description="A rider's photos must all lie this close to their first accepted photo"
    )
    api_host: str = Field("127.0.0.1", description="Address the enrollment HTTP API listens on")
    api_port: int = Field(8700, ge=1, le=65535, description="Port of the enrollment HTTP API")
    delta_expiry_s: int = Field(
        24 * 3600, ge=60, le=7 * 24 * 3600,
        description="Gallery deltas expire at the broker after this (MQTT v5 message expiry): a delta holding an "
        "erased rider's template never waits there longer; a bus away for longer resyncs from its version",
    )  # fmt: skip
    api_max_request_bytes: int = Field(
        16 * 2**20, ge=2**16, description="Larger HTTP requests to the enrollment API are refused (413) unread"
    )
    api_login_limit: str = Field(
        "10/minute", pattern=r"^\d+\s*/\s*(\d+\s*)?(second|minute|hour|day)s?$",
        description="Password checks allowed per client address and per operator name (counted before the check)",
    )  # fmt: skip
    delta_bytes: int = Field(
        150_000, ge=2_000, le=180_000, description="Largest plaintext of one gallery delta (fits one MQTT message)"
    )
    # -- bus side --
    gallery_db: Path | None = Field(None, description="Bus: encrypted gallery (SQLite); default <data_dir>/gallery.db")
    gallery_key_file: Path | None = Field(
        None, description="Bus: the gallery secret provisioned at registration; default <data_dir>/gallery.key"
    )
    sync_timeout_s: float = Field(
        10.0, ge=0, description="Bus: after a reconnect, seconds to wait for the gallery head before charging"
    )

    def path(self, name: str, data_dir: Path) -> Path:
        """A configured path, or its default under ``data_dir``."""
        value = getattr(self, name)
        if value is not None:
            return Path(value)
        defaults = {
            "store": "enrollment/store.db",
            "key_file": "enrollment/store.key",
            "gallery_db": "gallery.db",
            "gallery_key_file": "gallery.key",
        }
        return Path(data_dir) / defaults[name]
