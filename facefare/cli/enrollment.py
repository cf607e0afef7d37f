"""``facefare enroll``, ``facefare erase`` and ``facefare enrollment``: the operator's commands.

    facefare enroll photos/                      # one sub-folder of photos per rider (progress bar)
    facefare enroll --camera 0 --rider r42       # from a camera ('config': the [camera] section; or a video file)
    facefare enroll --reembed [photos/]          # new embedding model: re-embed kept (or given) photos
    facefare erase r42                           # delete r42's templates, publish the erase to the buses
    facefare erase status r42                    # which buses confirmed
    facefare enrollment register-bus bus-7 --out bus-7.gallery.key
    facefare enrollment sync                     # publish pending gallery deltas to every bus
    facefare enrollment serve                    # HTTP API + gallery acks, until Ctrl-C
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from facefare import wiring
from facefare.cli.context import Context, pass_ctx

log = logging.getLogger(__name__)


def _store(cfg: Any) -> Any:
    from enrollment.store import StoreError

    try:
        return wiring.template_store(cfg)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def _enroller(cfg: Any, store: Any) -> Any:
    from enrollment.enroll import Enroller

    engine = wiring.face_engine(cfg)
    try:
        engine.verify_all()
    except Exception as exc:  # models.convert.ArtifactError
        raise click.ClickException(f"face models: {exc} (run 'facefare models convert')") from None
    return Enroller(engine, store, cfg.enrollment, cfg.quality)


def _distributor(cfg: Any, store: Any, model_sha256: str | None = None, *, connect: bool = True) -> Any:
    """The gallery distributor, publishing through MQTT as the cloud when ``connect`` (else offline)."""
    from cloud_sync import protocol
    from enrollment.distribution import GalleryDistributor

    key_file = cfg.cloud.resolve_key_file(cfg.data_dir)
    if not key_file.exists() and connect:
        raise click.ClickException(f"no cloud key at {key_file}; create it with 'facefare cloud keygen'")
    cloud_key = protocol.load_private_key(key_file) if key_file.exists() else None
    if not connect:
        model_sha256 = model_sha256 or ""  # reading status and registering buses need no model
    if model_sha256 is None:

        model_sha256 = wiring.face_engine(cfg).embedder_sha256
    dist = GalleryDistributor(store, cloud_key, model_sha256, bus_keys=_bus_keys(cfg),
                              delta_bytes=cfg.enrollment.delta_bytes,
                              delta_expiry_s=cfg.enrollment.delta_expiry_s)  # fmt: skip
    if connect:
        from cloud_sync.mqtt import MqttConnectError
        from cloud_sync.mqtt import connect as mqtt_connect

        try:
            client = mqtt_connect(cfg.mqtt, f"{cfg.mqtt.client_id or 'cloud'}-enrollment", clean_start=True)
        except MqttConnectError as exc:
            log.warning("%s: gallery deltas will go out at the next 'facefare enrollment sync'", exc)
            return dist
        dist.attach(client)
    return dist


def _bus_keys(cfg: Any) -> Any:
    """Bus public keys from the cloud ledger's registry (``facefare cloud register-bus``)."""
    from cloud_sync import protocol

    cache: dict[str, Any] = {}

    def lookup(bus: str) -> Any:
        if bus not in cache:
            try:
                from cloud_sync.cloud.ledger import open_ledger

                with open_ledger(cfg.cloud.resolve_url(cfg.data_dir)) as led:
                    cache.update({b: protocol.public_key_from_text(k) for b, k in led.bus_keys().items()})
            except Exception as exc:  # an unreachable database: acks are refused as unknown_sender
                log.warning("cannot read bus keys: %s", exc)
        return cache.get(bus)

    return lookup


def _flush(dist: Any, timeout_s: float = 10.0) -> None:
    """Wait until the broker has every delta (PUBACK), then disconnect."""
    if dist.client is None:
        return
    dist.flush(timeout_s)
    dist.client.disconnect()
    dist.client.loop_stop()


# -- enroll -----------------------------------------------------------------------------------


@click.command()
@click.argument("folder", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--camera", metavar="SOURCE",
              help="Enroll one rider from a camera: 'config' (the [camera] section), a device number, or a video file.")
@click.option("--rider", "rider_id", help="With --camera: the rider id.")
@click.option("--name", "display_name", default="", help="With --camera: display name.")
@click.option("--reference", default="", help="With --camera: the operator's reference.")
@click.option("--concession", default="adult", show_default=True, help="With --camera: fare concession.")
@click.option("--account", default="", help="With --camera: the account fares are billed to.")
@click.option("--count", default=3, show_default=True, help="With --camera: photos to take.")
@click.option("--reembed", is_flag=True,
              help="Re-embed riders made by another model, from FOLDER or the kept photos.")
