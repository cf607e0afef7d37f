"""Door feedback: telling the rider at the door what happened, on whatever the bus has.

The bus pipeline reports a :class:`edge.pipeline.Feedback` (a prompt such as "Smile to pay",
or a final decision). :func:`door_message` turns it into a :class:`DoorMessage` of one of four
kinds - ``charged`` (fare, and balance when known), ``refused`` (the reason), ``see_driver``
and ``prompt`` - and each output renders that message its own way:

* ``console`` - :class:`ConsoleFeedback`: a log line and a line on stdout (the demo);
* ``gpio`` - :class:`GpioFeedback`: LEDs and a buzzer through gpiozero: green and a short beep
  (charged), red and a long beep (refused), amber blinking and two beeps (see the driver);
* ``display`` - :class:`TextDisplayFeedback`: one line of text written to a file, tty or serial
  display.

Every output is a :class:`DoorFeedback`, which is itself the ``feedback`` callable that
``BusPipeline`` and ``BusNode`` take::

    >>> import io
    >>> from edge.pipeline import Feedback
    >>> out = io.StringIO()
    >>> door = ConsoleFeedback(stream=out)
    >>> door(Feedback(3, "Smile to pay"))
    >>> out.getvalue()
    '[prompt] Smile to pay\\n'

A broken output (an unplugged display) is logged and never stops the bus from charging.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field

from edge.fares import format_money

if TYPE_CHECKING:
    from edge.pipeline import Feedback

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
    """What the door says: the kind, the words, and for a charge the money in minor units."""

    kind: Kind
    text: str
    amount_minor: int | None = None
    currency: str | None = None
    balance_minor: int | None = None
    rider_id: str | None = None
    track_id: int | None = None

    def line(self) -> str:
        """The one line shown to the rider: the words, and the balance when it is known.

        >>> DoorMessage("charged", "Paid EUR 2.50. Have a good trip!", 250, "EUR", 1250).line()
        'Paid EUR 2.50. Have a good trip! Balance EUR 12.50'
        """
        if self.kind == "charged" and self.balance_minor is not None and self.currency:
            return f"{self.text} Balance {format_money(self.balance_minor, self.currency)}"
        return self.text


def door_message(fb: Feedback, balance_minor: int | None = None) -> DoorMessage:
    """The door's message for a pipeline :class:`Feedback`; ``balance_minor`` if the caller knows it."""
    d = fb.decision
    if d is None:
        return DoorMessage("prompt", fb.message, track_id=fb.track_id)
    amount = currency = None
    if d.fare is not None:
        amount, currency = d.fare.amount_minor, d.fare.currency
    kind: Kind = {"charge": "charged", "refuse": "refused", "see_driver": "see_driver"}[d.action]
    balance = balance_minor if kind == "charged" else None
    return DoorMessage(kind, fb.message, amount, currency, balance, d.rider_id, fb.track_id)


class DoorFeedback:
    """One door output. Call it with a pipeline ``Feedback``, or :meth:`show` a ``DoorMessage``.

    ``balance`` (optional) looks up a rider's balance in minor units, or None when unknown.
    Subclasses implement :meth:`render`; errors there are logged, never raised.
    """

    name = "door"

    def __init__(self, *, show_prompts: bool = True, balance: Callable[[str], int | None] | None = None) -> None:
        self.show_prompts = show_prompts
        self.balance = balance
        self._lock = threading.Lock()

    def __call__(self, fb: Feedback) -> None:
        rider = fb.decision.rider_id if fb.decision is not None else None
        balance = None
        if rider and self.balance is not None and fb.decision is not None and fb.decision.action == "charge":
            try:
                balance = self.balance(rider)
            except Exception as exc:
                log.warning("balance of %s unavailable: %s", rider, exc)
        self.show(door_message(fb, balance))

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


