"""The demo: ``photos`` identifies the shipped photos and runs the demo bus on the shipped clip,
``fleet`` adds a local broker and the fleet dashboard. The photos and clip are in ``data/``.
"""
