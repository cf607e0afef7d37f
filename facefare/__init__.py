"""FaceFare: face-pay bus fares. The top layer, where the processes are put together: the one
config object (``config``), the wiring that builds every part from it (``wiring``), the bus
process (``bus``), the command line (``cli``) and the demo (``demo``). Nothing below imports it.
"""

__version__ = "0.1.0"
