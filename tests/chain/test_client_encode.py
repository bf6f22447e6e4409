"""Calldata from `ChainClient.prepare` is web3's own, byte for byte, for every call Bronco
makes (property test over settlement batches), and arguments web3 would normalise or refuse
still go through web3 (no node needed: encoding asks nothing of it)."""

import pytest
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st
from web3.exceptions import Web3Exception

from chain.client import ChainClient, _encode_call, symbol_to_bytes32

VAULT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
USER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
KEY = "0x59c6995e998f97a5a0044966f0945389dc9c86dae88c7a8412f4603b6b78690d"

client = ChainClient("http://127.0.0.1:9")  # nothing listens: encoding must not ask the node

UINT = st.integers(min_value=0, max_value=2**256 - 1)
ELEMENT = st.tuples(
    UINT,
    st.sampled_from([USER, VAULT, "0x000000000000000000000000000000000000dEaD"]),
    st.sampled_from(["AAPL", "TCEHY", "X" * 32]).map(symbol_to_bytes32),
    UINT,
    UINT,
    UINT,
    UINT,
    UINT,
    UINT,
)


def web3_calldata(fn, args):
    return client._contract("BroncoVault", VAULT).encode_abi(fn, args=list(args))


@settings(max_examples=40, deadline=None)
@given(st.lists(ELEMENT, max_size=20), st.sampled_from(["settleDeposits", "settleRedeems"]))
def test_batch_calldata_is_web3s(elements, fn):
    call = client.prepare(contract="BroncoVault", address=VAULT, fn=fn, args=(elements,))
    assert call.to == VAULT
    assert call.data == web3_calldata(fn, (elements,))
    assert _encode_call(client._w3.codec, "BroncoVault", fn, (elements,)) == call.data  # own path


def test_single_settlement_and_the_signed_transaction_are_unchanged():
    args = (7, USER, symbol_to_bytes32("AAPL"), 5 * 10**6, 10**17, 10**6)
    call = client.prepare(contract="BroncoVault", address=VAULT, fn="settleDeposit", args=args)
    assert call.data == web3_calldata("settleDeposit", args)
    fields = dict(nonce=3, gas_limit=300_000, max_fee_per_gas=2 * 10**9, chain_id=31337)
    signed = client.sign(
        private_key=KEY,
        contract="BroncoVault",
        address=VAULT,
        fn="settleDeposit",
        args=args,
        max_priority_fee_per_gas=10**9,
        **fields,
    )
    tx = {
        "type": 2,
        "chainId": 31337,
        "nonce": 3,
        "gas": 300_000,
        "maxFeePerGas": 2 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "value": 0,
        "to": VAULT,
        "data": web3_calldata("settleDeposit", args),
    }
    assert signed.raw == "0x" + Account.sign_transaction(tx, KEY).raw_transaction.hex()


@pytest.mark.parametrize(
    ("fn", "args"),
    [
        ("deposit", (symbol_to_bytes32("AAPL"), 10**6)),  # overloaded: web3 picks by arguments
        ("grantRole", ("0x" + "ab" * 32, USER)),  # bytes32 as a hex string: web3 converts it
    ],
)
def test_what_web3_must_resolve_or_normalise_goes_through_web3(fn, args):
    assert _encode_call(client._w3.codec, "BroncoVault", fn, args) is None
    call = client.prepare(contract="BroncoVault", address=VAULT, fn=fn, args=args)
    assert call.data == web3_calldata(fn, args)


@pytest.mark.parametrize(
    "args",
    [
        (7, USER.lower(), symbol_to_bytes32("AAPL"), 1, 1, 1),  # not checksummed
        (-1, USER, symbol_to_bytes32("AAPL"), 1, 1, 1),  # out of range
        (7, USER, symbol_to_bytes32("AAPL"), 1, 1),  # one argument short
    ],
)
def test_arguments_web3_refuses_are_refused_as_web3_does(args):
    with pytest.raises(Web3Exception) as ours:
        client.prepare(contract="BroncoVault", address=VAULT, fn="settleDeposit", args=args)
    with pytest.raises(Web3Exception) as theirs:
        web3_calldata("settleDeposit", args)
    assert type(ours.value) is type(theirs.value)
