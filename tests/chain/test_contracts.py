"""The reference contracts: committed artifacts match their sources, and the vault's rules
hold on a real anvil node (through web3, via chain.client)."""

import hashlib
import json
import shutil
import subprocess

import pytest

from chain.client import ARTIFACTS_PATH, artifacts, symbol_to_bytes32
from chain.exceptions import ContractReverted
from tests.fixtures.chain import DEPLOYER_KEY, OPERATOR_KEY, REPO

pytestmark = pytest.mark.chain

CONTRACTS = REPO / "chain" / "contracts"
SETTINGS = {"evmVersion": "cancun", "optimizer": {"enabled": True, "runs": 200}}


def expected_sources_hash() -> str:
    """The same digest build.js writes, recomputed from the sources on disk."""
    digests = {}
    for folder in ("src", "test"):
        for path in sorted((CONTRACTS / folder).glob("*.sol")):
            digests[f"{folder}/{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    deps = json.loads((REPO / "package.json").read_text())["dependencies"]
    canonical = json.dumps(
        {
            "sources": digests,
            "solc": deps["solc"],
            "openzeppelin": deps["@openzeppelin/contracts"],
            "settings": SETTINGS,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def test_committed_artifacts_match_sources_hash():
    assert artifacts()["sources_sha256"] == expected_sources_hash(), (
        "chain/contracts/*.sol changed since artifacts.json was built: run `make contracts`"
    )
    for name in ("MockUSDT", "StockToken", "BroncoVault"):
        assert len(artifacts()["contracts"][name]["bytecode"]) > 100


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_recompiling_reproduces_committed_artifacts():
    result = subprocess.run(
        ["node", str(CONTRACTS / "build.js"), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert ARTIFACTS_PATH.exists()


# --- the vault's rules ------------------------------------------------------------------------


@pytest.fixture
def vault(anvil, deployed_contracts):
    client = anvil.client()

    def send(key, fn, *args):
        return client.transact(
            private_key=key,
            contract="BroncoVault",
            address=deployed_contracts.vault,
            fn=fn,
            args=args,
        )

    def view(fn, *args):
        return client.call("BroncoVault", deployed_contracts.vault, fn, *args)

    return send, view


def usdt_of(anvil, contracts, address):
    return anvil.client().call("MockUSDT", contracts.usdt, "balanceOf", address)


def token_of(anvil, contracts, symbol, address):
    return anvil.client().call("StockToken", contracts.tokens[symbol], "balanceOf", address)


def named(view, vault_id, fn="deposits"):
    """(id, user, symbol, amount) of the request the vault holds at `vault_id`, as the
    settlement calls name it (a placeholder for an unknown id)."""
    record = view(fn, vault_id)
    if int(record[0], 16) == 0:
        return (vault_id, "0x000000000000000000000000000000000000dEaD", b"AAPL".ljust(32, b"\0"), 1)
    return (vault_id, record[0], bytes.fromhex(record[1][2:]), record[2])


def reverted_with(error_name, fn, *args):
    with pytest.raises(ContractReverted) as info:
        fn(*args)
    assert info.value.error_name == error_name, info.value
    return info.value


def test_deposit_pulls_usdt_and_records_the_depositor(anvil, deployed_contracts, chain_user, vault):
    send, view = vault
    user = chain_user(2)
    before = usdt_of(anvil, deployed_contracts, user.address)
    receipt = user.deposit("AAPL", 250 * 10**6)
    deposit_id = user.deposit_id(receipt)
    assert usdt_of(anvil, deployed_contracts, user.address) == before - 250 * 10**6
    assert view("deposits", deposit_id) == [
        user.address,
        "0x" + symbol_to_bytes32("AAPL").hex(),
        250 * 10**6,
        False,
        False,
    ]
    reverted_with("ZeroAmount", user.deposit, "AAPL", 0)
    reverted_with("SymbolNotListed", user.deposit, "NOPE", 10)


def test_only_the_operator_settles_and_only_once(anvil, deployed_contracts, chain_user, vault):
    send, view = vault
    user = chain_user(3)
    deposit_id = user.deposit_id(user.deposit("TSLA", 100 * 10**6))
    reverted_with(
        "AccessControlUnauthorizedAccount",
        send,
        user.key,
        "settleDeposit",
        *named(view, deposit_id),
        1,
        0,
    )
    reverted_with(
        "AccessControlUnauthorizedAccount",
        send,
        DEPLOYER_KEY,
        "settleDeposit",
        *named(view, deposit_id),
        1,
        0,
    )
    usdt_before = usdt_of(anvil, deployed_contracts, user.address)
    send(OPERATOR_KEY, "settleDeposit", *named(view, deposit_id), 3 * 10**17, 40 * 10**6)
    assert view("isDepositSettled", deposit_id) is True
    assert token_of(anvil, deployed_contracts, "TSLA", user.address) >= 3 * 10**17
    assert usdt_of(anvil, deployed_contracts, user.address) == usdt_before + 40 * 10**6
    err = reverted_with(
        "AlreadySettled", send, OPERATOR_KEY, "settleDeposit", *named(view, deposit_id), 1, 0
    )
    assert err.error_args == (deposit_id,)
    reverted_with("UnknownDeposit", send, OPERATOR_KEY, "settleDeposit", *named(view, 10**9), 1, 0)


def test_a_refund_above_the_deposit_reverts(chain_user, vault):
    send, view = vault
    user = chain_user(4)
    deposit_id = user.deposit_id(user.deposit("NVDA", 5 * 10**6))
    err = reverted_with(
        "RefundAboveDeposit",
        send,
        OPERATOR_KEY,
        "settleDeposit",
        *named(view, deposit_id),
        0,
        5 * 10**6 + 1,
    )
    assert err.error_args == (deposit_id, 5 * 10**6 + 1, 5 * 10**6)
    send(
        OPERATOR_KEY, "settleDeposit", *named(view, deposit_id), 0, 5 * 10**6
    )  # the full refund is fine
    assert view("isDepositSettled", deposit_id) is True


def test_only_the_depositor_cancels(chain_user, vault):
    send, view = vault
    owner, other = chain_user(5), chain_user(6)
    deposit_id = owner.deposit_id(owner.deposit("AAPL", 7 * 10**6))
    reverted_with("NotDepositor", other.request_cancel, deposit_id)
    owner.request_cancel(deposit_id)
    assert view("deposits", deposit_id)[3] is True
    reverted_with("CancelAlreadyRequested", owner.request_cancel, deposit_id)
    reverted_with("UnknownDeposit", owner.request_cancel, 10**9)


def test_redeem_burns_and_settle_redeem_pays_once(anvil, deployed_contracts, chain_user, vault):
    send, view = vault
    user = chain_user(7)
    deposit_id = user.deposit_id(user.deposit("AAPL", 10 * 10**6))
    send(OPERATOR_KEY, "settleDeposit", *named(view, deposit_id), 2 * 10**18, 0)
    supply = anvil.client().call("StockToken", deployed_contracts.tokens["AAPL"], "totalSupply")
    held = token_of(anvil, deployed_contracts, "AAPL", user.address)
    receipt = user.redeem("AAPL", 5 * 10**17)
    redeem_id = user.redeem_id(receipt)
    assert token_of(anvil, deployed_contracts, "AAPL", user.address) == held - 5 * 10**17
    assert (
        anvil.client().call("StockToken", deployed_contracts.tokens["AAPL"], "totalSupply")
        == supply - 5 * 10**17
    )
    reverted_with("ERC20InsufficientBalance", user.redeem, "AAPL", 10**30)
    usdt_before = usdt_of(anvil, deployed_contracts, user.address)
    send(OPERATOR_KEY, "settleRedeem", *named(view, redeem_id, "redeems"), 3 * 10**6, 10**17)
    assert usdt_of(anvil, deployed_contracts, user.address) == usdt_before + 3 * 10**6
    assert token_of(anvil, deployed_contracts, "AAPL", user.address) == held - 4 * 10**17
    assert view("isRedeemSettled", redeem_id) is True
    reverted_with(
        "AlreadySettled",
        send,
        OPERATOR_KEY,
        "settleRedeem",
        *named(view, redeem_id, "redeems"),
        1,
        0,
    )


def test_only_the_vault_mints_stock_tokens(anvil, deployed_contracts, chain_user):
    user = chain_user(8)
    with pytest.raises(ContractReverted) as info:
        anvil.client().transact(
            private_key=user.key,
            contract="StockToken",
            address=deployed_contracts.tokens["AAPL"],
            fn="mint",
            args=(user.address, 1),
        )
    assert info.value.error_name == "OnlyVault"


def test_pause_stops_deposits_but_not_settlement(anvil_factory, chain_user):
    from tests.fixtures.chain import deploy_contract_set

    node = anvil_factory()
    contracts = deploy_contract_set(node)
    user = chain_user(2, node=node, contracts=contracts)
    deposit_id = user.deposit_id(user.deposit("AAPL", 10**6))
    client = node.client()

    def send(key, fn, *args):
        return client.transact(
            private_key=key, contract="BroncoVault", address=contracts.vault, fn=fn, args=args
        )

    def view(fn, *args):
        return client.call("BroncoVault", contracts.vault, fn, *args)

    reverted_with("AccessControlUnauthorizedAccount", send, OPERATOR_KEY, "pause")
    send(DEPLOYER_KEY, "pause")
    reverted_with("EnforcedPause", user.deposit, "AAPL", 10**6)
    user.request_cancel(deposit_id)
    send(OPERATOR_KEY, "settleDeposit", *named(view, deposit_id), 0, 10**6)
    send(DEPLOYER_KEY, "unpause")
    send(DEPLOYER_KEY, "unlistSymbol", symbol_to_bytes32("AAPL"))
    reverted_with("SymbolNotListed", user.deposit, "AAPL", 10**6)
