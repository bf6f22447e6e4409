"""The simulated brokerage behind the simulator: securities, accounts, orders and fills.

Thread-safe (one lock); every change returns or emits events (order updates, fills) that
the server turns into pushes. State can be saved to a JSON file after every change so a
restarted simulator carries on with the same orders, cash and positions.
"""

from __future__ import annotations

import copy
import json
import os
import random
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

from trading import market_calendar
from trading.opend_sim import fees, spreads

# Futu order status names (futu.common.constant.OrderStatus values).
OPEN_STATUSES = frozenset(
    {
        "WAITING_SUBMIT",
        "SUBMITTING",
        "SUBMITTED",
        "FILLED_PART",
        "CANCELLING_PART",
        "CANCELLING_ALL",
        "TIMEOUT",
        "UNSUBMITTED",
    }
)
# What `order_list_query` returns: orders not yet finished. A DISABLED order can be enabled
# again, so it is not finished either.
UNFINISHED_STATUSES = OPEN_STATUSES | {"DISABLED"}
MATCHABLE_STATUSES = frozenset({"SUBMITTED", "FILLED_PART"})
FILL_MODES = frozenset({"full", "partial", "none", "reject", "fail"})
# How a cancel request behaves: "take" (the order is cancelled), "ignore" (OpenD
# acknowledges the request but the order keeps working: py-futu-api issue 248).
CANCEL_MODES = frozenset({"take", "ignore"})
MARKET_CURRENCY = {"US": "USD", "HK": "HKD"}
# The sessions a US order trades in, by the `session` it was placed with (Futu's
# Common.Session: RTH regular only, ETH with pre-market and after-hours, OVERNIGHT the
# overnight session only, ALL every one).
_US_ORDER_SESSIONS = {
    "RTH": frozenset({market_calendar.REGULAR}),
    "ETH": frozenset(
        {market_calendar.REGULAR, market_calendar.PRE_MARKET, market_calendar.AFTER_HOURS}
    ),
    "OVERNIGHT": frozenset({market_calendar.OVERNIGHT}),
    "ALL": market_calendar.TRADABLE_SESSIONS["US"],
}
LANGUAGES = ("en", "zh")
# OpenD answers in the language it is configured with (Chinese by default, English when
# set so): every refusal the simulator makes has both texts, chosen by `SimMarket.language`.
MESSAGES: dict[str, tuple[str, str]] = {
    "rate_limit": (
        "Request frequency limit exceeded: at most {limit} {kind} requests per {window:g} "
        "seconds per account; please try again later",
        "请求过于频繁，每个账户每 {window:g} 秒最多 {limit} 次 {kind} 请求，请稍后再试",
    ),
    "locked": ("Trade is locked, please unlock trade first", "交易未解锁，请先解锁交易"),
    "wrong_password": ("Unlock failed: wrong trade password", "解锁失败：交易密码错误"),
    "buying_power": ("Insufficient buying power", "购买力不足"),
    "sellable": ("Insufficient sellable quantity", "可卖数量不足"),
    "no_order": ("Order {order_id} does not exist", "订单 {order_id} 不存在"),
    "not_cancellable": (
        "Order {order_id} is {status} and cannot be cancelled",
        "订单 {order_id} 当前状态为 {status}，不能撤单",
    ),
    "unknown_stock": ("Unknown stock {code}", "未知的股票 {code}"),
    "lot": (
        "Quantity {qty} is not a multiple of the lot size {lot}",
        "下单数量 {qty} 不是每手股数 {lot} 的整数倍",
    ),
    "tick": (
        "Price {price} is not a valid price step ({tick})",
        "价格 {price} 不符合价位 ({tick})",
    ),
    "suspended": ("{code} is suspended", "{code} 已停牌"),
    "rejected": ("Order rejected by the exchange (simulated)", "订单被交易所拒绝（模拟）"),
    "failed": ("Order failed (simulated)", "下单失败（模拟）"),
}


class SimError(Exception):
    """A request the simulated broker refuses; its text becomes the response's retMsg."""


def message(key: str, language: str, **kwargs: Any) -> str:
    en, zh = MESSAGES[key]
    return (zh if language == "zh" else en).format(**kwargs)


