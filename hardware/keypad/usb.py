"""A USB keypad (or keyboard) under /dev/input/event*, read with python-evdev (from apt on the bus)."""

from __future__ import annotations

import queue
import threading

DIGITS = {f"KEY_{d}": str(d) for d in range(10)} | {f"KEY_KP{d}": str(d) for d in range(10)}
ENTER = {"KEY_ENTER", "KEY_KPENTER"}
CLEAR = {"KEY_BACKSPACE", "KEY_ESC", "KEY_DELETE"}


class EvdevKeypad:
    def __init__(self, device: str) -> None:
        import evdev  # python3-evdev on the bus; not a dependency of the package

        self._dev = evdev.InputDevice(device)
        self._dev.grab()  # the keypad types codes for us alone
        self._entries: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, name="keypad", daemon=True).start()

    def _read(self) -> None:
        import evdev

        typed: list[str] = []
        for event in self._dev.read_loop():
            if event.type != evdev.ecodes.EV_KEY or event.value != 1:  # key down only
                continue
            name = evdev.ecodes.KEY.get(event.code)
            if name in DIGITS and len(typed) < 16:
                typed.append(DIGITS[name])
            elif name in ENTER:
                self._entries.put("".join(typed))
                typed.clear()
            elif name in CLEAR:
                typed.clear()

    def poll(self) -> str | None:
        try:
            return self._entries.get_nowait()
        except queue.Empty:
            return None
