"""Execution at OpenD: place, cancel and query orders, look orders up by remark, read
funds and positions, and receive order and deal pushes.

Every order carries the Bronco client id in Futu's `remark`; `place_order` first looks the
remark up among the account's orders and returns that order if it exists, so a retry
after "Futu accepted, we crashed before saving" never places a second order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from futu import (
    RET_OK,
    Currency,
    ModifyOrderOp,
    OrderType,
    TimeInForce,
    TradeDealHandlerBase,
    TradeOrderHandlerBase,
    TrdSide,
)

from trading.broker import BrokerOrder, Funds, Position
from trading.broker import Side as BrokerSide
from trading.exceptions import BrokerRejected, BrokerUnavailable
from trading.futu.connection import FutuConnection, TradeContext
from trading.futu.parsing import funds_from_row, order_from_row, position_from_row

logger = logging.getLogger(__name__)

_SIDES = {BrokerSide.BUY: TrdSide.BUY, BrokerSide.SELL: TrdSide.SELL}


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


class FutuExecution(FutuConnection):
    """The `ExecutionVenue` half of the adapter."""

    # --- pushes ---------------------------------------------------------------------
    def _install_handlers(self, trade: TradeContext) -> None:
        trade.set_handler(_OrderPushHandler(self._on_order_push))
        trade.set_handler(_DealPushHandler())

    def _on_order_push(self, row: dict[str, Any]) -> None:
        """Runs on the SDK's callback thread for every order update of the account."""
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

    # --- order look-ups -------------------------------------------------------------
    def _order_rows(
        self, *, code: str = "", order_id: str = "", refresh: bool = False
    ) -> list[dict[str, Any]]:
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

    def _history_rows(self, *, code: str = "") -> list[dict[str, Any]]:
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

    # --- orders ---------------------------------------------------------------------
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
