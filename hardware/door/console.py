"""The ``console`` door output: a log line, and ``[kind] text`` on a stream (the demo's door)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from hardware.door import DoorMessage, DoorOutput

log = logging.getLogger(__name__)


class ConsoleOutput(DoorOutput):
    """The demo's door: a log line, and ``[kind] text`` on ``stream`` (stdout; None: log only)."""

    name = "console"

    def __init__(self, stream: TextIO | None = sys.stdout, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stream = stream

    def render(self, msg: DoorMessage) -> None:
        log.log(logging.DEBUG if msg.kind == "prompt" else logging.INFO, "door %s: %s", msg.kind, msg.text)
        if self.stream is not None:
            self.stream.write(f"[{msg.kind}] {msg.text}\n")
            self.stream.flush()
