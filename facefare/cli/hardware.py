"""``facefare hardware``: check a bus's hardware before it carries riders.

    facefare hardware providers               # what onnxruntime offers, what 'auto' picks, threads
    facefare hardware camera-test -n 100      # grab frames from [camera]: fps, size, health
    facefare hardware feedback-test           # charged / refused / see-driver on [feedback] outputs
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from facefare.cli.context import Context, pass_ctx
from hardware.providers import CHOICES, available_providers, best_provider, recommended_threads


@click.group()
def hardware() -> None:
    """Check the bus's camera, execution providers and door feedback."""


@hardware.command("providers")
@pass_ctx
def providers_cmd(ctx: Context) -> None:
    """List the execution providers onnxruntime offers and what each setting would use."""
    import onnxruntime as ort

    offered = available_providers()
    cfg = ctx.cfg
    click.echo(f"onnxruntime {ort.__version__} offers: {', '.join(offered)}")
    for choice in CHOICES:
        picked = best_provider(choice, offered)
        fallback = choice not in ("auto", "cpu") and picked == "CPUExecutionProvider"
        click.echo(f"  {choice:<9} -> {picked}{'  (not offered: falls back to CPU)' if fallback else ''}")
    click.echo(f"configured: edge.providers = {cfg.edge.providers!r}, edge.threads = {cfg.edge.threads}")
    cores = os.cpu_count() or 1
    click.echo(f"this machine has {cores} cores: recommended edge.threads = {recommended_threads(cores)}")
    click.echo(f"TensorRT engine cache: {Path(cfg.data_dir) / 'trt-cache'}")


@hardware.command("camera-test")
@click.option("-n", "--frames", default=60, show_default=True, help="Frames to grab.")
@click.option("--timeout", default=30.0, show_default=True, help="Give up after this many seconds.")
@click.option("--save", type=click.Path(dir_okay=False, path_type=Path), help="Write the last frame to this image.")
@pass_ctx
def camera_test(ctx: Context, frames: int, timeout: float, save: Path | None) -> None:
    """Grab frames from the [camera] source; print the frame rate, frame size and health."""
    import cv2

    from hardware.cameras import CameraError, open_source

    cfg = ctx.cfg.camera
    try:
        source = open_source(cfg)
    except (CameraError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"camera: type={cfg.type} device={cfg.device or '-'} url={'set' if cfg.url else '-'}")
    got = bad = 0
    last = None
    start = time.monotonic()
    first_at: float | None = None
    try:
        for frame in source:
            if first_at is None:
                first_at = time.monotonic()
            if frame.image is None:
                bad += 1
            else:
                got += 1
                last = frame
            if got + bad >= frames or time.monotonic() - start > timeout:
                break
    except (CameraError, OSError) as exc:
        ok, detail = source.health()
        click.echo(f"health: {'ok' if ok else 'NOT ok'} ({detail})")
        raise click.ClickException(str(exc)) from None
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    elapsed = time.monotonic() - (first_at or start)
    fps = (got + bad - 1) / elapsed if got + bad > 1 and elapsed > 0 else 0.0
    ok, detail = source.health()
    size = f"{last.image.shape[1]}x{last.image.shape[0]}" if last is not None and last.image is not None else "-"
    click.echo(f"frames: {got} good, {bad} undecodable; {fps:.1f} fps; size {size}; "
               f"first frame after {(first_at or start) - start:.2f} s")
    click.echo(f"health: {'ok' if ok else 'NOT ok'} ({detail})")
    if save is not None and last is not None and last.image is not None:
        cv2.imwrite(str(save), cv2.cvtColor(last.image, cv2.COLOR_RGB2BGR))
        click.echo(f"last frame written to {save}")
    if got == 0:
        raise click.ClickException("no frame could be read")


@hardware.command("feedback-test")
@click.option("--pause", default=2.0, show_default=True, help="Seconds between messages.")
@pass_ctx
def feedback_test(ctx: Context, pause: float) -> None:
    """Show a charge, a refusal and 'see the driver' on the [feedback] outputs."""
    from hardware.door import DoorMessage, open_door

    cfg = ctx.cfg
    door = open_door(cfg.feedback)
    currency = cfg.fares.currency
    messages = [
        DoorMessage("charged", "Paid (test). Have a good trip!", 0, currency),
        DoorMessage("refused", "Sorry, we cannot take this payment - please see the driver."),
        DoorMessage("see_driver", "Please see the driver"),
    ]
    try:
        for i, msg in enumerate(messages):
            click.echo(f"{msg.kind}: {msg.text}")
            door.show(msg)
            if i < len(messages) - 1:
                time.sleep(pause)
        time.sleep(min(pause, 2.0))  # let the LEDs and buzzer finish
    finally:
        door.close()
