"""Real servers for tests, benchmarks and the demo: a Mosquitto broker (TLS, a password per bus,
ACL) and a PostgreSQL cluster, each started in a work directory and stopped after. Never used in
production, where the operator runs the broker and the database.
"""
