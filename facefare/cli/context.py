"""What every ``facefare`` subcommand shares: the :class:`Context` holding the process's one config.

Each command takes it with ``@pass_ctx`` and reads ``ctx.cfg``; the config is loaded once, on
first use, from ``--config``/``FACEFARE_CONFIG`` and the environment, and sets up logging.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from facefare.config import ConfigError, FacefareConfig, load_config


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


class Context:
    """The running command's configuration, loaded on first use; a bad config is a clean CLI error."""

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
            setup_logging(self._cfg.log_level)
        return self._cfg


pass_ctx = click.make_pass_decorator(Context, ensure=False)
