"""A reorg that makes the chain SHORTER, on a real anvil node: below the listener's checkpoint
(blocks it acted on are gone), and under a read it was about to make (the node answers "block
out of range", or a range past its head with only what it has). The listener never stops,
walks back to the common ancestor, and acts on every canonical log exactly once.

The shortening under a read is made exact by the misbehaving JSON-RPC proxy: its rule reverts
anvil to a snapshot just before it forwards the listener's eth_getLogs."""

from __future__ import annotations

import threading

import pytest
from eth_utils import keccak
from hexbytes import HexBytes

from chain.client import address_of_key, decode_log, symbol_to_bytes32
from chain.listener import ChainListener
from chain.models import ChainCursor, ChainEvent
from core.models import Alert
from orders.models import Order
from tests.chain.rpc_proxy import MisbehavingNode
from tests.fixtures.chain import (
    ALL_KEYS,
    ChainUser,
    deploy_contract_set,
    listener_config,
    point_settings_at,
    wait_for,
)

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]

UNIT = 10**6
ALICE, BOB = ALL_KEYS[2], ALL_KEYS[3]


class RevertBeforeGetLogs:
    """Proxy rule: once armed, the first eth_getLogs whose fromBlock is at least `from_block`
    (and toBlock at least `to_block`) waits for `go`, reverts anvil to `snapshot`, and is then
    forwarded: the node is shortened between the listener's choice of range and its read."""

    def __init__(self, node) -> None:  # type: ignore[no-untyped-def]
        self.node = node
        self.snapshot: str | None = None
        self.from_block = self.to_block = 0
        self.fired = threading.Event()
        self.go = threading.Event()

    def arm(self, *, snapshot: str, from_block: int = 0, to_block: int = 0, go: bool) -> None:
        self.from_block, self.to_block = from_block, to_block
        self.fired.clear()
        if go:
            self.go.set()
        else:
            self.go.clear()
        self.snapshot = snapshot

    def __call__(self, request: dict, forward) -> None:  # type: ignore[no-untyped-def]
        if request.get("method") != "eth_getLogs" or self.snapshot is None:
            return None
        params = request["params"][0]
        if int(params["fromBlock"], 16) < self.from_block or (
            int(params["toBlock"], 16) < self.to_block
        ):
            return None
        snapshot, self.snapshot = self.snapshot, None
        assert self.go.wait(30)
        assert self.node.rpc("evm_revert", [snapshot]) is True
        self.fired.set()
        return None


@pytest.fixture
def shortened(anvil_factory, settings):  # type: ignore[no-untyped-def]
    node = anvil_factory()
    contracts = deploy_contract_set(node)
    point_settings_at(settings, node, contracts)
    for key in (ALICE, BOB):
        ChainUser(node, contracts, key).approve()
    rule = RevertBeforeGetLogs(node)
    with MisbehavingNode(node.rpc_url, rule) as proxy:
        yield node, contracts, proxy, rule


def signed_deposit(client, contracts, key: str, units: int, nonce: int) -> str:  # type: ignore[no-untyped-def]
    fees = client.fee_quote(min_priority_fee=10**9)
    return client.sign(
        private_key=key,
        contract="BroncoVault",
        address=contracts.vault,
        fn="deposit",
        args=(symbol_to_bytes32("AAPL"), units),
        nonce=nonce,
        gas_limit=300_000,
        max_fee_per_gas=4 * fees.base_fee_per_gas + 10**10,
        max_priority_fee_per_gas=10**9,
        chain_id=contracts.chain_id,
    ).raw


def send(client, raw: str) -> int:  # type: ignore[no-untyped-def]
    """Broadcast (automine: one block each); the block it was mined in."""
    return client.wait_receipt(client.send_raw(raw)).block_number


def assert_acted_on_the_canonical_chain_once(client, contracts, start: int) -> None:  # type: ignore[no-untyped-def]
    """The checkpoint is a block the node has; the live events are exactly the canonical
    logs up to it (each once, at its canonical block); one order per canonical deposit."""
    cursor = ChainCursor.objects.get(address=contracts.vault)
    assert cursor.block_number <= client.block_number()
    assert cursor.block_hash == client.block_hash(cursor.block_number)
    canonical = client.get_logs(
        from_block=start, to_block=cursor.block_number, address=contracts.vault
    )
    live = ChainEvent.objects.filter(removed_at__isnull=True, block_number__gte=start)
    assert sorted(live.values_list("tx_hash", "log_index", "block_hash")) == sorted(
        (log.tx_hash, log.log_index, log.block_hash) for log in canonical
    )
    deposits = {
        decode_log(log).deposit_id for log in canonical if decode_log(log).name == "Deposit"
    }
    live_ids = [int(o.onchain_id) for o in Order.objects.filter(held_at__isnull=True)]
    assert sorted(live_ids) == sorted(deposits)


