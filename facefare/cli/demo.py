"""``facefare demo``: the demo bus on the shipped clip, optionally with the fleet dashboard."""

from __future__ import annotations

from pathlib import Path

import click

from facefare.cli.context import Context, pass_ctx


@click.command()
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
    from facefare.demo import fleet as fleet_demo
    from facefare.demo.photos import run_bus_demo, run_photo_demo

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
    click.echo(f"demo bus: {result['frames']} frames of real footage, {result['skipped']} skipped")
    click.echo(f"{'frame':>6} {'clip':<22} {'track':>6}  {'decision':<11} {'rider':<20} {'reason':<10} "
               f"{'distance':>8} {'margin':>7}")
    for d in result["decisions"]:
        dist = "" if d.distance is None else f"{d.distance:.3f}"
        margin = "" if d.margin is None else f"{d.margin:.3f}"
        clip = result["clips"].get(d.frame_index, "")
        click.echo(f"{d.frame_index:>6} {clip:<22} {d.track_id:>6}  {d.action:<11} {d.rider_id or '-':<20} "
                   f"{d.reason:<10} {dist:>8} {margin:>7}")
    for rider, amount, currency in result["fares"]:
        click.echo(f"charged {rider}: {amount} {currency} minor units")
    click.echo(f"annotated video: {out / 'demo_bus.mp4'}; decision frames: {out / 'decisions.jpg'}; "
               f"ledger: {out / 'ledger.db'}")
    if fleet is not None:
        sent = fleet_demo.publish_demo_bus(fleet, result, out / "ledger.db", ctx.cfg.pipeline.route_id)
        click.echo(f"sent {sent} fare(s) and {len(result['decisions'])} decision(s) to the fleet dashboard at "
                   f"{fleet.server.url}; Ctrl-C to stop")
        fleet_demo.serve_demo_dashboard(fleet)
