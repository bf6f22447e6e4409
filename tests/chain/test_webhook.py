"""Webhooks (chain.webhook): an Alchemy-style delivery signed with the key held in Vault is a
hint only. The vault's logs of a transaction the node has, below the listener's checkpoint,
go through the listener's own path (one order per deposit, however often delivered); a bad
or missing signature is refused with 401 and nothing written; a transaction the node does
not have, or one above the checkpoint (the listener's to read), writes nothing."""

import hashlib
import hmac
import json
import secrets

import pytest

from chain.listener import ChainListener
from chain.models import ChainCursor, ChainEvent, QuarantinedLog
from core.models import AuditLog
from orders.models import Order
from tests.fixtures.chain import listener_config, point_settings_at

pytestmark = [pytest.mark.chain, pytest.mark.vault, pytest.mark.django_db(transaction=True)]

URL = "/chain/webhook"


@pytest.fixture
def signing_key(vault_settings) -> str:
    key = "whsec_" + secrets.token_hex(16)
    vault_settings.write_secret("chain_webhook_signing_key", key)
    return key


def _payload(*tx_hashes: str, vault: str = "0x" + "00" * 20) -> bytes:
    return json.dumps(
        {
            "webhookId": "wh_test",
            "id": "whevt_" + secrets.token_hex(6),
            "createdAt": "2026-11-30T13:00:00.000Z",
            "type": "ADDRESS_ACTIVITY",
            "event": {
                "network": "ETH_MAINNET",
                "activity": [
                    {
                        "fromAddress": "0x" + "11" * 20,
                        "toAddress": vault,
                        "hash": tx_hash,
                        "category": "token",
                        "log": {"address": vault, "transactionHash": tx_hash},
                    }
                    for tx_hash in tx_hashes
                ],
            },
        }
    ).encode()


def _post(client, body: bytes, key: str | None, signature: str | None = None):
    headers = {}
    if key is not None or signature is not None:
        digest = hmac.new((key or "").encode(), body, hashlib.sha256).hexdigest()
        headers["HTTP_X_ALCHEMY_SIGNATURE"] = signature if signature is not None else digest
    return client.post(URL, data=body, content_type="application/json", **headers)


def _written() -> tuple[int, int, int, int]:
    return (
        ChainEvent.objects.count(),
        Order.objects.count(),
        QuarantinedLog.objects.count(),
        AuditLog.objects.count(),
    )


@pytest.fixture
def missed_deposit(anvil, deployed_contracts, chain_user, settings):
    """A deposit below the checkpoint that the listener's reads left out (it started after
    it): what a webhook delivery can still bring in."""
    point_settings_at(settings, anvil, deployed_contracts)
    user = chain_user(7)
    user.approve()
    receipt = user.deposit("AAPL", 4 * 10**6)
    config = listener_config(anvil, deployed_contracts, start_block=receipt.block_number + 1)
    anvil.client().rpc("anvil_mine", ["0x2"])
    ChainListener(config).catch_up(anvil.client().block_number())
    assert ChainCursor.objects.get(address=deployed_contracts.vault).block_number > (
        receipt.block_number
    )
    assert not ChainEvent.objects.filter(tx_hash=receipt.tx_hash).exists()
    return receipt


def test_a_signed_delivery_makes_one_order_however_often_it_comes(
    client, signing_key, missed_deposit, deployed_contracts
):
    body = _payload(missed_deposit.tx_hash, vault=deployed_contracts.vault)
    first = _post(client, body, signing_key)
    assert first.status_code == 200, first.content
    assert first.json()["ingested"] == 1
    order = Order.objects.get(chain_tx_hash=missed_deposit.tx_hash)
    assert AuditLog.objects.filter(order=order, action="order.created", actor="chain_webhook")

    again = _post(client, body, signing_key)  # the provider's redelivery
    assert again.status_code == 200
    assert (again.json()["ingested"], again.json()["duplicates"]) == (0, 1)
    other = _payload(missed_deposit.tx_hash, missed_deposit.tx_hash)  # another envelope
    assert _post(client, other, signing_key).json()["ingested"] == 0
    assert Order.objects.filter(chain_tx_hash=missed_deposit.tx_hash).count() == 1
    assert ChainEvent.objects.filter(tx_hash=missed_deposit.tx_hash).count() == 1


def test_a_bad_or_missing_signature_is_refused_and_writes_nothing(
    client, signing_key, missed_deposit
):
    body = _payload(missed_deposit.tx_hash)
    before = _written()
    assert _post(client, body, None).status_code == 401  # no header at all
    assert _post(client, body, "not-the-key").status_code == 401
    assert _post(client, body, None, signature="").status_code == 401
    assert _post(client, body, None, signature="é" * 64).status_code == 401
    tampered = body.replace(b"ETH_MAINNET", b"ETH_MAINNEX")
    good_for_body = hmac.new(signing_key.encode(), body, hashlib.sha256).hexdigest()
    assert _post(client, tampered, None, signature=good_for_body).status_code == 401
    assert _written() == before
    assert not Order.objects.filter(chain_tx_hash=missed_deposit.tx_hash).exists()


def test_a_transaction_the_node_does_not_have_writes_nothing(client, signing_key, missed_deposit):
    forged = "0x" + secrets.token_hex(32)
    before = _written()
    answer = _post(client, _payload(forged), signing_key)
    assert answer.status_code == 200
    assert answer.json()["unknown"] == [forged]
    assert _written() == before


def test_a_transaction_above_the_checkpoint_is_left_to_the_listener(
    client, signing_key, anvil, deployed_contracts, chain_user, settings
):
    point_settings_at(settings, anvil, deployed_contracts)
    config = listener_config(anvil, deployed_contracts)
    ChainListener(config).catch_up(anvil.client().block_number())
    user = chain_user(8)
    user.approve()
    receipt = user.deposit("AAPL", 5 * 10**6)  # mined, not yet read by the listener
    before = _written()
    answer = _post(client, _payload(receipt.tx_hash), signing_key)
    assert answer.json()["pending"] == [receipt.tx_hash]
    assert _written() == before
    ChainListener(config).catch_up(anvil.client().block_number())
    assert Order.objects.filter(chain_tx_hash=receipt.tx_hash).count() == 1


def test_an_oversized_body_is_refused_unread(client, signing_key, settings):
    settings.CHAIN_WEBHOOK_MAX_BODY_BYTES = 64
    body = _payload("0x" + "ab" * 32)
    assert _post(client, body, signing_key).status_code == 413
