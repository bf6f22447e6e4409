"""Place slots: when each symbol's next cycle may open, so that the cycles of all symbols
spend Futu's place budget evenly and in turn.

Futu allows 15 place requests per 30 s per account (settings FUTU_RATE_LIMITS["place"],
https://openapi.futunn.com/futu-api-doc/en/intro/authority.html). A sliding window spent in
bursts makes cycles wait up to a whole window; instead every cycle open reserves the next
free slot, one `place_slot_spacing()` after the previous one, on Redis's own clock (one Lua
script, so every worker agrees). Slots go out in the order they are asked for: a symbol
asks when its first order arrives in an empty book (and the scheduler's beat asks for the
symbols waiting, the longest waiting first), so the symbol that waited longest trades
first and none starves. Slots spaced this way never exceed the budget in any window; the
broker's own limiter (`trading.ratelimit`) still guards every request.
"""

from __future__ import annotations

import redis
from django.conf import settings

# KEYS[1]: the last slot reserved (microseconds on Redis's clock). ARGV: spacing_us, ttl_ms.
# Returns how many microseconds from now the reserved slot is (0: now).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = last + tonumber(ARGV[1])
if slot < now then
  slot = now
end
redis.call('SET', KEYS[1], string.format('%d', slot), 'PX', tonumber(ARGV[2]))
return slot - now
"""

SLOT_KEY = "bronco:cycle-place-slot"


def place_slot_spacing() -> float:
    """Seconds between two cycles' place requests: Futu's window (with the limiter's
    margin) over its place budget, about 2.02 s for 15 per 30 s."""
    window = settings.FUTU_RATE_WINDOW_SECONDS + settings.FUTU_RATE_WINDOW_MARGIN_SECONDS
    return window / max(settings.FUTU_RATE_LIMITS["place"][0], 1)


def place_slot_reserve(client: redis.Redis) -> float:
    """Reserve the next place slot; returns the seconds until it (0.0: now)."""
    spacing_us = int(place_slot_spacing() * 1_000_000)
    ttl_ms = int(settings.FUTU_RATE_WINDOW_SECONDS * 2000) + 60_000
    waited = client.eval(_RESERVE, 1, SLOT_KEY, spacing_us, ttl_ms)
    return int(waited) / 1_000_000
