"""Broker settings (OpenD host, account, rate limits, slippage, fees, FX). Owned by the
trading app. Every value comes from the environment; money is Decimal."""

from bronco_project.settings.env import env_bool, env_decimal, env_float, env_int, env_str

# --- OpenD gateway ----------------------------------------------------------------------
FUTU_OPEND_HOST = env_str("FUTU_OPEND_HOST", "127.0.0.1")
FUTU_OPEND_PORT = env_int("FUTU_OPEND_PORT", 11111)
# Market filter of the trade context (futu TrdMarket name) and the securities firm.
FUTU_TRD_MARKET = env_str("FUTU_TRD_MARKET", "US")
FUTU_SECURITY_FIRM = env_str("FUTU_SECURITY_FIRM", "FUTUSECURITIES")
# SIMULATE unless REAL is set explicitly: a misconfigured machine paper-trades.
FUTU_TRD_ENV = "REAL" if env_str("FUTU_TRD_ENV", "SIMULATE").upper() == "REAL" else "SIMULATE"
# 0 = the first account of FUTU_TRD_ENV in the account list.
FUTU_ACC_ID = env_int("FUTU_ACC_ID", 0)
# Trade password: from the environment for now (Vault comes later). The dev default exists
# only outside production; production.py-style checks refuse an empty one for REAL.
_DEV_TRADE_PASSWORD = "123456" if env_str("BRONCO_ENV", "local") != "production" else ""
FUTU_TRADE_PASSWORD = env_str("FUTU_TRADE_PASSWORD", _DEV_TRADE_PASSWORD)
# How long a call waits for a (re)connection before it fails with BrokerUnavailable.
FUTU_CONNECT_TIMEOUT_SECONDS = env_float("FUTU_CONNECT_TIMEOUT_SECONDS", 5.0)
# Seconds between the SDK's own reconnect attempts after OpenD went away (its default, 6 s
# and a fixed 6 s before the first, kept an idle session deaf to pushes that long).
FUTU_RECONNECT_SECONDS = env_float("FUTU_RECONNECT_SECONDS", 1.0)
# The remark lookup before every submission reads OpenD's order cache (not rate limited);
# set true to force a server refresh (then it counts against the order-list limit).
FUTU_REMARK_LOOKUP_REFRESH = env_bool("FUTU_REMARK_LOOKUP_REFRESH", False)
# Allow US orders to fill in pre-market and after-hours sessions.
FUTU_FILL_OUTSIDE_RTH = env_bool("FUTU_FILL_OUTSIDE_RTH", False)
# The `session` argument of every US `place_order` (futu Session: RTH regular hours, ETH
# regular + pre/after hours, ALL including overnight, OVERNIGHT only).
FUTU_US_SESSION = env_str("FUTU_US_SESSION", "RTH").upper()
# Which sessions Bronco trades, per market: comma-separated names from
# trading.market_calendar (US: REGULAR, PRE_MARKET, AFTER_HOURS, OVERNIGHT; HK: REGULAR).
# Empty: the regular session, plus US pre-market and after-hours with FUTU_FILL_OUTSIDE_RTH.
# Orders of a market outside these sessions wait in the book for the next one. Keep
# FUTU_US_SESSION wide enough for the US sessions named here (ETH for pre/after, ALL with
# overnight).
TRADING_SESSIONS = {
    "US": env_str("TRADING_SESSIONS_US", ""),
    "HK": env_str("TRADING_SESSIONS_HK", ""),
}
# A cycle whose quote found the market closed asks again only when the calendar's next
# traded session opens (trading.market_wait); when the calendar says a session is under way
# but OpenD said closed, this many seconds later.
TRADING_MARKET_RECHECK_SECONDS = env_float("TRADING_MARKET_RECHECK_SECONDS", 60.0)

