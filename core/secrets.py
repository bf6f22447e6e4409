"""Secrets (the Futu trade password, the operator's private key) from Vault KV v2.

With `VAULT_ADDR` set, `get_secret(name)` reads `<VAULT_KV_MOUNT>/<VAULT_SECRET_PATH>/<name>`
(field `VAULT_SECRET_FIELD`) through hvac, authenticated by `VAULT_TOKEN` or by AppRole
(`VAULT_ROLE_ID` + `VAULT_SECRET_ID`). Without it (dev and tests only; production refuses to
start without Vault) the value comes from the setting named in `ENV_FALLBACK` (itself read
from the environment variable of that name), or that environment variable directly.

Credentials are read from their source at every login: `VAULT_TOKEN_FILE` /
`VAULT_SECRET_ID_FILE` when set (a Vault Agent sink, a mounted secret; re-read, so a rotated
token or secret id is picked up without a restart), else the `VAULT_TOKEN` /
`VAULT_SECRET_ID` settings.

Guarantees:
- A value is cached per process for `VAULT_CACHE_TTL_SECONDS`, so a burst of broker calls
  costs one Vault read; a rotated secret is picked up after at most one TTL.
- Vault restarted, the token revoked or rotated (Forbidden), Vault unreachable: the read is
  retried for up to `VAULT_RETRY_SECONDS`, each attempt with credentials read again and a
  new login. Still failing: the alert `vault:secret_unavailable:<name>` opens (resolved by
  the next good read), `bronco_secret_read_failures` counts it, and the last value read is
  used for up to `VAULT_STALE_GRACE_SECONDS` past its TTL (a warning each time); with no such
  value the caller gets SecretUnavailable. A failure is never silent.
- A renewable token (VAULT_TOKEN, or one from an AppRole login) is renewed once less than
  `VAULT_RENEW_FRACTION` of its TTL is left, at the next read and by a daemon thread per
  process (so an idle process does not let it lapse); an AppRole token that cannot be
  renewed further is replaced by a new login.
- AppRole with many processes (a prefork worker): a token from an AppRole login is shared
  with processes forked after it (`vault_login()`; Celery workers call it at start), so a
  pool logs in once per worker, not once per child. Each process that logs in itself uses
  one use of the secret id: give the role `secret_id_num_uses=0` (bounded by
  `secret_id_ttl` and `secret_id_bound_cidrs`), not a single-use secret id (README, Vault).
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

from core.exceptions import TIME_LIMITS

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


class VaultUnavailable(SecretUnavailable):
    """Vault itself could not give the secret (down, restarting, credentials rotating,
    Forbidden) for VAULT_RETRY_SECONDS: a transient fault (alert raised), so tasks retry it
    (it is one of `core.tasks.TRANSIENT_ERRORS`) instead of failing."""


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
ALERT_KEY = "vault:secret_unavailable:{name}"


@dataclass
class _Lease:
    """What this process knows of its Vault token's life (monotonic seconds)."""

    token: str
    ttl: float  # seconds granted at login or last renewal; 0: never expires
    expires_at: float
    renewable: bool
    approle: bool


_leases: dict[tuple[int, str], _Lease] = {}
# addr -> (token, lease) of an AppRole login, shared with the processes forked after it.
_inherited: dict[str, _Lease] = {}
_renewers: dict[tuple[int, str], threading.Thread] = {}


def clear_secret_cache() -> None:
    """Forget cached values, Vault clients and tokens (after a rotation, or between tests)."""
    with _lock:
        _cache.clear()
        _clients.clear()
        _leases.clear()
        _inherited.clear()


@sensitive_variables("value", "cached")
def get_secret(name: str) -> str:
    """The current value of secret `name` (a str). Retries, alerts and stale use as in the
    module doc; raises SecretUnavailable when it cannot be read and no recent value is
    known."""
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
    try:
        value = _read_vault(name)
    except SecretUnavailable as exc:
        _report_failure(name, str(exc))
        grace = settings.VAULT_STALE_GRACE_SECONDS
        if cached is not None and grace > 0 and cached.expires_at + grace > now:
            logger.warning(
                "secret %s: Vault cannot be read; using the value read %.0f s ago",
                name,
                now - cached.expires_at + settings.VAULT_CACHE_TTL_SECONDS,
            )
            return cached.value
        raise
    register_secret_value(value)
    with _lock:
        _cache[key] = _Cached(value, now + settings.VAULT_CACHE_TTL_SECONDS)
    _report_recovery(name)
    return value


