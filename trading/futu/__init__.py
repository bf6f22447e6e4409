"""The Futu adapter: Bronco's broker protocols (`trading.broker.Broker`) over the unmodified
futu-api SDK. With the simulator, the only code that imports futu.

Split by concern, as nautilus_trader splits a venue adapter:
- `connection`  the OpenD session: contexts, connect/reconnect, unlock, fail-fast, limiter;
- `market_data` quotes and market state (`QuoteSource`);
- `execution`   orders, remark look-ups, funds, positions, pushes (`ExecutionVenue`);
- `parsing`     SDK rows, statuses and error messages -> `trading.broker` types and
                `trading.exceptions`.
`FutuBroker` joins the halves over one session. See `execution` and `connection` for what
the adapter guarantees (remark idempotency, shared rate limit, reconnects, fork safety).
"""

from __future__ import annotations

from django.conf import settings

import trading.futu_sdk  # noqa: F401  (undoes the SDK's SIGINT handler; first, before futu)
from trading.broker import DealUpdateCallback, OrderUpdateCallback
from trading.futu.connection import FutuConnection, trade_password_reader
from trading.futu.execution import FutuExecution
from trading.futu.market_data import FutuMarketData
from trading.futu.parsing import FUTU_STATUS_MAP, classify_error, map_status, order_from_row
from trading.market_calendar import parse_sessions

__all__ = [
    "FUTU_STATUS_MAP",
    "FutuBroker",
    "FutuConnection",
    "classify_error",
    "futu_broker_from_settings",
    "map_status",
    "order_from_row",
]


class FutuBroker(FutuMarketData, FutuExecution):
    """One OpenD session (a quote and a trade context) for one account, per process."""

    @classmethod
    def from_settings(
        cls,
        *,
        on_order_update: OrderUpdateCallback | None = None,
        on_deal_update: DealUpdateCallback | None = None,
    ) -> FutuBroker:
        return cls(
            host=settings.FUTU_OPEND_HOST,
            port=settings.FUTU_OPEND_PORT,
            trd_market=settings.FUTU_TRD_MARKET,
            security_firm=settings.FUTU_SECURITY_FIRM,
            trd_env=settings.FUTU_TRD_ENV,
            acc_id=settings.FUTU_ACC_ID,
            trade_password=trade_password_reader(settings.FUTU_TRD_ENV),
            connect_timeout=settings.FUTU_CONNECT_TIMEOUT_SECONDS,
            on_order_update=on_order_update,
            on_deal_update=on_deal_update,
            us_session=settings.FUTU_US_SESSION,
            remark_lookup_refresh=settings.FUTU_REMARK_LOOKUP_REFRESH,
            fill_outside_rth=settings.FUTU_FILL_OUTSIDE_RTH,
            price_adjust_limit=settings.FUTU_PRICE_ADJUST_LIMIT,
            trading_sessions={
                market: parse_sessions(market, text)
                for market, text in settings.TRADING_SESSIONS.items()
                if text
            },
        )


def futu_broker_from_settings(
    *,
    on_order_update: OrderUpdateCallback | None = None,
    on_deal_update: DealUpdateCallback | None = None,
) -> FutuBroker:
    """The default `TRADING_BROKER_FACTORY`: the Futu adapter configured from settings."""
    return FutuBroker.from_settings(on_order_update=on_order_update, on_deal_update=on_deal_update)