# --- Which broker --------------------------------------------------------------------
# Dotted path to a callable (a factory function or a class) taking the keyword
# `on_order_update` and returning this process's broker (`trading.broker.Broker`). Tests
# may point it at the in-memory fake (`tests.fakes.broker.FakeBroker`); production refuses
# anything but the Futu adapter.
DEFAULT_TRADING_BROKER_FACTORY = "trading.futu.futu_broker_from_settings"
TRADING_BROKER_FACTORY = env_str("TRADING_BROKER_FACTORY", DEFAULT_TRADING_BROKER_FACTORY)

# --- Futu's documented request limits, per account, per window -------------------------
# place_order: 15 per 30 s and >= 0.02 s apart; modify/cancel: 20 per 30 s and >= 0.04 s
# apart; order list (refresh), history orders, funds (refresh), positions (refresh): 10 per
# 30 s; market snapshot: 60 per 30 s. The window is one setting so tests can shrink it,
# the same in the limiter and the simulator.
FUTU_RATE_WINDOW_SECONDS = env_float("FUTU_RATE_WINDOW_SECONDS", 30.0)
FUTU_RATE_LIMITS = {
    "place": (
        env_int("FUTU_RATE_PLACE_PER_WINDOW", 15),
        env_float("FUTU_RATE_PLACE_MIN_INTERVAL", 0.02),
    ),
    "modify": (
        env_int("FUTU_RATE_MODIFY_PER_WINDOW", 20),
        env_float("FUTU_RATE_MODIFY_MIN_INTERVAL", 0.04),
    ),
    "order_list": (env_int("FUTU_RATE_ORDER_LIST_PER_WINDOW", 10), 0.0),
    "history_order_list": (env_int("FUTU_RATE_HISTORY_ORDER_LIST_PER_WINDOW", 10), 0.0),
    "funds": (env_int("FUTU_RATE_FUNDS_PER_WINDOW", 10), 0.0),
    "positions": (env_int("FUTU_RATE_POSITIONS_PER_WINDOW", 10), 0.0),
    "history_deal_list": (env_int("FUTU_RATE_HISTORY_DEAL_LIST_PER_WINDOW", 10), 0.0),
    "order_fee": (env_int("FUTU_RATE_ORDER_FEE_PER_WINDOW", 10), 0.0),
    "trading_info": (env_int("FUTU_RATE_TRADING_INFO_PER_WINDOW", 10), 0.0),
    "snapshot": (env_int("FUTU_RATE_SNAPSHOT_PER_WINDOW", 60), 0.0),
}
# Safety margins so clock and network jitter between our grant and Futu's count never
# push a request over: the limiter's window and spacing are this much wider than Futu's.
FUTU_RATE_WINDOW_MARGIN_SECONDS = env_float("FUTU_RATE_WINDOW_MARGIN_SECONDS", 0.25)
FUTU_RATE_INTERVAL_MARGIN_SECONDS = env_float("FUTU_RATE_INTERVAL_MARGIN_SECONDS", 0.03)
# A wait up to this long happens in place; a longer one raises RateLimited(retry_after).
FUTU_RATE_MAX_INLINE_WAIT_SECONDS = env_float("FUTU_RATE_MAX_INLINE_WAIT_SECONDS", 0.5)
FUTU_RATE_KEY_PREFIX = env_str("FUTU_RATE_KEY_PREFIX", "bronco:futu-rate")