@click.option("--allow-duplicate", is_flag=True, help="Enroll even when a rider looks like an enrolled one.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@pass_ctx
def enroll(ctx: Context, folder: Path | None, camera: str | None, rider_id: str | None, display_name: str,
           reference: str, concession: str, account: str, count: int, reembed: bool, allow_duplicate: bool, quiet: bool,
           as_json: bool) -> None:  # fmt: skip
    """Enroll riders from FOLDER (one sub-folder of photos per rider) or from a camera.

    Each photo must show exactly one face of good quality; refused photos are listed with the
    reason. A rider who looks like an enrolled one is flagged, not added (--allow-duplicate to
    override). Templates are stored encrypted; photos are not kept unless [enrollment]
    keep_photos is on. Exit status 1 if any rider was not enrolled.
    """
    from enrollment.store import RiderRecord

    cfg = ctx.cfg
    store = _store(cfg)
    enroller = _enroller(cfg, store)
    if reembed:
        outcome = enroller.reembed(folder, progress=not quiet)
        for rider, what in sorted(outcome.items()):
            click.echo(f"{rider:<24} {what}")
        _publish_changes(cfg, store, enroller.model_sha256)
        sys.exit(0 if all(v in ("reembedded", "current") for v in outcome.values()) else 1)
    if camera is not None:
        if not rider_id:
            raise click.UsageError("--camera needs --rider ID")
        try:
            record = RiderRecord(rider_id=rider_id, display_name=display_name, reference=reference,
                                 concession=concession, account=account)  # fmt: skip
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        results = [enroller.enroll_camera(record, _camera(cfg, camera), count=count, allow_duplicate=allow_duplicate)]
    elif folder is not None:
        try:
            results = enroller.enroll_folder(folder, progress=not quiet, allow_duplicate=allow_duplicate)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        raise click.UsageError("give a FOLDER of rider folders, --camera SOURCE --rider ID, or --reembed")
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=1))
    else:
        for r in results:
            click.echo(f"{r.rider_id:<24} {r.status:<10} {r.message}")
            for c in r.refused:
                click.echo(f"    refused {c.name}: {c.reason}: {c.message}")
    if any(r.status == "enrolled" for r in results):
        _publish_changes(cfg, store, enroller.model_sha256)
    sys.exit(0 if all(r.status == "enrolled" for r in results) else 1)


def _camera(cfg: Any, source: str) -> Any:
    from hardware.cameras import CameraConfig, VideoFileSource, open_source

    if source == "config":
        return open_source(cfg.camera)
    if source.isdigit():
        return open_source(CameraConfig(type="usb", device=source))
    return VideoFileSource(Path(source))


def _publish_changes(cfg: Any, store: Any, model_sha256: str) -> None:
    """Publish the gallery deltas now if the cloud key and broker are there; otherwise say how."""
    try:
        dist = _distributor(cfg, store, model_sha256)
    except click.ClickException as exc:
        click.echo(f"gallery not published: {exc.message}", err=True)
        return
    if dist.publish is None:
        click.echo("gallery not published (broker unreachable): run 'facefare enrollment sync' later", err=True)
        return
    sent = dist.sync()
    _flush(dist)
    click.echo(f"published {len(sent)} gallery delta(s)")


# -- erase ------------------------------------------------------------------------------------


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("words", nargs=-1, required=True, metavar="RIDER | status RIDER")
@pass_ctx
def erase(ctx: Context, words: tuple[str, ...]) -> None:
    """Erase RIDER everywhere, or show which buses confirmed ('erase status RIDER').

    'erase RIDER' deletes the rider's templates and kept photos in the cloud, blanks their
    personal data, records an audit entry (no biometric data) and publishes the erase to every
    bus that held the rider. Each bus confirms when it has applied it.
    """
    cfg = ctx.cfg
    store = _store(cfg)
    if len(words) == 2 and words[0] == "status":
        _erase_status(cfg, store, words[1])
        return
    if len(words) != 1:
        raise click.UsageError("usage: facefare erase RIDER  |  facefare erase status RIDER")
    from enrollment.store import StoreError

    rider = words[0]
    dist = _distributor(cfg, store)
    try:
        dist.erase(rider)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    _flush(dist)
    entry = next(a for a in reversed(store.audit_log(rider)) if a["action"] == "erase")
    click.echo(f"erased {rider}: {entry['detail']['templates_deleted']} template(s) deleted in the cloud")
    if dist.publish is None:
        click.echo("the erase is not yet published (broker unreachable): run 'facefare enrollment sync'", err=True)
    _erase_status(cfg, store, rider, dist)


def _erase_status(cfg: Any, store: Any, rider: str, dist: Any = None) -> None:
    row = store.rider(rider)
    if row is None:
        raise click.ClickException(f"no rider {rider}")
    dist = dist or _distributor(cfg, store, connect=False)
    click.echo(f"rider {rider}: {row['status']}")
    targets = dist.erase_status(rider)
    if not targets:
        click.echo("  no bus was ever sent this rider" if row["status"] == "erased" else "  not erased")
    for s in targets:
        state = f"confirmed at {s.confirmed_at} (version {s.confirmed_version})" if s.confirmed else "pending"
        click.echo(f"  {s.bus_id:<16} erase in delta {s.version or '-':<6} {state}")


# -- enrollment (admin) -----------------------------------------------------------------------


