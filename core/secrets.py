"""Secrets (the Futu trade password, the operator's private key) from Vault KV v2.

With `VAULT_ADDR` set, `get_secret(name)` reads `<VAULT_KV_MOUNT>/<VAULT_SECRET_PATH>/<name>`
(field `VAULT_SECRET_FIELD`) through hvac, authenticated by `VAULT_TOKEN` or by AppRole
(`VAULT_ROLE_ID` + `VAULT_SECRET_ID`). Without it (dev and tests only; production refuses to
start without Vault) the value comes from the setting named in `ENV_FALLBACK` (itself read
from the environment variable of that name), or that environment variable directly.

Guarantees:
- A value is cached per process for `VAULT_CACHE_TTL_SECONDS`, so a burst of broker calls
  costs one Vault read; a rotated secret is picked up after at most one TTL.
- A value never reaches a log line: every value read is registered with
  `SecretRedactingFilter` (wired into LOGGING), and errors raised here carry the secret's
  name and the error type only, never a response body, never the value, and are raised
  without the foreign exception chained to them.
"""

import logging
import os
import re
import threading
import time
from dataclasses import dataclass

import hvac
import requests
from django.conf import settings
from django.views.decorators.debug import sensitive_variables
from hvac import exceptions as hvac_exceptions

logger = logging.getLogger(__name__)

# Secret name -> the environment variable (or setting of that name) used without Vault.
ENV_FALLBACK = {
    "futu_trade_password": "FUTU_TRADE_PASSWORD",
    "operator_private_key": "CHAIN_OPERATOR_PRIVATE_KEY",
}
REDACTED = "[REDACTED]"
# Shorter strings are not redacted: too short to be a credential, and replacing them
# everywhere would mangle ordinary log lines.
_MIN_REDACT_LENGTH = 4


class SecretUnavailable(Exception):
    """A secret could not be read. The message names the secret, never its value."""


def _monotonic() -> float:
    """The cache's clock (a seam for tests)."""
    return time.monotonic()


@dataclass(frozen=True)
class _Cached:
    value: str
    expires_at: float


_lock = threading.Lock()
_cache: dict[tuple[str, str, str, str], _Cached] = {}
_clients: dict[tuple[int, str], hvac.Client] = {}


# --- Redaction -------------------------------------------------------------------------
_known: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secret_value(value: str) -> None:
    """Make the redacting filter hide `value` (and its form without a 0x prefix)."""
    global _pattern
    forms = {value}
    if value[:2].lower() == "0x" and len(value) > 2:
        forms.add(value[2:])
    forms = {f for f in forms if len(f) >= _MIN_REDACT_LENGTH}
    with _lock:
        if forms <= _known:
            return
        _known.update(forms)
        # Longest first, so a value that contains another is replaced whole.
        alternatives = sorted(_known, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(v) for v in alternatives), re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every known secret value replaced by [REDACTED]."""
    _register_credentials()
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(REDACTED, text)


def _register_credentials() -> None:
    """Vault credentials are secrets too; they come from settings, not from get_secret."""
    if not settings.configured:
        return
    for name in ("VAULT_TOKEN", "VAULT_SECRET_ID", "METRICS_BEARER_TOKEN", "EMAIL_HOST_PASSWORD"):
        value = getattr(settings, name, "")
        if value and value not in _known:
            register_secret_value(value)


class SecretRedactingFilter(logging.Filter):
    """Replaces known secret values in a record's message and exception text.

    Installed on the LOGGING handlers, so it covers every record those handlers write, from
    any logger. The record is rewritten in place (message rendered, args dropped), so every
    handler after this one sees the redacted text too. Never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        _register_credentials()
        if _pattern is None:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):
            return True  # a broken format string; logging reports it itself
        redacted = redact(message)
        if redacted != message:
            record.msg = redacted
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


