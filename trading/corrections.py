"""Fill corrections turned into what the vault owes or is owed (`trading.compensation`).

A case is opened by `trading.order_records` when the broker changes an order's fills after
it was final. It is assessed once its fill was allocated (the allocation is read through the
`TRADING_FILL_ALLOCATIONS` callable, since trading never imports the order lifecycle): the
figures are stored on the case, shown in the admin, and a critical alert names them. A case
whose fill is not allocated yet is assessed at a later call (the watch runs it every time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from core.alerts import AlertSeverity, alert_raise
from trading.compensation import FillAllocations, fill_compensation
from trading.models import BrokerFillCorrection

logger = logging.getLogger(__name__)

SOURCE = "trading.corrections"


def _allocations_reader() -> Callable[..., FillAllocations | None]:
    return import_string(settings.TRADING_FILL_ALLOCATIONS)


def fill_corrections_assess() -> int:
    """Assess every open case not assessed yet whose fill is allocated. Idempotent (a case
    is assessed once, under its row lock). Returns how many were assessed."""
    reader = _allocations_reader()
    done = 0
    pending = BrokerFillCorrection.objects.filter(
        assessed_at__isnull=True, resolved_at__isnull=True
    ).values_list("pk", "client_id")
    for pk, client_id in list(pending.order_by("pk")[:200]):
        fills = reader(client_id=client_id)
        if fills is None:
            continue
        with transaction.atomic():
            case = BrokerFillCorrection.objects.select_for_update().get(pk=pk)
            if case.assessed_at is not None:
                continue
            result = fill_compensation(
                before_qty=case.before_qty,
                before_price=case.before_avg_price,
                after_qty=case.after_qty,
                after_price=case.after_avg_price,
                fills=fills,
            )
            case.assessed_at = timezone.now()
            case.allocation_ref = result.ref[:64]
            case.shares_owed_units = Decimal(result.shares_owed_units)
            case.usdt_owed_units = Decimal(result.usdt_owed_units)
            case.broker_cash_units = Decimal(result.broker_cash_units)
            case.compensation = [
                {
                    "order_id": line.order_id,
                    "side": line.side,
                    "token_units": str(line.token_units),
                    "shares_owed_units": str(line.shares_owed_units),
                    "usdt_owed_units": str(line.usdt_owed_units),
                }
                for line in result.lines
                if line.shares_owed_units or line.usdt_owed_units
            ]
            case.save()
        alert_raise(
            key=f"broker_compensation:{case.client_id}:{case.pk}",
            message=(
                f"fill correction of {case.client_id} ({result.ref}): the vault owes "
                f"{result.shares_owed_units} share units (10^-18) and "
                f"{result.usdt_owed_units} USDT base units to {len(case.compensation)} "
                f"allocations (negative: owed to the vault); the broker returned "
                f"{result.broker_cash_units} USDT base units of cash"
            ),
            severity=AlertSeverity.CRITICAL,
            source=SOURCE,
            details={
                "case_id": case.pk,
                "client_id": case.client_id,
                "allocation": result.ref,
                "shares_owed_units": str(result.shares_owed_units),
                "usdt_owed_units": str(result.usdt_owed_units),
                "broker_cash_units": str(result.broker_cash_units),
            },
        )
        logger.error("fill correction assessed", extra={"client_id": case.client_id})
        done += 1
    return done
