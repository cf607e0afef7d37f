"""``python -m facefare.cli``: the same as the ``facefare`` command."""

from facefare.cli import main

main()
