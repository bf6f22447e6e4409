"""The OpenD simulator's TCP servers: the OpenD protocol port the SDK connects to, and a
small JSON control port that tests (in any process) use to script it.

One thread per connection reads packets and answers them in order; pushes (order updates,
fills) are written by whichever thread changed the market, under the connection's send
lock. A ticker thread moves prices and matches resting orders.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from futu.common.constant import MarketState as FutuMarketState
from futu.common.constant import OrderStatus as FutuOrderStatus
from futu.common.constant import ProtoId
from futu.common.pb import Common_pb2, Qot_Common_pb2
from futu.common.pb import Trd_Common_pb2 as T
from google.protobuf.message import Message

import trading.futu_sdk  # noqa: F401  (undoes the SDK's SIGINT handler)
from trading.opend_sim import protocol
from trading.opend_sim.market import (
    Event,
    SimError,
    SimFill,
    SimMarket,
    SimOrder,
    SimSecurity,
    _dec,
    _now_str,
)

logger = logging.getLogger(__name__)

SERVER_VER = 1011
SEC_MARKET = {"HK": T.TrdSecMarket_HK, "US": T.TrdSecMarket_US}
SEC_MARKET_NAME = {v: k for k, v in SEC_MARKET.items()}
TRD_MARKET = {"HK": T.TrdMarket_HK, "US": T.TrdMarket_US}
QOT_MARKET = {
    "HK": Qot_Common_pb2.QotMarket_HK_Security,
    "US": Qot_Common_pb2.QotMarket_US_Security,
}
QOT_MARKET_NAME = {v: k for k, v in QOT_MARKET.items()}
CURRENCY = {"HKD": T.Currency_HKD, "USD": T.Currency_USD}
CURRENCY_NAME = {v: k for k, v in CURRENCY.items()}
MODIFY_OPS = {
    T.ModifyOrderOp_Normal: "NORMAL",
    T.ModifyOrderOp_Cancel: "CANCEL",
    T.ModifyOrderOp_Disable: "DISABLE",
    T.ModifyOrderOp_Enable: "ENABLE",
    T.ModifyOrderOp_Delete: "DELETE",
}
STATE_CLOSED = Qot_Common_pb2.QotMarketState_Closed


def _state_number(name: str) -> int:
    """A Futu market state name ("AFTERNOON") -> Qot_Common.QotMarketState's number, as the
    SDK itself maps them (futu.common.constant.MarketState)."""
    ok, value = FutuMarketState.to_number(name)
    return value if ok else STATE_CLOSED


def _status_number(name: str) -> int:
    ok, value = FutuOrderStatus.to_number(name)
    return value if ok else T.OrderStatus_Unknown


def _status_name(number: int) -> str:
    return FutuOrderStatus.to_string2(number)


SESSION_NAME = {
    Common_pb2.Session_RTH: "RTH",
    Common_pb2.Session_ETH: "ETH",
    Common_pb2.Session_ALL: "ALL",
    Common_pb2.Session_OVERNIGHT: "OVERNIGHT",
}
FILL_STATUS = {
    "OK": T.OrderFillStatus_OK,
    "CANCELLED": T.OrderFillStatus_Cancelled,
    "CHANGED": T.OrderFillStatus_Changed,
}


def _parse_time(text: str) -> float | None:
    """Futu's "YYYY-MM-DD HH:MM:SS[.mmm]" (the simulator's clock is UTC) -> epoch seconds."""
    if not text:
        return None
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise SimError(f"bad time {text!r}: YYYY-MM-DD HH:MM:SS expected")


def _num(value: float) -> Decimal:
    """A protobuf double as the Decimal the client meant (prices have <= 4 decimals)."""
    return _dec(round(value, 6)).normalize()


class Connection:
    _ids = itertools.count(1)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn_id = 7_000_000 + next(self._ids)
        self.send_lock = threading.Lock()
        self.push_accounts: set[int] = set()
        self.push_fmt = protocol.FMT_PROTOBUF
        self.ready = False
        self._push_serial = itertools.count(1)

    def send(self, proto_id: int, serial: int, message: Message, fmt: int) -> None:
        data = protocol.pack(proto_id, serial, message, fmt)
        with self.send_lock:
            self.sock.sendall(data)

    def push(self, proto_id: int, message: Message) -> None:
        self.send(proto_id, next(self._push_serial), message, self.push_fmt)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class OpenDSimulator:
    """A scriptable stand-in for Futu OpenD. `start()` binds (port 0 = any free port) and
    returns the OpenD port; `control_port` is the JSON scripting port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int = 0,
        state_file: str | Path | None = None,
        keepalive_interval: int = 10,
        tick_interval: float = 0.05,
        user_id: int = 10_000_001,
        **market_kwargs: Any,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._requested_control_port = control_port
        self.keepalive_interval = keepalive_interval
        self.tick_interval = tick_interval
        self.user_id = user_id
        self._market_kwargs = dict(market_kwargs, state_file=state_file)
        self.market = self._new_market()
        self.connections: set[Connection] = set()
        self._conn_lock = threading.Lock()
        self.accepting = True
        self.request_log: list[tuple[float, int]] = []
        self._running = threading.Event()
        self._server: _ThreadingServer | None = None
        self._control: _ThreadingServer | None = None
        self._threads: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------------
    def _new_market(self) -> SimMarket:
        market = SimMarket(**self._market_kwargs)
        market.listeners.append(self._on_event)
        return market

    @property
    def port(self) -> int:
        assert self._server is not None, "simulator not started"
        return self._server.server_address[1]

    @property
    def control_port(self) -> int:
        assert self._control is not None, "simulator not started"
        return self._control.server_address[1]

    @property
    def acc_id(self) -> int:
        return next(a.acc_id for a in self.market.accounts.values() if a.trd_env == 0)

    @property
    def real_acc_id(self) -> int:
        return next(a.acc_id for a in self.market.accounts.values() if a.trd_env == 1)

    def start(self) -> int:
        sim = self

        class OpenDHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sim._serve_connection(self.request)

        class ControlHandler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                sim._serve_control(self.rfile, self.wfile)

        self._server = _ThreadingServer((self.host, self._requested_port), OpenDHandler)
        self._control = _ThreadingServer((self.host, self._requested_control_port), ControlHandler)
        self._running.set()
        for target in (self._server.serve_forever, self._control.serve_forever, self._tick_loop):
            thread = threading.Thread(
                target=target, name=f"opend-sim-{target.__name__}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        logger.info(
            "OpenD simulator on %s:%s (control %s)", self.host, self.port, self.control_port
        )
        return self.port

    def stop(self) -> None:
        self._running.clear()
        for server in (self._server, self._control):
            if server is not None:
                server.shutdown()
                server.server_close()
        self.drop_connections()
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads.clear()

    def __enter__(self) -> OpenDSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tick_loop(self) -> None:
        while self._running.is_set():
            try:
                self.market.tick()
            except Exception:  # a bug in matching must not stop the market clock
                logger.exception("simulator tick failed")
            time.sleep(self.tick_interval)

    def drop_connections(self) -> int:
        """Close every client connection (the SDK sees OpenD go away)."""
        with self._conn_lock:
            conns = list(self.connections)
            self.connections.clear()
        for conn in conns:
            conn.close()
        return len(conns)

    def reset(self) -> None:
        """Back to the initial state: fresh market, empty request log, accepting."""
        self.market.listeners.clear()
        if self.market.state_file and self.market.state_file.exists():
            self.market.state_file.unlink()
        self.market = self._new_market()
        self.request_log.clear()
        self.accepting = True

    # --- the OpenD protocol ---------------------------------------------------------
    def _serve_connection(self, sock: socket.socket) -> None:
        if not self.accepting:
            sock.close()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock)
        with self._conn_lock:
            self.connections.add(conn)
        try:
            while self._running.is_set():
                packet = protocol.read_packet(sock)
                self.request_log.append((time.time(), packet.proto_id))
                response = self._dispatch(conn, packet)
                conn.send(packet.proto_id, packet.serial, response, packet.fmt)
        except (ConnectionError, OSError, protocol.ProtocolError) as exc:
            logger.debug("connection %s closed: %s", conn.conn_id, exc)
        finally:
            with self._conn_lock:
                self.connections.discard(conn)
            conn.close()

    def _dispatch(self, conn: Connection, packet: protocol.Packet) -> Message:
        module = (
            protocol.pb_module(packet.proto_id)
            if packet.proto_id in protocol.PROTO_MODULES
            else None
        )
        if module is None:
            from futu.common.pb import KeepAlive_pb2

            rsp = KeepAlive_pb2.Response(
                retType=Common_pb2.RetType_Failed, retMsg=f"Unsupported proto {packet.proto_id}"
            )
            return rsp
        response = module.Response()
        try:
            request = protocol.parse_request(packet)
            if packet.proto_id != ProtoId.InitConnect and not conn.ready:
                raise SimError("InitConnect first")
            handler: Callable[[Connection, Any, Any], None] = getattr(
                self, f"_on_{protocol.PROTO_MODULES[packet.proto_id]}"
            )
            handler(conn, request.c2s, response)
            response.retType = Common_pb2.RetType_Succeed
        except SimError as exc:
            response.Clear()
            response.retType = Common_pb2.RetType_Failed
            response.retMsg = str(exc)
        except Exception as exc:  # answer, never kill the connection on a handler bug
            logger.exception("simulator failed on proto %s", packet.proto_id)
            response.Clear()
            response.retType = Common_pb2.RetType_Invalid
            response.retMsg = f"simulator error: {exc}"
        return response

    def _on_InitConnect(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        if c2s.HasField("packetEncAlgo") and c2s.packetEncAlgo != Common_pb2.PacketEncAlgo_None:
            raise SimError("the simulator speaks unencrypted OpenD only; disable encryption")
        if c2s.HasField("pushProtoFmt"):
            conn.push_fmt = c2s.pushProtoFmt
        rsp.s2c.serverVer = SERVER_VER
        rsp.s2c.loginUserID = self.user_id
        rsp.s2c.connID = conn.conn_id
        rsp.s2c.connAESKey = "0" * 16
        rsp.s2c.keepAliveInterval = self.keepalive_interval
        conn.ready = True

    def _on_KeepAlive(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        rsp.s2c.time = int(time.time())

    def _on_GetGlobalState(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        s2c = rsp.s2c
        s2c.marketHK = _state_number(self.market.market_state("HK"))
        s2c.marketUS = _state_number(self.market.market_state("US"))
        s2c.marketSH = s2c.marketSZ = s2c.marketHKFuture = STATE_CLOSED
        s2c.qotLogined = s2c.trdLogined = True
        s2c.serverVer = SERVER_VER
        s2c.serverBuildNo = 1
        s2c.time = int(time.time())
        s2c.localTime = time.time()
        s2c.programStatus.type = Common_pb2.ProgramStatusType_Ready
        s2c.connID = conn.conn_id

    # trading ------------------------------------------------------------------------
    def _header(self, header: Any, acc_id: int, trd_env: int, market: str | int) -> None:
        header.trdEnv = trd_env
        header.accID = acc_id
        header.trdMarket = TRD_MARKET.get(market, market) if isinstance(market, str) else market

    def _on_Trd_GetAccList(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        for acc in self.market.accounts.values():
            item = rsp.s2c.accList.add()
            item.trdEnv = acc.trd_env
            item.accID = acc.acc_id
            item.trdMarketAuthList.extend([T.TrdMarket_US, T.TrdMarket_HK])
            item.accType = T.TrdAccType_Margin
            item.cardNum = f"{acc.acc_id % 10**8:08d}"
            item.accStatus = T.TrdAccStatus_Active
            if acc.trd_env == T.TrdEnv_Real:
                item.securityFirm = T.SecurityFirm_FutuSecurities
            else:
                item.simAccType = T.SimAccType_Stock

    def _on_Trd_UnlockTrade(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        self.market.unlock(c2s.pwdMD5, c2s.unlock)

    def _on_Trd_SubAccPush(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        conn.push_accounts = set(c2s.accIDList)

    def _on_Trd_GetFunds(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        h = c2s.header
        if c2s.refreshCache:
            self.market.check_rate("funds", h.accID)
        market = self.market
        with market.lock:
            acc = market.account(h.accID, h.trdEnv)
            currency = CURRENCY_NAME.get(c2s.currency, "USD")
            cash = acc.cash.get(currency, Decimal(0))
            frozen = market._frozen(acc, currency)
            mv = sum(
                (
                    qty * market.securities[code].price
                    for code, qty in acc.positions.items()
                    if code in market.securities
                    and CURRENCY[{"US": "USD", "HK": "HKD"}[code.split(".")[0]]]
                    == CURRENCY[currency]
                ),
                Decimal(0),
            )
            self._header(rsp.s2c.header, h.accID, h.trdEnv, h.trdMarket)
            f = rsp.s2c.funds
            f.power = float(cash - frozen)
            f.totalAssets = float(cash + mv)
            f.cash = float(cash)
            f.marketVal = float(mv)
            f.frozenCash = float(frozen)
            f.debtCash = 0.0
            f.avlWithdrawalCash = float(cash - frozen)
            f.currency = CURRENCY[currency]
            for name, amount in acc.cash.items():
                info = f.cashInfoList.add()
                info.currency = CURRENCY[name]
                info.cash = float(amount)
                info.availableBalance = float(amount - market._frozen(acc, name))

    def _on_Trd_GetPositionList(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        h = c2s.header
        if c2s.refreshCache:
            self.market.check_rate("positions", h.accID)
        market = self.market
        codes = set(c2s.filterConditions.codeList)
        with market.lock:
            acc = market.account(h.accID, h.trdEnv)
            self._header(rsp.s2c.header, h.accID, h.trdEnv, h.trdMarket)
            for code, qty in sorted(acc.positions.items()):
                sec = market.securities.get(code)
                symbol = code.split(".", 1)[1]
                if not qty or sec is None or (codes and symbol not in codes):
                    continue
                p = rsp.s2c.positionList.add()
                p.positionID = abs(hash((acc.acc_id, code))) % 2**63
                p.positionSide = T.PositionSide_Long
                p.code = symbol
                p.name = sec.name or symbol
                p.qty = float(qty)
                p.canSellQty = float(market._sellable(acc, code))
                p.price = float(sec.price)
                cost = acc.cost.get(code, Decimal(0))
                p.costPrice = float(cost / qty) if qty else 0.0
                p.val = float(qty * sec.price)
                p.plVal = float(qty * sec.price - cost)
                p.secMarket = SEC_MARKET[sec.market]
                p.currency = CURRENCY[{"US": "USD", "HK": "HKD"}[sec.market]]
                p.trdMarket = TRD_MARKET[sec.market]

    def _fill_order(self, pb: Any, order: SimOrder) -> None:
        sec = self.market.securities.get(order.code)
        market, symbol = order.code.split(".", 1)
        pb.trdSide = T.TrdSide_Buy if order.side == "BUY" else T.TrdSide_Sell
        pb.orderType = T.OrderType_Normal
        pb.orderStatus = _status_number(order.status)
        pb.orderID = order.order_id
        pb.orderIDEx = str(order.order_id)
        pb.code = symbol
        pb.name = (sec.name if sec else "") or symbol
        pb.qty = float(order.qty)
        pb.price = float(order.price)
        pb.createTime = _now_str(order.created_at)
        pb.updateTime = _now_str(order.updated_at)
        pb.fillQty = float(order.filled_qty)
        pb.fillAvgPrice = float(order.avg_price)
        pb.lastErrMsg = order.last_err
        pb.secMarket = SEC_MARKET[market]
        pb.createTimestamp = order.created_at
        pb.updateTimestamp = order.updated_at
        pb.remark = order.remark
        pb.timeInForce = T.TimeInForce_DAY
        pb.currency = CURRENCY[{"US": "USD", "HK": "HKD"}[market]]
        pb.trdMarket = TRD_MARKET[market]

    def _fill_deal(self, pb: Any, fill: SimFill) -> None:
        market, symbol = fill.code.split(".", 1)
        sec = self.market.securities.get(fill.code)
        pb.trdSide = T.TrdSide_Buy if fill.side == "BUY" else T.TrdSide_Sell
        pb.fillID = fill.fill_id
        pb.fillIDEx = str(fill.fill_id)
        pb.orderID = fill.order_id
        pb.orderIDEx = str(fill.order_id)
        pb.code = symbol
        pb.name = (sec.name if sec else "") or symbol
        pb.qty = float(fill.qty)
        pb.price = float(fill.price)
        pb.createTime = _now_str(fill.created_at)
        pb.secMarket = SEC_MARKET[market]
        pb.createTimestamp = fill.created_at
        pb.updateTimestamp = fill.updated_at or fill.created_at
        pb.status = FILL_STATUS[fill.status]
        pb.trdMarket = TRD_MARKET[market]

    def _list_orders(self, c2s: Any, rsp: Any, *, unfinished_only: bool) -> None:
        h = c2s.header
        cond = c2s.filterConditions
        ids = [int(x) for x in cond.orderIDExList] + list(cond.idList)
        statuses = [_status_name(s) for s in c2s.filterStatusList]
        orders = self.market.list_orders(
            acc_id=h.accID,
            trd_env=h.trdEnv,
            codes=cond.codeList,
            order_ids=ids,
            statuses=statuses,
            unfinished_only=unfinished_only,
            start=_parse_time(cond.beginTime),
            end=_parse_time(cond.endTime),
        )
        self._header(rsp.s2c.header, h.accID, h.trdEnv, h.trdMarket)
        with self.market.lock:
            for order in orders:
                self._fill_order(rsp.s2c.orderList.add(), order)

    def _on_Trd_GetOrderList(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        if c2s.refreshCache:
            self.market.check_rate("order_list", c2s.header.accID)
        self._list_orders(c2s, rsp, unfinished_only=True)

    def _on_Trd_GetHistoryOrderList(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        self.market.check_rate("history_order_list", c2s.header.accID)
        self._list_orders(c2s, rsp, unfinished_only=False)

    def _list_deals(self, c2s: Any, rsp: Any, *, today_only: bool) -> None:
        h = c2s.header
        cond = c2s.filterConditions
        start, end = _parse_time(cond.beginTime), _parse_time(cond.endTime)
        if today_only:
            start = datetime.now(tz=UTC).replace(hour=0, minute=0, second=0).timestamp()
            end = None
        fills = self.market.list_fills(
            acc_id=h.accID, trd_env=h.trdEnv, codes=cond.codeList, start=start, end=end
        )
        self._header(rsp.s2c.header, h.accID, h.trdEnv, h.trdMarket)
        with self.market.lock:
            for fill in fills:
                self._fill_deal(rsp.s2c.orderFillList.add(), fill)

    def _on_Trd_GetOrderFillList(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        """`deal_list_query`: today's deals (OpenD's cache; refresh counts against the
        order-list budget)."""
        if c2s.refreshCache:
            self.market.check_rate("order_list", c2s.header.accID)
        self._list_deals(c2s, rsp, today_only=True)

    def _on_Trd_GetHistoryOrderFillList(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        """`history_deal_list_query`: deals in [begin, end], 10 per 30 s."""
        self.market.check_rate("history_deal_list", c2s.header.accID)
        self._list_deals(c2s, rsp, today_only=False)

    def _on_Trd_GetOrderFee(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        """`order_fee_query`: each order's fee, itemised (`trading.opend_sim.fees`)."""
        h = c2s.header
        self.market.check_rate("order_fee", h.accID)
        rows = self.market.order_fees(
            acc_id=h.accID, trd_env=h.trdEnv, order_ids=[int(i) for i in c2s.orderIdExList]
        )
        self._header(rsp.s2c.header, h.accID, h.trdEnv, h.trdMarket)
        for order, items in rows:
            fee = rsp.s2c.orderFeeList.add()
            fee.orderIDEx = str(order.order_id)
            fee.feeAmount = float(sum((amount for _, amount in items), Decimal(0)))
            for title, amount in items:
                item = fee.feeList.add()
                item.title = title
                item.value = float(amount)

    def _on_Trd_GetMaxTrdQtys(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        """`acctradinginfo_query`: the most a new order could buy with cash or sell."""
        h = c2s.header
        self.market.check_rate("trading_info", h.accID)
        market = SEC_MARKET_NAME.get(c2s.secMarket) if c2s.HasField("secMarket") else None
        code = f"{market or self._market_of_header(h)}.{c2s.code}"
        buy = self.market.max_buy_qty(
            acc_id=h.accID, trd_env=h.trdEnv, code=code, price=_num(c2s.price)
        )
        with self.market.lock:
            sell = self.market._sellable(self.market.account(h.accID, h.trdEnv), code)
        self._header(rsp.s2c.header, h.accID, h.trdEnv, h.trdMarket)
        q = rsp.s2c.maxTrdQtys
        q.maxCashBuy = float(buy)
        q.maxCashAndMarginBuy = float(buy)
        q.maxPositionSell = float(sell)
        q.maxSellShort = 0.0
        q.maxBuyBack = 0.0

    def _market_of_header(self, header: Any) -> str:
        return {T.TrdMarket_HK: "HK", T.TrdMarket_US: "US"}.get(header.trdMarket, "US")

    def _on_Trd_PlaceOrder(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        h = c2s.header
        market = SEC_MARKET_NAME.get(c2s.secMarket)
        if market is None:
            raise SimError(f"Unsupported security market {c2s.secMarket}")
        if c2s.orderType != T.OrderType_Normal:
            raise SimError("The simulator accepts limit (NORMAL) orders only")
        if c2s.trdSide not in (T.TrdSide_Buy, T.TrdSide_Sell):
            raise SimError(f"Unsupported side {c2s.trdSide}")
        order = self.market.place(
            acc_id=h.accID,
            trd_env=h.trdEnv,
            side="BUY" if c2s.trdSide == T.TrdSide_Buy else "SELL",
            code=f"{market}.{c2s.code}",
            qty=_num(c2s.qty),
            price=_num(c2s.price),
            remark=c2s.remark,
            session=SESSION_NAME.get(c2s.session, "") if c2s.HasField("session") else "",
            # Both fields must be set for OpenD to adjust (Trd_PlaceOrder.proto).
            adjust_limit=_num(c2s.adjustSideAndLimit)
            if c2s.adjustPrice and c2s.HasField("adjustSideAndLimit")
            else Decimal(0),
        )
        self._header(rsp.s2c.header, h.accID, h.trdEnv, h.trdMarket)
        rsp.s2c.orderID = order.order_id
        rsp.s2c.orderIDEx = str(order.order_id)

    def _on_Trd_ModifyOrder(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        h = c2s.header
        op = MODIFY_OPS.get(c2s.modifyOrderOp)
        if op is None:
            raise SimError(f"Unsupported modify operation {c2s.modifyOrderOp}")
        self._header(rsp.s2c.header, h.accID, h.trdEnv, h.trdMarket)
        if c2s.forAll:
            open_orders = [
                o
                for o in self.market.list_orders(acc_id=h.accID, trd_env=h.trdEnv)
                if o.status in ("SUBMITTED", "FILLED_PART", "WAITING_SUBMIT")
            ]
            self.market.check_rate("modify", h.accID)
            for o in open_orders:
                with self.market.lock:
                    final = "CANCELLED_PART" if o.filled_qty else "CANCELLED_ALL"
                    event = self.market._touch(o, final, time.time())
                self.market._emit([event])
            rsp.s2c.orderID = 0
            return
        order_id = int(c2s.orderIDEx) if c2s.orderIDEx else c2s.orderID
        order = self.market.modify(
            acc_id=h.accID,
            trd_env=h.trdEnv,
            order_id=order_id,
            op=op,
            qty=_num(c2s.qty) if c2s.HasField("qty") else None,
            price=_num(c2s.price) if c2s.HasField("price") else None,
        )
        rsp.s2c.orderID = order.order_id
        rsp.s2c.orderIDEx = str(order.order_id)

    # quotes -------------------------------------------------------------------------
    def _security_for(self, security: Any) -> SimSecurity:
        market = QOT_MARKET_NAME.get(security.market)
        if market is None:
            raise SimError(f"Unknown stock (market {security.market})")
        return self.market.security(f"{market}.{security.code}")

    def _on_Qot_GetSecuritySnapshot(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        self.market.check_rate("snapshot", 0)
        now = _now_str(time.time())
        with self.market.lock:
            for security in c2s.securityList:
                sec = self._security_for(security)
                snap = rsp.s2c.snapshotList.add()
                b = snap.basic
                b.security.market = security.market
                b.security.code = security.code
                b.name = sec.name or sec.symbol
                b.type = Qot_Common_pb2.SecurityType_Eqty
                b.isSuspend = sec.suspended
                b.listTime = "2000-01-01"
                b.lotSize = sec.lot_size
                b.priceSpread = float(self.market.spread(sec.code, sec.price))
                b.updateTime = now
                price = float(sec.price)
                b.highPrice = b.openPrice = b.lowPrice = price
                b.lastClosePrice = float(sec.prev_close or sec.price)
                b.curPrice = price
                b.volume = 0
                b.turnover = 0.0
                b.turnoverRate = 0.0
                b.askPrice = price
                b.bidPrice = price

    def _on_Qot_GetMarketState(self, conn: Connection, c2s: Any, rsp: Any) -> None:
        with self.market.lock:
            for security in c2s.securityList:
                sec = self._security_for(security)
                info = rsp.s2c.marketInfoList.add()
                info.security.market = security.market
                info.security.code = security.code
                info.name = sec.name or sec.symbol
                info.marketState = _state_number(self.market.market_state(sec.market))

    # pushes -------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if event.kind == "order" and event.order is not None:
            from futu.common.pb import Trd_UpdateOrder_pb2 as pb

            msg = pb.Response(retType=Common_pb2.RetType_Succeed)
            self._header(
                msg.s2c.header, event.acc_id, event.trd_env, event.order.code.split(".", 1)[0]
            )
            with self.market.lock:
                self._fill_order(msg.s2c.order, event.order)
            proto_id = ProtoId.Trd_UpdateOrder
        elif event.kind == "fill" and event.fill is not None:
            from futu.common.pb import Trd_UpdateOrderFill_pb2 as pb

            msg = pb.Response(retType=Common_pb2.RetType_Succeed)
            self._header(
                msg.s2c.header, event.acc_id, event.trd_env, event.fill.code.split(".", 1)[0]
            )
            self._fill_deal(msg.s2c.orderFill, event.fill)
            proto_id = ProtoId.Trd_UpdateOrderFill
        else:
            return
        with self._conn_lock:
            targets = [c for c in self.connections if event.acc_id in c.push_accounts]
        for conn in targets:
            try:
                conn.push(proto_id, msg)
            except OSError:
                logger.debug("push to connection %s failed", conn.conn_id)

    # --- the control channel --------------------------------------------------------
    def _serve_control(self, rfile: Any, wfile: Any) -> None:
        for line in rfile:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
                result = self.control(request["cmd"], **request.get("args", {}))
                reply = {"ok": True, "result": result}
            except Exception as exc:  # noqa: BLE001 - reported to the scripting client
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            wfile.write((json.dumps(reply, default=str) + "\n").encode())
            wfile.flush()

    def control(self, cmd: str, **args: Any) -> Any:
        """Script the simulator. Reachable in-process and over the control port."""
        m = self.market
        if cmd == "ping":
            return {"port": self.port, "acc_id": self.acc_id, "real_acc_id": self.real_acc_id}
        if cmd == "set_price":
            return _security_dict(m.set_security(args["code"], price=args["price"]))
        if cmd == "set_security":
            return _security_dict(m.set_security(args.pop("code"), **args))
        if cmd == "set_market_open":
            m.set_market_open(args["market"], args["is_open"])
            return dict(m.market_open)
        if cmd == "set_clock":
            at = args.get("at")
            m.set_clock(
                None if at is None else datetime.fromisoformat(at), float(args.get("rate", 1.0))
            )
            return _clock_dict(m)
        if cmd == "clock":
            return _clock_dict(m)
        if cmd == "fill":
            return _order_dict(
                m.force_fill(int(args["order_id"]), args.get("qty"), args.get("price"))
            )
        if cmd == "set_order_status":
            return _order_dict(
                m.set_order_status(int(args["order_id"]), args["status"], args.get("last_err", ""))
            )
        if cmd == "set_hk_spread_table":
            m.set_hk_spread_table(args["table"])
            return m.hk_spread_table
        if cmd == "set_language":
            m.set_language(args["language"])
            return m.language
        if cmd == "lock_trade":
            m.lock_trade()
            return None
        if cmd == "set_trade_password":
            m.set_trade_password(args["password"])
            return None
        if cmd == "reverse_fills":
            return _order_dict(m.reverse_fills(int(args["order_id"])))
        if cmd == "change_deal":
            fill = m.change_deal(int(args["fill_id"]), args["qty"], args.get("price"))
            return _deal_dict(fill)
        if cmd == "deals":
            order_id = args.get("order_id")
            with m.lock:
                return [
                    _deal_dict(f)
                    for f in m.fills
                    if order_id is None or f.order_id == int(order_id)
                ]
        if cmd == "set_lenient_listing":
            m.lenient_listing = bool(args["lenient"])
            return m.lenient_listing
        if cmd == "orders":
            remark = args.get("remark")
            with m.lock:
                return [
                    _order_dict(o)
                    for o in m.orders.values()
                    if remark is None or o.remark == remark
                ]
        if cmd == "set_cash":
            m.set_cash(int(args.get("acc_id") or self.acc_id), args["currency"], args["amount"])
            return None
        if cmd == "set_position":
            m.set_position(int(args.get("acc_id") or self.acc_id), args["code"], args["qty"])
            return None
        if cmd == "account":
            acc = m.accounts[int(args.get("acc_id") or self.acc_id)]
            return {
                "cash": {k: str(v) for k, v in acc.cash.items()},
                "positions": {k: str(v) for k, v in acc.positions.items()},
            }
        if cmd == "drop_connections":
            return self.drop_connections()
        if cmd == "set_accepting":
            self.accepting = bool(args["accepting"])
            if not self.accepting:
                self.drop_connections()
            return self.accepting
        if cmd == "rate_stats":
            kind = args["kind"]
            log = [entry for entry in m.rate.log if entry[0] == kind]
            return {
                "requests": len(log),
                "refused": sum(1 for e in log if not e[3]),
                "max_in_window": m.rate.max_in_window(kind),
                "window": m.rate.window,
            }
        if cmd == "request_count":
            proto_id = args.get("proto_id")
            return sum(1 for _, p in self.request_log if proto_id in (None, p))
        if cmd == "connections":
            return len(self.connections)
        if cmd == "reset":
            self.reset()
            return None
        raise ValueError(f"unknown control command {cmd!r}")


def _order_dict(order: SimOrder) -> dict[str, Any]:
    return {
        "order_id": str(order.order_id),
        "acc_id": order.acc_id,
        "code": order.code,
        "side": order.side,
        "qty": str(order.qty),
        "price": str(order.price),
        "remark": order.remark,
        "status": order.status,
        "filled_qty": str(order.filled_qty),
        "avg_price": str(order.avg_price),
        "fee": str(order.fee_charged),
        "session": order.session,
    }


def _deal_dict(fill: SimFill) -> dict[str, Any]:
    return {
        "fill_id": str(fill.fill_id),
        "order_id": str(fill.order_id),
        "code": fill.code,
        "qty": str(fill.qty),
        "price": str(fill.price),
        "status": fill.status,
    }


def _clock_dict(market: SimMarket) -> dict[str, Any]:
    """The simulated time and each market's state, for the control port."""
    return {
        "now": market.sim_now().isoformat(),
        "running": market.clock is not None,
        "states": {name: market.market_state(name) for name in ("US", "HK")},
    }


def _security_dict(sec: SimSecurity) -> dict[str, Any]:
    return {
        "code": sec.code,
        "price": str(sec.price),
        "lot_size": sec.lot_size,
        "fill_mode": sec.fill_mode,
        "cancel_mode": sec.cancel_mode,
        "suspended": sec.suspended,
    }


class SimulatorControl:
    """Client of the control port: script a simulator from any process.

    ctl = SimulatorControl("127.0.0.1", control_port)
    ctl.set_price("US.AAPL", "191.20"); ctl.fill(order_id); ctl.drop_connections()
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._file: Any = None

    def call(self, cmd: str, **args: Any) -> Any:
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._sock is None:
                        self._sock = socket.create_connection(
                            (self.host, self.port), timeout=self.timeout
                        )
                        self._file = self._sock.makefile("rwb")
                    self._file.write(
                        (json.dumps({"cmd": cmd, "args": args}, default=str) + "\n").encode()
                    )
                    self._file.flush()
                    line = self._file.readline()
                    if not line:
                        raise ConnectionError("control channel closed")
                    break
                except OSError:
                    self.close()
                    if attempt == 2:
                        raise
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None

    def set_clock(self, **args: Any) -> Any:
        """Move the simulator's clock; Bronco's closed-market skips end with it (they were
        computed from the calendar at a time that no longer holds: `trading.market_wait`)."""
        answer = self.call("set_clock", **args)
        _market_skips_end()
        return answer

    def set_market_open(self, **args: Any) -> Any:
        """Pin a market's open flag; Bronco's closed-market skips end with it."""
        answer = self.call("set_market_open", **args)
        _market_skips_end()
        return answer

    def __getattr__(self, cmd: str) -> Callable[..., Any]:
        if cmd.startswith("_"):
            raise AttributeError(cmd)
        return lambda **args: self.call(cmd, **args)


def _market_skips_end() -> None:
    """`trading.market_wait.market_closed_clear` in a process with Django settings (tests,
    devtools); nothing in one without them."""
    from django.conf import settings

    if not settings.configured:
        return
    from trading.market_wait import market_closed_clear

    market_closed_clear()
