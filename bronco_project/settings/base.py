"""Settings shared by every environment. Each value comes from the environment, with a
default that works on a developer machine (PostgreSQL and Redis on loopback)."""

from pathlib import Path

import dj_database_url

from bronco_project.settings.broker import celery_broker_settings
from bronco_project.settings.env import (
    env_bool,
    env_decimal,
    env_float,
    env_int,
    env_list,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent.parent

BRONCO_ENV = env_str("BRONCO_ENV", "local")
DEV_SECRET_KEY = "dev-only-insecure-key-never-use-in-production"
SECRET_KEY = env_str("DJANGO_SECRET_KEY", DEV_SECRET_KEY)
DEBUG = env_bool("DJANGO_DEBUG", True)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")

INSTALLED_APPS = [
    "ops.admin_apps.BroncoAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "core",
    "orders",
    "chain",
    "trading",
    "refunds",
    "ops",
    "ninja",
    "corsheaders",
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (admin, API docs, the /track/ page) from the web process itself, with
    # DEBUG off too: nothing else serves them (runserver does only with DEBUG on).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "api.ratelimit.RateLimitMiddleware",
    "api.middleware.ApiMethodsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "bronco_project.urls"
WSGI_APPLICATION = "bronco_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "bronco_project" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DEV_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/bronco"
DATABASE_URL = env_str("DATABASE_URL", DEV_DATABASE_URL)
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# Served by WhiteNoise from the apps' static folders as they are (no collectstatic step to
# forget). For a CDN or proxy, set STATIC_ROOT and run `manage.py collectstatic`.
STATIC_ROOT = env_str("STATIC_ROOT", "") or None
WHITENOISE_USE_FINDERS = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")

# --- Celery -----------------------------------------------------------------------------
# Redis (the default) or RabbitMQ (amqp://: quorum queues, publisher confirms): each one's
# queues and options come from bronco_project.settings.broker, which says what each loses on
# its own restart. Redis stays for locks, rate limits, metrics and results either way.
CELERY_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 3600)
globals().update(
    celery_broker_settings(
        env_str("CELERY_BROKER_URL", REDIS_URL), visibility_timeout=CELERY_VISIBILITY_TIMEOUT
    )
)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 60)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 90)
# Queues by the resource a task waits on (core.tasks); each task names its queue on its
# decorator, and this one router reads it back, so there is no table of names to drift.
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = ("core.tasks.route_task",)
# django-celery-beat's database scheduler, synced from CELERY_BEAT_SCHEDULE (end of this
# file) every time beat starts: an interval setting takes effect at the next start.
CELERY_BEAT_SCHEDULER = "core.beat:BroncoScheduler"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's consumer with a guard that keeps a worker alive through its Redis broker's restart
# (core.worker says which failing path of the pinned celery/kombu it guards).
CELERY_WORKER_CONSUMER = "core.worker:BroncoConsumer"

# --- Flower -----------------------------------------------------------------------------
FLOWER_ADDRESS = env_str("FLOWER_ADDRESS", "127.0.0.1")
FLOWER_PORT = env_int("FLOWER_PORT", 5555)
FLOWER_BASIC_AUTH = env_str("FLOWER_BASIC_AUTH", "")

# --- Listing ----------------------------------------------------------------------------
# Vault symbol -> Futu stock code. The vault lists these symbols; orders name them.
BRONCO_SYMBOLS = dict(
    item.split(":", 1)
    for item in env_list("BRONCO_SYMBOLS", "AAPL:US.AAPL,TSLA:US.TSLA,NVDA:US.NVDA,TCEHY:HK.00700")
)

