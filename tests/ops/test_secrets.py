"""Secrets come from a real Vault API (OpenBao dev server), are cached, and never logged."""

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bronco_project.settings.checks import production_problems
from core import secrets as bronco_secrets
from core.secrets import (
    REDACTED,
    SecretRedactingFilter,
    SecretUnavailable,
    clear_secret_cache,
    get_secret,
)

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.vault
@pytest.mark.parametrize("name", ["futu_trade_password", "operator_private_key"])
def test_token_auth_reads_the_secret(vault_settings, name):
    assert get_secret(name) == vault_settings.secrets[name]


@pytest.mark.vault
@pytest.mark.parametrize("name", ["futu_trade_password", "operator_private_key"])
def test_approle_auth_reads_the_secret(vault_approle_settings, name):
    assert get_secret(name) == vault_approle_settings.secrets[name]


@pytest.mark.vault
def test_second_read_within_ttl_is_served_from_the_cache(vault_settings, settings, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(bronco_secrets, "_monotonic", lambda: now[0])
    settings.VAULT_CACHE_TTL_SECONDS = 30
    original = vault_settings.secrets["futu_trade_password"]
    try:
        assert get_secret("futu_trade_password") == original
        vault_settings.write_secret("futu_trade_password", "rotated-password-1")

        now[0] += 29  # within the TTL: Vault is not asked, the old value stands
        assert get_secret("futu_trade_password") == original

        now[0] += 2  # past the TTL: the rotated value is read
        assert get_secret("futu_trade_password") == "rotated-password-1"
    finally:
        vault_settings.write_secret("futu_trade_password", original)


@pytest.mark.vault
def test_unknown_secret_raises_without_chaining_the_vault_error(vault_settings):
    with pytest.raises(SecretUnavailable, match="no_such_secret") as info:
        get_secret("no_such_secret")
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


@pytest.mark.vault
def test_token_without_the_policy_is_refused(vault_settings, settings):
    settings.VAULT_TOKEN = "not-a-token"
    clear_secret_cache()
    with pytest.raises(SecretUnavailable, match="Forbidden") as info:
        get_secret("futu_trade_password")
    assert vault_settings.secrets["futu_trade_password"] not in str(info.value)
    assert info.value.__context__ is None


@pytest.mark.vault
def test_rotated_approle_token_is_renewed_by_logging_in_again(vault_approle_settings):
    assert get_secret("futu_trade_password")
    (client,) = bronco_secrets._clients.values()
    vault_approle_settings.client().auth.token.revoke(client.token)
    bronco_secrets._cache.clear()
    assert (
        get_secret("operator_private_key") == vault_approle_settings.secrets["operator_private_key"]
    )


def test_without_vault_addr_the_setting_from_the_environment_is_used(settings, monkeypatch):
    settings.VAULT_ADDR = ""
    settings.FUTU_TRADE_PASSWORD = "from-the-setting-1"
    settings.CHAIN_OPERATOR_PRIVATE_KEY = "0x" + "ab" * 32
    assert get_secret("futu_trade_password") == "from-the-setting-1"
    assert get_secret("operator_private_key") == "0x" + "ab" * 32
    settings.FUTU_TRADE_PASSWORD = ""
    monkeypatch.setenv("FUTU_TRADE_PASSWORD", "from-the-env-1")
    assert get_secret("futu_trade_password") == "from-the-env-1"
    monkeypatch.delenv("FUTU_TRADE_PASSWORD")
    with pytest.raises(SecretUnavailable, match="FUTU_TRADE_PASSWORD is empty"):
        get_secret("futu_trade_password")


def test_production_never_falls_back_to_the_environment(settings, monkeypatch):
    settings.VAULT_ADDR = ""
    settings.BRONCO_ENV = "production"
    monkeypatch.setenv("FUTU_TRADE_PASSWORD", "from-the-env-2")
    with pytest.raises(SecretUnavailable, match="only from Vault"):
        get_secret("futu_trade_password")


def _console_handler() -> logging.Handler:
    for handler in logging.getLogger().handlers:
        if any(isinstance(f, SecretRedactingFilter) for f in handler.filters):
            return handler
    raise AssertionError("no handler of the root logger carries SecretRedactingFilter")


@pytest.mark.vault
def test_a_secret_logged_by_mistake_never_reaches_the_log_output(vault_settings, caplog):
    password = get_secret("futu_trade_password")
    key = get_secret("operator_private_key")
    handler = _console_handler()
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    logger = logging.getLogger("orders.pipeline")
    try:
        with caplog.at_level(logging.INFO):
            logger.info("unlocking trade with %s", password)
            logger.warning("signing with key=%s (bare %s, upper %s)", key, key[2:], key.upper())
            logger.error("config dump: %r", {"futu_trade_password": password})
            try:
                raise ValueError(f"bad key {key}")
            except ValueError:
                logger.exception("settlement failed")
            logger.info("vault token %s", vault_settings.reader_token, stack_info=True)
    finally:
        handler.setStream(previous)
    output = buffer.getvalue()
    for text in (output, caplog.text):
        assert password not in text
        assert key[2:].lower() not in text.lower()
        assert vault_settings.reader_token not in text
        assert REDACTED in text
    assert "settlement failed" in output
    assert "ValueError: bad key [REDACTED]" in output


def test_production_check_refuses_without_vault_addr():
    good = {
        "debug": False,
        "secret_key": "k" * 50,
        "dev_secret_key": "dev",
        "database_url": "postgres://bronco:pw@db/bronco",
        "dev_database_url": "postgres://postgres@127.0.0.1:5432/bronco",
    }
    (problem,) = production_problems(**good, vault_addr="")
    assert "VAULT_ADDR" in problem
    (problem,) = production_problems(**good, vault_addr="https://vault:8200")
    assert "VAULT_TOKEN" in problem
    assert production_problems(**good, vault_addr="https://vault:8200", vault_token="t") == []
    approle = {"vault_role_id": "r", "vault_secret_id": "s"}
    assert production_problems(**good, vault_addr="https://vault:8200", **approle) == []


def _manage_check(**extra: str) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_", "VAULT_"))
    }
    env.update(
        BRONCO_ENV="production",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="p" * 50,
        DATABASE_URL="postgres://bronco:pw@127.0.0.1:5432/bronco_prod_check",
        **extra,
    )
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_refuses_to_start_without_vault():
    proc = _manage_check()
    assert proc.returncode != 0
    assert "refuses to start" in proc.stderr
    assert "VAULT_ADDR" in proc.stderr


def test_production_starts_with_vault_configured():
    proc = _manage_check(VAULT_ADDR="https://vault.internal:8200", VAULT_TOKEN="t" * 20)
    assert "VAULT_ADDR" not in proc.stderr
    assert proc.returncode == 0, proc.stderr
