"""``facefare cloud``: run the cloud ledger service, register buses, make keys, reconcile with bus exports.

    facefare cloud keygen                          # the cloud's signing key; prints its public key
    facefare cloud keygen --out bus-7.pem          # a bus's key (copy it to the bus)
    facefare cloud register-bus bus-7 --public-key <base64>
    facefare cloud run                             # blocks; SIGTERM or Ctrl-C stops it cleanly
    facefare cloud reconcile bus-7.json bus-8.json # exit 1 if any count or sum differs
"""

from __future__ import annotations

import csv
import logging
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from cloud_sync import protocol
from facefare import wiring
from facefare.cli.context import Context, pass_ctx

log = logging.getLogger(__name__)


def _ledger(ctx: Context, database_url: str | None) -> Any:
    from cloud_sync.cloud.ledger import open_ledger

    cfg = ctx.cfg
    url = database_url or cfg.cloud.resolve_url(cfg.data_dir)
    try:
        return open_ledger(url, cfg.fares)
    except Exception as exc:  # a wrong URL, an unreachable server, a locked file
        raise click.ClickException(f"cannot open the cloud ledger {url}: {exc}") from None


_db_option = click.option(
    "--db", "database_url", help="Database URL (default: cloud.database_url of the configuration)."
)


@click.group()
def cloud() -> None:
    """The cloud ledger: settle the buses' fares exactly once, reconcile with the buses."""


