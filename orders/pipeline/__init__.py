"""The order pipeline: validate -> place -> poll -> finalize -> settle.

Each stage is a service that loads fresh state, does its one step, and returns what should
run next (`Next`) rather than enqueuing it itself, so tasks stay thin doors and the stages can
be driven directly in tests. Every stage is safe to run twice or concurrently with itself:

- validate and poll only write through `orders.state` (conditional UPDATE on the version);
- place holds the order's row lock across "look the remark up at the broker, place if
  absent, save the broker id", so two placers serialise and the second finds the order
  already EXECUTING; a crash after the broker accepted is healed by the remark look-up;
- finalize moves EXECUTING -> SETTLING once (the loser of a race gets StaleOrderVersion);
- settle submits through `chain.services`, idempotent per deposit / redeem id, and the vault
  itself refuses a second settlement of an id.

Manual refunds (the refunds app) take units of a PENDING deposit before it trades: the order
records them in `manual_refund_usdt`, and every stage works with what remains
(`usdt_amount - manual_refund_usdt`: sizing, allocation, the settlement's refund). An order
refunded in full is closed like a cancel before trade (settled with nothing to mint or
refund). Settle waits while a manual refund of the order is still unpaid, since the vault
refunds a deposit only before it is settled, and waits for the vault's reserve before a
settlement that pays USDT; it records the settlement's refund as an automatic Refund.

Broker calls go only through `trading.services`; settlement only through `chain.services`.
"""

from orders.pipeline.common import PLACE, POLL, SETTLE, VALIDATE, Next, Stage
from orders.pipeline.finalize import order_finalize
from orders.pipeline.place import order_place
from orders.pipeline.poll import order_poll
from orders.pipeline.settle import order_settle
from orders.pipeline.validate import order_validate

__all__ = [
    "PLACE",
    "POLL",
    "SETTLE",
    "VALIDATE",
    "Next",
    "Stage",
    "order_finalize",
    "order_place",
    "order_poll",
    "order_settle",
    "order_validate",
]
