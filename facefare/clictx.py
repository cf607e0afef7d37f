"""The configuration of the running `facefare` command, for the command groups that live in the packages."""

from __future__ import annotations

from typing import Any

import click


def current_config() -> Any:
    """The root click context's ``cfg`` (the ``--config`` file, loaded once); else the default configuration."""
    root = click.get_current_context().find_root().obj
    if root is not None and hasattr(root, "cfg"):
        return root.cfg
    from facefare.config import load_config  # here, not at the top: facefare.cli imports the command groups

    return load_config(None)