@pytest.mark.parametrize("mode", ["poll", "ws"])
def test_a_chain_shortened_under_a_running_listener_is_walked_back_never_exits(
    shortened, run_listener, mode
):
    node, contracts, proxy, rule = shortened
    client = node.client()
    start = client.block_number() + 1
    alice_nonce = client.pending_nonce(address_of_key(ALICE))
    bob_nonce = client.pending_nonce(address_of_key(BOB))
    d1 = signed_deposit(client, contracts, ALICE, 100 * UNIT, alice_nonce)
    d2 = signed_deposit(client, contracts, ALICE, 200 * UNIT, alice_nonce + 1)
    d3 = signed_deposit(client, contracts, BOB, 300 * UNIT, bob_nonce)  # gone for good
    d4 = signed_deposit(client, contracts, BOB, 400 * UNIT, bob_nonce)  # d3's nonce, after it
    config = listener_config(
        node, contracts, rpc_url=proxy.url, start_block=start, idle_check_seconds=0.5
    )
    with run_listener(config, mode=mode) as listener:
        c = send(client, d1)
        wait_for(lambda: listener.stats.checkpoint >= c and Order.objects.count() == 1)
        at_c = node.rpc("evm_snapshot")

        # 1. Shorter than the checkpoint: d2 is acted on, then its block is gone.
        assert send(client, d2) == c + 1
        wait_for(lambda: listener.stats.checkpoint >= c + 1 and Order.objects.count() == 2)
        assert node.rpc("evm_revert", [at_c]) is True
        assert client.block_number() == c
        wait_for(lambda: listener.stats.reorgs >= 1, timeout=30)
        d2_order = Order.objects.get(usdt_amount=200 * UNIT)
        wait_for(lambda: Order.objects.filter(pk=d2_order.pk, held_at__isnull=False).exists())
        assert listener.stats.checkpoint == c
        assert Alert.objects.filter(key="chain.deep_reorg").exists()

        # 2. Shorter than the block it is about to read: d3's block is mined, and reverted
        # just before the listener's eth_getLogs reaches the node ("block out of range").
        rule.arm(snapshot=node.rpc("evm_snapshot"), from_block=c + 1, go=False)
        assert send(client, d3) == c + 1
        rule.go.set()
        assert rule.fired.wait(30)
        assert client.block_number() == c
        wait_for(lambda: listener.stats.head_moved_back >= 1, timeout=30)

        # The chain grows again: d2 re-mined (same request, same id), d4 new, d3 never.
        send(client, d2)
        send(client, d4)
        node.rpc("anvil_mine", [hex(3)])
        head = client.block_number()
        wait_for(lambda: listener.stats.checkpoint == head, timeout=30)
        wait_for(lambda: Order.objects.filter(usdt_amount=400 * UNIT).exists())
        wait_for(lambda: not Order.objects.filter(held_at__isnull=False).exists(), timeout=30)

    assert client.receipt("0x" + keccak(HexBytes(d3)).hex()) is None  # d3 never came back
    assert {int(o.usdt_amount) // UNIT for o in Order.objects.all()} == {100, 200, 400}
    assert Order.objects.get(usdt_amount=200 * UNIT).pk == d2_order.pk  # released, not doubled
    assert_acted_on_the_canonical_chain_once(client, contracts, start)


def test_a_range_past_the_shortened_head_is_not_taken_as_complete(shortened):
    """A node answers a range that ends past its head with the logs it has (no error).
    Before, the checkpoint moved to the range's end (with no hash) and the blocks mined
    there afterwards were never read: a lost deposit."""
    node, contracts, proxy, rule = shortened
    client = node.client()
    start = client.block_number() + 1
    listener = ChainListener(listener_config(node, contracts, rpc_url=proxy.url, start_block=start))
    alice_nonce = client.pending_nonce(address_of_key(ALICE))
    bob_nonce = client.pending_nonce(address_of_key(BOB))
    c = send(client, signed_deposit(client, contracts, ALICE, 100 * UNIT, alice_nonce))
    at_c = node.rpc("evm_snapshot")
    send(client, signed_deposit(client, contracts, BOB, 300 * UNIT, bob_nonce))  # c + 1
    node.rpc("anvil_mine", [hex(2)])  # c + 3
    # The listener reads [start, c + 3]; the node is shortened to c just before.
    rule.arm(snapshot=at_c, to_block=c + 3, go=True)
    listener.catch_up(c + 3)
    assert rule.fired.is_set()
    assert listener.stats.head_moved_back >= 1
    assert listener.stats.checkpoint == c
    # The chain grows again with another deposit where Bob's was.
    assert send(client, signed_deposit(client, contracts, BOB, 400 * UNIT, bob_nonce)) == c + 1
    node.rpc("anvil_mine", [hex(2)])
    listener.catch_up(client.block_number())
    assert listener.stats.checkpoint == client.block_number()
    assert sorted(int(o.usdt_amount) // UNIT for o in Order.objects.all()) == [100, 400]
    assert_acted_on_the_canonical_chain_once(client, contracts, start)
