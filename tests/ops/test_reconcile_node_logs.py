"""`reconcile`'s vault USDT check against a node that serves logs wrongly (a real anvil behind
`tests.chain.rpc_proxy`): a log served twice counts once; a log served again from a block
that is not canonical (what a node keeping a replaced block's logs would do) fails the check,
and the discrepancy names the transaction and says its block is not canonical."""

import pytest

from ops.reconciliation import reconcile
from tests.chain.rpc_proxy import MisbehavingNode, Reply, rpc_result
from tests.fixtures.chain import USER_KEYS, ChainUser

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]

UNIT = 10**6
STALE_BLOCK_HASH = "0x" + "ab" * 32


def _text(result) -> str:
    return "\n".join(str(d) for d in result.discrepancies)


def _deposits(own_chain) -> list[str]:
    node, contracts = own_chain
    user = ChainUser(node, contracts, USER_KEYS[0])
    return [user.deposit("AAPL", amount * UNIT).tx_hash for amount in (120, 75)]


def _logs_rule(rewrite):
    def rule(request, forward):
        if request.get("method") != "eth_getLogs":
            return None
        answer = forward()
        if isinstance(answer.get("result"), list):
            return Reply(rpc_result(request, rewrite(answer["result"])))
        return None

    return rule


def test_a_log_the_node_serves_twice_counts_once(own_chain, settings):
    _deposits(own_chain)
    node, _contracts = own_chain
    assert reconcile(check_broker=False).ok
    with MisbehavingNode(node.rpc_url, _logs_rule(lambda logs: logs + logs)) as proxy:
        settings.CHAIN_RPC_URL = proxy.url
        result = reconcile(check_broker=False)
        assert proxy.calls["eth_getLogs"] > 0
    assert result.ok, _text(result)  # before: transfers in counted twice against the balance


def test_a_log_served_from_a_block_that_is_not_canonical_is_named(own_chain, settings):
    stale_tx = _deposits(own_chain)[1]
    node, _contracts = own_chain

    def with_stale_copies(logs):
        copies = [
            {**log, "blockHash": STALE_BLOCK_HASH}
            for log in logs
            if log["transactionHash"].lower() == stale_tx.lower()
        ]
        return logs + copies

    with MisbehavingNode(node.rpc_url, _logs_rule(with_stale_copies)) as proxy:
        settings.CHAIN_RPC_URL = proxy.url
        result = reconcile(check_broker=False)
    text = _text(result)
    assert not result.ok
    assert "vault USDT" in text and f"({-75 * UNIT:+d})" in text, text
    assert f"75000000 from tx {stale_tx}" in text and "(not canonical)" in text, text
    assert result.facts["deposit_events"] == 2  # the Deposit served twice is still one