# --- Orders -----------------------------------------------------------------------------
ORDER_DEADLINE_SECONDS = env_int("ORDER_DEADLINE_SECONDS", 300)
# An order's own lifetime: one waiting for its market (closed, lunch break, holiday) stays in
# the book until its expiry, then what is left is refunded. An order that names no expiry
# (the vault emits no DepositTerms for it) lives the vault's `defaultExpiry()` (read from the
# contract, 7 days as deployed) less ORDER_EXPIRY_MARGIN_SECONDS after it arrives: the vault's
# counts from the block, and Bronco must never trade an order after it, when the vault would
# take nothing but a full refund. ORDER_DEFAULT_EXPIRY_SECONDS serves only when the vault
# cannot be read. ORDER_MAX_EXPIRY_SECONDS is the longest lifetime of any order.
ORDER_EXPIRY_MARGIN_SECONDS = env_int("ORDER_EXPIRY_MARGIN_SECONDS", 3600)
ORDER_DEFAULT_EXPIRY_SECONDS = env_int("ORDER_DEFAULT_EXPIRY_SECONDS", 7 * 24 * 3600 - 3600)
ORDER_MAX_EXPIRY_SECONDS = env_int("ORDER_MAX_EXPIRY_SECONDS", 30 * 24 * 3600)
ORDER_POLL_INTERVAL_SECONDS = env_float("ORDER_POLL_INTERVAL_SECONDS", 1.0)
ORDER_RETRY_SECONDS = env_float("ORDER_RETRY_SECONDS", 5.0)
ORDER_SETTLE_CHECK_SECONDS = env_float("ORDER_SETTLE_CHECK_SECONDS", 1.0)
# How long a settlement the vault refuses with UnknownDeposit / UnknownRedeem (a lagging node,
# a reorg between its revert and the re-mined blocks) is retried before the order is held
# with a critical alert (orders.pipeline.settle._request_may_return).
ORDER_REQUEST_UNKNOWN_GRACE_SECONDS = env_int("ORDER_REQUEST_UNKNOWN_GRACE_SECONDS", 600)
# A deposit below this (USDT) is refused and refunded.
ORDER_MIN_USDT = env_decimal("ORDER_MIN_USDT", "1")
# An order's live pipeline run renews a lease at every step (the countdown to its next step
# plus this), and a heartbeat renews it every third of it while a step works: this covers
# the wait in its queue. Past it the run is dead (its worker was killed, its task lost) and
# the compensation scan takes the order over (orders.runs).
ORDER_RUN_LEASE_SECONDS = env_int("ORDER_RUN_LEASE_SECONDS", 8)
# A run or cycle step a live worker holds (waiting out its countdown there, prefetched, or
# working) has its lease renewed to now + this by heartbeats (the worker's main process for
# what it holds, the pool child for what it works on), every quarter of it: a worker killed
# with kill -9 frees what it held this long after its last beat, whatever the countdowns.
ORDER_RUN_HELD_LEASE_SECONDS = env_int("ORDER_RUN_HELD_LEASE_SECONDS", 4)
# The scan runs this often: it re-drives dead runs and, when a Redis broker restarted or was
# wiped, every run and cycle at once. Cheap: one indexed query, one Redis round trip.
COMPENSATION_SCAN_SECONDS = env_int("COMPENSATION_SCAN_SECONDS", 2)
# Re-drives never fill a stage's queue past this many messages (a run whose lease ran out
# while its task waits behind a deep queue is not multiplied).
ORDER_REDRIVE_QUEUE_MAX = env_int("ORDER_REDRIVE_QUEUE_MAX", 500)
# An order whose work a fault lost has at least this long left before its deadline
# (orders.runs.orders_deadline_extend): a fault's time never turns into a refund.
ORDER_FAULT_DEADLINE_GRACE_SECONDS = env_int("ORDER_FAULT_DEADLINE_GRACE_SECONDS", 60)
# A deadline ends an order that could not be quoted only when the broker really is out of
# reach; while the broker answers (the quote failed on a slow moment or Bronco's own request
# budget) the order waits for the next cycle, at most this long past its deadline (the hard
# deadline: orders.netting.cycles).
ORDER_DEADLINE_HARD_EXTRA_SECONDS = env_int("ORDER_DEADLINE_HARD_EXTRA_SECONDS", 300)

