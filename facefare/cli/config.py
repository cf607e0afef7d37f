"""``facefare config``: the configuration this process would run with, and the example file."""

from __future__ import annotations

import click

from facefare.cli.context import Context, pass_ctx
from facefare.config import example_toml


@click.group("config")
def config() -> None:
    """Show the configuration, or print the example file with every key."""


@config.command("example")
def config_example() -> None:
    """Print facefare.example.toml: every key with its default and what it means."""
    click.echo(example_toml(), nl=False)


@config.command("show")
@pass_ctx
def config_show(ctx: Context) -> None:
    """Print the configuration in force (file, then environment) as JSON; secrets are not in it."""
    click.echo(ctx.cfg.model_dump_json(indent=2))
