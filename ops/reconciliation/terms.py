"""Reconciliation of users' terms and Bronco's fee (issue 16): what each order traded, cycle
by cycle (its `Allocation` rows), against what the user asked and what the vault allows.

- **price bound**: no allocation at a price outside the order's bound, by the vault's own
  arithmetic (`_checkDepositTerms` / `_checkRedeemTerms`): a deposit's cost is at most
  ceil(tokens x bound / 10^18), a redeem's proceeds at least floor(tokens x bound / 10^18)
  (bound in USDT base units per whole share, 0 = none);
- **expiry**: no allocation by a cycle allocated after the order's expiry (the vault takes
  nothing but a full refund or return after it);
- **fee schedule**: each allocation's fee is the cycle's published schedule applied as
  `orders.netting.allocation.FeeSchedule` documents it (rounded once on the order's total:
  each cycle charges what the fee on all the order's cost so far adds; a redeem's fee at most
  its proceeds), and a finished order's fee is the sum of its allocations' (0 without any);
- **vault's maximum**: an order's fee never exceeds the vault's `quoteFee` of its amount (a
  deposit's USDT, a redeem's gross proceeds) under the schedule in force at its settlement
  block: the latest `FeeScheduleSet` the listener recorded at or before it, else the
  schedule the vault holds now (`feeRatePpm`, `feeFlat`); for an order not yet settled, the
  schedule now.

Writes nothing; every finding is a discrepancy `[terms] order ...` on the result.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings

from chain.client import chain_client
from chain.deployment import contract_set
from chain.models import ChainEvent
from ops.reconciliation.database import order_label
from orders.models import Allocation, Order, OrderType
from orders.netting.allocation import TOKEN_UNITS_PER_SHARE, FeeSchedule

if TYPE_CHECKING:
    from ops.reconciliation import Reconciliation

WHERE = "terms"
_PPM = 1_000_000
_SETTLED_EVENT = {OrderType.BUY: "DepositSettled", OrderType.SELL: "RedeemSettled"}


@dataclass(frozen=True)
class VaultFeeSchedule:
    """The vault's fee schedule: `rate_ppm` parts per million, `flat_units` USDT base units."""

    rate_ppm: int
    flat_units: int

    def quote_fee(self, amount_units: int) -> int:
        """BroncoVault.quoteFee: ceil(amount x ratePpm / 10^6) + flat; 0 for no amount."""
        if amount_units <= 0:
            return 0
        return (amount_units * self.rate_ppm + _PPM - 1) // _PPM + self.flat_units


@dataclass(frozen=True)
class FeeScheduleHistory:
    """The vault's schedules by block: `changes` (block, schedule) in block order, from the
    recorded FeeScheduleSet events; `current` what the vault holds now."""

    changes: tuple[tuple[int, VaultFeeSchedule], ...]
    current: VaultFeeSchedule

    def at(self, block: int | None) -> VaultFeeSchedule:
        """The schedule in force at `block` (None: now)."""
        if block is None or not self.changes:
            return self.current
        i = bisect_right([b for b, _ in self.changes], block)
        return self.changes[i - 1][1] if i else self.current


def read_fee_schedules() -> FeeScheduleHistory:
    """The vault's current schedule (two contract reads) and the FeeScheduleSet events the
    listener recorded for this chain."""
    client = chain_client()
    vault = contract_set().vault
    current = VaultFeeSchedule(
        rate_ppm=int(client.call("BroncoVault", vault, "feeRatePpm")),
        flat_units=int(client.call("BroncoVault", vault, "feeFlat")),
    )
    rows = ChainEvent.objects.filter(
        chain_id=settings.CHAIN_ID, name="FeeScheduleSet", removed_at__isnull=True
    ).order_by("block_number", "log_index")
    changes = tuple(
        (
            int(row.block_number),
            VaultFeeSchedule(int(row.args["feeRatePpm"]), int(row.args["feeFlat"])),
        )
        for row in rows
    )
    return FeeScheduleHistory(changes=changes, current=current)


def _settlement_blocks(orders: Sequence[Order]) -> dict[tuple[str, int], int]:
    """(order type, vault id) -> the block of its live Deposit/RedeemSettled event."""
    found: dict[tuple[str, int], int] = {}
    for order_type, name in _SETTLED_EVENT.items():
        ids = [int(o.onchain_id) for o in orders if o.order_type == order_type]
        if not ids:
            continue
        for vault_id, block in ChainEvent.objects.filter(
            chain_id=settings.CHAIN_ID, name=name, vault_id__in=ids, removed_at__isnull=True
        ).values_list("vault_id", "block_number"):
            found[(order_type, int(vault_id))] = int(block)
    return found


