"""Finality by tag (CHAIN_FINALITY): the listener acts on the node's `finalized` / `safe`
block instead of a confirmation count, falls back to the count on a node that does not know
the tag, and keeps its reorg handling. Large ranges are committed in parts (commit_parts)."""

import dataclasses

import pytest

from chain.client import RawLog
from chain.listener import ChainListener, commit_parts
from chain.models import ChainCursor, ChainEvent
from tests.chain.rpc_proxy import MisbehavingNode, Reply, rpc_error
from tests.fixtures.chain import listener_config

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]

EPOCH = 4  # anvil --slots-in-an-epoch 4: safe = head - 4, finalized = head - 8


@pytest.fixture
def tagged_chain(anvil_factory, settings):
    from tests.fixtures.chain import deploy_contract_set, point_settings_at

    node = anvil_factory("--slots-in-an-epoch", str(EPOCH))
    contracts = deploy_contract_set(node)
    point_settings_at(settings, node, contracts)
    return node, contracts


def _checkpoint(contracts) -> int:
    return ChainCursor.objects.get(address=contracts.vault).block_number


@pytest.mark.parametrize(("tag", "depth"), [("finalized", 2 * EPOCH), ("safe", EPOCH)])
def test_the_listener_acts_only_up_to_the_tagged_block(tagged_chain, chain_user, tag, depth):
    node, contracts = tagged_chain
    user = chain_user(2, node=node, contracts=contracts)
    user.approve()
    config = listener_config(node, contracts, finality=tag, confirmations=1)
    start = config.start_block
    receipt = user.deposit("AAPL", 3 * 10**6)
    listener = ChainListener(config)
    head = node.client().block_number()
    listener.catch_up(head)
    # By count (1 confirmation) the deposit would be acted on now; by tag it is not yet.
    assert _checkpoint(contracts) == max(head - depth, start - 1)
    assert not ChainEvent.objects.filter(tx_hash=receipt.tx_hash).exists()

    node.rpc("anvil_mine", [hex(depth)])
    head = node.client().block_number()
    listener.catch_up(head)
    assert _checkpoint(contracts) == head - depth
    assert ChainEvent.objects.filter(tx_hash=receipt.tx_hash).count() == 1


def test_a_node_without_the_tag_is_read_by_confirmation_count(tagged_chain, chain_user):
    node, contracts = tagged_chain

    def no_tags(request, forward):
        params = request.get("params") or []
        if request.get("method") == "eth_getBlockByNumber" and params[0] in ("finalized", "safe"):
            return Reply(body=rpc_error(request, -32602, "invalid block number tag: finalized"))
        return None

    with MisbehavingNode(node.rpc_url, no_tags) as proxy:
        config = dataclasses.replace(
            listener_config(node, contracts, finality="finalized", confirmations=2),
            rpc_url=proxy.url,
        )
        user = chain_user(3, node=node, contracts=contracts)
        user.approve()
        receipt = user.deposit("AAPL", 4 * 10**6)
        node.rpc("anvil_mine", ["0x1"])
        listener = ChainListener(config)
        head = node.client().block_number()
        listener.catch_up(head)
        assert _checkpoint(contracts) == head - 1  # 2 confirmations
        assert ChainEvent.objects.filter(tx_hash=receipt.tx_hash).count() == 1
        asked = proxy.calls["eth_getBlockByNumber"]
        listener.catch_up(node.client().block_number())
        # the tag is not asked for again once the node refused it (one call: the end hash)
        assert proxy.calls["eth_getBlockByNumber"] - asked <= 2


def test_an_unknown_finality_mode_is_refused(anvil, deployed_contracts):
    with pytest.raises(ValueError, match="finality"):
        ChainListener(listener_config(anvil, deployed_contracts, finality="latest"))


def _log(block: int, index: int) -> RawLog:
    return RawLog(
        address="0x" + "00" * 20,
        topics=(),
        data="0x",
        block_number=block,
        block_hash=f"0x{block:064x}",
        tx_hash=f"0x{block * 1000 + index:064x}",
        log_index=index,
    )


@pytest.mark.django_db(transaction=False)
def test_commit_parts_cut_at_block_boundaries_and_end_at_the_range_end():
    logs = [_log(1, 0), _log(1, 1), _log(2, 0), _log(3, 0), _log(3, 1), _log(3, 2), _log(5, 0)]
    parts = commit_parts(logs, end=9, max_logs=2)
    assert [(end, [(x.block_number, x.log_index) for x in part]) for end, part in parts] == [
        (1, [(1, 0), (1, 1)]),
        (3, [(2, 0), (3, 0), (3, 1), (3, 2)]),  # block 3 is never cut
        (9, [(5, 0)]),
    ]
    assert commit_parts([], end=4, max_logs=2) == [(4, [])]
    assert commit_parts(logs, end=9, max_logs=100) == [(9, logs)]


def test_a_large_range_is_committed_in_parts_each_with_its_checkpoint(
    anvil, deployed_contracts, chain_user
):
    user = chain_user(4)
    user.approve()
    config = listener_config(anvil, deployed_contracts, commit_logs=2)
    receipts = [user.deposit("AAPL", 10**6 + i) for i in range(5)]  # one block each
    listener = ChainListener(config)
    listener.catch_up(anvil.client().block_number())
    assert listener.stats.batches == 3
    assert ChainEvent.objects.filter(tx_hash__in=[r.tx_hash for r in receipts]).count() == 5
    assert _checkpoint(deployed_contracts) == anvil.client().block_number()
