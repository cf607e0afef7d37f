"""FaceFare: face-pay bus fares. The command line and the per-process configuration live here."""

__version__ = "0.1.0"
