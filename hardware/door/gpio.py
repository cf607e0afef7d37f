"""The ``gpio`` door output: LEDs and a buzzer on GPIO pins through gpiozero."""

from __future__ import annotations

from hardware.door import DoorMessage, DoorOutput, FeedbackConfig

GPIO_HINT = (
    "feedback output 'gpio' needs the gpiozero package (Raspberry Pi OS: sudo apt install python3-gpiozero "
    "with a --system-site-packages venv, or pip install gpiozero lgpio)"
)


class GpioOutput(DoorOutput):
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

    @classmethod
    def from_config(cls, cfg: FeedbackConfig, *, pin_factory=None, **kwargs) -> GpioOutput:
        pins = (cfg.gpio_green, cfg.gpio_red, cfg.gpio_amber, cfg.gpio_buzzer)
        return cls(
            *(None if pin < 0 else pin for pin in pins),
            led_s=cfg.led_s, beep_short_s=cfg.beep_short_s, beep_long_s=cfg.beep_long_s,
            pin_factory=pin_factory, show_prompts=cfg.show_prompts,
        )  # fmt: skip
