"""Quotes for the public API: the broker's snapshot (trading's QuoteSource, through
`trading.services.broker_quote`), kept in Redis for API_QUOTE_TTL_SECONDS so all web
processes together ask the broker at most once per symbol per TTL and never spend the
snapshot budget the netting cycles need (Futu: 60 snapshot requests per 30 s per account).

Nothing here writes Bronco's state: only the cache entry.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from decimal import Decimal

import redis
from django.conf import settings

from api.ratelimit import shared_redis
from trading import pricing
from trading import services as broker
from trading.broker import Quote
from trading.exceptions import BrokerUnavailable, NoQuote, RateLimited

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedQuote:
    """A broker quote and when it was taken (`at`, Unix seconds)."""

    quote: Quote
    at: float

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.at)


class QuoteUnavailable(Exception):
    """The broker cannot give a quote now; `retry_after` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _key(code: str) -> str:
    return f"{settings.API_QUOTE_KEY_PREFIX}:{code}"


def _redis() -> redis.Redis:
    return shared_redis(settings.REDIS_URL)


def _dump(cached: CachedQuote) -> str:
    fields = {k: (str(v) if isinstance(v, Decimal) else v) for k, v in asdict(cached.quote).items()}
    return json.dumps({"quote": fields, "at": cached.at})


def _load(raw: bytes) -> CachedQuote:
    data = json.loads(raw)
    q = data["quote"]
    for name in ("price", "tick_size", "bid", "ask"):
        if q.get(name) is not None:
            q[name] = Decimal(q[name])
    return CachedQuote(Quote(**q), float(data["at"]))


def cached_quote(code: str, *, fetch: bool = True) -> CachedQuote | None:
    """The quote of Futu `code` taken at most API_QUOTE_TTL_SECONDS ago: from the cache, else
    from the broker (when `fetch`) and cached. None when not cached and not fetched. Raises
    QuoteUnavailable when the broker has no price or cannot answer."""
    key = _key(code)
    client = _redis()
    try:
        raw = client.get(key)
    except redis.RedisError as exc:
        logger.warning("quote cache not read (Redis: %s)", exc)
        raw = None
    if raw is not None:
        return _load(raw)
    if not fetch:
        return None
    try:
        quote = broker.broker_quote(code=code)
    except NoQuote as exc:
        raise QuoteUnavailable(f"no price for {code}: {exc}") from exc
    except RateLimited as exc:
        raise QuoteUnavailable(
            "the broker's quote budget is spent", retry_after=exc.retry_after
        ) from exc
    except BrokerUnavailable as exc:
        raise QuoteUnavailable("the broker does not answer now") from exc
    cached = CachedQuote(quote, time.time())
    _cache_put(client, cached)
    return cached


def _cache_put(client: redis.Redis, cached: CachedQuote) -> None:
    try:
        client.set(
            _key(cached.quote.code),
            _dump(cached),
            px=max(1, int(settings.API_QUOTE_TTL_SECONDS * 1000)),
        )
    except redis.RedisError as exc:
        logger.warning("quote cache not written (Redis: %s)", exc)


def limit_price(quote: Quote, *, side: str) -> Decimal:
    """The limit a cycle opened now would send for a net buy (`side` BUY: quote x (1 +
    TRADING_SLIPPAGE), rounded up to the tick) or a net sell (down to the tick)."""
    if side == "BUY":
        return pricing.buy_limit_price(quote)
    return pricing.sell_limit_price(quote)


def cached_quotes(codes: list[str]) -> dict[str, CachedQuote]:
    """Quotes of many codes: the cached ones, and the rest from one broker snapshot request
    (then cached). A code the broker cannot price now is left out; never raises for the
    broker (the symbols list still answers when the broker does not)."""
    out: dict[str, CachedQuote] = {}
    for code in codes:
        found = cached_quote(code, fetch=False)
        if found is not None:
            out[code] = found
    missing = [c for c in codes if c not in out]
    if not missing:
        return out
    try:
        fresh = broker.broker_quotes(codes=missing)
    except (RateLimited, BrokerUnavailable) as exc:
        logger.info("symbols without fresh quotes: %s", exc)
        return out
    now = time.time()
    client = _redis()
    for code, quote in fresh.items():
        out[code] = CachedQuote(quote, now)
        _cache_put(client, out[code])
    return out
