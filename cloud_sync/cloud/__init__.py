"""The cloud's side of the ledger: take the buses' fares off the broker (``service``), store each
exactly once (``ledger``: SQLite or PostgreSQL), settle transfers and caps across buses
(``settlement``), and compare with the buses' own exports (``reconcile``).
"""
