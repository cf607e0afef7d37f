"""The ``display`` door output: one line of text per message to a file, tty or serial display."""

from __future__ import annotations

from pathlib import Path

from hardware.door import DoorMessage, DoorOutput, FeedbackConfig

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


class TextDisplayOutput(DoorOutput):
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
        line = fit_line(msg.text, self.width, self.ascii_only)
        with open(self.path, "a", encoding="ascii" if self.ascii_only else "utf-8") as out:
            out.write(line + "\n")

    @classmethod
    def from_config(cls, cfg: FeedbackConfig, **kwargs) -> TextDisplayOutput:
        return cls(cfg.display_path, cfg.display_width, cfg.display_ascii, show_prompts=cfg.show_prompts)
