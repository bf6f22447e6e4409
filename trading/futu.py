"""The Futu adapter: Bronco's broker interface over the unmodified futu-api SDK.

The only module (with the simulator) that imports futu. It translates both ways: Bronco's
arguments into SDK calls, and the SDK's DataFrames, status strings and error messages into
`trading.broker` types and `trading.exceptions`.

Guarantees:
- Every order carries the Bronco client id in Futu's `remark`; `place_order` first looks the
  remark up among the account's orders and returns that order if it exists, so a retry
  after "Futu accepted, we crashed before saving" never places a second order.
- Every request that Futu limits goes through the shared Redis limiter first.
- A dropped connection is noticed before the next call and both contexts are rebuilt;
  reads are retried once on a fresh connection, writes are not (their retry is the caller's,
  and the remark lookup makes it safe).
- Fork-safe: a child process (Celery prefork) never reuses the parent's sockets or the SDK's
  network thread.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from django.conf import settings
from futu import (
    RET_OK,
    Currency,
    ModifyOrderOp,
    OpenQuoteContext,
    OpenSecTradeContext,
    OrderStatus,
    OrderType,
    SecurityFirm,
    SysConfig,
    TimeInForce,
    TradeDealHandlerBase,
    TradeOrderHandlerBase,
    TrdEnv,
    TrdMarket,
    TrdSide,
)
from futu.common.constant import ContextStatus
from futu.common.ft_logger import logger as futu_logger
from futu.common.network_manager import NetManager

import trading.futu_sdk  # noqa: F401  (undoes the SDK's SIGINT handler)
from core.metrics import count_broker_error
from core.secrets import SecretUnavailable, get_secret
from trading.broker import BrokerOrder, BrokerStatus, Funds, OrderUpdateCallback, Position, Quote
from trading.broker import Side as BrokerSide
from trading.exceptions import (
    BrokerRejected,
    BrokerUnavailable,
    NoQuote,
    RateLimited,
    TradingError,
)
from trading.pricing import currency_of, market_of
from trading.ratelimit import RedisRateLimiter

logger = logging.getLogger(__name__)

# The SDK logs every request at INFO to the console and at DEBUG to a file in $HOME.
futu_logger.console_level = logging.WARNING
futu_logger.file_level = logging.WARNING
# The SDK's callback threads are non-daemon by default: a process holding a session could
# never exit (a Celery worker would hang at shutdown). Sessions hold no state worth that.
SysConfig.set_all_thread_daemon(True)

# Every Futu order status -> Bronco's. `is_final` on the Bronco side says no fill can follow.
FUTU_STATUS_MAP: Mapping[str, BrokerStatus] = {
    OrderStatus.NONE: BrokerStatus.UNKNOWN,
    OrderStatus.UNSUBMITTED: BrokerStatus.SUBMITTING,
    OrderStatus.WAITING_SUBMIT: BrokerStatus.SUBMITTING,
    OrderStatus.SUBMITTING: BrokerStatus.SUBMITTING,
    # The request failed before reaching the exchange: final, nothing filled.
    OrderStatus.SUBMIT_FAILED: BrokerStatus.FAILED,
    # "Processing timed out, result unknown": not final, keep polling until Futu knows.
    OrderStatus.TIMEOUT: BrokerStatus.UNKNOWN,
    OrderStatus.SUBMITTED: BrokerStatus.WORKING,
    OrderStatus.FILLED_PART: BrokerStatus.PARTIALLY_FILLED,
    OrderStatus.FILLED_ALL: BrokerStatus.FILLED,
    OrderStatus.CANCELLING_PART: BrokerStatus.CANCELLING,
    OrderStatus.CANCELLING_ALL: BrokerStatus.CANCELLING,
    OrderStatus.CANCELLED_PART: BrokerStatus.CANCELLED,
    OrderStatus.CANCELLED_ALL: BrokerStatus.CANCELLED,
    OrderStatus.FAILED: BrokerStatus.FAILED,
    # Disabled (HK) orders rest inactive until re-enabled; Bronco never re-enables one, so
    # no fill can follow: treat as cancelled with whatever filled before.
    OrderStatus.DISABLED: BrokerStatus.CANCELLED,
    # Only orders without fills can be deleted.
    OrderStatus.DELETED: BrokerStatus.CANCELLED,
    # The exchange reversed the fills; the order is void.
    OrderStatus.FILL_CANCELLED: BrokerStatus.FAILED,
}

OPEN_MARKET_STATES = frozenset({"MORNING", "AFTERNOON"})
EXTENDED_MARKET_STATES = frozenset({"PRE_MARKET_BEGIN", "AFTER_HOURS_BEGIN", "NIGHT_OPEN"})

_RATE_LIMITED = re.compile(r"frequen|频繁|频率|too many requests", re.IGNORECASE)
_DISCONNECTED = re.compile(
    r"connection lost|not connected|connection closed|disconnect|timeout|time out|"
    r"context status bad|sendfail|connect fail",
    re.IGNORECASE,
)

_SIDES = {BrokerSide.BUY: TrdSide.BUY, BrokerSide.SELL: TrdSide.SELL}


def map_status(raw: str) -> BrokerStatus:
    """Futu's status string -> Bronco's; a status this code does not know is UNKNOWN (not
    final), so an SDK upgrade can never make an order look finished."""
    return FUTU_STATUS_MAP.get(raw, BrokerStatus.UNKNOWN)


def classify_error(message: str, *, retry_after: float = 1.0) -> TradingError:
    """An SDK error message -> the domain exception it means."""
    text = str(message)
    if _RATE_LIMITED.search(text):
        return RateLimited(retry_after, f"Futu rate limit: {text}")
    if _DISCONNECTED.search(text):
        return BrokerUnavailable(f"OpenD unavailable: {text}")
    return BrokerRejected(text)


def _dec(value: Any) -> Decimal:
    if value is None or value == "N/A" or (isinstance(value, float) and math.isnan(value)):
        return Decimal(0)
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def order_from_row(row: Mapping[str, Any]) -> BrokerOrder:
    """One row of an SDK order DataFrame (order list, place_order or an order push)."""
    raw = str(row.get("order_status", OrderStatus.NONE))
    filled = _dec(row.get("dealt_qty"))
    avg = _dec(row.get("dealt_avg_price"))
    side = str(row.get("trd_side", ""))
    return BrokerOrder(
        broker_order_id=str(row["order_id"]),
        client_id=str(row.get("remark") or ""),
        code=str(row.get("code", "")),
        side=BrokerSide.SELL if side in (TrdSide.SELL, TrdSide.SELL_SHORT) else BrokerSide.BUY,
        qty=_dec(row.get("qty")),
        price=_dec(row.get("price")),
        status=map_status(raw),
        filled_qty=filled,
        avg_fill_price=avg if filled > 0 and avg > 0 else None,
        raw_status=raw,
        last_error=str(row.get("last_err_msg") or ""),
        created_at=str(row.get("create_time") or ""),
        updated_at=str(row.get("updated_time") or ""),
    )


class _FailFastMixin:
    """The SDK's constructor retries a failed connection forever, which would hang a worker
    while OpenD is down. While constructing, a failed attempt switches auto-reconnect off so
    the constructor returns; the adapter then reports BrokerUnavailable."""

    _auto_reconnect: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._bronco_fail_fast = True
        super().__init__(*args, **kwargs)
        self._bronco_fail_fast = False

    def _init_connect_sync(self) -> int:
        ret = super()._init_connect_sync()  # type: ignore[misc]
        if ret != RET_OK and getattr(self, "_bronco_fail_fast", False):
            self._auto_reconnect = False
        return ret


class _QuoteContext(_FailFastMixin, OpenQuoteContext):
    pass


class _TradeContext(_FailFastMixin, OpenSecTradeContext):
    pass


class _OrderPushHandler(TradeOrderHandlerBase):
    def __init__(self, on_row: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._on_row = on_row

    def on_recv_rsp(self, rsp_pb: Any) -> tuple[int, Any]:
        ret, data = super().on_recv_rsp(rsp_pb)
        if ret == RET_OK:
            for row in data.to_dict("records"):
                self._on_row(row)
        return ret, data


class _DealPushHandler(TradeDealHandlerBase):
    def on_recv_rsp(self, rsp_pb: Any) -> tuple[int, Any]:
        ret, data = super().on_recv_rsp(rsp_pb)
        if ret == RET_OK:
            for row in data.to_dict("records"):
                logger.info(
                    "broker fill: order %s %s %s @ %s",
                    row.get("order_id"),
                    row.get("code"),
                    row.get("qty"),
                    row.get("price"),
                )
        return ret, data


class FutuBroker:
    """One OpenD session (a quote and a trade context) for one account, per process."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        trd_market: str = "US",
        security_firm: str = "FUTUSECURITIES",
        trd_env: str = "SIMULATE",
        acc_id: int = 0,
        trade_password: str = "",
        connect_timeout: float = 5.0,
        on_order_update: OrderUpdateCallback | None = None,
        remark_lookup_refresh: bool = False,
        fill_outside_rth: bool = False,
        limiter_factory: Callable[[str], RedisRateLimiter] | None = None,
    ) -> None:
        if trd_env not in (TrdEnv.SIMULATE, TrdEnv.REAL):
            raise ValueError(f"trd_env must be SIMULATE or REAL, not {trd_env!r}")
        if trd_env == TrdEnv.REAL and not trade_password:
            raise ValueError("REAL trading needs a trade password (FUTU_TRADE_PASSWORD)")
        self.host, self.port = host, port
        self.trd_market = getattr(TrdMarket, trd_market)
        self.security_firm = getattr(SecurityFirm, security_firm)
        self.trd_env = trd_env
        self.configured_acc_id = acc_id
        self.acc_id = acc_id
        self._password = trade_password
        self.connect_timeout = connect_timeout
        self.on_order_update = on_order_update
        self.remark_lookup_refresh = remark_lookup_refresh
        self.fill_outside_rth = fill_outside_rth
        self._limiter_factory = limiter_factory or (
            lambda account: RedisRateLimiter.from_settings(account=account)
        )
        self.limiter: RedisRateLimiter | None = None
        self.pid = os.getpid()
        self._lock = threading.RLock()
        self._quote_ctx: _QuoteContext | None = None
        self._trade_ctx: _TradeContext | None = None
        self.connections_made = 0

    @classmethod
    def from_settings(cls, *, on_order_update: OrderUpdateCallback | None = None) -> FutuBroker:
        return cls(
            host=settings.FUTU_OPEND_HOST,
            port=settings.FUTU_OPEND_PORT,
            trd_market=settings.FUTU_TRD_MARKET,
            security_firm=settings.FUTU_SECURITY_FIRM,
            trd_env=settings.FUTU_TRD_ENV,
            acc_id=settings.FUTU_ACC_ID,
            trade_password=_trade_password(settings.FUTU_TRD_ENV),
            connect_timeout=settings.FUTU_CONNECT_TIMEOUT_SECONDS,
            on_order_update=on_order_update,
            remark_lookup_refresh=settings.FUTU_REMARK_LOOKUP_REFRESH,
            fill_outside_rth=settings.FUTU_FILL_OUTSIDE_RTH,
        )

    # --- connection -----------------------------------------------------------------
    def _ready(self) -> bool:
        return all(
            ctx is not None and ctx.status == ContextStatus.READY
            for ctx in (self._quote_ctx, self._trade_ctx)
        )

    def connect(self) -> None:
        """Open (or re-open) the session: both contexts ready, account resolved, trading
        unlocked, order pushes subscribed. Raises BrokerUnavailable when OpenD is not there."""
        with self._lock:
            if self._ready():
                return
            self._teardown()
            try:
                socket.create_connection(
                    (self.host, self.port), timeout=self.connect_timeout
                ).close()
            except OSError as exc:
                raise BrokerUnavailable(
                    f"OpenD {self.host}:{self.port} unreachable: {exc}"
                ) from exc
            quote = _QuoteContext(host=self.host, port=self.port)
            trade = None
            try:
                if quote.status != ContextStatus.READY:
                    raise BrokerUnavailable(f"OpenD {self.host}:{self.port}: quote login failed")
                trade = _TradeContext(
                    filter_trdmarket=self.trd_market,
                    host=self.host,
                    port=self.port,
                    security_firm=self.security_firm,
                )
                if trade.status != ContextStatus.READY:
                    raise BrokerUnavailable(f"OpenD {self.host}:{self.port}: trade login failed")
                for ctx in (quote, trade):
                    ctx.set_sync_query_connect_timeout(self.connect_timeout)
                trade.set_handler(_OrderPushHandler(self._on_order_push))
                trade.set_handler(_DealPushHandler())
                self._resolve_account(trade)
                self._unlock(trade)
            except BaseException:
                quote.close()
                if trade is not None:
                    trade.close()
                raise
            self._quote_ctx, self._trade_ctx = quote, trade
            self.connections_made += 1
            if self.limiter is None:
                self.limiter = self._limiter_factory(f"{self.trd_env}:{self.acc_id}")
            logger.info(
                "connected to OpenD %s:%s account %s (%s)",
                self.host,
                self.port,
                self.acc_id,
                self.trd_env,
            )

    def _resolve_account(self, trade: _TradeContext) -> None:
        ret, accounts = trade.get_acc_list()
        if ret != RET_OK:
            raise classify_error(accounts)
        rows = [r for r in accounts.to_dict("records") if r["trd_env"] == self.trd_env]
        if self.configured_acc_id:
            rows = [r for r in rows if int(r["acc_id"]) == self.configured_acc_id]
        if not rows:
            raise BrokerUnavailable(
                f"no {self.trd_env} account "
                f"{self.configured_acc_id or ''} with {self.trd_market} trading at OpenD"
            )
        self.acc_id = int(rows[0]["acc_id"])

    def _unlock(self, trade: _TradeContext) -> None:
        if not self._password:
            return
        ret, msg = trade.unlock_trade(password=self._password)
        if ret == RET_OK:
            return
        if self.trd_env == TrdEnv.REAL:
            raise BrokerUnavailable(f"unlock_trade failed: {msg}")
        logger.warning("unlock_trade failed (not needed for SIMULATE): %s", msg)

    def _teardown(self) -> None:
        for ctx in (self._quote_ctx, self._trade_ctx):
            if ctx is not None:
                try:
                    ctx.close()
                except Exception:  # closing a dead context must not mask the real error
                    logger.debug("closing a futu context failed", exc_info=True)
        self._quote_ctx = self._trade_ctx = None

    def close(self) -> None:
        with self._lock:
            self._teardown()

    def _retry_after(self, kind: str) -> float:
        limit, _ = settings.FUTU_RATE_LIMITS[kind]
        return settings.FUTU_RATE_WINDOW_SECONDS / max(limit, 1)

    def _call(
        self,
        fn: Callable[[_QuoteContext, _TradeContext], tuple[int, Any]],
        *,
        kind: str = "place",
        retry: bool = True,
    ) -> Any:
        """Run one SDK call on a ready session and translate its failure. Reads (`retry`)
        get one more attempt on a fresh session after a disconnect."""
        for attempt in (1, 2):
            self.connect()
            assert self._quote_ctx is not None and self._trade_ctx is not None
            ret, data = fn(self._quote_ctx, self._trade_ctx)
            if ret == RET_OK:
                return data
            error = classify_error(data, retry_after=self._retry_after(kind))
            count_broker_error(operation=kind, error=type(error).__name__)
            if isinstance(error, BrokerUnavailable):
                with self._lock:
                    self._teardown()
                if retry and attempt == 1:
                    logger.warning("OpenD call failed (%s); reconnecting", data)
                    continue
            raise error
        raise AssertionError("unreachable")

    def _limit(self, kind: str) -> None:
        self.connect()
        assert self.limiter is not None
        self.limiter.acquire(kind)

    # --- pushes ---------------------------------------------------------------------
    def _on_order_push(self, row: dict[str, Any]) -> None:
        if row.get("trd_env") not in (None, self.trd_env):
            return
        order = order_from_row(row)
        logger.info(
            "broker order push: %s %s %s filled %s",
            order.broker_order_id,
            order.client_id,
            order.raw_status,
            order.filled_qty,
        )
        if self.on_order_update is not None:
            self.on_order_update(order)

    # --- quotes ---------------------------------------------------------------------
    def quote(self, code: str) -> Quote:
        self._limit("snapshot")
        try:
            snap = self._call(lambda q, t: q.get_market_snapshot([code]), kind="snapshot")
        except BrokerRejected as exc:
            raise NoQuote(f"no quote for {code}: {exc}") from exc
        if snap is None or len(snap) == 0:
            raise NoQuote(f"no quote for {code}")
        row = snap.iloc[0].to_dict()
        price = _dec(row.get("last_price"))
        if price <= 0:
            raise NoQuote(f"{code} has no last price")
        state = self._call(lambda q, t: q.get_global_state())
        market_state = str(state.get(f"market_{market_of(code).lower()}", ""))
        open_states = OPEN_MARKET_STATES | (
            EXTENDED_MARKET_STATES if self.fill_outside_rth else frozenset()
        )
        suspended = bool(row.get("suspension"))
        bid, ask = _dec(row.get("bid_price")), _dec(row.get("ask_price"))
        return Quote(
            code=code,
            price=price,
            lot_size=int(row.get("lot_size") or 1),
            tick_size=_dec(row.get("price_spread")),
            currency=currency_of(code),
            market_open=market_state in open_states and not suspended,
            market_state=market_state,
            bid=bid or None,
            ask=ask or None,
            suspended=suspended,
        )

    # --- orders ---------------------------------------------------------------------
    def _order_rows(self, *, code: str = "", order_id: str = "", refresh: bool = False) -> list:
        if refresh:
            self._limit("order_list")
        data = self._call(
            lambda q, t: t.order_list_query(
                order_id=order_id,
                code=code,
                trd_env=self.trd_env,
                acc_id=self.acc_id,
                refresh_cache=refresh,
            ),
            kind="order_list",
        )
        return data.to_dict("records")

    def _history_rows(self, *, code: str = "") -> list:
        self._limit("history_order_list")
        data = self._call(
            lambda q, t: t.history_order_list_query(
                code=code, trd_env=self.trd_env, acc_id=self.acc_id
            ),
            kind="history_order_list",
        )
        return data.to_dict("records")

    def list_orders(self) -> list[BrokerOrder]:
        """Today's orders of the account (OpenD's cache, not rate limited)."""
        return [order_from_row(row) for row in self._order_rows()]

    def find_by_remark(
        self, client_id: str, *, code: str = "", include_history: bool = False
    ) -> BrokerOrder | None:
        """The account's order tagged with this client id, or None. Looks at today's orders
        (OpenD's cache, not rate limited); `include_history` also searches past days."""
        rows = self._order_rows(code=code, refresh=self.remark_lookup_refresh)
        if include_history and not any(r.get("remark") == client_id for r in rows):
            rows = self._history_rows(code=code)
        matches = [order_from_row(r) for r in rows if r.get("remark") == client_id]
        if len(matches) > 1:
            logger.error(
                "client id %s has %d broker orders: %s",
                client_id,
                len(matches),
                [m.broker_order_id for m in matches],
            )
        return matches[0] if matches else None

    def place_order(
        self,
        *,
        client_id: str,
        code: str,
        side: BrokerSide | str,
        qty: Decimal,
        limit_price: Decimal,
    ) -> BrokerOrder:
        side = BrokerSide(side)
        if len(client_id.encode()) > 64:
            raise ValueError("client id must fit Futu's remark (64 bytes)")
        if qty <= 0 or limit_price <= 0:
            raise BrokerRejected(f"quantity {qty} and price {limit_price} must be positive")
        existing = self.find_by_remark(client_id, code=code)
        if existing is not None:
            logger.info(
                "client id %s is already broker order %s (%s); not placing again",
                client_id,
                existing.broker_order_id,
                existing.raw_status,
            )
            return existing
        self._limit("place")
        data = self._call(
            lambda q, t: t.place_order(
                price=float(limit_price),
                qty=float(qty),
                code=code,
                trd_side=_SIDES[side],
                order_type=OrderType.NORMAL,
                trd_env=self.trd_env,
                acc_id=self.acc_id,
                remark=client_id,
                time_in_force=TimeInForce.DAY,
                fill_outside_rth=self.fill_outside_rth,
            ),
            kind="place",
            retry=False,
        )
        row = data.to_dict("records")[0]
        order_id = str(row["order_id"])
        logger.info(
            "placed broker order %s for client id %s: %s %s %s @ %s",
            order_id,
            client_id,
            side,
            qty,
            code,
            limit_price,
        )
        if isinstance(row.get("order_status"), str) and row.get("remark") == client_id:
            return order_from_row(row)
        found = self.query_order(broker_order_id=order_id)
        if found is None:
            raise BrokerUnavailable(f"order {order_id} was placed but cannot be read back")
        return found

    def query_order(
        self,
        *,
        broker_order_id: str | None = None,
        client_id: str | None = None,
        code: str = "",
        include_history: bool = True,
    ) -> BrokerOrder | None:
        if bool(broker_order_id) == bool(client_id):
            raise ValueError("give exactly one of broker_order_id and client_id")
        if client_id:
            return self.find_by_remark(client_id, code=code, include_history=include_history)
        rows = self._order_rows(order_id=str(broker_order_id))
        rows = [r for r in rows if str(r.get("order_id")) == str(broker_order_id)]
        if not rows:
            rows = [
                r
                for r in self._history_rows(code=code)
                if str(r.get("order_id")) == str(broker_order_id)
            ]
        return order_from_row(rows[0]) if rows else None

    def cancel_order(self, *, broker_order_id: str) -> BrokerOrder:
        """Cancel; idempotent: cancelling an order that is already final returns it."""
        self._limit("modify")
        try:
            self._call(
                lambda q, t: t.modify_order(
                    ModifyOrderOp.CANCEL,
                    broker_order_id,
                    0,
                    0,
                    trd_env=self.trd_env,
                    acc_id=self.acc_id,
                ),
                kind="modify",
                retry=False,
            )
        except BrokerRejected:
            order = self.query_order(broker_order_id=broker_order_id)
            if order is not None and order.is_final:
                return order
            if order is None:
                raise BrokerRejected(f"broker order {broker_order_id} does not exist") from None
            raise
        order = self.query_order(broker_order_id=broker_order_id)
        if order is None:
            raise BrokerUnavailable(f"order {broker_order_id} cancelled but cannot be read back")
        return order

    # --- reconciliation -------------------------------------------------------------
    def funds(self, currency: str = "USD") -> Funds:
        data = self._call(
            lambda q, t: t.accinfo_query(
                trd_env=self.trd_env, acc_id=self.acc_id, currency=getattr(Currency, currency)
            ),
            kind="funds",
        )
        row = data.to_dict("records")[0]
        by_currency = {
            name: _dec(row.get(column))
            for name, column in (("USD", "us_cash"), ("HKD", "hk_cash"))
            if row.get(column) not in (None, "N/A")
        }
        return Funds(
            currency=currency,
            cash=_dec(row.get("cash")),
            power=_dec(row.get("power")),
            total_assets=_dec(row.get("total_assets")),
            frozen_cash=_dec(row.get("frozen_cash")),
            market_value=_dec(row.get("market_val")),
            cash_by_currency=by_currency,
        )

    def positions(self) -> list[Position]:
        data = self._call(
            lambda q, t: t.position_list_query(trd_env=self.trd_env, acc_id=self.acc_id),
            kind="positions",
        )
        return [
            Position(
                code=str(r["code"]),
                qty=_dec(r.get("qty")),
                can_sell_qty=_dec(r.get("can_sell_qty")),
                cost_price=_dec(r.get("cost_price")) if r.get("cost_price") != "N/A" else None,
                market_value=_dec(r.get("market_val")),
                currency=str(r.get("currency") or ""),
            )
            for r in data.to_dict("records")
        ]


def _reset_sdk_after_fork() -> None:
    """The SDK's network manager is a process-wide singleton with its own thread; a forked
    child has the object but not the thread. Forget it so the child builds its own."""
    NetManager._default_inst = None
    NetManager._default_inst_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_sdk_after_fork)


def _trade_password(trd_env: str) -> str:
    """The trade password from Vault (or, outside production without Vault, the setting).
    Paper trading does not unlock, so it may go without one; real trading may not."""
    try:
        return get_secret("futu_trade_password")
    except SecretUnavailable:
        if trd_env == "REAL":
            raise
        return ""
