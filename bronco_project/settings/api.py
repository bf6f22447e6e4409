"""Public API settings (the `api` app: /api/v1/ and the /track/ status page). Star-imported at
the end of base.py; every value comes from the environment."""

from corsheaders.defaults import default_headers

from bronco_project.settings.env import env_float, env_int, env_list, env_str

# Rate limit per client IP, shared by every web process through Redis (fixed window): at most
# API_RATE_LIMIT_REQUESTS requests per API_RATE_LIMIT_WINDOW_SECONDS, then 429 with
# Retry-After. 0 requests: no limit. Empty URL: REDIS_URL.
API_RATE_LIMIT_REQUESTS = env_int("API_RATE_LIMIT_REQUESTS", 120)
API_RATE_LIMIT_WINDOW_SECONDS = env_int("API_RATE_LIMIT_WINDOW_SECONDS", 60)
API_RATE_LIMIT_REDIS_URL = env_str("API_RATE_LIMIT_REDIS_URL", "")
API_RATE_LIMIT_KEY_PREFIX = env_str("API_RATE_LIMIT_KEY_PREFIX", "bronco:api-rate")
# The client's IP is REMOTE_ADDR unless this names a header a trusted proxy sets (e.g.
# HTTP_X_FORWARDED_FOR: its first address is taken). Never set it without such a proxy in
# front, or a client picks its own IP and escapes the limit.
API_CLIENT_IP_HEADER = env_str("API_CLIENT_IP_HEADER", "")

# A quote is read from the broker at most once per symbol per this many seconds (kept in
# Redis for every web process), so the public API never spends the broker's snapshot budget
# (Futu: 60 per 30 s); `quote` answers that the estimate holds this long.
API_QUOTE_TTL_SECONDS = env_float("API_QUOTE_TTL_SECONDS", 5.0)
API_QUOTE_KEY_PREFIX = env_str("API_QUOTE_KEY_PREFIX", "bronco:api-quote")
# A broker that did not answer is not asked again by any web process for this many seconds
# (each request would otherwise wait out its own connect timeout, 5 s against a silent
# OpenD): quote reads answer 503 with Retry-After at once, the symbols list without quotes.
API_BROKER_DOWN_SECONDS = env_float("API_BROKER_DOWN_SECONDS", 5.0)

# Orders per page of `orders?address=` (a client may ask for fewer, never more).
API_PAGE_SIZE = env_int("API_PAGE_SIZE", 20)
API_PAGE_SIZE_MAX = env_int("API_PAGE_SIZE_MAX", 100)

# The status page polls the API this often.
API_TRACK_POLL_SECONDS = env_float("API_TRACK_POLL_SECONDS", 5.0)

# CORS (django-cors-headers) for the front ends' origins, on /api/ only. Empty: none.
CORS_ALLOWED_ORIGINS = env_list("API_CORS_ALLOWED_ORIGINS", "")
CORS_URLS_REGEX = r"^/api/.*$"
CORS_ALLOW_METHODS = ("GET", "HEAD", "OPTIONS")
CORS_EXPOSE_HEADERS = ("ETag", "Retry-After")
# A wallet polling cheaply sends If-None-Match itself: a cross-origin request with it needs
# the header allowed in the preflight.
CORS_ALLOW_HEADERS = (*default_headers, "if-none-match")