def _report_failure(name: str, message: str) -> None:
    """Count it and open (or bump) the alert; never raises (the caller's error matters)."""
    from core.metrics import count_secret_read_failure

    error = message.rpartition(": ")[2][:40] or "error"
    count_secret_read_failure(secret=name, error=error)
    try:
        from core.alerts import alert_raise
        from core.models import AlertSeverity

        alert_raise(
            key=ALERT_KEY.format(name=name),
            message=f"{message}; retried for {settings.VAULT_RETRY_SECONDS:g} s",
            severity=AlertSeverity.CRITICAL,
            source="core.secrets",
            details={"secret": name, "error": error},
        )
    except TIME_LIMITS:
        raise  # the task ran out of time: it ends as a timeout, never as a success
    except Exception as exc:  # noqa: BLE001 - the database may be down too; log instead
        logger.error("secret %s unavailable and no alert could be raised: %r", name, exc)


def _report_recovery(name: str) -> None:
    try:
        from core.alerts import alert_resolve

        alert_resolve(key=ALERT_KEY.format(name=name), actor="core.secrets")
    except TIME_LIMITS:
        raise
    except Exception as exc:  # noqa: BLE001 - no database here (a test, a script)
        logger.debug("secret %s: alert not resolved: %r", name, exc)


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
    """One secret from Vault, retried with fresh credentials for VAULT_RETRY_SECONDS."""
    path = f"{settings.VAULT_SECRET_PATH.strip('/')}/{name}"
    where = f"{settings.VAULT_KV_MOUNT}/{path}"
    deadline = time.monotonic() + settings.VAULT_RETRY_SECONDS
    delay = 0.1
    while True:
        try:
            client = _client()
            response = client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=settings.VAULT_KV_MOUNT, raise_on_deleted_version=True
            )
        except hvac_exceptions.Forbidden:
            # Revoked, expired or rotated: read the credentials again and log in again.
            _drop_client(forget_inherited=True)
            error = "Forbidden"
        except hvac_exceptions.InvalidPath:
            error = "not found"  # also a restarted dev server not seeded yet
        except (hvac_exceptions.VaultError, requests.RequestException) as exc:
            _drop_client()
            error = type(exc).__name__
        except SecretUnavailable as exc:
            error = str(exc)
        else:
            data = (response or {}).get("data", {}).get("data", {})
            value = data.get(settings.VAULT_SECRET_FIELD)
            if isinstance(value, str) and value:
                return value
            error = f"field {settings.VAULT_SECRET_FIELD!r} missing or empty"
        if time.monotonic() + delay > deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    logger.error("vault read of secret %s at %s failed: %s", name, where, error)
    raise VaultUnavailable(f"secret {name!r} at {where}: {error}")


def _read_file(path: str) -> str:
    try:
        with open(path) as handle:
            value = handle.read().strip()
    except OSError as exc:
        raise SecretUnavailable(
            f"Vault credentials file {path} unreadable: {type(exc).__name__}"
        ) from None
    if value:
        register_secret_value(value)
    return value


def _credentials() -> tuple[str, str, str]:
    """(token, role id, secret id) as their source says now."""
    token = _read_file(settings.VAULT_TOKEN_FILE) if settings.VAULT_TOKEN_FILE else ""
    token = token or settings.VAULT_TOKEN
    secret_id = settings.VAULT_SECRET_ID
    if settings.VAULT_SECRET_ID_FILE:
        secret_id = _read_file(settings.VAULT_SECRET_ID_FILE)
    return token, settings.VAULT_ROLE_ID, secret_id


def _new_client() -> hvac.Client:
    verify: bool | str = settings.VAULT_CACERT or True
    return hvac.Client(
        url=settings.VAULT_ADDR, timeout=settings.VAULT_TIMEOUT_SECONDS, verify=verify
    )


def _client() -> hvac.Client:
    """One authenticated client per process and address, its token renewed when due."""
    cache_key = (os.getpid(), settings.VAULT_ADDR)
    client = _clients.get(cache_key)
    if client is None:
        client = _login(cache_key)
    _renew_if_due(cache_key)
    return client


def vault_login() -> None:
    """Log in now (a Celery worker calls it before forking its pool): with AppRole, the
    processes forked after this reuse the token instead of each spending a secret-id use.
    No-op without VAULT_ADDR; failures are left to the first read (retried, alerted)."""
    if not settings.VAULT_ADDR:
        return
    try:
        _client()
    except (SecretUnavailable, hvac_exceptions.VaultError, requests.RequestException) as exc:
        logger.warning("vault login at start failed (the first read retries): %r", exc)