def _now_str(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _dec(value: Any) -> Decimal:
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


@dataclass
class SimSecurity:
    code: str  # Futu code, e.g. "US.AAPL"
    price: Decimal
    lot_size: int = 1
    name: str = ""
    prev_close: Decimal | None = None
    # How orders on this security behave: full (fill when the limit crosses), partial
    # (fill partial_ratio of the quantity, rest keeps working), none (never fills), reject
    # (refused at placement), fail (accepted, then FAILED).
    fill_mode: str = "full"
    partial_ratio: Decimal = Decimal("0.5")
    fill_delay: float = 0.0
    reject_reason: str = ""  # empty: the standard text in OpenD's language
    cancel_mode: str = "take"
    walk: Decimal = Decimal("0")  # relative std-dev per walk step; 0 = fixed price
    suspended: bool = False

    @property
    def market(self) -> str:
        return self.code.split(".", 1)[0]

    @property
    def symbol(self) -> str:
        return self.code.split(".", 1)[1]


@dataclass
class SimOrder:
    order_id: int
    acc_id: int
    trd_env: int
    code: str
    side: str  # BUY / SELL
    qty: Decimal
    price: Decimal
    remark: str
    status: str
    created_at: float
    updated_at: float
    fill_after: float
    filled_qty: Decimal = Decimal("0")
    filled_value: Decimal = Decimal("0")
    fee_charged: Decimal = Decimal("0")
    last_err: str = ""
    session: str = ""  # the US `session` the order was placed with (RTH, ETH, ALL, ...)

    @property
    def market(self) -> str:
        return self.code.split(".", 1)[0]

    @property
    def avg_price(self) -> Decimal:
        return self.filled_value / self.filled_qty if self.filled_qty else Decimal("0")


@dataclass
class SimFill:
    fill_id: int
    order_id: int
    acc_id: int
    trd_env: int
    code: str
    side: str
    qty: Decimal
    price: Decimal
    created_at: float
    # Futu's OrderFillStatus: OK, CANCELLED (the exchange reversed it), CHANGED.
    status: str = "OK"
    updated_at: float = 0.0


@dataclass
class SimAccount:
    acc_id: int
    trd_env: int  # 0 simulate, 1 real
    cash: dict[str, Decimal] = field(default_factory=dict)
    positions: dict[str, Decimal] = field(default_factory=dict)
    cost: dict[str, Decimal] = field(default_factory=dict)


@dataclass
class Event:
    kind: str  # "order" or "fill"
    acc_id: int
    trd_env: int
    order: SimOrder | None = None
    fill: SimFill | None = None


class SimRateLimiter:
    """Futu's per-account request limits, enforced the way OpenD answers them: a request
    over the budget is refused with Futu's frequency error. Every request is logged."""

    def __init__(self, *, window: float, limits: dict[str, tuple[int, float]]) -> None:
        self.window = window
        self.limits = limits
        self._times: dict[tuple[str, int], deque[float]] = {}
        self._last: dict[tuple[str, int], float] = {}
        self.log: list[tuple[str, int, float, bool]] = []
        self.language = "en"

    def check(self, kind: str, acc_id: int, now: float) -> None:
        if kind not in self.limits:
            return
        limit, interval = self.limits[kind]
        key = (kind, acc_id)
        times = self._times.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        too_close = interval > 0 and key in self._last and now - self._last[key] < interval
        ok = len(times) < limit and not too_close
        self.log.append((kind, acc_id, now, ok))
        # Futu counts every request it receives, accepted or refused.
        times.append(now)
        self._last[key] = now
        if not ok:
            raise SimError(
                message("rate_limit", self.language, limit=limit, kind=kind, window=self.window)
            )

    def max_in_window(self, kind: str, acc_id: int | None = None) -> int:
        """The most requests of `kind` seen in any window (sliding over request times)."""
        times = sorted(t for k, a, t, _ in self.log if k == kind and acc_id in (None, a))
        best, start = 0, 0
        for end, t in enumerate(times):
            while times[start] <= t - self.window:
                start += 1
            best = max(best, end - start + 1)
        return best


DEFAULT_SECURITIES = (
    SimSecurity(code="US.AAPL", name="Apple", price=Decimal("190.00"), lot_size=1),
    SimSecurity(code="US.TSLA", name="Tesla", price=Decimal("250.00"), lot_size=1),
    SimSecurity(code="US.NVDA", name="NVIDIA", price=Decimal("120.00"), lot_size=1),
    SimSecurity(code="HK.00700", name="Tencent", price=Decimal("380.00"), lot_size=100),
)


class SimMarket:
    """The brokerage state. All public methods take the lock; events go to listeners after
    the lock is released."""

    def __init__(
        self,
        *,
        acc_id: int = 281756457000001,
        real_acc_id: int | None = None,
        trade_password: str = "123456",
        securities: Iterable[SimSecurity] = DEFAULT_SECURITIES,
        cash: dict[str, Decimal] | None = None,
        rate_window: float = 30.0,
        rate_limits: dict[str, tuple[int, float]] | None = None,
        fee_rates: dict[str, tuple[Decimal, Decimal]] | None = None,
        language: str = "en",
        lenient_listing: bool = False,
        walk_interval: float = 1.0,
        seed: int | None = None,
        state_file: str | Path | None = None,
        hk_spread_table: str = spreads.DEFAULT_HK_TABLE,
    ) -> None:
        self.lock = threading.RLock()
        # Which HKEX spread table is in force (`trading.opend_sim.spreads`).
        self.hk_spread_table = hk_spread_table
        self.listeners: list[Callable[[Event], None]] = []
        self.trade_password = trade_password
        self.walk_interval = walk_interval
        self.rng = random.Random(seed)
        self.state_file = Path(state_file) if state_file else None
        self.rate = SimRateLimiter(
            window=rate_window,
            limits=rate_limits
            or {
                "place": (15, 0.02),
                "modify": (20, 0.04),
                "order_list": (10, 0.0),
                "history_order_list": (10, 0.0),
                "funds": (10, 0.0),
                "positions": (10, 0.0),
                "history_deal_list": (10, 0.0),
                "order_fee": (10, 0.0),
                "trading_info": (10, 0.0),
                "snapshot": (60, 0.0),
            },
        )
        # `fee_rates` is accepted for old callers and ignored: fees follow the published
        # schedule in `trading.opend_sim.fees`.
        del fee_rates
        self.language = language
        self.rate.language = language
        # The old, kinder listing: `order_list_query` returns finished orders too. Only for a
        # test that shows the difference; Futu documents the open list as unfinished orders.
        self.lenient_listing = lenient_listing
        self.unlocked = False
        # Without a clock every market is open or closed as `market_open` says (scripted by
        # `set_market_open`). With a clock (`set_clock`) each market's state comes from its
        # exchange calendar at the simulated time (`trading.market_calendar`), and
        # `market_override` pins a market open or closed until the clock is set again.
        self.market_open: dict[str, bool] = {"US": True, "HK": True}
        self.clock: dict[str, float] | None = None  # {"real": epoch s, "sim": epoch s, "rate"}
        self.market_override: dict[str, bool] = {}
        self.securities: dict[str, SimSecurity] = {}
        self.orders: dict[int, SimOrder] = {}
        self.fills: list[SimFill] = []
        self._next_order_id = int(time.time() * 1000) * 1000
        self._next_fill_id = 1
        self._last_walk = time.time()
        start_cash = cash or {"USD": Decimal("10000000"), "HKD": Decimal("50000000")}
        self.accounts: dict[int, SimAccount] = {
            acc_id: SimAccount(acc_id=acc_id, trd_env=0, cash=dict(start_cash)),
        }
        real = real_acc_id if real_acc_id is not None else acc_id + 1
        self.accounts[real] = SimAccount(acc_id=real, trd_env=1, cash=dict(start_cash))
        for sec in securities:
            self.add_security(copy.deepcopy(sec))
        if self.state_file and self.state_file.exists():
            self._load()

    # --- helpers --------------------------------------------------------------------
    def _emit(self, events: list[Event]) -> None:
        if self.state_file:
            with self.lock:
                self._save()
        for event in events:
            for listener in list(self.listeners):
                listener(event)

    def account(self, acc_id: int, trd_env: int) -> SimAccount:
        acc = self.accounts.get(acc_id)
        if acc is None or acc.trd_env != trd_env:
            raise SimError(f"Nonexisting acc_id {acc_id} in this trading environment")
        return acc

    def security(self, code: str) -> SimSecurity:
        sec = self.securities.get(code)
        if sec is None:
            raise SimError(self.msg("unknown_stock", code=code))
        return sec

    def spread(self, code: str, price: Decimal) -> Decimal:
        """The exchange's price step at `price` (the snapshot's `price_spread`)."""
        return spreads.spread_at(code, price, table=self.hk_spread_table)

    def set_hk_spread_table(self, table: str) -> None:
        if table not in spreads.HK_SPREAD_TABLES:
            raise SimError(f"HK spread table must be one of {sorted(spreads.HK_SPREAD_TABLES)}")
        with self.lock:
            self.hk_spread_table = table

    def msg(self, key: str, **kwargs: Any) -> str:
        return message(key, self.language, **kwargs)

    def set_language(self, language: str) -> None:
        if language not in LANGUAGES:
            raise SimError(f"language must be one of {LANGUAGES}")
        with self.lock:
            self.language = self.rate.language = language

    def _fee(
        self, code: str, value: Decimal, side: str = "BUY", qty: Decimal = Decimal(0)
    ) -> Decimal:
        """The order's total fee on `value` filled (see `fees.order_fees`)."""
        if value <= 0:
            return Decimal("0")
        return fees.total(fees.order_fees(code=code, side=side, qty=qty, value=value))

    def order_fee_items(self, order: SimOrder) -> list[tuple[str, Decimal]]:
        """The itemised fee of an order as `order_fee_query` reports it."""
        return fees.order_fees(
            code=order.code, side=order.side, qty=order.filled_qty, value=order.filled_value
        )

    def _reserve(self, code: str, side: str, qty: Decimal, price: Decimal) -> Decimal:
        """Cash a buy needs at placement: notional plus the fee if filled in full."""
        return qty * price + self._fee(code, qty * price, side, qty)

    def _touch(self, order: SimOrder, status: str, now: float, err: str = "") -> Event:
        order.status = status
        order.updated_at = now
        if err:
            order.last_err = err
        return Event("order", order.acc_id, order.trd_env, order=copy.copy(order))

    # --- trading --------------------------------------------------------------------
    def check_rate(self, kind: str, acc_id: int) -> None:
        with self.lock:
            self.rate.check(kind, acc_id, time.time())

    def unlock(self, password_md5: str, unlock: bool) -> None:
        import hashlib

        with self.lock:
            if not unlock:
                self.unlocked = False
                return
            expected = hashlib.md5(self.trade_password.encode()).hexdigest()  # noqa: S324
            if password_md5.lower() != expected:
                raise SimError(self.msg("wrong_password"))
            self.unlocked = True

    def lock_trade(self) -> None:
        """Another client of the same OpenD locked trading: every REAL write now fails."""
        with self.lock:
            self.unlocked = False

    def set_trade_password(self, password: str) -> None:
        """The password was rotated (and OpenD restarted): trading is locked again."""
        with self.lock:
            self.trade_password = password
            self.unlocked = False

    def place(
        self,
        *,
        acc_id: int,
        trd_env: int,
        side: str,
        code: str,
        qty: Decimal,
        price: Decimal,
        remark: str,
        session: str = "",
        adjust_limit: Decimal = Decimal(0),
    ) -> SimOrder:
        """Place a limit order. A price off the exchange's price step is moved to a valid
        one within `adjust_limit` (Futu's place_order argument: sign = direction, size = the
        largest move as a fraction of the price), else refused (`spreads.adjusted_price`)."""
        events: list[Event] = []
        with self.lock:
            now = time.time()
            self.rate.check("place", acc_id, now)
            acc = self.account(acc_id, trd_env)
            if trd_env == 1 and not self.unlocked:
                raise SimError(self.msg("locked"))
            sec = self.security(code)
            if len(remark.encode()) > 64:
                raise SimError("remark is longer than 64 bytes")
            if sec.suspended:
                raise SimError(self.msg("suspended", code=code))
            if sec.fill_mode == "reject":
                raise SimError(sec.reject_reason or self.msg("rejected"))
            if qty <= 0 or qty % sec.lot_size:
                raise SimError(self.msg("lot", qty=qty, lot=sec.lot_size))
            valid = spreads.adjusted_price(code, price, adjust_limit, table=self.hk_spread_table)
            if valid is None:
                raise SimError(self.msg("tick", price=price, tick=self.spread(code, price)))
            price = valid
            currency = MARKET_CURRENCY[sec.market]
            if side == "BUY":
                if self._available_cash(acc, currency) < self._reserve(code, side, qty, price):
                    raise SimError(self.msg("buying_power"))
            elif side == "SELL":
                if self._sellable(acc, code) < qty:
                    raise SimError(self.msg("sellable"))
            else:
                raise SimError(f"Unsupported side {side}")
            self._next_order_id += 1
            status = "SUBMITTED" if self.is_trading(sec.market, session) else "WAITING_SUBMIT"
            order = SimOrder(
                order_id=self._next_order_id,
                acc_id=acc_id,
                trd_env=trd_env,
                code=code,
                side=side,
                qty=qty,
                price=price,
                remark=remark,
                status=status,
                created_at=now,
                updated_at=now,
                fill_after=now + sec.fill_delay,
                session=session,
            )
            self.orders[order.order_id] = order
            events.append(Event("order", acc_id, trd_env, order=copy.copy(order)))
            if sec.fill_mode == "fail":
                events.append(self._touch(order, "FAILED", now, self.msg("failed")))
            else:
                events.extend(self._match(order, now))
        self._emit(events)
        return order

    def modify(
        self,
        *,
        acc_id: int,
        trd_env: int,
        order_id: int,
        op: str,
        qty: Decimal | None = None,
        price: Decimal | None = None,
    ) -> SimOrder:
        events: list[Event] = []
        with self.lock:
            now = time.time()
            self.rate.check("modify", acc_id, now)
            self.account(acc_id, trd_env)
            if trd_env == 1 and not self.unlocked:
                raise SimError(self.msg("locked"))
            order = self.orders.get(order_id)
            if order is None or order.acc_id != acc_id:
                raise SimError(self.msg("no_order", order_id=order_id))
            if op == "CANCEL":
                if order.status not in OPEN_STATUSES and order.status != "DISABLED":
                    raise SimError(
                        self.msg("not_cancellable", order_id=order_id, status=order.status)
                    )
                if self.securities[order.code].cancel_mode == "take":
                    final = "CANCELLED_PART" if order.filled_qty else "CANCELLED_ALL"
                    events.append(self._touch(order, final, now))
                # "ignore": acknowledged, and the order keeps working (issue 248).
            elif op == "NORMAL":
                if order.status not in OPEN_STATUSES:
                    raise SimError(f"Order {order_id} is {order.status} and cannot be modified")
                if qty is not None and qty > 0:
                    order.qty = qty
                if price is not None and price > 0:
                    order.price = price
                events.append(self._touch(order, order.status, now))
                events.extend(self._match(order, now))
            elif op == "DISABLE":
                events.append(self._touch(order, "DISABLED", now))
            elif op == "ENABLE":
                events.append(self._touch(order, "SUBMITTED", now))
            elif op == "DELETE":
                if order.filled_qty:
                    raise SimError("Only orders without fills can be deleted")
                events.append(self._touch(order, "DELETED", now))
            else:
                raise SimError(f"Unsupported modify operation {op}")
        self._emit(events)
        return order

    def list_orders(
        self,
        *,
        acc_id: int,
        trd_env: int,
        codes: Iterable[str] = (),
        order_ids: Iterable[int] = (),
        statuses: Iterable[str] = (),
        unfinished_only: bool = False,
        start: float | None = None,
        end: float | None = None,
    ) -> list[SimOrder]:
        """Orders of the account under Futu's filters. `unfinished_only` is the open list
        (`order_list_query`: "查询未完成订单", unfinished orders only,
        https://openapi.futunn.com/futu-api-doc/en/trade/get-order-list.html); without it,
        the history (`history_order_list_query`, every order in [start, end],
        https://openapi.futunn.com/futu-api-doc/en/trade/get-history-order-list.html).
        `start`/`end` bound the creation time (epoch seconds)."""
        codes, ids, statuses = set(codes), set(order_ids), set(statuses)
        open_only = unfinished_only and not self.lenient_listing
        with self.lock:
            self.account(acc_id, trd_env)
            return [
                o
                for o in sorted(self.orders.values(), key=lambda o: o.order_id)
                if o.acc_id == acc_id
                and (not open_only or o.status in UNFINISHED_STATUSES)
                and (not codes or o.code.split(".", 1)[1] in codes or o.code in codes)
                and (not ids or o.order_id in ids)
                and (not statuses or o.status in statuses)
                and (start is None or o.created_at >= start)
                and (end is None or o.created_at <= end)
            ]

    def list_fills(
        self,
        *,
        acc_id: int,
        trd_env: int,
        codes: Iterable[str] = (),
        start: float | None = None,
        end: float | None = None,
    ) -> list[SimFill]:
        codes = set(codes)
        with self.lock:
            self.account(acc_id, trd_env)
            return [
                f
                for f in self.fills
                if f.acc_id == acc_id
                and (not codes or f.code.split(".", 1)[1] in codes or f.code in codes)
                and (start is None or f.created_at >= start)
                and (end is None or f.created_at <= end)
            ]

    def order_fees(self, *, acc_id: int, trd_env: int, order_ids: Iterable[int]) -> list[Any]:
        """(order, itemised fee) for each known order id (`order_fee_query`)."""
        with self.lock:
            self.account(acc_id, trd_env)
            return [
                (o, self.order_fee_items(o))
                for o in (self.orders.get(int(i)) for i in order_ids)
                if o is not None and o.acc_id == acc_id
            ]

    def max_buy_qty(self, *, acc_id: int, trd_env: int, code: str, price: Decimal) -> Decimal:
        """Whole lots the account's buying power covers at `price`, fees included
        (`acctradinginfo_query`'s max_cash_buy)."""
        with self.lock:
            acc = self.account(acc_id, trd_env)
            sec = self.security(code)
            cash = self._available_cash(acc, MARKET_CURRENCY[sec.market])
            if price <= 0:
                return Decimal(0)
            lots = (cash / (price * sec.lot_size)).to_integral_value(rounding=ROUND_FLOOR)
            while lots > 0 and self._reserve(code, "BUY", lots * sec.lot_size, price) > cash:
                lots -= 1
            return Decimal(max(lots, 0) * sec.lot_size)

    def _available_cash(self, acc: SimAccount, currency: str) -> Decimal:
        return acc.cash.get(currency, Decimal(0)) - self._frozen(acc, currency)

    def _frozen(self, acc: SimAccount, currency: str) -> Decimal:
        frozen = Decimal(0)
        for o in self.orders.values():
            if (
                o.acc_id == acc.acc_id
                and o.side == "BUY"
                and o.status in OPEN_STATUSES
                and MARKET_CURRENCY[o.code.split(".", 1)[0]] == currency
            ):
                frozen += (o.qty - o.filled_qty) * o.price
        return frozen

    def _sellable(self, acc: SimAccount, code: str) -> Decimal:
        pending = sum(
            (
                o.qty - o.filled_qty
                for o in self.orders.values()
                if o.acc_id == acc.acc_id
                and o.code == code
                and o.side == "SELL"
                and o.status in OPEN_STATUSES
            ),
            Decimal(0),
        )
        return acc.positions.get(code, Decimal(0)) - pending

    # --- matching -------------------------------------------------------------------
    def _match(
        self,
        order: SimOrder,
        now: float,
        *,
        force_qty: Decimal | None = None,
        force_price: Decimal | None = None,
    ) -> list[Event]:
        sec = self.securities[order.code]
        events: list[Event] = []
        trading = self.is_trading(sec.market, order.session)
        if order.status == "WAITING_SUBMIT" and trading:
            events.append(self._touch(order, "SUBMITTED", now))
        if order.status not in MATCHABLE_STATUSES:
            return events
        if force_qty is None:
            if not trading or sec.suspended:
                return events
            if now < order.fill_after or sec.fill_mode in ("none", "fail", "reject"):
                return events
            crosses = sec.price <= order.price if order.side == "BUY" else sec.price >= order.price
            if not crosses:
                return events
            target = order.qty
            if sec.fill_mode == "partial":
                lots = (order.qty * sec.partial_ratio / sec.lot_size).to_integral_value(
                    rounding=ROUND_FLOOR
                )
                target = min(lots * sec.lot_size, order.qty)
            qty = target - order.filled_qty
            price = sec.price
        else:
            qty = min(force_qty, order.qty - order.filled_qty)
            price = force_price if force_price is not None else order.price
        if qty <= 0:
            return events
        events.extend(self._apply_fill(order, qty, price, now))
        return events

    def _apply_fill(self, order: SimOrder, qty: Decimal, price: Decimal, now: float) -> list[Event]:
        acc = self.accounts[order.acc_id]
        currency = MARKET_CURRENCY[order.code.split(".", 1)[0]]
        value = qty * price
        order.filled_qty += qty
        order.filled_value += value
        fee_total = self._fee(order.code, order.filled_value, order.side, order.filled_qty)
        fee, order.fee_charged = fee_total - order.fee_charged, fee_total
        if order.side == "BUY":
            acc.cash[currency] = acc.cash.get(currency, Decimal(0)) - value - fee
            acc.positions[order.code] = acc.positions.get(order.code, Decimal(0)) + qty
            acc.cost[order.code] = acc.cost.get(order.code, Decimal(0)) + value
        else:
            held = acc.positions.get(order.code, Decimal(0))
            if held:
                acc.cost[order.code] = acc.cost.get(order.code, Decimal(0)) * (held - qty) / held
            acc.cash[currency] = acc.cash.get(currency, Decimal(0)) + value - fee
            acc.positions[order.code] = held - qty
        fill = SimFill(
            fill_id=self._next_fill_id,
            order_id=order.order_id,
            acc_id=order.acc_id,
            trd_env=order.trd_env,
            code=order.code,
            side=order.side,
            qty=qty,
            price=price,
            created_at=now,
            updated_at=now,
        )
        self._next_fill_id += 1
        self.fills.append(fill)
        status = "FILLED_ALL" if order.filled_qty >= order.qty else "FILLED_PART"
        return [
            Event("fill", order.acc_id, order.trd_env, fill=fill),
            self._touch(order, status, now),
        ]

    def tick(self, now: float | None = None) -> None:
        """Advance the market: random-walk prices, release waiting orders, match."""
        now = time.time() if now is None else now
        events: list[Event] = []
        with self.lock:
            if now - self._last_walk >= self.walk_interval:
                self._last_walk = now
                for sec in self.securities.values():
                    if sec.walk > 0:
                        step = Decimal(repr(self.rng.gauss(0.0, float(sec.walk))))
                        raw = max(sec.price * (1 + step), self.spread(sec.code, sec.price))
                        tick = self.spread(sec.code, raw)
                        sec.price = (raw / tick).to_integral_value() * tick
            for order in list(self.orders.values()):
                if order.status in ("WAITING_SUBMIT", "SUBMITTED", "FILLED_PART"):
                    events.extend(self._match(order, now))
        if events:
            self._emit(events)

    # --- scripting (tests and the control channel) ----------------------------------
    def add_security(self, sec: SimSecurity) -> None:
        with self.lock:
            sec.price = _dec(sec.price)
            if sec.prev_close is None:
                sec.prev_close = sec.price
            if sec.fill_mode not in FILL_MODES:
                raise SimError(f"fill_mode must be one of {sorted(FILL_MODES)}")
            self.securities[sec.code] = sec

    def set_security(self, code: str, **changes: Any) -> SimSecurity:
        with self.lock:
            sec = self.securities.get(code)
            if sec is None:
                sec = SimSecurity(code=code, price=_dec(changes.pop("price", "10")))
                self.securities[code] = sec
            for key, value in changes.items():
                if not hasattr(sec, key):
                    raise SimError(f"unknown security field {key}")
                if key in ("price", "prev_close", "partial_ratio", "walk"):
                    value = _dec(value)
                if key == "fill_mode" and value not in FILL_MODES:
                    raise SimError(f"fill_mode must be one of {sorted(FILL_MODES)}")
                if key == "cancel_mode" and value not in CANCEL_MODES:
                    raise SimError(f"cancel_mode must be one of {sorted(CANCEL_MODES)}")
                setattr(sec, key, value)
        self.tick()
        return sec

    def set_market_open(self, market: str, is_open: bool) -> None:
        """Open or close `market` by hand; with a clock running, pin it until the clock is
        set again."""
        with self.lock:
            if self.clock is None:
                self.market_open[market] = bool(is_open)
            else:
                self.market_override[market] = bool(is_open)
        self.tick()

    # --- the clock and the market calendar ------------------------------------------
    def set_clock(self, at: datetime | None, rate: float = 1.0) -> None:
        """Drive the markets from their exchange calendars at simulated time `at` (aware),
        which then runs on at `rate` simulated seconds per real second (0 freezes it).
        None stops the clock: markets follow `market_open` again. Clears the overrides."""
        with self.lock:
            self.market_override = {}
            if at is None:
                self.clock = None
            else:
                if at.tzinfo is None:
                    raise SimError("the clock needs an aware time (with a UTC offset)")
                if rate < 0:
                    raise SimError("the clock rate cannot be negative")
                self.clock = {"real": time.time(), "sim": at.timestamp(), "rate": float(rate)}
        self.tick()

    def sim_now(self) -> datetime:
        """The simulated time (real time when no clock is set), aware, in UTC."""
        with self.lock:
            if self.clock is None:
                return datetime.now(tz=UTC)
            elapsed = (time.time() - self.clock["real"]) * self.clock["rate"]
            return datetime.fromtimestamp(self.clock["sim"] + elapsed, tz=UTC)

    def market_state(self, market: str) -> str:
        """Futu's market state name for securities of `market` now ("AFTERNOON", "REST",
        "PRE_MARKET_BEGIN", "CLOSED", ...)."""
        with self.lock:
            if self.clock is None:
                return "AFTERNOON" if self.market_open.get(market, False) else "CLOSED"
            if market in self.market_override:
                return "AFTERNOON" if self.market_override[market] else "CLOSED"
            return market_calendar.futu_state_at(market, self.sim_now())

    def is_trading(self, market: str, session: str = "") -> bool:
        """Whether an order of `market` placed with the US `session` argument (RTH when
        empty) trades now: RTH in the regular session, ETH also pre-market and after-hours,
        OVERNIGHT in the overnight session only, ALL in any of them."""
        current = market_calendar.session_of_state(self.market_state(market))
        if market != "US":
            return current == market_calendar.REGULAR
        return current in _US_ORDER_SESSIONS.get(session or "RTH", frozenset())

    def force_fill(
        self, order_id: int, qty: Decimal | None = None, price: Decimal | None = None
    ) -> SimOrder:
        with self.lock:
            order = self._order(order_id)
            if order.status == "WAITING_SUBMIT":
                order.status = "SUBMITTED"
            fill_qty = order.qty - order.filled_qty if qty is None else _dec(qty)
            events = self._match(
                order,
                time.time(),
                force_qty=fill_qty,
                force_price=None if price is None else _dec(price),
            )
        self._emit(events)
        return order

    def set_order_status(self, order_id: int, status: str, last_err: str = "") -> SimOrder:
        with self.lock:
            order = self._order(order_id)
            events = [self._touch(order, status, time.time(), last_err)]
        self._emit(events)
        return order

    def set_cash(self, acc_id: int, currency: str, amount: Decimal) -> None:
        with self.lock:
            self.accounts[acc_id].cash[currency] = _dec(amount)
        self._emit([])

    def set_position(self, acc_id: int, code: str, qty: Decimal) -> None:
        with self.lock:
            self.accounts[acc_id].positions[code] = _dec(qty)
        self._emit([])

    def reverse_fills(self, order_id: int) -> SimOrder:
        """The exchange cancels every fill of the order after the fact: deals become
        CANCELLED, the order FILL_CANCELLED, cash and shares go back."""
        with self.lock:
            order = self._order(order_id)
            now = time.time()
            events: list[Event] = []
            for fill in [f for f in self.fills if f.order_id == order.order_id]:
                if fill.status == "CANCELLED":
                    continue
                events.extend(self._undo_fill(order, fill, fill.qty, fill.price, now))
                fill.status, fill.updated_at = "CANCELLED", now
                events.append(Event("fill", order.acc_id, order.trd_env, fill=copy.copy(fill)))
            events.append(self._touch(order, "FILL_CANCELLED", now))
        self._emit(events)
        return order

    def change_deal(self, fill_id: int, qty: Decimal, price: Decimal | None = None) -> SimFill:
        """The exchange corrects a deal after the fact (status CHANGED): the order's filled
        quantity and average follow."""
        with self.lock:
            fill = next((f for f in self.fills if f.fill_id == int(fill_id)), None)
            if fill is None:
                raise SimError(f"Deal {fill_id} does not exist")
            order = self._order(fill.order_id)
            now = time.time()
            new_qty, new_price = _dec(qty), fill.price if price is None else _dec(price)
            self._undo_fill(order, fill, fill.qty, fill.price, now)
            acc = self.accounts[order.acc_id]
            value = new_qty * new_price
            currency = MARKET_CURRENCY[order.market]
            order.filled_qty += new_qty
            order.filled_value += value
            sign = -1 if order.side == "BUY" else 1
            acc.cash[currency] = acc.cash.get(currency, Decimal(0)) + sign * value
            acc.positions[order.code] = acc.positions.get(order.code, Decimal(0)) - sign * new_qty
            self._recharge_fee(order, acc, currency)
            fill.qty, fill.price, fill.status, fill.updated_at = new_qty, new_price, "CHANGED", now
            status = "FILLED_ALL" if order.filled_qty >= order.qty else order.status
            events = [
                Event("fill", order.acc_id, order.trd_env, fill=copy.copy(fill)),
                self._touch(order, status, now),
            ]
        self._emit(events)
        return fill

    def _undo_fill(
        self, order: SimOrder, fill: SimFill, qty: Decimal, price: Decimal, now: float
    ) -> list[Event]:
        acc = self.accounts[order.acc_id]
        currency = MARKET_CURRENCY[order.market]
        value = qty * price
        order.filled_qty -= qty
        order.filled_value -= value
        sign = 1 if order.side == "BUY" else -1
        acc.cash[currency] = acc.cash.get(currency, Decimal(0)) + sign * value
        acc.positions[order.code] = acc.positions.get(order.code, Decimal(0)) - sign * qty
        self._recharge_fee(order, acc, currency)
        return []

    def _recharge_fee(self, order: SimOrder, acc: SimAccount, currency: str) -> None:
        fee = self._fee(order.code, order.filled_value, order.side, order.filled_qty)
        acc.cash[currency] = acc.cash.get(currency, Decimal(0)) + order.fee_charged - fee
        order.fee_charged = fee

    def _order(self, order_id: int) -> SimOrder:
        order = self.orders.get(int(order_id))
        if order is None:
            raise SimError(self.msg("no_order", order_id=order_id))
        return order

    # --- persistence ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def enc(obj: Any) -> Any:
            if isinstance(obj, Decimal):
                return str(obj)
            if isinstance(obj, dict):
                return {str(k): enc(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [enc(v) for v in obj]
            return obj

        return enc(
            {
                "unlocked": self.unlocked,
                "market_open": self.market_open,
                "clock": self.clock,
                "market_override": self.market_override,
                "next_order_id": self._next_order_id,
                "next_fill_id": self._next_fill_id,
                "securities": [asdict(s) for s in self.securities.values()],
                "accounts": [asdict(a) for a in self.accounts.values()],
                "orders": [asdict(o) for o in self.orders.values()],
                "fills": [asdict(f) for f in self.fills],
            }
        )

    def _save(self) -> None:
        assert self.state_file is not None
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_file.parent, prefix=".opend-sim-")
        with os.fdopen(fd, "w") as fh:
            json.dump(self.to_dict(), fh)
        os.replace(tmp, self.state_file)

    def _load(self) -> None:
        assert self.state_file is not None
        data = json.loads(self.state_file.read_text())
        decs = {
            "price",
            "prev_close",
            "partial_ratio",
            "walk",
            "qty",
            "filled_qty",
            "filled_value",
            "fee_charged",
        }

        def dec_fields(row: dict[str, Any]) -> dict[str, Any]:
            return {k: (_dec(v) if k in decs and v is not None else v) for k, v in row.items()}

        self.unlocked = data["unlocked"]
        self.market_open = data["market_open"]
        self.clock = data.get("clock")
        self.market_override = data.get("market_override") or {}
        self._next_order_id = data["next_order_id"]
        self._next_fill_id = data["next_fill_id"]
        self.securities = {s["code"]: SimSecurity(**dec_fields(s)) for s in data["securities"]}
        self.accounts = {}
        for a in data["accounts"]:
            self.accounts[a["acc_id"]] = SimAccount(
                acc_id=a["acc_id"],
                trd_env=a["trd_env"],
                cash={k: _dec(v) for k, v in a["cash"].items()},
                positions={k: _dec(v) for k, v in a["positions"].items()},
                cost={k: _dec(v) for k, v in a["cost"].items()},
            )
        self.orders = {o["order_id"]: SimOrder(**dec_fields(o)) for o in data["orders"]}
        self.fills = [SimFill(**dec_fields(f)) for f in data["fills"]]