# --- Netting (orders.netting) -----------------------------------------------------------
# Bronco's published fee, the same for every participant of a cycle: a rate of the traded
# value plus a flat USDT amount once per order (with its first fill).
NETTING_FEE_RATE = env_decimal("NETTING_FEE_RATE", "0.001")
NETTING_FEE_FLAT_USDT = env_decimal("NETTING_FEE_FLAT_USDT", "0")
# House inventory per symbol is kept at most this many lots (whole lots above it are sold).
NETTING_INVENTORY_CAP_LOTS = env_int("NETTING_INVENTORY_CAP_LOTS", 2)
# ... or, when larger, this much USDT of it at the cycle's quote (whole lots; 0 = none): the
# house's market risk per symbol, which a buy-ahead needs room in.
NETTING_INVENTORY_CAP_USDT = env_decimal("NETTING_INVENTORY_CAP_USDT", "0")
# Buy-ahead (0 = off): a cycle at its place slot also tops the inventory up, within 90% of
# the cap, to what the symbol's net demand of this many seconds needs (its rate over the
# last NETTING_BUY_AHEAD_WINDOW_SECONDS of cycles), so the cycles until its next place slot
# are covered by inventory and trade without a place request (orders.netting.cycles).
NETTING_BUY_AHEAD_SECONDS = env_float("NETTING_BUY_AHEAD_SECONDS", 0.0)
NETTING_BUY_AHEAD_WINDOW_SECONDS = env_float("NETTING_BUY_AHEAD_WINDOW_SECONDS", 30.0)
# Covered cycles: at every scheduling beat, symbols whose book the house inventory covers
# trade from it at once in the regular session, on one snapshot request for all of them
# (no place request, no place slot to wait for); a book it does not cover waits for its
# place slot.
NETTING_COVERED_CYCLES = env_bool("NETTING_COVERED_CYCLES", True)
# Beat opens cycles this often (for every symbol with orders waiting, oldest first).
NETTING_CYCLE_SECONDS = env_int("NETTING_CYCLE_SECONDS", 1)
# Beat reads the broker's fee of allocated cycles this often (Bronco's cost, after the fact).
NETTING_FEES_RECORD_SECONDS = env_int("NETTING_FEES_RECORD_SECONDS", 15)
# A cycle's broker order still working after this long is cancelled; what filled is allocated.
NETTING_CYCLE_TIMEOUT_SECONDS = env_float("NETTING_CYCLE_TIMEOUT_SECONDS", 20.0)
# A cycle's place or poll that found OpenD out of reach is tried again after this long: a
# restarted OpenD is back within seconds, and each try while it is down is one refused
# connect (or FUTU_CONNECT_TIMEOUT_SECONDS against a silent host).
NETTING_BROKER_RETRY_SECONDS = env_float("NETTING_BROKER_RETRY_SECONDS", 1.0)
# An order whose expiry is this close joins no more cycles: what it would trade could not be
# settled before the vault's expiry, after which the vault takes only a full refund. It
# waits in the book and is refunded (returned) in full at its expiry.
NETTING_EXPIRY_GUARD_SECONDS = env_float("NETTING_EXPIRY_GUARD_SECONDS", 300.0)
# A cycle whose steps stop (a worker died) is re-driven by the scheduler after this long
# (a step that works renews it by heartbeat, orders.runs.run_heartbeat).
NETTING_CYCLE_LEASE_SECONDS = env_int("NETTING_CYCLE_LEASE_SECONDS", 8)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    # Every handler carries the redacting filter: a secret logged by mistake never lands.
    "filters": {"redact_secrets": {"()": "core.secrets.SecretRedactingFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# Each domain keeps its own settings in a module of its own.
from bronco_project.settings.api import *  # noqa: E402,F403
from bronco_project.settings.chain import *  # noqa: E402,F403
from bronco_project.settings.trading import *  # noqa: E402,F403

# --- Secrets: Vault KV v2 (core.secrets) -------------------------------------
# Unset VAULT_ADDR: secrets come from the environment (dev and tests only; production.py
# refuses to start without Vault).
VAULT_ADDR = env_str("VAULT_ADDR", "")
VAULT_TOKEN = env_str("VAULT_TOKEN", "")
VAULT_ROLE_ID = env_str("VAULT_ROLE_ID", "")
VAULT_SECRET_ID = env_str("VAULT_SECRET_ID", "")
VAULT_APPROLE_MOUNT = env_str("VAULT_APPROLE_MOUNT", "approle")
VAULT_KV_MOUNT = env_str("VAULT_KV_MOUNT", "secret")
# Secret NAME lives at <VAULT_KV_MOUNT>/<VAULT_SECRET_PATH>/NAME, in field VAULT_SECRET_FIELD.
VAULT_SECRET_PATH = env_str("VAULT_SECRET_PATH", "bronco")
VAULT_SECRET_FIELD = env_str("VAULT_SECRET_FIELD", "value")
VAULT_CACHE_TTL_SECONDS = env_float("VAULT_CACHE_TTL_SECONDS", 60.0)
VAULT_TIMEOUT_SECONDS = env_float("VAULT_TIMEOUT_SECONDS", 5.0)
# CA bundle for a Vault with a private CA; empty: the system's.
VAULT_CACERT = env_str("VAULT_CACERT", "")
# Credentials read from a file at every login instead (a Vault Agent sink, a mounted
# secret): a rotated token or secret id is picked up without a restart. Win over the above.
VAULT_TOKEN_FILE = env_str("VAULT_TOKEN_FILE", "")
VAULT_SECRET_ID_FILE = env_str("VAULT_SECRET_ID_FILE", "")
# A failed read is retried (fresh credentials, a new login) for up to this long before the
# caller gets SecretUnavailable and an alert opens; the last value read stays in use for
# VAULT_STALE_GRACE_SECONDS while Vault cannot be read (0: never serve a stale value).
VAULT_RETRY_SECONDS = env_float("VAULT_RETRY_SECONDS", 5.0)
VAULT_STALE_GRACE_SECONDS = env_float("VAULT_STALE_GRACE_SECONDS", 600.0)
# A renewable token is renewed once less than this fraction of its TTL is left.
VAULT_RENEW_FRACTION = env_float("VAULT_RENEW_FRACTION", 0.5)

# --- Alerts (core.alerts, ops.alert_rules) ----------------------------------------
ADMINS = [(addr, addr) for addr in env_list("DJANGO_ADMINS", "")]
SERVER_EMAIL = env_str("DJANGO_SERVER_EMAIL", "bronco@localhost")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
# Optional JSON webhook (Slack-style incoming hook, PagerDuty bridge, ...).
ALERT_WEBHOOK_URL = env_str("ALERT_WEBHOOK_URL", "")
ALERT_WEBHOOK_TIMEOUT_SECONDS = env_float("ALERT_WEBHOOK_TIMEOUT_SECONDS", 3.0)
# An alert still open is notified again after this long (0: only once).
ALERT_RENOTIFY_SECONDS = env_int("ALERT_RENOTIFY_SECONDS", 3600)
ALERT_RULES_INTERVAL_SECONDS = env_int("ALERT_RULES_INTERVAL_SECONDS", 60)
ALERT_ORDER_FAILURE_WINDOW_SECONDS = env_int("ALERT_ORDER_FAILURE_WINDOW_SECONDS", 900)
ALERT_ORDER_FAILURE_RATE = env_float("ALERT_ORDER_FAILURE_RATE", 0.2)
ALERT_ORDER_FAILURE_MIN_ORDERS = env_int("ALERT_ORDER_FAILURE_MIN_ORDERS", 5)
ALERT_REFUND_FAILURE_WINDOW_SECONDS = env_int("ALERT_REFUND_FAILURE_WINDOW_SECONDS", 3600)
ALERT_REFUND_FAILURES_MAX = env_int("ALERT_REFUND_FAILURES_MAX", 0)
ALERT_SETTLEMENT_LATENCY_SECONDS = env_int("ALERT_SETTLEMENT_LATENCY_SECONDS", 600)
ALERT_LISTENER_LAG_BLOCKS = env_int("ALERT_LISTENER_LAG_BLOCKS", 50)

# --- Metrics (core.metrics) -----------------------------------------------------------
# Counters and histograms live in Redis so every process (web, each prefork worker) adds
# to the same numbers. Empty URL: REDIS_URL.
METRICS_REDIS_URL = env_str("METRICS_REDIS_URL", "")
METRICS_KEY_PREFIX = env_str("METRICS_KEY_PREFIX", "bronco:metrics")
# When set, /metrics requires "Authorization: Bearer <token>".
METRICS_BEARER_TOKEN = env_str("METRICS_BEARER_TOKEN", "")

# --- Refunds (refunds app) ----------------------------------------------------------------
# A manual refund above this (USDT) waits for a second, different operator to approve it.
REFUND_APPROVAL_THRESHOLD_USDT = env_decimal("REFUND_APPROVAL_THRESHOLD_USDT", "10000")
# USDT the vault keeps back: a refund or a USDT-paying settlement is sent only while the
# vault's balance less this floor covers it; otherwise it waits (and an alert fires).
RESERVE_FLOOR_USDT = env_decimal("RESERVE_FLOOR_USDT", "0")
# How soon a sent refund is checked for its receipt, and again while it is pending.
REFUND_CHECK_SECONDS = env_float("REFUND_CHECK_SECONDS", 2.0)
# Beat: retry refunds waiting for the reserve (and approved ones a crash left unsent).
REFUND_RETRY_INTERVAL_SECONDS = env_int("REFUND_RETRY_INTERVAL_SECONDS", 30)
# Beat: check sent refunds whose own check task was lost.
REFUND_CHECK_SWEEP_SECONDS = env_int("REFUND_CHECK_SWEEP_SECONDS", 60)
# An approved refund not sent after this long is picked up by the retry beat.
REFUND_STALE_APPROVED_SECONDS = env_int("REFUND_STALE_APPROVED_SECONDS", 60)
# The settle stage re-checks the reserve this often while a settlement waits for it.
RESERVE_WAIT_SECONDS = env_float("RESERVE_WAIT_SECONDS", 30.0)
# Beat: check every settlement still open (re-broadcast lost ones, replace stuck ones), a net
# under the settle stage for settlements whose order's run is between steps.
CHAIN_SETTLEMENT_SWEEP_SECONDS = env_int("CHAIN_SETTLEMENT_SWEEP_SECONDS", 60)

# --- Beat: the one definition of Bronco's periodic tasks ----------------------------------
# Synced into django-celery-beat's tables whenever beat starts (core.beat), and by
# `manage.py sync_beat`; entries of Bronco's tasks that are not listed here are removed.
CELERY_BEAT_SCHEDULE = {
    "bronco.compensation_scan": {
        "task": "orders.tasks.compensation_scan",
        "schedule": float(COMPENSATION_SCAN_SECONDS),
    },
    "bronco.cycles_schedule": {
        "task": "orders.tasks.cycles_schedule",
        "schedule": float(NETTING_CYCLE_SECONDS),
    },
    "bronco.cycles_fees_record": {
        "task": "orders.tasks.cycles_fees_record",
        "schedule": float(NETTING_FEES_RECORD_SECONDS),
    },
    "bronco.alert_rules": {
        "task": "ops.tasks.evaluate_alert_rules",
        "schedule": float(ALERT_RULES_INTERVAL_SECONDS),
    },
    "bronco.refunds_retry_waiting": {
        "task": "refunds.tasks.refunds_retry_waiting",
        "schedule": float(REFUND_RETRY_INTERVAL_SECONDS),
    },
    "bronco.refunds_check_sent": {
        "task": "refunds.tasks.refunds_check_sent",
        "schedule": float(REFUND_CHECK_SWEEP_SECONDS),
    },
    "bronco.settlements_sweep": {
        "task": "chain.tasks.settlements_sweep",
        "schedule": float(CHAIN_SETTLEMENT_SWEEP_SECONDS),
    },
    # Final broker orders whose fills may still change, within a fifth of the history
    # budget (TRADING_WATCH_HISTORY_PER_RUN per TRADING_WATCH_INTERVAL_SECONDS).
    "bronco.broker_orders_watch": {
        "task": "trading.tasks.broker_orders_watch",
        "schedule": float(TRADING_WATCH_INTERVAL_SECONDS),  # noqa: F405 (settings.trading)
    },
}
