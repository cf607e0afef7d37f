"""The money on the bus: what a boarding costs and the offline ledger that records it.

``rules`` prices a boarding (pure functions), ``record`` defines the fare record once (its fields,
its id, its times), ``ledger`` keeps fares, the outbox and the deny list in one SQLite file.
Money is integer minor units everywhere. Stands alone: no faces, no door, no network.
"""
