"""Everything on the MQTT wire between the buses and the cloud: the protocol (``protocol``,
``mqtt``), the bus's outbox sync (``bus_sync``), the cloud ledger (``cloud``), gallery
distribution's format and bus end (``gallery``), keys at rest (``sealing``), the fleet
dashboard (``dashboard``) and the test servers (``devservers``).
"""
