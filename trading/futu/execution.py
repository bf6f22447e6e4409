"""Execution at OpenD: place, cancel and query orders, look orders up by remark, read
funds and positions, and receive order and deal pushes.

Every order carries the Bronco client id in Futu's `remark`. The open list holds only
unfinished orders, so a retry after "Futu accepted, we crashed before saving" must ask the
history too: `trading.services.broker_order_submit` records every attempt before calling
Futu and looks the remark up in both before placing again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from futu import (
    RET_OK,
    Currency,
    ModifyOrderOp,
    OrderType,
    Session,
    TimeInForce,
    TradeDealHandlerBase,
    TradeOrderHandlerBase,
    TrdSide,
)

from trading.broker import (
    BrokerOrder,
    BrokerStatus,
    Deal,
    Funds,
    OrderFee,
    Position,
    filled_by_deals,
)
from trading.broker import Side as BrokerSide
from trading.exceptions import BrokerRejected, BrokerUnavailable, RateLimited
from trading.futu.connection import FutuConnection, TradeContext
from trading.futu.parsing import (
    deal_from_row,
    fee_from_row,
    funds_from_row,
    order_from_row,
    position_from_row,
    to_decimal,
)
from trading.pushes import deal_fingerprint, order_fingerprint, push_claim

logger = logging.getLogger(__name__)

_SIDES = {BrokerSide.BUY: TrdSide.BUY, BrokerSide.SELL: TrdSide.SELL}


class _RowsPush:
    """A Futu push handler that hands each row of a successful push to `on_row`; mixed in
    before the SDK's handler base so that the base decodes the push."""

    def __init__(self, on_row: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._on_row = on_row

    def on_recv_rsp(self, rsp_pb: Any) -> tuple[int, Any]:
        ret, data = super().on_recv_rsp(rsp_pb)  # type: ignore[misc]
        if ret == RET_OK:
            for row in data.to_dict("records"):
                self._on_row(row)
        return ret, data


class _OrderPushHandler(_RowsPush, TradeOrderHandlerBase):
    pass


class _DealPushHandler(_RowsPush, TradeDealHandlerBase):
    pass


def _futu_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def history_window(since: datetime | None) -> tuple[str, str]:
    """The [start, end] a history look-up covers for something that began at `since`:
    a day either side, so no time zone (OpenD reports times in the market's zone, the
    caller's clock may be UTC) can push the attempt out of it. Empty: the SDK's default
    (the last 90 days)."""
    if since is None:
        return "", ""
    now = datetime.now(tz=UTC)
    return _futu_time(since - timedelta(days=1)), _futu_time(now + timedelta(days=1))


# Deals of an order that began longer ago than this are read from the deal history too.
DEALS_TODAY_HOURS = 12

# A history listing is reused this long: short enough that a poll sees news within about a
# second, long enough that the polls of many orders share one request.
HISTORY_REUSE_SECONDS = 1.0


class FutuExecution(FutuConnection):
    """The `ExecutionVenue` half of the adapter.

    Listing as Futu documents it: `order_list_query` returns the account's *unfinished*
    orders (https://openapi.futunn.com/futu-api-doc/en/trade/get-order-list.html); a
    finished one (filled, cancelled, failed) is found only by `history_order_list_query`
    (https://openapi.futunn.com/futu-api-doc/en/trade/get-history-order-list.html, 10 per
    30 s); fills are deals (`deal_list_query` for today, `history_deal_list_query` before,
    and the deal push), and a deal can be cancelled or changed after it was reported."""

    _history_cache: dict[tuple[str, str], tuple[float, list[dict[str, Any]]]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._history_cache = {}

    # --- pushes ---------------------------------------------------------------------
    def _install_handlers(self, trade: TradeContext) -> None:
        trade.set_handler(_OrderPushHandler(self._on_order_push))
        trade.set_handler(_DealPushHandler(self._on_deal_push))

    @property
    def push_account(self) -> str:
        """The account pushes are claimed under (`trading.pushes`)."""
        return f"{self.trd_env}:{self.acc_id}"

    def _on_order_push(self, row: dict[str, Any]) -> None:
        """Runs on the SDK's callback thread for every order update of the account. Handled
        by one process only (`trading.pushes`): the others drop the same update."""
        if row.get("trd_env") not in (None, self.trd_env):
            return
        order = order_from_row(row)
        if not push_claim(
            account=self.push_account, kind="order", fingerprint=order_fingerprint(order)
        ):
            return
        logger.info(
            "broker order push: %s %s %s filled %s",
            order.broker_order_id,
            order.client_id,
            order.raw_status,
            order.filled_qty,
        )
        if self.on_order_update is not None:
            self.on_order_update(order)

    def _on_deal_push(self, row: dict[str, Any]) -> None:
        """Runs on the SDK's callback thread for every deal (new, cancelled, changed);
        handled by one process only, like order pushes."""
        deal = deal_from_row(row)
        if not push_claim(
            account=self.push_account, kind="deal", fingerprint=deal_fingerprint(deal)
        ):
            return
        logger.info(
            "broker deal push: order %s deal %s %s %s @ %s",
            deal.broker_order_id,
            deal.deal_id,
            deal.status,
            deal.qty,
            deal.price,
        )
        if self.on_deal_update is not None:
            self.on_deal_update(deal)

    # --- order look-ups -------------------------------------------------------------
    def _order_rows(
        self, *, code: str = "", order_id: str = "", refresh: bool = False
    ) -> list[dict[str, Any]]:
        """The open list: unfinished orders only (OpenD's cache unless `refresh`)."""
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

    def _history_rows(
        self, *, code: str = "", since: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Every order (finished or not) created in the window around `since`. A listing
        of the same code and day is reused for `HISTORY_REUSE_SECONDS` (polls of many
        orders share one request of the 10 per 30 s budget); placing an order drops it."""
        start, end = history_window(since)
        key = (code, start[:10])
        cached = self._history_cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < HISTORY_REUSE_SECONDS:
            return cached[1]
        self._limit("history_order_list")
        data = self._call(
            lambda q, t: t.history_order_list_query(
                code=code, start=start, end=end, trd_env=self.trd_env, acc_id=self.acc_id
            ),
            kind="history_order_list",
        )
        rows = data.to_dict("records")
        self._history_cache[key] = (time.monotonic(), rows)
        return rows

    def list_orders(self) -> list[BrokerOrder]:
        """The account's unfinished orders (OpenD's cache, not rate limited)."""
        return [order_from_row(row) for row in self._order_rows()]

    def list_history_orders(self, *, since: datetime | None = None) -> list[BrokerOrder]:
        """Every order since `since` (a day's margin; default the last 90 days), finished
        or not. One request of the history budget (10 per 30 s)."""
        return [order_from_row(row) for row in self._history_rows(since=since)]

    def find_by_remark(
        self,
        client_id: str,
        *,
        code: str = "",
        include_history: bool = False,
        since: datetime | None = None,
    ) -> BrokerOrder | None:
        """The account's order tagged with this client id, or None. Looks in the open
        list (OpenD's cache, not rate limited) and, with `include_history` or `since`, in
        the history around `since` too: an order that finished (filled at once, failed) is
        in the history only."""
        rows = [r for r in self._order_rows(code=code, refresh=self.remark_lookup_refresh)]
        if (include_history or since is not None) and not any(
            r.get("remark") == client_id for r in rows
        ):
            rows = self._history_rows(code=code, since=since)
        matches = [order_from_row(r) for r in rows if r.get("remark") == client_id]
        if len(matches) > 1:
            logger.error(
                "client id %s has %d broker orders: %s",
                client_id,
                len(matches),
                [m.broker_order_id for m in matches],
            )
        return matches[0] if matches else None

    # --- orders ---------------------------------------------------------------------
    def place_order(
        self,
        *,
        client_id: str,
        code: str,
        side: BrokerSide | str,
        qty: Decimal,
        limit_price: Decimal,
        lookup: bool = True,
    ) -> BrokerOrder:
        """Place a DAY limit order tagged with `client_id`. With `lookup` the open list is
        asked first (an unfinished order with this remark is returned as it is); the caller
        that knows an earlier attempt may have finished asks the history itself
        (`trading.services.broker_order_submit`). US orders carry the configured `session`.

        Every order carries Futu's `adjust_limit` (`price_adjust_limit`, signed by side: a
        BUY may move up, a SELL down, never by more than that fraction of the price): a limit
        rounded on the snapshot's spread that crossed into a band with a coarser step (HKEX's
        spread table) is moved by OpenD to the next valid price instead of being refused
        (https://openapi.futunn.com/futu-api-doc/en/trade/place-order.html; Trd_PlaceOrder
        `adjustPrice`/`adjustSideAndLimit`). The order's own price (as read back) is the one
        that works."""
        side = BrokerSide(side)
        if len(client_id.encode()) > 64:
            raise ValueError("client id must fit Futu's remark (64 bytes)")
        if qty <= 0 or limit_price <= 0:
            raise BrokerRejected(f"quantity {qty} and price {limit_price} must be positive")
        if lookup:
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
        self._history_cache.clear()
        extra: dict[str, Any] = {}
        if self.price_adjust_limit:
            sign = 1 if side == BrokerSide.BUY else -1
            extra["adjust_limit"] = float(sign * self.price_adjust_limit)
        if code.startswith("US."):
            extra["session"] = getattr(Session, self.us_session)
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
                **extra,
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
        # Futu has the order now: nothing after this point may raise (a caller told
        # "failed" would retry, and the open list no longer shows an order that filled at
        # once). Read it back (the open list; an order filled at once from its deals, free
        # of the history's 10 per 30 s; then the history if the order finished at once and
        # the budget allows); an order not read back is reported UNKNOWN (not final) and
        # the next sync finds its truth.
        try:
            found = self.query_order(
                broker_order_id=order_id, code=code, include_history=False
            ) or self._filled_at_once(order_id, client_id, code, side, qty, limit_price)
            if found is None:
                found = self.query_order(
                    broker_order_id=order_id, code=code, since=datetime.now(tz=UTC)
                )
        except (BrokerUnavailable, RateLimited) as exc:
            logger.warning("placed order %s not read back: %s", order_id, exc)
            found = None
        return found or BrokerOrder(
            broker_order_id=order_id,
            client_id=client_id,
            code=code,
            side=side,
            qty=qty,
            price=limit_price,
            status=BrokerStatus.UNKNOWN,
            filled_qty=Decimal(0),
            avg_fill_price=None,
            raw_status="",
        )

    def _filled_at_once(
        self,
        order_id: str,
        client_id: str,
        code: str,
        side: BrokerSide,
        qty: Decimal,
        limit_price: Decimal,
    ) -> BrokerOrder | None:
        """The order just placed as FILLED when its deals fill it in full; else None."""
        return filled_by_deals(
            self.deals(broker_order_id=order_id, code=code),
            broker_order_id=order_id,
            client_id=client_id,
            code=code,
            side=side,
            qty=qty,
            price=limit_price,
        )

    def query_order(
        self,
        *,
        broker_order_id: str | None = None,
        client_id: str | None = None,
        code: str = "",
        include_history: bool = True,
        since: datetime | None = None,
    ) -> BrokerOrder | None:
        """One order by exactly one of Futu's id or our client id: the open list first,
        then (with `include_history`) the history around `since`."""
        if bool(broker_order_id) == bool(client_id):
            raise ValueError("give exactly one of broker_order_id and client_id")
        if client_id:
            return self.find_by_remark(
                client_id,
                code=code,
                include_history=include_history,
                since=since if include_history else None,
            )
        rows = self._order_rows(order_id=str(broker_order_id))
        rows = [r for r in rows if str(r.get("order_id")) == str(broker_order_id)]
        if not rows and include_history:
            rows = [
                r
                for r in self._history_rows(code=code, since=since)
                if str(r.get("order_id")) == str(broker_order_id)
            ]
        return order_from_row(rows[0]) if rows else None

    def cancel_order(self, *, broker_order_id: str) -> BrokerOrder:
        """Ask Futu to cancel. Idempotent: an order already final comes back as it is.
        An acknowledged cancel may not take (py-futu-api issue 248): the caller checks the
        order later and cancels again (`trading.services.broker_order_cancel`)."""
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

    # --- deals, fees, buying power --------------------------------------------------
    def deals(
        self, *, broker_order_id: str, code: str = "", since: datetime | None = None
    ) -> list[Deal]:
        """The order's deals, each at its latest state (OK, CANCELLED, CHANGED): today's
        from OpenD's cache (`deal_list_query`), and past days' (`history_deal_list_query`,
        10 per 30 s) when the order began more than 12 hours ago."""
        data = self._call(
            lambda q, t: t.deal_list_query(code=code, trd_env=self.trd_env, acc_id=self.acc_id),
            kind="order_list",
        )
        rows = data.to_dict("records")
        if since is not None and since < datetime.now(tz=UTC) - timedelta(hours=DEALS_TODAY_HOURS):
            start, end = history_window(since)
            self._limit("history_deal_list")
            old = self._call(
                lambda q, t: t.history_deal_list_query(
                    code=code, start=start, end=end, trd_env=self.trd_env, acc_id=self.acc_id
                ),
                kind="history_deal_list",
            )
            seen = {str(r.get("deal_id")) for r in rows}
            rows += [r for r in old.to_dict("records") if str(r.get("deal_id")) not in seen]
        return [deal_from_row(r) for r in rows if str(r.get("order_id")) == str(broker_order_id)]

    def order_fee(self, *, broker_order_id: str) -> OrderFee | None:
        """The broker's itemised fee for one order (`order_fee_query`,
        https://openapi.futunn.com/futu-api-doc/en/trade/get-order-fee.html)."""
        self._limit("order_fee")
        data = self._call(
            lambda q, t: t.order_fee_query(
                order_id_list=[str(broker_order_id)], trd_env=self.trd_env, acc_id=self.acc_id
            ),
            kind="order_fee",
        )
        rows = [r for r in data.to_dict("records") if str(r["order_id"]) == str(broker_order_id)]
        return fee_from_row(rows[0]) if rows else None

    def order_fees(self, *, broker_order_ids: list[str]) -> dict[str, OrderFee]:
        """The fees of many orders in one `order_fee_query` request (one of its 10 per
        30 s, however many ids)."""
        ids = [str(i) for i in broker_order_ids]
        if not ids:
            return {}
        self._limit("order_fee")
        data = self._call(
            lambda q, t: t.order_fee_query(
                order_id_list=ids, trd_env=self.trd_env, acc_id=self.acc_id
            ),
            kind="order_fee",
        )
        fees = {str(r["order_id"]): fee_from_row(r) for r in data.to_dict("records")}
        return {i: fees[i] for i in ids if i in fees}

    def max_buy_qty(self, *, code: str, price: Decimal) -> Decimal:
        """Shares the account's cash buys at `price` now, in whole lots, fees included
        (`acctradinginfo_query`'s max_cash_buy,
        https://openapi.futunn.com/futu-api-doc/en/trade/get-max-trd-qtys.html)."""
        self._limit("trading_info")
        data = self._call(
            lambda q, t: t.acctradinginfo_query(
                order_type=OrderType.NORMAL,
                code=code,
                price=float(price),
                trd_env=self.trd_env,
                acc_id=self.acc_id,
            ),
            kind="trading_info",
        )
        return to_decimal(data.to_dict("records")[0].get("max_cash_buy"))

    # --- funds and positions --------------------------------------------------------
    def funds(self, currency: str = "USD") -> Funds:
        data = self._call(
            lambda q, t: t.accinfo_query(
                trd_env=self.trd_env, acc_id=self.acc_id, currency=getattr(Currency, currency)
            ),
            kind="funds",
        )
        return funds_from_row(data.to_dict("records")[0], currency=currency)

    def positions(self) -> list[Position]:
        data = self._call(
            lambda q, t: t.position_list_query(trd_env=self.trd_env, acc_id=self.acc_id),
            kind="positions",
        )
        return [position_from_row(r) for r in data.to_dict("records")]