def _login(cache_key: tuple[int, str]) -> hvac.Client:
    addr = cache_key[1]
    client = _new_client()
    token, role_id, secret_id = _credentials()
    inherited = _inherited.get(addr)
    if token:
        client.token = token
        lease = _lookup(client, approle=False)
    elif inherited is not None and inherited.expires_at > _monotonic():
        client.token = inherited.token  # a parent's AppRole login: no secret-id use
        lease = inherited
    elif role_id and secret_id:
        auth = client.auth.approle.login(
            role_id=role_id, secret_id=secret_id, mount_point=settings.VAULT_APPROLE_MOUNT
        )["auth"]
        register_secret_value(client.token)
        lease = _lease(client.token, auth, approle=True)
        _inherited[addr] = lease
    else:
        raise SecretUnavailable("Vault credentials missing: set VAULT_TOKEN or AppRole ids")
    with _lock:
        _clients[cache_key] = client
        _leases[cache_key] = lease
    if lease.renewable and lease.ttl:
        _start_renewer(cache_key)
    return client


def _lease(token: str, auth: dict, *, approle: bool) -> _Lease:
    ttl = float(auth.get("lease_duration") or auth.get("ttl") or 0)
    return _Lease(
        token=token,
        ttl=ttl,
        expires_at=_monotonic() + ttl if ttl else float("inf"),
        renewable=bool(auth.get("renewable")),
        approle=approle,
    )


def _lookup(client: hvac.Client, *, approle: bool) -> _Lease:
    """The token's TTL and renewability (the default policy allows lookup-self)."""
    try:
        data = client.auth.token.lookup_self()["data"]
    except hvac_exceptions.Forbidden:
        raise
    except hvac_exceptions.VaultError:
        data = {}  # a policy without lookup-self: treat as not renewable
    return _lease(client.token, data, approle=approle)


def _renew_if_due(cache_key: tuple[int, str]) -> None:
    """Renew the token once less than VAULT_RENEW_FRACTION of its TTL is left; an AppRole
    token past renewal (max TTL reached) is dropped so the next read logs in again."""
    lease = _leases.get(cache_key)
    client = _clients.get(cache_key)
    if lease is None or client is None or not lease.ttl:
        return
    left = lease.expires_at - _monotonic()
    if left > lease.ttl * settings.VAULT_RENEW_FRACTION:
        return
    if lease.renewable:
        try:
            auth = client.auth.token.renew_self()["auth"]
        except (hvac_exceptions.VaultError, requests.RequestException) as exc:
            logger.warning("vault token renewal failed: %s", type(exc).__name__)
        else:
            renewed = _lease(lease.token, auth, approle=lease.approle)
            with _lock:
                _leases[cache_key] = renewed
            if renewed.approle:
                _inherited[cache_key[1]] = renewed
            if renewed.ttl >= lease.ttl * settings.VAULT_RENEW_FRACTION:
                return
    if lease.approle:
        _drop_client(forget_inherited=True)  # log in again on the next read


def _start_renewer(cache_key: tuple[int, str]) -> None:
    """A daemon thread per process and address that keeps the token renewed while idle."""
    with _lock:
        thread = _renewers.get(cache_key)
        if thread is not None and thread.is_alive():
            return
        thread = threading.Thread(
            target=_renew_loop, args=(cache_key,), name="vault-renewer", daemon=True
        )
        _renewers[cache_key] = thread
    thread.start()


def _renew_loop(cache_key: tuple[int, str]) -> None:
    while True:
        lease = _leases.get(cache_key)
        if lease is None or not lease.ttl:
            return  # logged out (a new login starts its own renewer)
        # At most a second at a time: the lease it follows may be replaced meanwhile (a new
        # login with a shorter TTL) and must not wait out the old one's period. A check that
        # is not due costs nothing (no request).
        time.sleep(max(0.5, min(lease.ttl * settings.VAULT_RENEW_FRACTION / 2, 1.0)))
        try:
            _renew_if_due(cache_key)
        except Exception as exc:  # noqa: BLE001 - a thread must not die on one bad renewal
            logger.warning("vault token renewal failed: %r", exc)


def _drop_client(*, forget_inherited: bool = False) -> None:
    cache_key = (os.getpid(), settings.VAULT_ADDR)
    with _lock:
        _clients.pop(cache_key, None)
        _leases.pop(cache_key, None)
        if forget_inherited:
            _inherited.pop(settings.VAULT_ADDR, None)
