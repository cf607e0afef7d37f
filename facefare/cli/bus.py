"""``facefare bus``: run a bus node (what the systemd unit starts)."""

from __future__ import annotations

import sqlite3

import click

from facefare.cli.context import Context, pass_ctx


@click.group()
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
    except (FileNotFoundError, ValueError, OSError, RuntimeError, sqlite3.Error) as exc:
        # Name the file and what to do (LedgerError, InsecureFileError, ...), never a bare traceback.
        raise click.ClickException(str(exc)) from None
    click.echo(f"stopped after {stats.frames} frames; {len(stats.decisions)} decisions, "
               f"{sum(d.action == 'charge' for d in stats.decisions)} charged")  # fmt: skip
