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


# Cached for a code the broker had no price for: it is not asked again within the TTL.
_NO_PRICE = b"none"


def _cached(client: redis.Redis, code: str) -> CachedQuote | bytes | None:
    """The cached quote, _NO_PRICE, or None when nothing is cached."""
    try:
        raw = client.get(_key(code))
    except redis.RedisError as exc:
        logger.warning("quote cache not read (Redis: %s)", exc)
        return None
    if raw is None or raw == _NO_PRICE:
        return raw
    return _load(raw)


def _fetch(client: redis.Redis, codes: list[str]) -> dict[str, CachedQuote]:
    """One snapshot request for `codes` (the broker takes up to 400 per request), cached; a
    code the broker has no price for is cached as such. OpenD refuses a whole snapshot
    request when one of its codes is unknown or lacks quote rights (NoQuote), so a refused
    batch is asked again one code a request: one bad code costs only its own price, never
    the others'. A broker that did not answer is remembered for API_BROKER_DOWN_SECONDS
    (in Redis, for every web process): until then it is not asked. Raises RateLimited or
    BrokerUnavailable."""
    down_for = _broker_down_for(client)
    if down_for:
        raise BrokerUnavailable(f"the broker did not answer; asked again in {down_for:.1f} s")
    try:
        fresh = broker.broker_quotes(codes=codes)
    except BrokerUnavailable:
        _broker_down_put(client)
        raise
    except NoQuote as exc:
        fresh = {}
        if len(codes) > 1:
            logger.warning("snapshot of %s refused (%s): asking one code a request", codes, exc)
            for code in codes:
                try:
                    fresh.update(broker.broker_quotes(codes=[code]))
                except NoQuote:
                    continue
    now = time.time()
    out = {code: CachedQuote(quote, now) for code, quote in fresh.items()}
    for code in codes:
        _cache_put(client, code, _dump(out[code]) if code in out else _NO_PRICE)
    return out


def cached_quote(code: str) -> CachedQuote:
    """The quote of Futu `code` taken at most API_QUOTE_TTL_SECONDS ago: from the cache, else
    from one snapshot request for every listed symbol at once (so the API spends at most one
    request of the broker's snapshot budget per TTL, whichever symbols are asked), cached.
    Raises QuoteUnavailable when the broker has no price for it or cannot answer."""
    client = _redis()
    found = _cached(client, code)
    if found == _NO_PRICE:
        raise QuoteUnavailable(f"the broker has no price for {code} now")
    if isinstance(found, CachedQuote):
        return found
    codes = sorted({code, *settings.BRONCO_SYMBOLS.values()})
    try:
        fetched = _fetch(client, codes)
    except RateLimited as exc:
        raise QuoteUnavailable(
            "the broker's quote budget is spent", retry_after=exc.retry_after
        ) from exc
    except BrokerUnavailable as exc:
        retry = _broker_down_for(client) or settings.API_BROKER_DOWN_SECONDS
        raise QuoteUnavailable("the broker does not answer now", retry_after=retry) from exc
    if code not in fetched:
        raise QuoteUnavailable(f"the broker has no price for {code} now")
    return fetched[code]


def _broker_down_key() -> str:
    return f"{settings.API_QUOTE_KEY_PREFIX}:broker-down"


def _broker_down_for(client: redis.Redis) -> float:
    """Seconds the broker is still taken as down (0: ask it)."""
    try:
        ttl_ms = client.pttl(_broker_down_key())
    except redis.RedisError as exc:
        logger.warning("broker-down mark not read (Redis: %s)", exc)
        return 0.0
    return ttl_ms / 1000 if ttl_ms and ttl_ms > 0 else 0.0


def _broker_down_put(client: redis.Redis) -> None:
    try:
        client.set(
            _broker_down_key(), b"1", px=max(1, int(settings.API_BROKER_DOWN_SECONDS * 1000))
        )
    except redis.RedisError as exc:
        logger.warning("broker-down mark not written (Redis: %s)", exc)


def _cache_put(client: redis.Redis, code: str, value: str | bytes) -> None:
    try:
        client.set(_key(code), value, px=max(1, int(settings.API_QUOTE_TTL_SECONDS * 1000)))
    except redis.RedisError as exc:
        logger.warning("quote cache not written (Redis: %s)", exc)


def limit_price(quote: Quote, *, side: str) -> Decimal:
    """The limit a cycle opened now would send for a net buy (`side` BUY: quote x (1 +
    TRADING_SLIPPAGE), rounded up to the tick) or a net sell (down to the tick)."""
    if side == "BUY":
        return pricing.buy_limit_price(quote)
    return pricing.sell_limit_price(quote)


def cached_quotes(codes: list[str]) -> dict[str, CachedQuote]:
    """Quotes of many codes: the cached ones, and the rest from one snapshot request (then
    cached). A code the broker cannot price now is left out; never raises for the broker (the
    symbols list still answers when the broker does not)."""
    client = _redis()
    cached = {code: _cached(client, code) for code in codes}
    out = {code: c for code, c in cached.items() if isinstance(c, CachedQuote)}
    missing = [code for code, c in cached.items() if c is None]
    if missing:
        try:
            out.update(_fetch(client, missing))
        except (RateLimited, BrokerUnavailable) as exc:
            logger.info("symbols without fresh quotes: %s", exc)
    return out
