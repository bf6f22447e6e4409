"""The batching load generator (devtools.load) on a real anvil: pre-signed transactions of
many users go out in JSON-RPC batches on schedule, every deposit's log is seen once with
its vault id, and the vault holds exactly what was deposited."""

import time

import pytest

from devtools.chain import DEPLOYER_KEY, deploy_contract_set
from devtools.load import BatchLoad
from devtools.scenario import user_key

pytestmark = pytest.mark.chain

USDT = 10**6


def test_batched_deposits_are_mined_and_seen_with_their_ids(anvil_factory):
    node = anvil_factory()
    contracts = deploy_contract_set(node)
    client = node.client()
    load = BatchLoad(
        rpc_url=node.rpc_url,
        chain_id=client.chain_id(),
        vault=contracts.vault,
        usdt=contracts.usdt,
        keys=[user_key(99, i) for i in range(6)],
    )
    load.fund(deployer_key=DEPLOYER_KEY, usdt_units=1_000 * USDT)
    vault_before = int(client.call("MockUSDT", contracts.usdt, "balanceOf", contracts.vault))
    txs = [load.sign("deposit", i % 6, "AAPL", (10 + i) * USDT, due=i / 200) for i in range(60)]
    load.watch(client.block_number() + 1)
    try:
        stats = load.send(txs, tick=0.02)
        deadline = time.monotonic() + 30
        while any(t.vault_id is None for t in txs):
            assert time.monotonic() < deadline, "logs not seen"
            time.sleep(0.05)
    finally:
        load.stop()
    assert stats.sent == 60 and not stats.send_errors
    assert stats.batches < 60  # several deposits per request
    assert len({t.vault_id for t in txs}) == 60
    assert all(t.seen_at >= t.sent_at > 0 for t in txs)
    vault_after = int(client.call("MockUSDT", contracts.usdt, "balanceOf", contracts.vault))
    assert vault_after - vault_before == sum(t.amount for t in txs)
