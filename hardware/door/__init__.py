"""Door outputs: telling the rider at the door what happened, on whatever the bus has.

A :class:`DoorMessage` is already worded (the door pipeline words it, see ``edge.door.messages``);
each output shows it its own way, one file per output, picked by ``[feedback] outputs``:

* ``console`` (:mod:`hardware.door.console`): a log line and a line on stdout (the demo);
* ``gpio`` (:mod:`hardware.door.gpio`): LEDs and a buzzer through gpiozero: green and a short beep
  (charged), red and a long beep (refused), amber blinking and two beeps (see the driver);
* ``display`` (:mod:`hardware.door.display`): one line of text written to a file, tty or serial
  display.

    >>> import io
    >>> from hardware.door.console import ConsoleOutput
    >>> out = io.StringIO()
    >>> ConsoleOutput(stream=out).show(DoorMessage("prompt", "Smile to pay"))
    >>> out.getvalue()
    '[prompt] Smile to pay\\n'

A broken output (an unplugged display) is logged and never stops the bus from charging. A new
kind of door device is one new file with a :class:`DoorOutput` subclass and one line in
:data:`OUTPUTS`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

Kind = Literal["charged", "refused", "see_driver", "prompt"]
OutputName = Literal["console", "gpio", "display"]


class FeedbackConfig(BaseModel):
    """The ``[feedback]`` section: how the door tells riders what happened."""

    model_config = ConfigDict(extra="forbid")

    outputs: list[OutputName] = Field(
        default_factory=lambda: ["console"], description="Any of console, gpio (LEDs and buzzer), display (text line)"
    )
    show_prompts: bool = Field(True, description="Also show prompts such as 'Smile to pay' (display and console)")
    display_path: Path = Field(Path("/dev/ttyUSB0"), description="display: file, tty or serial device to write to")
    display_width: int = Field(32, ge=8, le=512, description="display: characters per line; longer text is cut")
    display_ascii: bool = Field(True, description="display: replace characters a small display cannot show")
    gpio_green: int = Field(17, ge=-1, le=53, description="gpio: BCM pin of the green LED (charged); -1: none")
    gpio_red: int = Field(27, ge=-1, le=53, description="gpio: BCM pin of the red LED (refused); -1: none")
    gpio_amber: int = Field(22, ge=-1, le=53, description="gpio: BCM pin of the amber LED (see the driver); -1: none")
    gpio_buzzer: int = Field(18, ge=-1, le=53, description="gpio: BCM pin of the buzzer; -1: no buzzer")
    led_s: float = Field(1.5, gt=0, le=10, description="gpio: how long the green or red LED stays lit")
    beep_short_s: float = Field(0.1, gt=0, le=5, description="gpio: the short beep (charged, see the driver)")
    beep_long_s: float = Field(0.8, gt=0, le=5, description="gpio: the long beep (refused)")


@dataclass(frozen=True)
class DoorMessage:
    """What the door says: the kind, the words as shown, and for a charge the money in minor units."""

    kind: Kind
    text: str
    amount_minor: int | None = None
    currency: str | None = None
    rider_id: str | None = None
    track_id: int | None = None


class DoorOutput:
    """One door output: :meth:`show` a :class:`DoorMessage`. Subclasses implement :meth:`render`;
    errors there are logged, never raised."""

    name = "door"

    def __init__(self, *, show_prompts: bool = True) -> None:
        self.show_prompts = show_prompts
        self._lock = threading.Lock()

    def show(self, msg: DoorMessage) -> None:
        if msg.kind == "prompt" and not self.show_prompts:
            return
        try:
            with self._lock:
                self.render(msg)
        except Exception as exc:  # the door failing must not stop fares from being recorded
            log.error("door output %s failed: %s", self.name, exc)

    def render(self, msg: DoorMessage) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the output's device, if any."""

    @classmethod
    def from_config(cls, cfg: FeedbackConfig, **kwargs) -> DoorOutput:
        """This output as ``[feedback]`` describes it (``kwargs``: test hooks such as a pin factory)."""
        return cls(show_prompts=cfg.show_prompts)


class MultiOutput(DoorOutput):
    """Several outputs at once (for example the LEDs and the display)."""

    name = "multi"

    def __init__(self, outputs: Sequence[DoorOutput], **kwargs) -> None:
        super().__init__(**kwargs)
        self.outputs = list(outputs)

    def show(self, msg: DoorMessage) -> None:
        for out in self.outputs:
            out.show(msg)

    def close(self) -> None:
        for out in self.outputs:
            out.close()


def _registry() -> dict[str, type[DoorOutput]]:
    from hardware.door.console import ConsoleOutput
    from hardware.door.display import TextDisplayOutput
    from hardware.door.gpio import GpioOutput

    return {"console": ConsoleOutput, "display": TextDisplayOutput, "gpio": GpioOutput}


def open_door(cfg: FeedbackConfig, *, pin_factory=None) -> DoorOutput:
    """The door output(s) ``cfg`` names; one object whatever their number."""
    registry = _registry()
    outputs = [registry[name].from_config(cfg, pin_factory=pin_factory) for name in dict.fromkeys(cfg.outputs)]
    if len(outputs) == 1:
        return outputs[0]
    return MultiOutput(outputs, show_prompts=cfg.show_prompts)
