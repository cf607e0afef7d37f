"""The demo keypad: digits typed on a terminal, one entry per line, read on a thread of its own."""

from __future__ import annotations

import queue
import sys
import threading
from typing import TextIO


class ConsoleKeypad:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._entries: queue.Queue[str] = queue.Queue()
        self._stream = stream or sys.stdin
        threading.Thread(target=self._read, name="keypad", daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self._stream:
                self._entries.put(line.strip())
        except (OSError, ValueError):  # no terminal (a service, a test run): nothing will be typed
            return

    def poll(self) -> str | None:
        try:
            return self._entries.get_nowait()
        except queue.Empty:
            return None
