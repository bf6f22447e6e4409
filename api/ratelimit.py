"""Rate limit of the public API per client IP, in Redis so every web process (each gunicorn
worker, each machine) counts against the same number.

A fixed window: the first request of a client in a window creates the key
`<API_RATE_LIMIT_KEY_PREFIX>:<ip>` with the window as its expiry (one INCR and one EXPIRE in
one transaction); past API_RATE_LIMIT_REQUESTS in the window the answer is 429 with
Retry-After (whole seconds until the key expires). Applies to /api/ only. When Redis does
not answer the request is let through (logged): a limiter outage never takes the API down.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

_clients: dict[str, redis.Redis] = {}


def shared_redis(url: str) -> redis.Redis:
    """One client (with its connection pool) per URL per process, short timeouts: the API
    answers without Redis rather than hang on it."""
    client = _clients.get(url)
    if client is None:
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        _clients[url] = client
    return client


def client_ip(request: HttpRequest) -> str:
    """REMOTE_ADDR, or the first address of the header API_CLIENT_IP_HEADER names (set it only
    behind a proxy that writes that header)."""
    header = settings.API_CLIENT_IP_HEADER
    if header:
        forwarded = request.META.get(header, "")
        first = forwarded.split(",", 1)[0].strip()
        if first:
            return first
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def rate_limit_hit(ip: str) -> float | None:
    """Count one request of `ip`. None when it may go on; else the seconds until its window
    ends (the Retry-After)."""
    limit = settings.API_RATE_LIMIT_REQUESTS
    if limit <= 0:
        return None
    window = settings.API_RATE_LIMIT_WINDOW_SECONDS
    key = f"{settings.API_RATE_LIMIT_KEY_PREFIX}:{ip}"
    client = shared_redis(settings.API_RATE_LIMIT_REDIS_URL or settings.REDIS_URL)
    try:
        pipe = client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, window, nx=True)
        pipe.pttl(key)
        count, _, ttl_ms = pipe.execute()
    except redis.RedisError as exc:
        logger.warning("API rate limit not checked (Redis: %s)", exc)
        return None
    if count <= limit:
        return None
    return max(ttl_ms, 0) / 1000 if ttl_ms and ttl_ms > 0 else float(window)


class RateLimitMiddleware:
    """429 + Retry-After for a client over its budget on /api/ (see the module doc)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/api/") and request.method != "OPTIONS":
            retry_after = rate_limit_hit(client_ip(request))
            if retry_after is not None:
                seconds = max(1, math.ceil(retry_after))
                response = JsonResponse(
                    {
                        "error": "rate_limited",
                        "detail": f"more than {settings.API_RATE_LIMIT_REQUESTS} requests in "
                        f"{settings.API_RATE_LIMIT_WINDOW_SECONDS} s from this address; "
                        f"retry after {seconds} s",
                    },
                    status=429,
                )
                response["Retry-After"] = str(seconds)
                return response
        return self.get_response(request)
