"""A keypad typed by a program: the demo's stand-in for a rider at the door, and tests'.

:meth:`ScriptedKeypad.type` puts one entry in, as if a rider typed it and pressed Enter; ``poll``
hands entries out in order. Nothing is kept after it has been handed out.
"""

from __future__ import annotations

import queue


class ScriptedKeypad:
    def __init__(self) -> None:
        self._entries: queue.Queue[str] = queue.Queue()

    def type(self, entry: str) -> None:
        self._entries.put(entry)

    def poll(self) -> str | None:
        try:
            return self._entries.get_nowait()
        except queue.Empty:
            return None