@click.group()
def enrollment() -> None:
    """Enrollment service: buses' gallery keys, gallery sync, operators, the HTTP API."""


@enrollment.command("register-bus")
@click.argument("bus_id")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the bus's gallery key (mode 0600); copy it to the bus "
                   "([enrollment] gallery_key_file).")
@click.option("--zone", "zones", multiple=True,
              help="A zone (route, region) whose riders this bus holds; repeat for several. Riders enrolled "
                   "with zones reach only their zones' buses, so each bus's gallery stays small.")
@pass_ctx
def register_bus(ctx: Context, bus_id: str, out: Path, zones: tuple[str, ...]) -> None:
    """Create BUS_ID's gallery key: deltas for that bus are encrypted with it alone."""
    import base64
    import os

    if out.exists():
        raise click.ClickException(f"{out} exists; not overwriting it")
    cfg = ctx.cfg
    dist = _distributor(cfg, _store(cfg), connect=False)
    try:
        secret = dist.register_bus(bus_id, zones=list(zones))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(secret).decode() + "\n")
    click.echo(f"registered {bus_id}; its gallery key is in {out} (copy it to the bus, then delete it here)")


@enrollment.command("set-code")
@click.argument("rider_id")
@pass_ctx
def set_code(ctx: Context, rider_id: str) -> None:
    """Set RIDER_ID's second-factor code (4-8 digits, typed twice, never echoed, logged or stored as such).

    The store keeps a sealed slow digest; each bus gets its own keyed hash with the next
    'facefare enrollment sync'."""
    from enrollment.store import StoreError

    code = click.prompt("code (4-8 digits)", hide_input=True, confirmation_prompt=True)
    try:
        _store(ctx.cfg).set_code(rider_id, code)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    del code
    click.echo(f"code set for {rider_id}; run 'facefare enrollment sync' to send it to the buses")


@enrollment.command("sync")
@click.argument("bus_id", required=False)
@pass_ctx
def sync(ctx: Context, bus_id: str | None) -> None:
    """Publish the gallery deltas that bring BUS_ID (default: every bus) up to date."""
    cfg = ctx.cfg
    dist = _distributor(cfg, _store(cfg))
    if dist.publish is None:
        raise click.ClickException("cannot reach the MQTT broker; nothing published")
    sent = dist.sync(bus_id)
    _flush(dist)
    for msg in sent:
        click.echo(f"{msg.bus_id}: {msg.base_version} -> {msg.version} ({msg.ops} ops, {len(msg.payload)} bytes)")
    click.echo(f"published {len(sent)} delta(s)")


@enrollment.command("buses")
@pass_ctx
def buses(ctx: Context) -> None:
    """Registered buses: published gallery version and the version each last confirmed."""
    cfg = ctx.cfg
    dist = _distributor(cfg, _store(cfg), connect=False)
    for b in dist.buses():
        click.echo(f"{b['bus_id']:<16} published {b['version']:>6}  confirmed {b['acked_version']:>6}  "
                   f"at {b['acked_at'] or '-'}")  # fmt: skip


@enrollment.command("add-operator")
@click.argument("name")
@click.password_option(help="The operator's password (asked twice if not given).")
@click.option("--role", type=click.Choice(["operator", "read-only"]), default="operator", show_default=True,
              help="operator: enroll and erase; read-only: look riders and erasures up.")  # fmt: skip
@pass_ctx
def add_operator_cmd(ctx: Context, name: str, password: str, role: str) -> None:
    """Create or change an operator account of the HTTP API."""
    from enrollment.api import add_operator

    cfg = ctx.cfg
    try:
        add_operator(_store(cfg), name, password, role)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{role} {name} saved")


@enrollment.command("audit")
@click.argument("rider_id", required=False)
@pass_ctx
def audit(ctx: Context, rider_id: str | None) -> None:
    """Print the audit log (of one rider): who did what, when. No biometric data is in it."""
    cfg = ctx.cfg
    for a in _store(cfg).audit_log(rider_id):
        click.echo(f"{a['seq']:>6} {a['at']} {a['actor']:<14} {a['action']:<18} {a['rider_id'] or '-':<20} "
                   f"{json.dumps(a['detail'], sort_keys=True)}")  # fmt: skip


@enrollment.command("serve")
@pass_ctx
def serve(ctx: Context) -> None:
    """Run the enrollment HTTP API ([enrollment] api_host/api_port) and take the buses' gallery acks.

    The OpenAPI description is at /openapi.json, readable docs at /docs; metrics in Prometheus's
    format at /metrics (enrollments, duplicates flagged, erasures pending per bus; no rider named).
    """
    import uvicorn

    from enrollment.api import create_app
    from facefare.metrics import mount_enrollment_metrics

    cfg = ctx.cfg
    store = _store(cfg)
    enroller = _enroller(cfg, store)
    dist = _distributor(cfg, store, enroller.model_sha256)
    app = create_app(enroller, dist)
    mount_enrollment_metrics(app, store)
    uvicorn.run(app, host=cfg.enrollment.api_host, port=cfg.enrollment.api_port,
                log_level=cfg.log_level.lower())  # fmt: skip