# --- Reading ---------------------------------------------------------------------------
def clear_secret_cache() -> None:
    """Forget cached values and Vault clients (after a rotation, or between tests)."""
    with _lock:
        _cache.clear()
        _clients.clear()


@sensitive_variables("value", "cached")
def get_secret(name: str) -> str:
    """The current value of secret `name`. Raises SecretUnavailable when it cannot be read."""
    addr = settings.VAULT_ADDR
    if not addr:
        # Dev and tests: settings are already in memory, so nothing to cache, and a test
        # that overrides the setting sees its value at once.
        value = _read_environment(name)
        register_secret_value(value)
        return value
    key = (addr, settings.VAULT_KV_MOUNT, settings.VAULT_SECRET_PATH, name)
    now = _monotonic()
    cached = _cache.get(key)
    if cached is not None and cached.expires_at > now:
        return cached.value
    value = _read_vault(name)
    register_secret_value(value)
    with _lock:
        _cache[key] = _Cached(value, now + settings.VAULT_CACHE_TTL_SECONDS)
    return value


@sensitive_variables("value")
def _read_environment(name: str) -> str:
    if settings.BRONCO_ENV == "production":
        raise SecretUnavailable(f"secret {name!r}: production reads secrets only from Vault")
    var = ENV_FALLBACK.get(name, name.upper())
    value = getattr(settings, var, "") or os.environ.get(var, "")
    if not isinstance(value, str) or not value:
        raise SecretUnavailable(f"secret {name!r}: VAULT_ADDR is unset and {var} is empty")
    return value


@sensitive_variables("value", "response")
def _read_vault(name: str) -> str:
    path = f"{settings.VAULT_SECRET_PATH.strip('/')}/{name}"
    where = f"{settings.VAULT_KV_MOUNT}/{path}"
    for attempt in (1, 2):
        try:
            client = _client()
            response = client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=settings.VAULT_KV_MOUNT, raise_on_deleted_version=True
            )
        except hvac_exceptions.Forbidden:
            # An expired AppRole or token: log in again once, then give up.
            _drop_client()
            if attempt == 2 or settings.VAULT_TOKEN or not settings.VAULT_ROLE_ID:
                error = "Forbidden"
                break
            continue
        except hvac_exceptions.InvalidPath:
            error = "not found"
            break
        except (hvac_exceptions.VaultError, requests.RequestException) as exc:
            error = type(exc).__name__
            break
        data = (response or {}).get("data", {}).get("data", {})
        value = data.get(settings.VAULT_SECRET_FIELD)
        if not isinstance(value, str) or not value:
            error = f"field {settings.VAULT_SECRET_FIELD!r} missing or empty"
            break
        return value
    logger.error("vault read of secret %s at %s failed: %s", name, where, error)
    raise SecretUnavailable(f"secret {name!r} at {where}: {error}")


def _client() -> hvac.Client:
    """One authenticated client per process and address (a forked worker makes its own)."""
    cache_key = (os.getpid(), settings.VAULT_ADDR)
    client = _clients.get(cache_key)
    if client is not None:
        return client
    verify: bool | str = settings.VAULT_CACERT or True
    client = hvac.Client(
        url=settings.VAULT_ADDR, timeout=settings.VAULT_TIMEOUT_SECONDS, verify=verify
    )
    if settings.VAULT_TOKEN:
        client.token = settings.VAULT_TOKEN
    elif settings.VAULT_ROLE_ID and settings.VAULT_SECRET_ID:
        client.auth.approle.login(
            role_id=settings.VAULT_ROLE_ID,
            secret_id=settings.VAULT_SECRET_ID,
            mount_point=settings.VAULT_APPROLE_MOUNT,
        )
        register_secret_value(client.token)
    else:
        raise SecretUnavailable("Vault credentials missing: set VAULT_TOKEN or AppRole ids")
    with _lock:
        _clients[cache_key] = client
    return client


def _drop_client() -> None:
    with _lock:
        _clients.pop((os.getpid(), settings.VAULT_ADDR), None)
