"""Keypads by the door for the second factor (``edge.door.second_factor``): one file per backend.

Each has ``poll() -> str | None``: one finished entry (the digits typed before Enter), or None.
Nothing typed is logged or kept once it has been returned.

* ``console`` (:mod:`hardware.keypad.console`): lines typed on a terminal (the demo);
* ``usb`` (:mod:`hardware.keypad.usb`): a USB keypad (a keyboard device under /dev/input).
"""

from __future__ import annotations

from typing import Literal

KeypadName = Literal["none", "console", "usb"]


def open_keypad(name: KeypadName, device: str = ""):
    """The keypad ``name`` (None for "none")."""
    if name == "none":
        return None
    if name == "console":
        from hardware.keypad.console import ConsoleKeypad

        return ConsoleKeypad()
    if name == "usb":
        from hardware.keypad.usb import EvdevKeypad

        return EvdevKeypad(device)
    raise ValueError(f"unknown keypad {name!r}")
