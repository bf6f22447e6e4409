"""Reads of refunds and of the vault's reserve, in USDT base units.

`refund_failure_count` and `reserve_status` are the data sources `ops.alert_rules` and
`core.metrics` look for by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import Sum

from chain.exceptions import NotConfigured
from chain.settlement import settlement_sender
from core.money import usdt_to_units
from orders.selectors import settling_usdt_owed
from refunds.models import IN_FLIGHT_STATUSES, Refund, RefundOrigin, RefundStatus


@dataclass(frozen=True)
class ReserveStatus:
    """The vault's USDT (`balance`), what is promised out of it and not yet paid
    (`committed`: approved, waiting and sent refunds, plus the refund or payout of every order
    settling on chain), and the configured `floor`."""

    balance: int
    committed: int
    floor: int

    @property
    def headroom(self) -> int:
        """What is left above the floor once everything committed is paid (may be negative)."""
        return self.balance - self.committed - self.floor


def reserve_floor_units() -> int:
    return usdt_to_units(settings.RESERVE_FLOOR_USDT)


def approval_threshold_units() -> int:
    return usdt_to_units(settings.REFUND_APPROVAL_THRESHOLD_USDT)


def reserve_available() -> tuple[int, int]:
    """(vault balance, floor): a payment of `amount` may go out when balance - floor >= amount.
    Reads the chain; raises ChainUnavailable / NotConfigured."""
    return settlement_sender().reserve_usdt_units(), reserve_floor_units()


def committed_units() -> int:
    unpaid = Refund.objects.filter(status__in=IN_FLIGHT_STATUSES)
    refunds = unpaid.aggregate(total=Sum("amount"))["total"]
    return int(refunds or 0) + settling_usdt_owed()


def reserve_status() -> ReserveStatus | None:
    """The reserve now, or None where no vault is configured (no chain in this deployment).
    Raises ChainUnavailable when the node cannot be reached."""
    try:
        balance, floor = reserve_available()
    except NotConfigured:
        return None
    return ReserveStatus(balance=balance, committed=committed_units(), floor=floor)


def refund_failure_count(*, since: datetime) -> int:
    """Refunds that failed (the vault refused or reverted them) since `since`."""
    return Refund.objects.filter(status=RefundStatus.FAILED, failed_at__gte=since).count()


def order_refunds_in_flight(*, order_id: int) -> bool:
    """Has this order a manual refund the vault has not yet paid (or failed)? Its settlement
    must wait: the vault refunds a deposit manually only before it is settled."""
    return Refund.objects.filter(
        order_id=order_id, origin=RefundOrigin.MANUAL, status__in=IN_FLIGHT_STATUSES
    ).exists()


def orders_refunds_in_flight(*, order_ids: Sequence[int]) -> set[int]:
    """`order_refunds_in_flight` for many orders at once: the ids of those with a manual
    refund the vault has not yet paid (or failed)."""
    return set(
        Refund.objects.filter(
            order_id__in=list(order_ids), origin=RefundOrigin.MANUAL, status__in=IN_FLIGHT_STATUSES
        ).values_list("order_id", flat=True)
    )


def order_manually_refunded(*, order_id: int) -> int:
    """USDT units confirmed paid to the depositor by manual refunds of this order."""
    total = Refund.objects.filter(
        order_id=order_id, origin=RefundOrigin.MANUAL, status=RefundStatus.CONFIRMED
    ).aggregate(total=Sum("amount"))["total"]
    return int(total or 0)
