"""deploy_contracts: deploys once, records the set, reuses it on the next run."""

import io

import pytest
from django.core.management import call_command

from chain import selectors
from chain.deployment import contract_set
from chain.models import ContractDeployment
from tests.fixtures.chain import DEPLOYER_KEY, OPERATOR_KEY

pytestmark = [pytest.mark.chain, pytest.mark.django_db]


def test_deploy_contracts_is_idempotent_and_funds_demo_users(anvil_factory, settings):
    node = anvil_factory()
    settings.CHAIN_RPC_URL = node.rpc_url
    settings.CHAIN_VAULT_ADDRESS = ""
    settings.CHAIN_USDT_ADDRESS = ""
    settings.CHAIN_DEPLOYER_PRIVATE_KEY = DEPLOYER_KEY
    settings.CHAIN_OPERATOR_PRIVATE_KEY = OPERATOR_KEY
    out = io.StringIO()
    call_command("deploy_contracts", stdout=out)
    assert "deployed contracts" in out.getvalue()
    record = ContractDeployment.objects.get(chain_id=settings.CHAIN_ID)
    assert set(record.tokens) == set(settings.BRONCO_SYMBOLS)

    out = io.StringIO()
    call_command("deploy_contracts", stdout=out)
    assert "reusing contracts" in out.getvalue()
    assert ContractDeployment.objects.get().vault_address == record.vault_address

    contracts = contract_set()
    assert contracts.vault == record.vault_address
    for user in settings.CHAIN_DEMO_USERS:
        assert selectors.usdt_balance(address=user) == settings.CHAIN_DEMO_USDT_UNITS
    assert selectors.vault_usdt_balance() == settings.CHAIN_DEV_RESERVE_USDT_UNITS
    assert selectors.token_total_supplies() == {s: 0 for s in settings.BRONCO_SYMBOLS}

    # A fresh chain at the same id (anvil restarted without state): the record is stale.
    node.stop()
    node.start()
    out = io.StringIO()
    call_command("deploy_contracts", stdout=out)
    assert "deployed contracts" in out.getvalue()