class ConsoleFeedback(DoorFeedback):
    """The demo's door: a log line, and ``[kind] text`` on ``stream`` (stdout; None: log only)."""

    name = "console"

    def __init__(self, stream: TextIO | None = sys.stdout, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stream = stream

    def render(self, msg: DoorMessage) -> None:
        log.log(logging.DEBUG if msg.kind == "prompt" else logging.INFO, "door %s: %s", msg.kind, msg.line())
        if self.stream is not None:
            self.stream.write(f"[{msg.kind}] {msg.line()}\n")
            self.stream.flush()


_ASCII = str.maketrans({"\u2014": "-", "\u2013": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def fit_line(text: str, width: int, ascii_only: bool = True) -> str:
    """``text`` as one display line: dashes and quotes made ASCII (others become ``?``), cut to ``width``.

    >>> fit_line("Sorry, this bus cannot take payments right now \u2014 please see the driver.", 24)
    'Sorry, this bus cannot..'
    """
    text = " ".join(text.split())
    if ascii_only:
        text = text.translate(_ASCII).encode("ascii", "replace").decode("ascii")
    return text if len(text) <= width else text[: width - 2].rstrip() + ".."


class TextDisplayFeedback(DoorFeedback):
    """Writes each message as one line to ``path``: a file, a tty or a serial display's device.

    The device is opened for each message, so a display that was unplugged and plugged back in
    works again without a restart. Set the serial speed outside (``stty -F /dev/ttyUSB0 9600``).
    """

    name = "display"

    def __init__(self, path: str | Path, width: int = 32, ascii_only: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.path = Path(path)
        self.width = width
        self.ascii_only = ascii_only

    def render(self, msg: DoorMessage) -> None:
        line = fit_line(msg.line(), self.width, self.ascii_only)
        with open(self.path, "a", encoding="ascii" if self.ascii_only else "utf-8") as out:
            out.write(line + "\n")


GPIO_HINT = (
    "feedback output 'gpio' needs the gpiozero package (Raspberry Pi OS: sudo apt install python3-gpiozero "
    "with a --system-site-packages venv, or pip install gpiozero lgpio)"
)


class GpioFeedback(DoorFeedback):
    """LEDs and a buzzer on GPIO pins (BCM numbers) through gpiozero, all non-blocking.

    charged: green LED for ``led_s`` and one short beep; refused: red LED for ``led_s`` and one
    long beep; see the driver: the amber LED (the red one if there is no amber) blinks 4 times and
    two short beeps. Prompts light nothing. ``pin_factory`` is gpiozero's (a ``MockFactory`` in tests).
    """

    name = "gpio"

    def __init__(
        self,
        green: int | None = 17,
        red: int | None = 27,
        amber: int | None = 22,
        buzzer: int | None = 18,
        *,
        led_s: float = 1.5,
        beep_short_s: float = 0.1,
        beep_long_s: float = 0.8,
        pin_factory=None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        try:
            from gpiozero import LED, Buzzer
        except ImportError as exc:
            raise RuntimeError(GPIO_HINT) from exc
        opts = {"pin_factory": pin_factory} if pin_factory is not None else {}
        self.green = LED(green, **opts) if green is not None else None
        self.red = LED(red, **opts) if red is not None else None
        self.amber = LED(amber, **opts) if amber is not None else None
        self.buzzer = Buzzer(buzzer, **opts) if buzzer is not None else None
        self.led_s, self.beep_short_s, self.beep_long_s = led_s, beep_short_s, beep_long_s

    def render(self, msg: DoorMessage) -> None:
        if msg.kind == "prompt":
            return
        for led in (self.green, self.red, self.amber):
            if led is not None:
                led.off()
        if msg.kind == "charged":
            self._light(self.green, self.led_s, 0, 1)
            self._beep(self.beep_short_s, 1)
        elif msg.kind == "refused":
            self._light(self.red, self.led_s, 0, 1)
            self._beep(self.beep_long_s, 1)
        else:  # see_driver
            blink = self.led_s / 8
            self._light(self.amber or self.red, blink, blink, 4)
            self._beep(self.beep_short_s, 2)

    @staticmethod
    def _light(led, on_s: float, off_s: float, n: int) -> None:
        if led is not None:
            led.blink(on_time=on_s, off_time=off_s, n=n, background=True)

    def _beep(self, on_s: float, n: int) -> None:
        if self.buzzer is not None:
            self.buzzer.beep(on_time=on_s, off_time=on_s, n=n, background=True)

    def close(self) -> None:
        for dev in (self.green, self.red, self.amber, self.buzzer):
            if dev is not None:
                dev.close()


class MultiFeedback(DoorFeedback):
    """Several outputs at once (for example the LEDs and the display)."""

    name = "multi"

    def __init__(self, outputs: Sequence[DoorFeedback], **kwargs) -> None:
        super().__init__(**kwargs)
        self.outputs = list(outputs)

    def show(self, msg: DoorMessage) -> None:
        for out in self.outputs:
            out.show(msg)

    def close(self) -> None:
        for out in self.outputs:
            out.close()


def open_feedback(
    cfg: FeedbackConfig, *, balance: Callable[[str], int | None] | None = None, pin_factory=None
) -> DoorFeedback:
    """The door output(s) ``cfg`` names; one object whatever their number."""
    common = {"show_prompts": cfg.show_prompts}
    outputs: list[DoorFeedback] = []
    for name in dict.fromkeys(cfg.outputs):  # each output once, in order
        if name == "console":
            outputs.append(ConsoleFeedback(**common))
        elif name == "display":
            outputs.append(TextDisplayFeedback(cfg.display_path, cfg.display_width, cfg.display_ascii, **common))
        elif name == "gpio":
            pins = (cfg.gpio_green, cfg.gpio_red, cfg.gpio_amber, cfg.gpio_buzzer)
            outputs.append(
                GpioFeedback(
                    *(None if pin < 0 else pin for pin in pins),
                    led_s=cfg.led_s, beep_short_s=cfg.beep_short_s, beep_long_s=cfg.beep_long_s,
                    pin_factory=pin_factory, **common,
                )  # fmt: skip
            )
    if len(outputs) == 1:
        outputs[0].balance = balance
        return outputs[0]
    return MultiFeedback(outputs, balance=balance, **common)
