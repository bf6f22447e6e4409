"""An order's own pipeline: validate -> (the book and its netting cycles) -> settle.

Each stage is a service that loads fresh state, does its one step, and returns what should
run next (`Next`) rather than enqueuing it itself, so tasks stay thin doors and the stages can
be driven directly in tests. Between validate and settle an order is the book's: netting
cycles (`orders.netting.cycles`) take it, price it with the rest of its symbol's book on one
quote and allocate its fills; when nothing of it remains (or it is cancelled, or its deadline
passes) the cycle moves it to SETTLING and starts its settle run. Every stage is safe to run
twice or concurrently with itself:

- validate only writes through `orders.state` (conditional UPDATE on the version);
- settle submits through `chain.settlement`, idempotent per deposit / redeem id, and the
  vault itself refuses a second settlement of an id.

Manual refunds (the refunds app) take units of a deposit waiting in the book: the order
records them in `manual_refund_usdt`, and the cycles trade only what remains. An order
refunded in full is closed like a cancel before trade. Settle waits while a manual refund of
the order is still unpaid, since the vault refunds a deposit only before it is settled, and
waits for the vault's reserve before a settlement that pays USDT; it records the
settlement's refund as an automatic Refund.
"""

from orders.pipeline.common import SETTLE, VALIDATE, Next, Stage
from orders.pipeline.settle import GroupNext, order_settle, orders_settle_group
from orders.pipeline.validate import order_validate

__all__ = [
    "SETTLE",
    "GroupNext",
    "VALIDATE",
    "Next",
    "Stage",
    "order_settle",
    "orders_settle_group",
    "order_validate",
]
