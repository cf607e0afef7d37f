"""``facefare faces``: the edge.faces API from the shell."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from facefare.cli.context import Context, pass_ctx


@click.group()
def faces() -> None:
    """Find and compare faces in photos (the edge.faces API from the shell)."""


@faces.command("locate")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--model",
    type=click.Choice(["blazeface", "blazeface_full", "hog", "cnn", "mmod"]),
    default=None,
    help="Detector (default: config).",
)
@click.option("--upsample", type=int, default=None, help="Times to upsample before detecting (default: config).")
@pass_ctx
def faces_locate(ctx: Context, images: tuple[Path, ...], model: str | None, upsample: int | None) -> None:
    """Print 'file,top,right,bottom,left' for every face found."""
    from edge import faces as api
    from edge.faces.images import ImageError

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
