"""Secrets that expire, against the session's OpenBao with short TTLs (core.secrets):

- a renewable VAULT_TOKEN with a 6 s TTL is renewed before it lapses, by the process's
  renewal thread even while nothing is read, so a read 14 s later still works;
- an AppRole token past its max TTL is replaced by a new login;
- AppRole with many processes: with the README's recommended secret-id policy
  (`secret_id_num_uses=0`) every process logs in on its own; with a single-use secret id a
  worker logs in once before forking (`vault_login()`, as Celery's worker_init does) and
  its forked children share that token instead of each needing a use.
"""

import os
import time

import hvac
import pytest

from core import secrets as bronco_secrets
from core.secrets import SecretUnavailable, clear_secret_cache, get_secret, vault_login
from tests.fixtures.vault import POLICY

pytestmark = pytest.mark.vault


def _in_children(count: int, name: str) -> list[str]:
    """Fork `count` children that each read `name`; what each got ('error: ...' if not)."""
    results = []
    for _ in range(count):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no pytest, no database; report through the pipe
            os.close(read)
            try:
                got = get_secret(name)
            except SecretUnavailable as exc:
                got = f"error: {exc}"
            except BaseException as exc:  # noqa: BLE001
                got = f"error: {exc!r}"
            os.write(write, got.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            results.append(pipe.read().decode())
        os.waitpid(pid, 0)
    return results


def test_a_renewable_token_is_renewed_before_it_lapses(vault_server, settings):
    root = vault_server.client()
    token = root.auth.token.create(
        policies=[POLICY], ttl="12s", explicit_max_ttl="120s", renewable=True
    )["auth"]["client_token"]
    _point(settings, vault_server, token=token)
    try:
        name = "futu_trade_password"
        assert get_secret(name) == vault_server.secrets[name]
        # Over two TTLs without a read: only the thread renews. (A TTL of 12 s leaves the
        # thread seconds of slack on a loaded 2-core machine; 6 s lapsed once in a full run.)
        time.sleep(26)
        assert get_secret(name) == vault_server.secrets[name]
        left = root.auth.token.lookup(token)["data"]["ttl"]
        assert 0 < left <= 12
    finally:
        clear_secret_cache()


def test_an_approle_token_past_its_max_ttl_is_replaced_by_a_new_login(vault_server, settings):
    _approle(vault_server, settings, role="bronco-short", num_uses=0, token_ttl="2s", max_ttl="3s")
    try:
        name = "operator_private_key"
        assert get_secret(name) == vault_server.secrets[name]
        first = next(iter(bronco_secrets._clients.values())).token
        time.sleep(4.5)  # past the max TTL: no renewal can keep the first token
        assert get_secret(name) == vault_server.secrets[name]
        assert next(iter(bronco_secrets._clients.values())).token != first
        with pytest.raises(hvac.exceptions.Forbidden):
            hvac.Client(url=vault_server.addr, token=first).auth.token.lookup_self()
    finally:
        clear_secret_cache()


def _point(settings, vault_server, *, token: str = "", role_id: str = "", secret_id: str = ""):
    """Settings at the session's OpenBao with these credentials; every read goes to Vault
    and a failure is not hidden by retries or a stale value."""
    settings.VAULT_ADDR = vault_server.addr
    settings.VAULT_TOKEN = token
    settings.VAULT_ROLE_ID, settings.VAULT_SECRET_ID = role_id, secret_id
    settings.VAULT_TOKEN_FILE = settings.VAULT_SECRET_ID_FILE = ""
    settings.VAULT_CACHE_TTL_SECONDS = 0
    settings.VAULT_RETRY_SECONDS = 0.2
    settings.VAULT_STALE_GRACE_SECONDS = 0
    clear_secret_cache()


def _approle(
    vault_server,
    settings,
    *,
    num_uses: int,
    role: str = "",
    token_ttl: str = "10m",
    max_ttl: str = "",
) -> None:
    root = vault_server.client()
    role = role or f"bronco-uses-{num_uses}"
    root.auth.approle.create_or_update_approle(
        role_name=role,
        token_policies=[POLICY],
        token_ttl=token_ttl,
        token_max_ttl=max_ttl or None,
        secret_id_num_uses=num_uses,
    )
    _point(
        settings,
        vault_server,
        role_id=root.auth.approle.read_role_id(role_name=role)["data"]["role_id"],
        secret_id=root.auth.approle.generate_secret_id(role_name=role)["data"]["secret_id"],
    )


def test_unlimited_use_secret_id_logs_in_from_every_process(vault_server, settings):
    _approle(vault_server, settings, num_uses=0)
    try:
        name = "futu_trade_password"
        assert _in_children(4, name) == [vault_server.secrets[name]] * 4
    finally:
        clear_secret_cache()


def test_single_use_secret_id_serves_a_pool_forked_after_the_workers_login(vault_server, settings):
    _approle(vault_server, settings, num_uses=1)
    try:
        name = "futu_trade_password"
        vault_login()  # the worker, before forking its pool (worker_init)
        assert _in_children(4, name) == [vault_server.secrets[name]] * 4
        assert get_secret(name) == vault_server.secrets[name]
        # Without the shared login each child spends a use: only the first gets in.
        bronco_secrets._inherited.clear()
        bronco_secrets._clients.clear()
        bronco_secrets._leases.clear()
        results = _in_children(2, name)
        assert all(r.startswith("error:") for r in results), results
    finally:
        clear_secret_cache()
