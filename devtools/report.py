"""What a scenario run did, from the database: orders by outcome, money and shares moved,
netting cycles (crossing, broker orders, inventory) and how long each stage took.

Stage latencies come from the audit log's timestamps of each order's transitions:
order.created -> order.booked -> order.joined_cycle -> order.finalized (or left_book) ->
order.settled (an order refused before the book goes created -> refused/canceled_before_trade
-> settled). "log -> settled" starts when the user's transaction receipt came back to the
driver, i.e. when the vault log existed. Broker orders are the cycles' (Cycle.placed_at).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from core.models import AuditLog
from core.money import TOKEN_UNIT, USDT_UNIT
from orders.models import Cycle, HouseInventory, Order, OrderType, Waiting

OUTCOMES = ("EXECUTED", "CANCELED", "FAILED")
_UNTRADED = ("order.refused", "order.canceled_before_trade")
_TRADED = ("order.finalized", "order.left_book")
STAGES = (
    ("validate (book)", "order.created", "order.booked"),
    ("wait for a cycle", "order.booked", "order.joined_cycle"),
    ("trade (book -> done)", "order.booked", _TRADED),
    ("settle", _TRADED, "order.settled"),
    ("refuse", "order.created", _UNTRADED),
    ("settle (refused)", _UNTRADED, "order.settled"),
    ("created -> settled", "order.created", "order.settled"),
)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class LatencyRow:
    stage: str
    n: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, stage: str, values: Sequence[float]) -> LatencyRow:
        return cls(
            stage,
            len(values),
            percentile(values, 50),
            percentile(values, 95),
            percentile(values, 99),
            max(values) if values else None,
        )


@dataclass
class RunReport:
    outcomes: dict[tuple[str, str], Counter] = field(default_factory=dict)
    money: dict[str, int] = field(default_factory=dict)
    shares: dict[str, dict[str, int]] = field(default_factory=dict)
    latencies: list[LatencyRow] = field(default_factory=list)
    broker_orders_per_30s: dict[str, float] = field(default_factory=dict)
    cycles: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Open orders waiting in the book for their market to open, per symbol.
    waiting_for_market: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcomes": {
                f"{kind} {symbol}": dict(counts)
                for (kind, symbol), counts in sorted(self.outcomes.items())
            },
            "money_usdt_units": self.money,
            "shares_token_units": self.shares,
            "latency_seconds": [row.__dict__ for row in self.latencies],
            "broker_orders_per_30s": self.broker_orders_per_30s,
            "cycles": self.cycles,
            "waiting_for_market": self.waiting_for_market,
        }


def _stamps(order_ids: Iterable[int]) -> dict[int, dict[str, datetime]]:
    """order id -> action -> the first time it was audited."""
    stamps: dict[int, dict[str, datetime]] = defaultdict(dict)
    rows = (
        AuditLog.objects.filter(order_id__in=list(order_ids))
        .order_by("seq")
        .values_list("order_id", "action", "created_at")
    )
    for order_id, action, at in rows:
        stamps[order_id].setdefault(action, at)
    return stamps


def _first(actions: dict[str, datetime], name: str | tuple[str, ...]) -> datetime | None:
    names = (name,) if isinstance(name, str) else name
    found = [actions[n] for n in names if n in actions]
    return min(found) if found else None


def stage_latencies(
    orders: Sequence[Order], *, log_times: dict[int, float] | None = None
) -> list[LatencyRow]:
    """Per-stage latency rows; `log_times` (order id -> unix time its log existed) adds
    the end-to-end "log -> settled" row."""
    stamps = _stamps(o.pk for o in orders)
    values: dict[str, list[float]] = defaultdict(list)
    for order in orders:
        actions = stamps.get(order.pk, {})
        for stage, start, end in STAGES:
            a, b = _first(actions, start), _first(actions, end)
            if a is not None and b is not None:
                values[stage].append((b - a).total_seconds())
        settled = actions.get("order.settled")
        if log_times and order.pk in log_times and settled is not None:
            values["log -> settled"].append(settled.timestamp() - log_times[order.pk])
    stages = [s for s, _, _ in STAGES] + ["log -> settled"]
    return [LatencyRow.of(stage, values[stage]) for stage in stages if values[stage]]


def _cycles_of(orders: Sequence[Order]) -> list[Cycle]:
    return list(Cycle.objects.filter(allocations__order__in=[o.pk for o in orders]).distinct())


def broker_order_rate(orders: Sequence[Order], *, window: float = 30.0) -> dict[str, float]:
    """Broker orders placed by the cycles these orders took part in: the most in any
    `window` seconds, and the mean per `window` over the span from the first to the last
    placement."""
    times = sorted(
        c.placed_at.timestamp() for c in _cycles_of(orders) if c.futu_order_id and c.placed_at
    )
    if not times:
        return {"placed": 0, "max_per_window": 0, "mean_per_window": 0.0, "window": window}
    most, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        most = max(most, hi - lo + 1)
    span = times[-1] - times[0]
    # n placements span n - 1 gaps. A mean over less than one window would extrapolate a
    # burst: then it is the count.
    mean = (len(times) - 1) / span * window if span >= window else float(len(times))
    return {
        "placed": len(times),
        "max_per_window": most,
        "mean_per_window": round(mean, 2),
        "window": window,
    }


def run_report(orders: Sequence[Order], *, log_times: dict[int, float] | None = None) -> RunReport:
    report = RunReport()
    outcomes: dict[tuple[str, str], Counter] = defaultdict(Counter)
    money: Counter[str] = Counter()
    shares: dict[str, Counter] = defaultdict(Counter)
    for o in orders:
        kind = "deposit" if o.order_type == OrderType.BUY else "redeem"
        outcomes[(kind, o.symbol)][o.status if o.is_terminal else "open"] += 1
        if not o.is_terminal and o.waiting_for == Waiting.MARKET:
            report.waiting_for_market[o.symbol] = report.waiting_for_market.get(o.symbol, 0) + 1
        if o.order_type == OrderType.BUY:
            money["usdt_in"] += o.usdt_amount
            money["spent_on_shares"] += o.cost_usdt
            money["fees"] += o.fees_usdt
            money["refunded"] += o.refund_usdt
            money["refunded_manually"] += int(getattr(o, "manual_refund_usdt", 0) or 0)
            shares[o.symbol]["minted"] += o.tokens_minted
        else:
            money["proceeds"] += o.cost_usdt
            money["fees"] += o.fees_usdt
            money["paid_out"] += o.payout_usdt
            shares[o.symbol]["burned"] += o.token_amount
            shares[o.symbol]["returned"] += o.tokens_returned
            shares[o.symbol]["minted"] += o.tokens_returned
            shares[o.symbol]["sold"] += o.token_amount - o.tokens_returned
    report.outcomes = dict(outcomes)
    report.money = dict(money)
    report.shares = {s: dict(c) for s, c in sorted(shares.items())}
    report.latencies = stage_latencies(orders, log_times=log_times)
    report.broker_orders_per_30s = broker_order_rate(orders)
    report.cycles = cycle_summary(orders)
    return report


def cycle_summary(orders: Sequence[Order]) -> dict[str, dict[str, Any]]:
    """Per symbol: cycles, those that needed the broker, units crossed internally (matched
    buyer against seller without the broker), broker units, and the house inventory now."""
    summary: dict[str, dict[str, Any]] = {}
    for cycle in _cycles_of(orders):
        row = summary.setdefault(
            cycle.symbol,
            {"cycles": 0, "to_broker": 0, "crossed_units": 0, "broker_units": 0},
        )
        row["cycles"] += 1
        row["to_broker"] += 1 if cycle.futu_order_id else 0
        row["crossed_units"] += min(int(cycle.demand_units), int(cycle.supply_units))
        row["broker_units"] += abs(int(cycle.filled_units))
    for item in HouseInventory.objects.filter(symbol__in=summary):
        summary[item.symbol]["inventory_units"] = int(item.token_units)
    return dict(sorted(summary.items()))


# --- rendering ---------------------------------------------------------------------------


def _usdt(units: int) -> str:
    return f"{Decimal(units) / USDT_UNIT:,.6f}"


def _shares(units: int) -> str:
    return f"{Decimal(units) / TOKEN_UNIT:,.4f}".rstrip("0").rstrip(".")


def _sec(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, indent: str = "  ") -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return indent + "  ".join([first, *rest])

    rule = indent + "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def render(report: RunReport) -> str:
    out = ["Orders by outcome"]
    rows = []
    totals: Counter[str] = Counter()
    for (kind, symbol), counts in sorted(report.outcomes.items()):
        row = [f"{kind} {symbol}", *(counts.get(o, 0) for o in OUTCOMES), counts.get("open", 0)]
        rows.append([*row, sum(counts.values())])
        totals.update(counts)
    rows.append(
        [
            "total",
            *(totals.get(o, 0) for o in OUTCOMES),
            totals.get("open", 0),
            sum(totals.values()),
        ]
    )
    out.append(table(["orders", *OUTCOMES, "open", "total"], rows))

    m = report.money
    out += ["", "Money (USDT)"]
    out.append(
        table(
            ["", "USDT"],
            [
                ["deposited (USDT in)", _usdt(m.get("usdt_in", 0))],
                ["spent on shares", _usdt(m.get("spent_on_shares", 0))],
                ["Bronco's fees", _usdt(m.get("fees", 0))],
                ["refunded", _usdt(m.get("refunded", 0))],
                ["refunded by operators", _usdt(m.get("refunded_manually", 0))],
                ["sale proceeds", _usdt(m.get("proceeds", 0))],
                ["paid out", _usdt(m.get("paid_out", 0))],
            ],
        )
    )
    out += ["", "Shares (stock tokens)"]
    out.append(
        table(
            ["symbol", "minted", "burned", "sold", "returned"],
            [
                [
                    symbol,
                    _shares(c.get("minted", 0)),
                    _shares(c.get("burned", 0)),
                    _shares(c.get("sold", 0)),
                    _shares(c.get("returned", 0)),
                ]
                for symbol, c in report.shares.items()
            ],
        )
    )
    out += ["", "Latency per stage (seconds, from audit-log timestamps)"]
    out.append(
        table(
            ["stage", "n", "p50", "p95", "p99", "max"],
            [
                [r.stage, r.n, _sec(r.p50), _sec(r.p95), _sec(r.p99), _sec(r.max)]
                for r in report.latencies
            ],
        )
    )
    out += ["", "Netting cycles (one price per cycle; crossing and inventory before the broker)"]
    out.append(
        table(
            ["symbol", "cycles", "to broker", "crossed", "bought/sold at broker", "inventory"],
            [
                [
                    symbol,
                    c["cycles"],
                    c["to_broker"],
                    _shares(c["crossed_units"]),
                    _shares(c["broker_units"]),
                    _shares(c.get("inventory_units", 0)),
                ]
                for symbol, c in report.cycles.items()
            ],
        )
    )
    if report.waiting_for_market:
        out += ["", "Waiting for the market to open (open orders in the book)"]
        out.append(table(["symbol", "orders"], sorted(report.waiting_for_market.items())))
    rate = report.broker_orders_per_30s
    out += [
        "",
        f"Broker orders placed: {rate.get('placed', 0)}; at most {rate.get('max_per_window', 0)} "
        f"in any 30 s, {rate.get('mean_per_window', 0)} per 30 s on average",
    ]
    return "\n".join(out)
