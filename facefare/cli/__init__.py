"""``facefare``: the one command line for the bus, the operators and the cloud.

Every subcommand lives in this package, one module per group, and reaches the process's one
configuration the same way: ``@pass_ctx`` and ``ctx.cfg`` (see :mod:`facefare.cli.context`).
Each is a thin wrapper over a Python function of the package that owns the job.
"""

from __future__ import annotations

from pathlib import Path

import click

from facefare import __version__
from facefare.cli.bus import bus
from facefare.cli.cloud import cloud
from facefare.cli.config import config
from facefare.cli.context import Context
from facefare.cli.dashboard import dashboard
from facefare.cli.demo import demo
from facefare.cli.enrollment import enroll, enrollment, erase
from facefare.cli.faces import faces
from facefare.cli.hardware import hardware
from facefare.cli.ledger import ledger
from facefare.cli.models import models


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


for command in (config, models, faces, demo, bus, ledger, hardware, cloud, enroll, erase, enrollment, dashboard):
    main.add_command(command)


if __name__ == "__main__":
    main()