def check_terms_and_fees(
    result: Reconciliation,
    orders: Sequence[Order],
    *,
    schedules: FeeScheduleHistory | None = None,
) -> None:
    """Add a discrepancy for every allocation outside its order's bound or after its expiry,
    every fee that is not the published schedule, and every order fee above the vault's
    maximum (see the module docstring). `schedules`: the vault's, read when not given."""
    schedules = schedules or read_fee_schedules()
    by_order: dict[int, list[Allocation]] = defaultdict(list)
    for allocation in (
        Allocation.objects.filter(order__in=orders)
        .select_related("cycle")
        .order_by("order_id", "cycle_id")
    ):
        by_order[allocation.order_id].append(allocation)
    blocks = _settlement_blocks(orders)
    for order in orders:
        allocations = by_order.get(order.pk, [])
        for allocation in allocations:
            check_allocation_bound(result, order, allocation)
            check_allocation_expiry(result, order, allocation)
        check_order_fees(result, order, allocations)
        block = blocks.get((order.order_type, int(order.onchain_id)))
        check_order_fee_below_vault_max(result, order, schedules.at(block))


def check_allocation_bound(result: Reconciliation, order: Order, allocation: Allocation) -> None:
    """The vault's bound check on one allocation (see the module docstring)."""
    bound = int(order.price_bound or 0)
    tokens = int(allocation.token_units)
    if bound == 0 or tokens == 0:
        return
    usdt = int(allocation.usdt_units)
    at_bound = tokens * bound
    if order.order_type == OrderType.BUY:
        broken = usdt * TOKEN_UNITS_PER_SHARE > at_bound + TOKEN_UNITS_PER_SHARE - 1
        word = "above its bound"
    else:
        broken = usdt < at_bound // TOKEN_UNITS_PER_SHARE
        word = "below its bound"
    if broken:
        result.add(
            WHERE,
            order_label(order),
            f"cycle {allocation.cycle_id} traded {tokens} units for {usdt} USDT units: "
            f"{usdt * TOKEN_UNITS_PER_SHARE // tokens} per share, {word} {bound}",
        )


def check_allocation_expiry(result: Reconciliation, order: Order, allocation: Allocation) -> None:
    """No cycle allocated the order anything after its expiry."""
    allocated_at = allocation.cycle.allocated_at or allocation.created_at
    if order.expires_at is not None and allocated_at > order.expires_at:
        result.add(
            WHERE,
            order_label(order),
            f"cycle {allocation.cycle_id} traded it at {allocated_at.isoformat()}, after its "
            f"expiry {order.expires_at.isoformat()}",
        )


def check_order_fees(
    result: Reconciliation, order: Order, allocations: Sequence[Allocation]
) -> None:
    """Each allocation's fee is its cycle's schedule applied to it (rounded on the order's
    total so far); a finished order's fee is their sum."""
    prior = 0
    charged = 0
    for allocation in allocations:
        cycle = allocation.cycle
        schedule = FeeSchedule(rate=cycle.fee_rate, flat_units=int(cycle.fee_flat_usdt))
        value = int(allocation.usdt_units)
        if order.order_type == OrderType.BUY:
            expected = schedule.fee(value, prior_units=prior)
        else:
            expected = min(value, schedule.fee(value, prior_units=prior))
        prior += value
        charged += int(allocation.fee_units)
        if int(allocation.fee_units) != expected:
            result.add(
                WHERE,
                order_label(order),
                f"cycle {allocation.cycle_id} charged a fee of {int(allocation.fee_units)} "
                f"USDT units; the published schedule ({cycle.fee_rate} + "
                f"{int(cycle.fee_flat_usdt)}) on {value} gives {expected}",
            )
    if order.outcome and int(order.fees_usdt) != charged:
        result.add(
            WHERE,
            order_label(order),
            f"fee {int(order.fees_usdt)} USDT units != {charged} charged by its cycles",
        )


def check_order_fee_below_vault_max(
    result: Reconciliation, order: Order, schedule: VaultFeeSchedule
) -> None:
    """The order's fee is at most the vault's quoteFee of its amount (a deposit's USDT, a
    redeem's gross proceeds): the vault refuses a settlement above it (FeeAboveSchedule)."""
    base = int(order.usdt_amount) if order.order_type == OrderType.BUY else int(order.cost_usdt)
    most = schedule.quote_fee(base)
    if int(order.fees_usdt) > most:
        result.add(
            WHERE,
            order_label(order),
            f"fee {int(order.fees_usdt)} USDT units above the vault's quoteFee({base}) = {most} "
            f"(schedule {schedule.rate_ppm} ppm + {schedule.flat_units})",
        )
