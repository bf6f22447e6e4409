"""The operations dashboard in Django admin: what an operator checks first.

Reads only. Every number comes from the database at request time (the stage latencies from
the audit trail, in one SQL statement with PostgreSQL's `percentile_cont`), except the
reserve, which the refunds app reports when it is installed. A source that fails shows as
"unavailable" on its tile and is logged; the rest of the page still renders.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, connection
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import TruncHour
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from core.models import Alert, AuditLog
from core.money import USDT_UNIT
from orders.models import OPEN_STATUSES, Order, OrderStatus, Waiting
from refunds.selectors import reserve_status

logger = logging.getLogger(__name__)

WINDOW_CHOICES_HOURS = (1, 24, 168)
DEFAULT_WINDOW_HOURS = 24
CHART_HOURS = 24
STUCK_LIMIT = 20
ALERT_LIMIT = 10

_SETTLING = ("order.finalized", "order.left_book", "order.refused", "order.canceled_before_trade")


@dataclass(frozen=True)
class Stage:
    """A pipeline stage as the audit trail sees it: from the first entry with one of `start`
    to the first entry with one of `end`, per order."""

    name: str
    start: tuple[str, ...]
    end: tuple[str, ...]


STAGES: tuple[Stage, ...] = (
    Stage("validate", ("order.created",), ("order.booked",)),
    Stage("wait", ("order.booked",), ("order.joined_cycle",)),
    Stage("execute", ("order.joined_cycle",), ("order.finalized", "order.left_book")),
    Stage("settle", _SETTLING, ("order.settled",)),
    Stage("end_to_end", ("order.created",), ("order.settled",)),
)


@dataclass(frozen=True)
class StageLatency:
    stage: str
    count: int
    p50: float | None
    p99: float | None


@dataclass(frozen=True)
class HourBucket:
    hour: datetime
    total: int
    failed: int


# --- Reads ------------------------------------------------------------------------------
def status_counts() -> list[tuple[str, str, int]]:
    """(status, label, orders) for every status, zero included, in lifecycle order."""
    counts = dict(
        Order.objects.order_by()
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    return [(s.value, s.label, counts.get(s.value, 0)) for s in OrderStatus]


def stuck_orders(*, now: datetime) -> QuerySet[Order]:
    """Open orders past their deadline (not those waiting for their market: they outlive
    it), or whose pipeline run is dead (its lease ran out: the compensation scan should be
    re-driving them). Oldest change first."""
    return (
        Order.objects.filter(status__in=[s.value for s in OPEN_STATUSES])
        .filter(Q(deadline__lt=now, waiting_for=Waiting.NOTHING) | Q(run_lease_until__lt=now))
        .order_by("updated_at", "pk")
    )


def _latency_sql() -> tuple[str, list[Any]]:
    audit = connection.ops.quote_name(AuditLog._meta.db_table)
    marks, spans, params_marks, params_spans = [], [], [], []
    for i, stage in enumerate(STAGES):
        marks.append(
            f"MIN(a.created_at) FILTER (WHERE a.action = ANY(%s)) AS start_{i}, "
            f"MIN(a.created_at) FILTER (WHERE a.action = ANY(%s)) AS end_{i}"
        )
        params_marks += [list(stage.start), list(stage.end)]
        spans.append(
            f"SELECT %s AS stage, EXTRACT(EPOCH FROM end_{i} - start_{i}) AS secs "
            f"FROM marks WHERE end_{i} >= %s AND start_{i} IS NOT NULL"
        )
        params_spans += [stage.name, None]  # the window start, filled in below
    ends = sorted({action for stage in STAGES for action in stage.end})
    sql = f"""
        WITH touched AS (
            SELECT DISTINCT order_id FROM {audit}
            WHERE created_at >= %s AND order_id IS NOT NULL AND action = ANY(%s)
        ), marks AS (
            SELECT a.order_id, {", ".join(marks)}
            FROM {audit} a JOIN touched t ON t.order_id = a.order_id
            GROUP BY a.order_id
        ), spans AS ({" UNION ALL ".join(spans)})
        SELECT stage, COUNT(*),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY secs),
               percentile_cont(0.99) WITHIN GROUP (ORDER BY secs)
        FROM spans GROUP BY stage
    """
    return sql, [None, ends, *params_marks, *params_spans]


def stage_latencies(*, since: datetime) -> list[StageLatency]:
    """p50 and p99 seconds per stage, over the orders whose stage ended at or after `since`
    (each order counted once per stage, from the first start entry to the first end entry)."""
    sql, params = _latency_sql()
    params = [since if p is None else p for p in params]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = {stage: (n, p50, p99) for stage, n, p50, p99 in cursor.fetchall()}
    result = []
    for stage in STAGES:
        n, p50, p99 = rows.get(stage.name, (0, None, None))
        result.append(
            StageLatency(
                stage=stage.name,
                count=int(n),
                p50=None if p50 is None else float(p50),
                p99=None if p99 is None else float(p99),
            )
        )
    return result


def hourly_orders(*, now: datetime, hours: int = CHART_HOURS) -> list[HourBucket]:
    """Orders created per hour over the last `hours` hours (empty hours included), with how
    many of them ended FAILED."""
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    rows = {
        row["hour"]: row
        for row in Order.objects.filter(created_at__gte=first)
        .annotate(hour=TruncHour("created_at"))
        .order_by()
        .values("hour")
        .annotate(total=Count("id"), failed=Count("id", filter=Q(status=OrderStatus.FAILED)))
    }
    buckets = []
    for i in range(hours):
        hour = first + timedelta(hours=i)
        row = rows.get(hour, {})
        buckets.append(HourBucket(hour, row.get("total", 0), row.get("failed", 0)))
    return buckets


def reserve_tile() -> dict[str, Any] | None:
    """Balance, committed refunds and floor (USDT base units) from
    `refunds.selectors.reserve_status`, or None when that is not there or fails."""
    try:
        status = reserve_status()
    except Exception:  # a broken chain node must not take the dashboard down with it
        logger.exception("dashboard: reserve status unavailable")
        return None
    if status is None:
        return None
    tile: dict[str, Any] = {}
    for name in ("balance", "committed", "floor"):
        value = status[name] if isinstance(status, dict) else getattr(status, name)
        tile[name] = {"units": int(value), "usdt": f"{int(value) / USDT_UNIT:,.2f}"}
    headroom = tile["balance"]["units"] - tile["committed"]["units"]
    tile["below_floor"] = headroom < tile["floor"]["units"]
    return tile


def open_alerts() -> QuerySet[Alert]:
    return Alert.objects.filter(resolved_at__isnull=True).order_by("-last_seen_at")[:ALERT_LIMIT]


# --- Chart ------------------------------------------------------------------------------
def hourly_chart_svg(buckets: Sequence[HourBucket]) -> SafeString:
    """A bar per hour (orders created), its failed part in red. Inline SVG: no script, no
    asset from anywhere else."""
    width, height, pad, label_h = 720, 160, 4, 18
    plot_h = height - label_h
    slot = (width - 2 * pad) / max(len(buckets), 1)
    peak = max((b.total for b in buckets), default=0) or 1
    bars = []
    for i, b in enumerate(buckets):
        x = pad + i * slot + 1
        w = max(slot - 2, 1)
        h_total = round(plot_h * b.total / peak, 1)
        h_failed = round(plot_h * b.failed / peak, 1)
        title = f"{b.hour:%Y-%m-%d %H:00} UTC: {b.total} orders, {b.failed} failed"
        bars.append(
            (
                f"{x:.1f}",
                f"{plot_h - h_total:.1f}",
                f"{w:.1f}",
                f"{h_total}",
                title,
                f"{plot_h - h_failed:.1f}",
                f"{h_failed}",
            )
        )
    rects = format_html_join(
        "",
        '<g><title>{}</title><rect class="total" x="{}" y="{}" width="{}" height="{}"/>'
        '<rect class="failed" x="{}" y="{}" width="{}" height="{}"/></g>',
        ((t, x, y, w, h, x, fy, w, fh) for x, y, w, h, t, fy, fh in bars),
    )
    labels = format_html_join(
        "",
        '<text x="{}" y="{}">{}</text>',
        (
            (f"{pad + i * slot:.1f}", height - 4, f"{b.hour:%H}h")
            for i, b in enumerate(buckets)
            if i % 3 == 0
        ),
    )
    return format_html(
        '<svg id="orders-per-hour" role="img" viewBox="0 0 {w} {h}" width="100%" height="{h}" '
        'xmlns="http://www.w3.org/2000/svg" aria-label="Orders created per hour, last {n} hours">'
        '<line x1="0" y1="{ph}" x2="{w}" y2="{ph}" class="axis"/>{rects}{labels}</svg>',
        w=width,
        h=height,
        n=len(buckets),
        ph=plot_h,
        rects=rects,
        labels=labels,
    )


# --- The page ---------------------------------------------------------------------------
def _window_hours(raw: str | None) -> int:
    try:
        hours = int(raw or DEFAULT_WINDOW_HOURS)
    except ValueError:
        return DEFAULT_WINDOW_HOURS
    return hours if hours in WINDOW_CHOICES_HOURS else DEFAULT_WINDOW_HOURS


def dashboard_context(*, window_hours: int, now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    since = now - timedelta(hours=window_hours)
    stuck = stuck_orders(now=now)
    try:
        latencies: list[StageLatency] | None = stage_latencies(since=since)
    except DatabaseError:
        logger.exception("dashboard: stage latency query failed")
        latencies = None
    buckets = hourly_orders(now=now)
    counts = status_counts()
    return {
        "now": now,
        "window_hours": window_hours,
        "window_choices": WINDOW_CHOICES_HOURS,
        "status_counts": counts,
        "open_total": sum(n for s, _, n in counts if s in OPEN_STATUSES),
        "stuck_count": stuck.count(),
        "stuck_orders": list(stuck[:STUCK_LIMIT]),
        "latencies": latencies,
        "reserve": reserve_tile(),
        "alerts": list(open_alerts()),
        "chart": hourly_chart_svg(buckets),
        "chart_total": sum(b.total for b in buckets),
    }
