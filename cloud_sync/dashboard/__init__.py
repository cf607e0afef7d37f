"""The fleet dashboard: every bus's health and money at a glance, live, for logged-in fleet admins.

``state`` holds the fleet picture (pure, fed by parsed protocol envelopes), ``feed`` fills it from
MQTT, ``auth`` keeps users and sessions, ``app`` serves the page and its live updates, ``cli`` is
``facefare dashboard``. Only ``config`` is imported by ``facefare.config``; it needs no cloud extra.
"""
