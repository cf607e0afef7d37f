"""Door feedback: the messages (edge/door/messages.py) and the outputs (hardware/door/): console, text display
and GPIO LEDs/buzzer on a mock pin factory."""

from __future__ import annotations

import io
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.door.messages import door_message, to_door
from edge.door.pipeline import MESSAGES, DoorDecision, Feedback
from edge.fares.ledger import Ledger
from edge.fares.rules import FaresConfig
from hardware.door import DoorMessage, DoorOutput, FeedbackConfig, MultiOutput, open_door
from hardware.door.console import ConsoleOutput
from hardware.door.display import TextDisplayOutput, fit_line
from hardware.door.gpio import GpioOutput

AT = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)


@pytest.fixture
def ledger() -> Ledger:
    rules = FaresConfig(routes={"12": 250}, deny=["mallory"])
    return Ledger(":memory:", rules, bus_id="bus-7")


def charged(ledger: Ledger, rider: str = "lin") -> Feedback:
    fare = ledger.charge(rider, "12", AT, trip_id="12-0800")
    action = "charge" if fare.may_board else "refuse"
    reason = "matched" if fare.may_board else fare.reason.value
    d = DoorDecision(1, 40, 1.3, action, rider, reason, fare.rider_message, 0.4, 0.2, fare)
    return Feedback(1, d.message, d)


def see_driver() -> Feedback:
    d = DoorDecision(2, 90, 3.0, "see_driver", None, "attempts", MESSAGES["attempts"])
    return Feedback(2, d.message, d)


def unknown() -> Feedback:
    d = DoorDecision(3, 95, 3.2, "refuse", None, "unknown", MESSAGES["unknown"])
    return Feedback(3, d.message, d)


def show(door: DoorOutput, fb: Feedback) -> None:
    to_door(door)(fb)


def test_messages_for_charged_refused_and_see_driver(ledger: Ledger) -> None:
    msg = door_message(charged(ledger))
    assert (msg.kind, msg.amount_minor, msg.currency, msg.rider_id) == ("charged", 250, "EUR", "lin")
    assert msg.text == "Paid EUR 2.50. Have a good trip!"  # the fare, never a balance the bus cannot know
    refused = door_message(charged(ledger, "mallory"))
    assert refused.kind == "refused" and refused.amount_minor == 0
    assert refused.text == "Sorry, we cannot take this payment - please see the driver."
    assert door_message(unknown()).text == MESSAGES["unknown"]
    assert door_message(see_driver()).kind == "see_driver"
    assert door_message(Feedback(4, "Smile to pay")) == DoorMessage("prompt", "Smile to pay", track_id=4)


