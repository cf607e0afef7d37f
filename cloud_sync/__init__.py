"""The cloud side and the wire between it and the buses: the MQTT protocol, the cloud ledger
service that settles fares exactly once, gallery distribution to buses, and the fleet dashboard.
"""