# --- Pricing ----------------------------------------------------------------------------
# Limit price = quote x (1 +/- slippage), rounded to the snapshot's price spread.
TRADING_SLIPPAGE = env_decimal("TRADING_SLIPPAGE", "0.005")
# Futu's `adjust_limit` on every order (a fraction of the price; 0 = off): OpenD moves a
# limit that is not a valid price step to the nearest valid one, up for a BUY and down for a
# SELL, by at most this much. A limit rounded on the snapshot's spread is off the grid only
# where it crossed into a coarser band, and then moves by less than one step of that band:
# at most 0.1% of the price above HK$0.50, about 1% at HK$0.50 and at US$1 (sub-penny rule),
# 1.6% at HK$0.25; 2% covers them all, and the move is never more than that one step.
FUTU_PRICE_ADJUST_LIMIT = env_decimal("FUTU_PRICE_ADJUST_LIMIT", "0.02")
# Market prefix of a Futu code -> its trading currency.
TRADING_MARKET_CURRENCY = {"US": "USD", "HK": "HKD"}
# Units of the market currency one USDT buys (USDT -> USD 1:1 by default).
TRADING_FX_RATES = {
    "USD": env_decimal("TRADING_FX_USD_PER_USDT", "1"),
    "HKD": env_decimal("TRADING_FX_HKD_PER_USDT", "7.80"),
}
# Broker fees per market: commission rate on the notional and a minimum per order, in the
# market currency. fee = max(notional x rate, minimum), rounded up to the cent.
TRADING_FEES = {
    "US": (
        env_decimal("TRADING_FEE_RATE_US", "0.0005"),
        env_decimal("TRADING_FEE_MIN_US", "0.99"),
    ),
    "HK": (
        env_decimal("TRADING_FEE_RATE_HK", "0.0003"),
        env_decimal("TRADING_FEE_MIN_HK", "3.00"),
    ),
}

# --- Broker-order records (trading.order_records) ----------------------------------------
# How long one placement attempt may take (connect + Futu's answer). Another worker retries
# the client id only after it; keep it above FUTU_CONNECT_TIMEOUT_SECONDS plus the SDK's
# request timeout, or a slow attempt and its retry could both place.
TRADING_PLACE_ATTEMPT_LEASE_SECONDS = env_float("TRADING_PLACE_ATTEMPT_LEASE_SECONDS", 30.0)
# A cancel Futu acknowledged but that did not take is sent again after this grace period,
# doubling each time, at most TRADING_CANCEL_MAX_REQUESTS times; then an operator alert.
TRADING_CANCEL_GRACE_SECONDS = env_float("TRADING_CANCEL_GRACE_SECONDS", 5.0)
TRADING_CANCEL_MAX_REQUESTS = env_int("TRADING_CANCEL_MAX_REQUESTS", 5)
# How long after an order is final its fills are still watched (deals cancelled or
# corrected by the exchange come within the trading day; a day covers it in any zone).
TRADING_FILL_WATCH_SECONDS = env_float("TRADING_FILL_WATCH_SECONDS", 86400.0)
# Beat runs the watch (trading.tasks.broker_orders_watch) this often. A watched order whose
# final status is known and that was placed today costs no rate-limited request; any other
# takes one history request (orders or deals, each 10 per 30 s at Futu), at most
# TRADING_WATCH_HISTORY_PER_RUN per run: 2 per 30 s is a fifth of the history budget, and
# the other four fifths stay with the netting cycles (an order that finished unseen).
TRADING_WATCH_INTERVAL_SECONDS = env_int("TRADING_WATCH_INTERVAL_SECONDS", 30)
TRADING_WATCH_HISTORY_PER_RUN = env_int("TRADING_WATCH_HISTORY_PER_RUN", 2)
# Check the account's buying power (acctradinginfo_query) before every buy; when short the
# order waits this long (operator alert open) instead of being rejected and refunded.
TRADING_CHECK_BUYING_POWER = env_bool("TRADING_CHECK_BUYING_POWER", True)
TRADING_BUYING_POWER_RETRY_SECONDS = env_float("TRADING_BUYING_POWER_RETRY_SECONDS", 60.0)
# A broker push (order update or deal) is handled by the first process that claims it in
# Redis; the claim lasts this long (trading.pushes).
TRADING_PUSH_ONCE_SECONDS = env_int("TRADING_PUSH_ONCE_SECONDS", 3600)
TRADING_PUSH_KEY_PREFIX = env_str("TRADING_PUSH_KEY_PREFIX", "bronco:broker-push")
# Who got a broker order's fill, for a fill correction's compensation case: a dotted path
# to a callable (client_id=...) -> trading.compensation.FillAllocations | None (trading never
# imports the order lifecycle, which owns the allocations).
TRADING_FILL_ALLOCATIONS = env_str(
    "TRADING_FILL_ALLOCATIONS", "orders.selectors.broker_fill_allocations"
)
