"""The OpenD session: one quote and one trade context for one account, per process.

Connects, resolves the account, unlocks trading, rebuilds both contexts after a dropped
connection, and runs every SDK call through `_call`, which translates its failure
(`trading.futu.parsing.classify_error`). The market-data and execution halves of the
adapter build on `FutuConnection`; it knows neither.

Guarantees:
- A dropped connection is noticed before the next call and both contexts are rebuilt;
  reads are retried once on a fresh connection, writes are not (their retry is the caller's,
  and the remark lookup makes it safe).
- Every request that Futu limits goes through the shared Redis limiter first (`_limit`).
- Fork-safe: a child process (Celery prefork) never reuses the parent's sockets or the SDK's
  network thread.
- Fail-fast: while OpenD is down, connecting raises BrokerUnavailable instead of letting the
  SDK's constructor retry forever.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from futu import (
    RET_OK,
    OpenQuoteContext,
    OpenSecTradeContext,
    SecurityFirm,
    SysConfig,
    TrdEnv,
    TrdMarket,
)
from futu.common.constant import ContextStatus
from futu.common.ft_logger import logger as futu_logger
from futu.common.network_manager import NetManager

from core.alerts import AlertSeverity, alert_raise
from core.exceptions import TIME_LIMITS
from core.metrics import count_broker_error
from core.secrets import SecretUnavailable, clear_secret_cache, get_secret
from trading.broker import DealUpdateCallback, OrderUpdateCallback
from trading.exceptions import BrokerSessionFault, BrokerUnavailable
from trading.futu.parsing import _DISCONNECTED as _DISCONNECT_TEXT
from trading.futu.parsing import classify_error
from trading.market_calendar import REGULAR, default_sessions, market_of_code
from trading.ratelimit import RedisRateLimiter

logger = logging.getLogger(__name__)

# The SDK logs every request at INFO to the console and at DEBUG to a file in $HOME.
futu_logger.console_level = logging.WARNING
futu_logger.file_level = logging.WARNING
# The SDK's callback threads are non-daemon by default: a process holding a session could
# never exit (a Celery worker would hang at shutdown). Sessions hold no state worth that.
SysConfig.set_all_thread_daemon(True)


class _FailFastMixin:
    """The SDK's constructor retries a failed connection forever, which would hang a worker
    while OpenD is down. While constructing, a failed attempt switches auto-reconnect off so
    the constructor returns; the adapter then reports BrokerUnavailable."""

    _auto_reconnect: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._bronco_fail_fast = True
        super().__init__(*args, **kwargs)
        self._bronco_fail_fast = False
        self.reconnect_interval = settings.FUTU_RECONNECT_SECONDS

    def _wait_reconnect(self, wait_reconnect_interval: float = 6) -> None:
        """The SDK waits a fixed 6 s after a disconnect before its first reconnect (its
        `on_disconnect` passes no interval, so `reconnect_interval` does not apply), then
        `reconnect_interval` (6 s) between attempts: a session that makes no calls (its
        process only waits for pushes) came back up to 12 s after a restarted OpenD. Both
        waits are FUTU_RECONNECT_SECONDS here (futu-api 10.11, futu/common/open_context_base.py)."""
        super()._wait_reconnect(min(wait_reconnect_interval, self._reconnect_interval))  # type: ignore[misc]

    def _init_connect_sync(self) -> int:
        ret = super()._init_connect_sync()  # type: ignore[misc]
        if ret != RET_OK and getattr(self, "_bronco_fail_fast", False):
            self._auto_reconnect = False
        return ret


class QuoteContext(_FailFastMixin, OpenQuoteContext):
    pass


class TradeContext(_FailFastMixin, OpenSecTradeContext):
    pass


SdkCall = Callable[[QuoteContext, TradeContext], tuple[int, Any]]


class FutuConnection:
    """The session half of the adapter: configuration, both contexts, the limiter."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        trd_market: str = "US",
        security_firm: str = "FUTUSECURITIES",
        trd_env: str = "SIMULATE",
        acc_id: int = 0,
        trade_password: str | Callable[[], str] = "",
        connect_timeout: float = 5.0,
        on_order_update: OrderUpdateCallback | None = None,
        on_deal_update: DealUpdateCallback | None = None,
        us_session: str = "RTH",
        remark_lookup_refresh: bool = False,
        fill_outside_rth: bool = False,
        price_adjust_limit: Decimal = Decimal(0),
        trading_sessions: Mapping[str, frozenset[str]] | None = None,
        limiter_factory: Callable[[str], RedisRateLimiter] | None = None,
    ) -> None:
        if trd_env not in (TrdEnv.SIMULATE, TrdEnv.REAL):
            raise ValueError(f"trd_env must be SIMULATE or REAL, not {trd_env!r}")
        if trd_env == TrdEnv.REAL and not trade_password:
            raise ValueError("REAL trading needs a trade password (FUTU_TRADE_PASSWORD)")
        if us_session not in ("RTH", "ETH", "ALL", "OVERNIGHT"):
            raise ValueError(f"us_session must be RTH, ETH, ALL or OVERNIGHT, not {us_session!r}")
        self.host, self.port = host, port
        self.trd_market = getattr(TrdMarket, trd_market)
        self.security_firm = getattr(SecurityFirm, security_firm)
        self.trd_env = trd_env
        self.configured_acc_id = acc_id
        self.acc_id = acc_id
        self._password = trade_password
        self.connect_timeout = connect_timeout
        self.on_order_update = on_order_update
        self.on_deal_update = on_deal_update
        self.us_session = us_session
        self.remark_lookup_refresh = remark_lookup_refresh
        self.fill_outside_rth = fill_outside_rth
        if not 0 <= price_adjust_limit < 1:
            raise ValueError("price_adjust_limit is a fraction of the price in [0, 1)")
        self.price_adjust_limit = price_adjust_limit
        # The sessions Bronco trades, per market (trading.market_calendar names): by default
        # the regular session, and US pre-market and after-hours when orders may fill
        # outside regular trading hours.
        self.trading_sessions: dict[str, frozenset[str]] = {
            market: default_sessions(market, fill_outside_rth=fill_outside_rth)
            for market in ("US", "HK")
        }
        self.trading_sessions.update(trading_sessions or {})
        self._limiter_factory = limiter_factory or (
            lambda account: RedisRateLimiter.from_settings(account=account)
        )
        self.limiter: RedisRateLimiter | None = None
        self.pid = os.getpid()
        self._lock = threading.RLock()
        self._quote_ctx: QuoteContext | None = None
        self._trade_ctx: TradeContext | None = None
        self.connections_made = 0

    def _ready(self) -> bool:
        return all(
            ctx is not None and ctx.status == ContextStatus.READY
            for ctx in (self._quote_ctx, self._trade_ctx)
        )

    def _install_handlers(self, trade: TradeContext) -> None:
        """Subscribe the trade context's pushes; the execution half overrides this."""

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
            quote = QuoteContext(host=self.host, port=self.port)
            trade = None
            try:
                if quote.status != ContextStatus.READY:
                    raise BrokerUnavailable(f"OpenD {self.host}:{self.port}: quote login failed")
                trade = TradeContext(
                    filter_trdmarket=self.trd_market,
                    host=self.host,
                    port=self.port,
                    security_firm=self.security_firm,
                )
                if trade.status != ContextStatus.READY:
                    raise BrokerUnavailable(f"OpenD {self.host}:{self.port}: trade login failed")
                for ctx in (quote, trade):
                    ctx.set_sync_query_connect_timeout(self.connect_timeout)
                self._install_handlers(trade)
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

    def _resolve_account(self, trade: TradeContext) -> None:
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

    def _read_password(self) -> str:
        """The trade password, read afresh (from Vault, through its short cache) at every
        unlock, so a rotated password is picked up without a restart."""
        return self._password() if callable(self._password) else self._password

    def _unlock(self, trade: TradeContext) -> None:
        """Unlock trading. On failure the password is read once more after clearing the
        secrets cache (it may have been rotated); a second failure raises
        BrokerSessionFault with an operator alert open (REAL only: paper trading does not
        need the unlock)."""
        password = self._read_password()
        if not password:
            return
        ret, msg = trade.unlock_trade(password=password)
        if ret == RET_OK:
            return
        if self.trd_env != TrdEnv.REAL:
            logger.warning("unlock_trade failed (not needed for SIMULATE): %s", msg)
            return
        if _DISCONNECT_TEXT.search(str(msg)):
            raise BrokerUnavailable(f"unlock_trade failed: {msg}")
        clear_secret_cache()
        ret, msg = trade.unlock_trade(password=self._read_password())
        if ret == RET_OK:
            logger.info("unlocked trading with a re-read trade password")
            return
        raise self._session_fault(f"unlock_trade failed twice: {msg}")

    def sessions_of(self, code: str) -> frozenset[str]:
        """The sessions Bronco trades `code` in (its market's `TRADING_SESSIONS`)."""
        return self.trading_sessions.get(market_of_code(code), frozenset({REGULAR}))

    def _session_fault(self, message: str) -> BrokerSessionFault:
        """An operator alert for a session Bronco cannot repair by itself, and the error the
        caller retries on (never a rejection: nothing is refunded for it)."""
        try:
            alert_raise(
                key=f"broker_session:{self.trd_env}:{self.acc_id}",
                message=f"Futu session cannot trade: {message}",
                severity=AlertSeverity.CRITICAL,
                source="trading.futu",
                details={"account": self.acc_id, "trd_env": self.trd_env},
            )
        except DatabaseError:
            logger.exception("could not record the broker session alert")
        return BrokerSessionFault(message, alerted=True)

    def _teardown(self) -> None:
        for ctx in (self._quote_ctx, self._trade_ctx):
            if ctx is not None:
                try:
                    ctx.close()
                except TIME_LIMITS:
                    raise  # a task out of time ends as a timeout, never as a success
                except Exception:  # closing a dead context must not mask the real error
                    logger.debug("closing a futu context failed", exc_info=True)
        self._quote_ctx = self._trade_ctx = None

    def close(self) -> None:
        with self._lock:
            self._teardown()

    def _retry_after(self, kind: str) -> float:
        limit, _ = settings.FUTU_RATE_LIMITS[kind]
        return settings.FUTU_RATE_WINDOW_SECONDS / max(limit, 1)

    def _call(self, fn: SdkCall, *, kind: str = "place", retry: bool = True) -> Any:
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
            if isinstance(error, BrokerSessionFault) and attempt == 1:
                # Locked by another client or after an OpenD restart: the request was not
                # carried out, so unlocking and asking again is safe, for writes too.
                logger.warning("OpenD says trading is locked (%s); unlocking again", data)
                with self._lock:
                    self._unlock(self._trade_ctx)
                if kind in settings.FUTU_RATE_LIMITS:
                    self._limit(kind)  # the refused request counted at Futu too
                continue
            if isinstance(error, BrokerSessionFault):
                raise self._session_fault(str(error))
            if isinstance(error, BrokerUnavailable):
                with self._lock:
                    self._teardown()
                if retry and attempt == 1:
                    logger.warning("OpenD call failed (%s); reconnecting", data)
                    continue
            raise error
        raise AssertionError("unreachable")

    def _limit(self, kind: str) -> None:
        """Take one request of `kind` from the account's shared budget (waits briefly or
        raises RateLimited)."""
        self.connect()
        assert self.limiter is not None
        self.limiter.acquire(kind)


def _reset_sdk_after_fork() -> None:
    """The SDK's network manager is a process-wide singleton with its own thread; a forked
    child has the object but not the thread. Forget it so the child builds its own."""
    NetManager._default_inst = None
    NetManager._default_inst_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_sdk_after_fork)


def trade_password(trd_env: str) -> str:
    """The trade password from Vault (or, outside production without Vault, the setting).
    Paper trading does not unlock, so it may go without one; real trading may not."""
    try:
        return get_secret("futu_trade_password")
    except SecretUnavailable:
        if trd_env == "REAL":
            raise
        return ""


def trade_password_reader(trd_env: str) -> Callable[[], str]:
    """What the session calls at every unlock: the password as Vault has it now."""
    return lambda: trade_password(trd_env)
