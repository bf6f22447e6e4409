"""Alert rules, evaluated by the beat task `ops.tasks.evaluate_alert_rules`.

Each rule looks at the database (or another app's selector) and says firing or clear. A
firing rule raises its alert (`alert_raise`, which bumps an open one); a clear rule resolves
it; a rule with nothing to compare (the listener never ran here) leaves its alert alone.
One rule failing never stops the others. Evaluating twice at once is harmless: `alert_raise`
and `alert_resolve` are safe under concurrency.

Data sources other apps own:
- `chain.selectors.listener_lag() -> int | None`: blocks the listener is behind the head.
- `refunds.selectors.refund_failure_count(*, since: datetime) -> int`: refunds that failed
  since then.
- `refunds.selectors.reserve_status()`: an object (or mapping) with `balance`, `floor` and
  `committed`, USDT base units.
"""

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, F, Min, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from chain.selectors import listener_lag
from core.alerts import alert_raise, alert_resolve
from core.exceptions import TIME_LIMITS
from core.models import AlertSeverity, AuditLog
from orders.models import TERMINAL_STATUSES, Order, OrderStatus
from refunds.selectors import refund_failure_count, reserve_status

logger = logging.getLogger(__name__)

SOURCE = "alert_rules"


@dataclass(frozen=True)
class RuleResult:
    key: str
    firing: bool
    message: str = ""
    severity: str = AlertSeverity.WARNING
    details: dict[str, Any] = field(default_factory=dict)


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


# --- Reads shared with the metrics -----------------------------------------------------
def settling_orders() -> QuerySet[Order]:
    """Orders in SETTLING, annotated with `settling_since`: when they entered SETTLING (the
    audit entry of that transition; `updated_at` if there is none)."""
    entered = (
        AuditLog.objects.filter(order=OuterRef("pk"), after__status=OrderStatus.SETTLING)
        .order_by("seq")
        .values("created_at")[:1]
    )
    return Order.objects.filter(status=OrderStatus.SETTLING).annotate(
        settling_since=Coalesce(Subquery(entered), F("updated_at"))
    )


def oldest_settling_age_seconds(*, now: datetime | None = None) -> float:
    """Seconds the longest-settling order has been in SETTLING (0 when none is)."""
    now = now or timezone.now()
    oldest = settling_orders().aggregate(oldest=Min("settling_since"))["oldest"]
    return max(0.0, (now - oldest).total_seconds()) if oldest else 0.0


# --- Rules ------------------------------------------------------------------------------
def rule_order_failure_rate(*, now: datetime) -> RuleResult | None:
    """Share of orders that ended FAILED among those that ended in the window (canceled by
    the user is not a failure). Needs a minimum number of finished orders."""
    window = settings.ALERT_ORDER_FAILURE_WINDOW_SECONDS
    counts = Order.objects.filter(
        status__in=TERMINAL_STATUSES, updated_at__gte=now - timedelta(seconds=window)
    ).aggregate(total=Count("id"), failed=Count("id", filter=Q(status=OrderStatus.FAILED)))
    total, failed = counts["total"], counts["failed"]
    rate = failed / total if total else 0.0
    threshold = settings.ALERT_ORDER_FAILURE_RATE
    firing = total >= settings.ALERT_ORDER_FAILURE_MIN_ORDERS and rate > threshold
    return RuleResult(
        key="order_failure_rate",
        firing=firing,
        message=(
            f"{failed} of {total} orders finished in the last {window}s failed "
            f"({rate:.0%} > {threshold:.0%})"
        ),
        details={"failed": failed, "finished": total, "rate": round(rate, 4), "window_s": window},
    )


def rule_refund_failures(*, now: datetime) -> RuleResult | None:
    window = settings.ALERT_REFUND_FAILURE_WINDOW_SECONDS
    failed = int(refund_failure_count(since=now - timedelta(seconds=window)))
    allowed = settings.ALERT_REFUND_FAILURES_MAX
    return RuleResult(
        key="refund_failures",
        firing=failed > allowed,
        severity=AlertSeverity.CRITICAL,
        message=f"{failed} refunds failed in the last {window}s (more than {allowed})",
        details={"failed": failed, "window_s": window},
    )


def rule_settlement_latency(*, now: datetime) -> RuleResult | None:
    threshold = settings.ALERT_SETTLEMENT_LATENCY_SECONDS
    late = (
        settling_orders()
        .filter(settling_since__lt=now - timedelta(seconds=threshold))
        .order_by("settling_since")
    )
    rows = list(late.values("id", "chain_tx_hash", "settling_since")[:20])
    count = late.count() if len(rows) == 20 else len(rows)
    oldest = (now - rows[0]["settling_since"]).total_seconds() if rows else 0.0
    return RuleResult(
        key="settlement_latency",
        firing=bool(rows),
        severity=AlertSeverity.CRITICAL,
        message=(
            f"{count} orders have been settling on chain for more than {threshold}s "
            f"(oldest {oldest:.0f}s)"
        ),
        details={
            "count": count,
            "oldest_s": round(oldest),
            "threshold_s": threshold,
            "orders": [{"id": r["id"], "chain_tx_hash": r["chain_tx_hash"]} for r in rows],
        },
    )


def rule_listener_lag(*, now: datetime) -> RuleResult | None:
    lag = listener_lag()
    if lag is None:  # the listener never ran here: nothing to compare
        return None
    threshold = settings.ALERT_LISTENER_LAG_BLOCKS
    return RuleResult(
        key="listener_lag",
        firing=lag > threshold,
        message=f"the chain listener is {lag} blocks behind the head (more than {threshold})",
        details={"lag_blocks": lag, "threshold_blocks": threshold},
    )


def rule_reserve_below_floor(*, now: datetime) -> RuleResult | None:
    status = reserve_status()
    if status is None:
        return None
    balance, floor = int(_field(status, "balance")), int(_field(status, "floor"))
    committed = int(_field(status, "committed"))
    available = balance - committed
    return RuleResult(
        key="reserve_below_floor",
        firing=available < floor,
        severity=AlertSeverity.CRITICAL,
        message=(
            f"vault USDT reserve below floor: balance {balance} less committed refunds "
            f"{committed} leaves {available}, floor {floor} (base units)"
        ),
        details={"balance": balance, "committed": committed, "floor": floor},
    )


RULES: tuple[Callable[..., RuleResult | None], ...] = (
    rule_order_failure_rate,
    rule_refund_failures,
    rule_settlement_latency,
    rule_listener_lag,
    rule_reserve_below_floor,
)


def evaluate_alert_rules(*, now: datetime | None = None) -> dict[str, str]:
    """Run every rule; raise or resolve its alert. Returns rule -> firing / clear / skipped /
    error, for the task's result and the logs."""
    now = now or timezone.now()
    outcome: dict[str, str] = {}
    for rule in RULES:
        name = rule.__name__.removeprefix("rule_")
        try:
            result = rule(now=now)
            if result is None:
                outcome[name] = "skipped"
            elif result.firing:
                alert_raise(
                    key=result.key,
                    message=result.message,
                    severity=result.severity,
                    source=SOURCE,
                    details=result.details,
                )
                outcome[name] = "firing"
            else:
                alert_resolve(key=result.key)
                outcome[name] = "clear"
        except TIME_LIMITS:
            raise  # the task ran out of time: it ends as a timeout, never as a success
        except Exception:
            logger.exception("alert rule %s failed; the other rules still run", name)
            outcome[name] = "error"
    return outcome
