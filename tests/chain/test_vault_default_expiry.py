"""Bronco reads the vault's defaultExpiry (a contract getter on anvil) for orders that name no
expiry, instead of assuming its own setting: an admin's setDefaultExpiry is followed (after
the process's cache of vault parameters), and only a vault that cannot be read falls back to
ORDER_DEFAULT_EXPIRY_SECONDS."""

import pytest
from django.utils import timezone

from chain.selectors import vault_default_expiry_seconds, vault_params_forget
from core.money import USDT_UNIT
from orders.services import default_expiry_seconds
from tests.fixtures.chain import DEPLOYER_KEY
from tests.orders.test_pipeline_price_bounds import _limit_deposit

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]

DAY = 24 * 3600


def _set_default_expiry(node, contracts, seconds):
    receipt = node.client().transact(
        private_key=DEPLOYER_KEY,
        contract="BroncoVault",
        address=contracts.vault,
        fn="setDefaultExpiry",
        args=(seconds,),
    )
    assert receipt.succeeded


def test_an_order_without_expiry_follows_the_vaults_default(own_chain, chain_user, settings):
    node, contracts = own_chain
    settings.ORDER_DEFAULT_EXPIRY_SECONDS = 3600  # never what decides, while the vault answers
    settings.ORDER_EXPIRY_MARGIN_SECONDS = 1800
    assert vault_default_expiry_seconds() == 7 * DAY  # as deployed

    _set_default_expiry(node, contracts, 2 * DAY)
    assert vault_default_expiry_seconds() == 7 * DAY  # cached for CHAIN_VAULT_PARAMS_TTL
    vault_params_forget()
    assert vault_default_expiry_seconds() == 2 * DAY
    assert default_expiry_seconds() == 2 * DAY - 1800

    user = chain_user(4, node=node, contracts=contracts)
    before = timezone.now()
    order = _limit_deposit(user, contracts, "AAPL", 20 * USDT_UNIT, 0)  # a market deposit
    lives = timezone.timedelta(seconds=2 * DAY - 1800)
    assert before + lives <= order.expires_at <= timezone.now() + lives
    # The vault's own expiry for it (block time + its default) is later than Bronco's.
    vault_expiry = node.client().call(
        "BroncoVault", contracts.vault, "depositTerms", int(order.onchain_id)
    )
    assert order.expires_at.timestamp() < vault_expiry[1]


def test_a_short_vault_default_keeps_at_least_half_of_it(own_chain, settings):
    node, contracts = own_chain
    settings.ORDER_EXPIRY_MARGIN_SECONDS = 3600
    _set_default_expiry(node, contracts, 1800)
    vault_params_forget()
    assert default_expiry_seconds() == 900


def test_a_vault_that_cannot_be_read_falls_back_to_the_setting(own_chain, settings):
    settings.ORDER_DEFAULT_EXPIRY_SECONDS = 4321
    settings.CHAIN_RPC_URL = "http://127.0.0.1:9"  # nothing listens: the node cannot answer
    vault_params_forget()
    assert default_expiry_seconds() == 4321
