"""Gallery distribution's wire and its bus end: the delta format and its per-bus encryption
(``delta``), and the bus's encrypted gallery that applies deltas and serves the matcher (``bus``).
The cloud end, which makes the deltas from the template store, is ``enrollment.distribution``.
"""
