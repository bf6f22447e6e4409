"""Refund writes: manual refunds (request, approve, pay, confirm), the record of the
pipeline's automatic refunds, and the reserve check before USDT leaves the vault.

How a manual refund moves its money, and why it cannot pay twice or lose a unit:
- It is allowed only while its deposit order is PENDING and unknown to the broker, so nothing
  of the deposit has been spent. The check and the hold run under the order's row lock (the
  lock the place stage holds from its broker look-up to saving the broker id).
- Once approved (at once below REFUND_APPROVAL_THRESHOLD_USDT, else by a second, different
  operator), the amount is held on the order (`Order.manual_refund_usdt`, through
  `orders.state`) and the pipeline trades and settles only what remains.
- It is paid with the vault's refundDeposit through the chain sender (kind "refund", keyed by
  the refund's on-chain id): at most one transaction record per refund, and the vault
  refuses a refund id twice (RefundIdUsed is recognised as paid by an earlier attempt).
- The order's settlement waits while a manual refund of it is in flight (the vault refunds a
  deposit only before it is settled); a refund that fails hands its amount back to the
  order's settlement.
- Before paying, the vault's USDT balance less RESERVE_FLOOR_USDT must cover the amount; if
  not, the refund waits (WAITING_RESERVE, alert `reserve_short`) and a beat task retries it.

Every status change is a conditional UPDATE under the refund's row lock and writes an audit
entry naming its actor, in the same transaction.
"""

from refunds.services.manual import (
    refund_approve,
    refund_check,
    refund_execute,
    refund_request,
    refunds_check_sent,
    refunds_retry_waiting,
)
from refunds.services.records import RESERVE_SHORT, RESERVE_SHORT_SETTLEMENT
from refunds.services.settlement import (
    refund_record_automatic,
    refunds_record_automatic_many,
    reserve_covers,
)

__all__ = [
    "RESERVE_SHORT",
    "RESERVE_SHORT_SETTLEMENT",
    "refund_approve",
    "refund_check",
    "refund_execute",
    "refund_record_automatic",
    "refunds_record_automatic_many",
    "refund_request",
    "refunds_check_sent",
    "refunds_retry_waiting",
    "reserve_covers",
]
