"""What the door says about a pipeline :class:`~edge.door.pipeline.Feedback`, as a hardware :class:`DoorMessage`.

The words come from the pipeline (prompts) and the ledger (the fare's ``rider_message``); this
module only picks the kind of message and the money to show, so that every door output (console,
LEDs, display) gets one already-worded message::

    >>> from edge.door.pipeline import Feedback
    >>> door_message(Feedback(4, "Smile to pay"))
    DoorMessage(kind='prompt', text='Smile to pay', amount_minor=None, currency=None, rider_id=None, track_id=4)

The bus knows only what it charged itself, not the rider's account balance (accounts are settled
in the cloud), so the door shows the fare, never a balance.
"""

from __future__ import annotations

from collections.abc import Callable

from edge.door.pipeline import Feedback
from hardware.door import DoorMessage, DoorOutput, Kind

KINDS: dict[str, Kind] = {"charge": "charged", "refuse": "refused", "see_driver": "see_driver"}


def door_message(fb: Feedback) -> DoorMessage:
    """The door's message for a pipeline prompt or final decision."""
    d = fb.decision
    if d is None:
        return DoorMessage("prompt", fb.message, track_id=fb.track_id)
    amount = currency = None
    if d.fare is not None:
        amount, currency = d.fare.amount_minor, d.fare.currency
    return DoorMessage(KINDS[d.action], fb.message, amount, currency, d.rider_id, fb.track_id)


def to_door(output: DoorOutput) -> Callable[[Feedback], None]:
    """A ``feedback`` callable for :class:`~edge.door.node.BusNode` that shows everything on ``output``."""

    def show(fb: Feedback) -> None:
        output.show(door_message(fb))

    return show