@cloud.command("keygen")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the private key (default: cloud.key_file, i.e. the cloud's own key).")
@click.option("--force", is_flag=True, help="Replace an existing key file (everything signed before is then void).")
@pass_ctx
def keygen(ctx: Context, out: Path | None, force: bool) -> None:
    """Make an Ed25519 signing key (PEM, mode 0600) and print its public key.

    Give the cloud's public key to every bus (sync.cloud_public_key); register each bus's
    public key with 'facefare cloud register-bus'.
    """
    cfg = ctx.cfg
    path = out or cfg.cloud.resolve_key_file(cfg.data_dir)
    if path.exists() and not force:
        key = protocol.load_private_key(path)
        click.echo(f"{path} exists (use --force to replace it); its public key:", err=True)
    else:
        key = protocol.generate_key()
        protocol.save_private_key(key, path)
        click.echo(f"wrote {path}; public key:", err=True)
    click.echo(protocol.public_key_text(key.public_key()))


@cloud.command("register-bus")
@click.argument("bus_id")
@click.option("--public-key", "public_key", help="The bus's Ed25519 public key (base64, from keygen).")
@click.option("--public-key-of", "key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Or read it from the bus's private key file.")
@_db_option
@pass_ctx
def register_bus(
    ctx: Context, bus_id: str, public_key: str | None, key_file: Path | None, database_url: str | None
) -> None:
    """Register BUS_ID's public key; only registered buses' messages are accepted."""
    if key_file is not None:
        public_key = protocol.public_key_text(protocol.load_private_key(key_file).public_key())
    if not public_key:
        raise click.UsageError("give --public-key or --public-key-of")
    try:
        protocol.public_key_from_text(public_key)
    except ValueError as exc:
        raise click.BadParameter(f"not an Ed25519 public key in base64: {exc}", param_hint="--public-key") from None
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", bus_id) is None:
        raise click.BadParameter("bus ids are 1-64 letters, digits, '_', '.' or '-'", param_hint="BUS_ID")
    with _ledger(ctx, database_url) as led:
        led.register_bus(bus_id, public_key)
    click.echo(f"registered {bus_id}")


@cloud.command("run")
@pass_ctx
def run(ctx: Context) -> None:
    """Run the cloud ledger service until SIGTERM or Ctrl-C.

    Consumes every bus's fares, status, decisions and gallery acks from the broker ([mqtt]),
    applies fares to the ledger ([cloud] database_url), acknowledges them to the buses, and
    settles transfers and caps across buses.
    """

    cfg = ctx.cfg
    try:
        service = wiring.cloud_service(cfg)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    store = _take_gallery_acks(cfg, service)
    stop = threading.Event()
    server = None
    if cfg.metrics.cloud_port:
        from facefare.metrics import cloud_registry, serve, watch_enrollment

        registry, seen = cloud_registry(service)
        for msg_type in ("heartbeat", "decision", "gallery_ack"):
            service.on(msg_type, seen)
        if store is not None:
            watch_enrollment(registry, store)
        server = serve(registry, cfg.metrics.host, cfg.metrics.cloud_port, "cloud")

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        service.run(stop)
    finally:
        if server is not None:
            server.close()
        if store is not None:
            store.close()


def _take_gallery_acks(cfg: Any, service: Any) -> Any:
    """Where this cloud also enrolls riders, record the buses' gallery acks (erasure confirmations)
    and answer their resend requests; returns the opened template store (or None)."""
    if not cfg.enrollment.path("store", cfg.data_dir).exists():
        log.info("no enrollment store at %s: gallery acks are not recorded by this service",
                 cfg.enrollment.path("store", cfg.data_dir))  # fmt: skip
        return None
    from enrollment.distribution import GalleryDistributor

    try:

        model_sha256 = wiring.face_engine(cfg).embedder_sha256
    except Exception as exc:  # no converted models here: acks are recorded, resends cannot be built
        log.warning("embedding model unavailable (%s): gallery resend requests will be logged only", exc)
        model_sha256 = ""
    store = wiring.template_store(cfg)
    dist = GalleryDistributor(store, service.key, model_sha256, delta_bytes=cfg.enrollment.delta_bytes,
                              delta_expiry_s=cfg.enrollment.delta_expiry_s)  # fmt: skip
    dist.publish = lambda topic, payload: dist.publish_with(service.client, topic, payload)
    service.on("gallery_ack", lambda env: dist.acknowledge(env.sender, env.body))
    return store


@cloud.command("settle")
@_db_option
@pass_ctx
def settle(ctx: Context, database_url: str | None) -> None:
    """Settle transfers and caps across buses now (the service does this on its own)."""
    with _ledger(ctx, database_url) as led:
        click.echo(f"{led.settle()} refund entries written")


@cloud.command("stats")
@_db_option
@pass_ctx
def stats(ctx: Context, database_url: str | None) -> None:
    """Fares, entries, refusals by reason, and each bus's last status."""
    with _ledger(ctx, database_url) as led:
        click.echo(f"fares {led.fare_count()}")
        for reason, n in sorted(led.rejection_counts().items()):
            click.echo(f"refused {reason}: {n}")
        for bus, st in led.bus_status().items():
            click.echo(f"bus {bus}: {'online' if st['online'] else 'OFFLINE'}, outbox {st['outbox_backlog']}, "
                       f"at {st['at']}")  # fmt: skip


@cloud.command("reconcile")
@click.argument("exports", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--csv-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the per bus and day rows as CSV.")
@_db_option
@pass_ctx
def reconcile_cmd(ctx: Context, exports: tuple[Path, ...], csv_out: Path | None, database_url: str | None) -> None:
    """Compare the cloud with bus ledger exports, per bus and service day.

    EXPORTS are files from 'facefare ledger export --format json' (totals or --fares) or
    '--format csv --fares'. Prints counts and sums on both sides and lists every difference;
    exits 1 if there is any.
    """
    from cloud_sync.cloud.reconcile import ExportError, load_export, reconcile

    reports = []
    with _ledger(ctx, database_url) as led:
        for path in exports:
            try:
                reports.append(reconcile(led, load_export(path)))
            except ExportError as exc:
                raise click.ClickException(str(exc)) from None
    header = f"{'bus':<12} {'day':<10} {'cur':<3} {'bus n':>7} {'cloud n':>7} {'bus sum':>11} {'cloud sum':>11} " \
             f"{'refunded':>9}"  # fmt: skip
    click.echo(header)
    rows = [r for rep in reports for r in rep.rows]
    for r in rows:
        click.echo(f"{r['bus_id']:<12} {r['service_day']:<10} {r['currency']:<3} {r['bus_fares']:>7} "
                   f"{r['cloud_fares']:>7} {r['bus_charged_minor']:>11} {r['cloud_charged_minor']:>11} "
                   f"{r['cloud_refunded_minor']:>9}")  # fmt: skip
    if csv_out is not None and rows:
        with csv_out.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    differences = [d for rep in reports for d in rep.differences]
    if differences:
        click.echo(f"\n{len(differences)} difference(s):")
        for d in differences:
            click.echo("  " + d.describe())
        sys.exit(1)
    click.echo(f"\nno differences ({len(reports)} bus export(s), {len(rows)} bus-days)")
