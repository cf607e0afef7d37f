"""The door: camera frames in, at most one decision per boarding rider out.

``tracker`` follows faces, ``motion`` plans where to look, ``quality`` and ``smile`` gate a face,
``pipeline`` decides whom to charge, ``node`` runs capture, pipeline and ledger on their own
threads (its ledger thread is the only code that charges), ``messages`` words a decision for the
door's hardware. Uses the face library (``edge.faces``) and the fares (``edge.fares``).
"""