def test_console_writes_one_line_per_message_and_logs(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    door = ConsoleOutput(stream=out)
    with caplog.at_level(logging.INFO, logger="hardware.door"):
        for fb in (Feedback(1, "Smile to pay"), charged(ledger), see_driver(), unknown()):
            show(door, fb)
    assert out.getvalue().splitlines() == [
        "[prompt] Smile to pay",
        "[charged] Paid EUR 2.50. Have a good trip!",
        "[see_driver] Please see the driver",
        f"[refused] {MESSAGES['unknown']}",
    ]
    assert "door charged: Paid EUR 2.50" in caplog.text


def test_prompts_can_be_hidden() -> None:
    out = io.StringIO()
    show(ConsoleOutput(stream=out, show_prompts=False), Feedback(1, "One at a time please"))
    assert out.getvalue() == ""


def test_text_display_writes_ascii_lines_cut_to_width(tmp_path: Path, ledger: Ledger) -> None:
    screen = tmp_path / "display"
    door = TextDisplayOutput(screen, width=20)
    show(door, charged(ledger))
    door.show(DoorMessage("refused", "Sorry, this bus cannot take payments right now \u2014 please see the driver."))
    show(door, see_driver())
    assert screen.read_text(encoding="ascii").splitlines() == [
        "Paid EUR 2.50. Hav..",
        "Sorry, this bus ca..",
        "Please see the dri..",
    ]
    assert fit_line("caf\u00e9 \u2014 ok", 32) == "caf? - ok"
    assert fit_line("caf\u00e9", 32, ascii_only=False) == "caf\u00e9"


def test_a_broken_display_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    door = TextDisplayOutput(tmp_path / "no-such-dir" / "tty", width=20)
    with caplog.at_level(logging.ERROR, logger="hardware.door"):
        show(door, see_driver())
    assert "door output display failed" in caplog.text


@pytest.fixture
def mock_pins():
    gpiozero = pytest.importorskip("gpiozero")
    from gpiozero.pins.mock import MockFactory

    factory = MockFactory()
    yield factory
    factory.close()
    gpiozero.Device.pin_factory = None


def lit_periods(factory, pin: int) -> list[bool]:
    """The pin's state changes since the start, without the initial low."""
    return [s.state for s in factory.pin(pin).states][1:]


def settle(factory, pins: dict[int, int], timeout: float = 3.0) -> None:
    """Wait until each pin has recorded its expected number of state changes (background threads)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(factory.pin(p).states) - 1 >= n for p, n in pins.items()):
            time.sleep(0.02)  # and nothing more follows
            return
        time.sleep(0.01)


def on_seconds(factory, pin: int) -> list[float]:
    """How long each high period lasted (a MockPin state's timestamp is the time since the change before)."""
    states = factory.pin(pin).states
    return [after.timestamp for before, after in zip(states, states[1:], strict=False) if before.state]


def test_gpio_green_and_short_beep_for_a_charge_red_and_long_beep_for_a_refusal(mock_pins, ledger: Ledger) -> None:
    door = GpioOutput(17, 27, 22, 18, led_s=0.05, beep_short_s=0.02, beep_long_s=0.08, pin_factory=mock_pins)
    show(door, charged(ledger))
    settle(mock_pins, {17: 2, 18: 2})
    assert lit_periods(mock_pins, 17) == [True, False]  # green on once, then off
    assert lit_periods(mock_pins, 18) == [True, False]  # one beep
    assert 0.018 <= on_seconds(mock_pins, 18)[0] < 0.2  # short beep (threads may oversleep, never undersleep)
    assert 0.045 <= on_seconds(mock_pins, 17)[0] < 0.3
    assert lit_periods(mock_pins, 27) == [] and lit_periods(mock_pins, 22) == []

    show(door, unknown())
    settle(mock_pins, {27: 2, 18: 4})
    assert lit_periods(mock_pins, 27) == [True, False]
    assert 0.075 <= on_seconds(mock_pins, 18)[-1] < 0.4  # the long beep
    door.close()


def test_gpio_amber_blinks_for_see_the_driver_and_prompts_light_nothing(mock_pins) -> None:
    door = GpioOutput(17, 27, 22, 18, led_s=0.08, beep_short_s=0.01, pin_factory=mock_pins)
    show(door, Feedback(1, "Smile to pay"))
    show(door, see_driver())
    settle(mock_pins, {22: 8, 18: 4})
    assert lit_periods(mock_pins, 22) == [True, False] * 4
    assert lit_periods(mock_pins, 18) == [True, False] * 2
    assert lit_periods(mock_pins, 17) == [] and lit_periods(mock_pins, 27) == []
    door.close()


def test_open_door_builds_what_the_config_names(tmp_path: Path, mock_pins) -> None:
    cfg = FeedbackConfig(outputs=["display", "gpio"], display_path=tmp_path / "lcd", led_s=0.02, beep_short_s=0.01)
    door = open_door(cfg, pin_factory=mock_pins)
    assert isinstance(door, MultiOutput)
    assert [type(o) for o in door.outputs] == [TextDisplayOutput, GpioOutput]
    show(door, see_driver())
    assert (tmp_path / "lcd").read_text() == "Please see the driver\n"
    door.close()
    no_amber = open_door(FeedbackConfig(outputs=["gpio"], gpio_amber=-1, gpio_buzzer=-1), pin_factory=mock_pins)
    assert isinstance(no_amber, GpioOutput) and no_amber.amber is None and no_amber.buzzer is None
    no_amber.close()
    assert isinstance(open_door(FeedbackConfig()), ConsoleOutput)


def test_gpio_without_gpiozero_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_gpiozero(name, *args, **kwargs):
        if name.startswith("gpiozero"):
            raise ImportError("No module named 'gpiozero'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gpiozero)
    with pytest.raises(RuntimeError, match="needs the gpiozero package"):
        GpioOutput()
