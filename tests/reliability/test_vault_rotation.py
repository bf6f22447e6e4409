"""Vault restarts and rotations against a real OpenBao of the test's own (core.secrets):

- OpenBao restarted with a new token (a dev server forgets everything): a running process
  picks up the new token from VAULT_TOKEN_FILE and reads again without a restart; while it
  cannot, the last value stands in, an alert is open and the failure is counted; the alert
  is resolved by the next good read.
- A token revoked under a process (Forbidden) and replaced in its file: picked up.
- A secret that cannot be read and has no recent value: SecretUnavailable and an alert,
  never silence.
"""

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from core import secrets as bronco_secrets
from core.metrics import SECRET_READ_FAILURES, reset_event_metrics
from core.models import Alert
from core.secrets import ALERT_KEY, SecretUnavailable, clear_secret_cache, get_secret
from tests.fixtures.vault import KV_MOUNT, SECRET_PATH, VaultServer, _seed, _start, _stop

pytestmark = [pytest.mark.vault, pytest.mark.django_db]


class RestartableVault:
    """An OpenBao dev server on a fixed port that the test stops and starts again."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.root_token = "root-" + secrets.token_hex(8)
        self.proc, self.addr = _start(tmp, self.root_token)
        self.port = urlparse(self.addr).port
        self.server: VaultServer = _seed(self.addr, self.root_token)

    def stop(self) -> None:
        _stop(self.proc)

    def start(self) -> VaultServer:
        """Start again, empty, seeded with the same secret values and a new reader token."""
        old = self.server.secrets
        self.proc, _ = _start(self.tmp, self.root_token, port=self.port)
        self.server = _seed(self.addr, self.root_token)
        for name, value in old.items():
            self.server.write_secret(name, value)
        return self.server


@pytest.fixture
def vault(tmp_path, settings) -> Iterator[RestartableVault]:
    server = RestartableVault(tmp_path / "bao")
    token_file = tmp_path / "vault-token"
    token_file.write_text(server.server.reader_token)
    settings.VAULT_ADDR = server.addr
    settings.VAULT_KV_MOUNT = KV_MOUNT
    settings.VAULT_SECRET_PATH = SECRET_PATH
    settings.VAULT_SECRET_FIELD = "value"
    settings.VAULT_TOKEN = ""
    settings.VAULT_TOKEN_FILE = str(token_file)
    settings.VAULT_ROLE_ID = settings.VAULT_SECRET_ID = settings.VAULT_SECRET_ID_FILE = ""
    settings.VAULT_RETRY_SECONDS = 0.5
    settings.VAULT_CACHE_TTL_SECONDS = 0  # every read goes to Vault
    server.token_file = token_file
    clear_secret_cache()
    reset_event_metrics()
    try:
        yield server
    finally:
        clear_secret_cache()
        server.stop()
        shutil.rmtree(tmp_path / "bao", ignore_errors=True)


def _open_alert(name: str) -> Alert | None:
    return Alert.objects.filter(key=ALERT_KEY.format(name=name), resolved_at__isnull=True).first()


def test_openbao_restarted_with_a_new_token_is_picked_up_without_a_restart(vault, settings):
    name = "operator_private_key"
    value = vault.server.secrets[name]
    assert get_secret(name) == value
    client_before = next(iter(bronco_secrets._clients.values()))

    vault.stop()
    settings.VAULT_STALE_GRACE_SECONDS = 600
    # Vault is gone: the last value stands in, loudly (alert, counter).
    assert get_secret(name) == value
    alert = _open_alert(name)
    assert alert is not None and alert.severity == "critical"
    assert SECRET_READ_FAILURES.value(secret=name, error="ConnectionError") == 1

    new = vault.start()  # empty again; seeded; the old token means nothing to it
    vault.token_file.write_text(new.reader_token)
    assert get_secret(name) == value
    assert next(iter(bronco_secrets._clients.values())) is not client_before
    assert next(iter(bronco_secrets._clients.values())).token == new.reader_token
    assert _open_alert(name) is None  # resolved by the good read


def test_a_revoked_token_replaced_in_its_file_is_picked_up(vault):
    name = "futu_trade_password"
    assert get_secret(name) == vault.server.secrets[name]
    root = vault.server.client()
    root.auth.token.revoke(vault.server.reader_token)
    fresh = root.auth.token.create(policies=["bronco-read"], ttl="1h")["auth"]["client_token"]
    vault.token_file.write_text(fresh)
    assert get_secret(name) == vault.server.secrets[name]
    assert _open_alert(name) is None


def test_a_secret_that_cannot_be_read_raises_with_an_alert_never_silently(vault, settings):
    name = "futu_trade_password"
    settings.VAULT_STALE_GRACE_SECONDS = 0
    vault.server.client().auth.token.revoke(vault.server.reader_token)  # file not updated
    with pytest.raises(SecretUnavailable, match="Forbidden"):
        get_secret(name)
    alert = _open_alert(name)
    assert alert is not None and "Forbidden" in alert.message
    assert vault.server.secrets[name] not in alert.message
    assert SECRET_READ_FAILURES.value(secret=name, error="Forbidden") == 1


def test_vault_down_is_a_transient_fault_tasks_retry_not_a_missing_setting(vault, settings):
    """The settlement sender's key read while Vault is down raises VaultUnavailable, one of
    the errors every Bronco task retries (core.tasks.TRANSIENT_ERRORS), not NotConfigured
    (which would fail the task for good); once Vault is back the same call reads the key."""
    from chain.services import _operator_key
    from core.secrets import VaultUnavailable
    from core.tasks import TRANSIENT_ERRORS

    settings.VAULT_STALE_GRACE_SECONDS = 0
    value = vault.server.secrets["operator_private_key"]
    vault.stop()
    with pytest.raises(VaultUnavailable) as caught:
        _operator_key()
    assert isinstance(caught.value, TRANSIENT_ERRORS)
    assert _open_alert("operator_private_key") is not None

    new = vault.start()
    vault.token_file.write_text(new.reader_token)
    assert _operator_key() == value
