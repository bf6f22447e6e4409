"""A request limiter in Redis, shared by every worker and process, per broker account.

Each kind of request (place, modify, order_list, ...) has a budget of N requests per sliding
window and a minimum spacing between two requests. One Lua script decides atomically, on
Redis's own clock, so processes on different machines agree. A caller either gets a slot
(0.0) or learns how long to wait; it never exceeds the budget, and nothing is lost when it
has to wait.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis
from django.conf import settings

from core.metrics import count_rate_limit_wait
from trading.exceptions import RateLimited

# KEYS[1]: sorted set of grant times (microseconds), KEYS[2]: last grant time.
# ARGV: limit, window_us, interval_us, member. Returns wait in microseconds (0 = granted).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local interval = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local wait = 0
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  wait = tonumber(oldest[2]) + window - now
end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if interval > 0 and last + interval - now > wait then
  wait = last + interval - now
end
if wait > 0 then
  return wait
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('SET', KEYS[2], now)
local ttl = math.ceil((window + interval) / 1000) + 1000
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 0
"""


@dataclass(frozen=True)
class Budget:
    limit: int
    window: float
    min_interval: float


class RedisRateLimiter:
    """Sliding-window limiter for one broker account (`account` names it in the keys)."""

    def __init__(
        self,
        *,
        account: str,
        budgets: dict[str, Budget],
        client: redis.Redis | None = None,
        key_prefix: str | None = None,
        max_inline_wait: float | None = None,
    ) -> None:
        self.account = account
        self.budgets = budgets
        self.client = client or redis.Redis.from_url(settings.REDIS_URL)
        self.key_prefix = key_prefix or settings.FUTU_RATE_KEY_PREFIX
        self.max_inline_wait = (
            settings.FUTU_RATE_MAX_INLINE_WAIT_SECONDS
            if max_inline_wait is None
            else max_inline_wait
        )
        self._script = self.client.register_script(_ACQUIRE)

    @classmethod
    def from_settings(cls, *, account: str) -> RedisRateLimiter:
        window = settings.FUTU_RATE_WINDOW_SECONDS + settings.FUTU_RATE_WINDOW_MARGIN_SECONDS
        budgets = {
            kind: Budget(
                limit=limit,
                window=window,
                min_interval=(interval + settings.FUTU_RATE_INTERVAL_MARGIN_SECONDS)
                if interval
                else 0.0,
            )
            for kind, (limit, interval) in settings.FUTU_RATE_LIMITS.items()
        }
        return cls(account=account, budgets=budgets)

    def _keys(self, kind: str) -> list[str]:
        base = f"{self.key_prefix}:{self.account}:{kind}"
        return [f"{base}:grants", f"{base}:last"]

    def try_acquire(self, kind: str) -> float:
        """Take a slot now if there is one: 0.0, else the seconds to wait for one."""
        budget = self.budgets[kind]
        wait_us = self._script(
            keys=self._keys(kind),
            args=[
                budget.limit,
                int(budget.window * 1_000_000),
                int(budget.min_interval * 1_000_000),
                uuid.uuid4().hex,
            ],
        )
        return int(wait_us) / 1_000_000

    def acquire(self, kind: str, *, max_wait: float | None = None) -> None:
        """Take a slot, waiting in place while the wait is at most `max_wait` seconds;
        otherwise raise RateLimited(retry_after) so the caller re-schedules the work."""
        limit = self.max_inline_wait if max_wait is None else max_wait
        deadline = time.monotonic() + limit
        while True:
            wait = self.try_acquire(kind)
            if wait <= 0:
                return
            count_rate_limit_wait(bucket=kind, seconds=wait)
            if time.monotonic() + wait > deadline:
                raise RateLimited(wait, f"{kind} budget of account {self.account} is used up")
            time.sleep(wait)

    def reset(self) -> None:
        """Forget every grant of this account (tests and operator recovery only)."""
        for kind in self.budgets:
            self.client.delete(*self._keys(kind))
