"""The listener against a real anvil node: exactly-once events, restarts, reconnects, reorgs,
quarantine, and poll mode."""

import signal
import subprocess
import sys
import threading
import time

import pytest
from eth_utils import keccak

from chain import selectors
from chain.client import address_of_key, event_topic, symbol_to_bytes32
from chain.ingest import chain_logs_commit
from chain.models import ChainCursor, ChainEvent, QuarantinedLog
from core.models import Alert, AuditLog
from orders.models import Order
from tests.fixtures.chain import (
    DEPLOYER_KEY,
    REPO,
    deploy_contract_set,
    django_test_env,
    listener_config,
    named_deposit,
    point_settings_at,
    wait_for,
)

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]


def events_for(tx_hashes):
    return list(ChainEvent.objects.filter(tx_hash__in=list(tx_hashes)))


def test_each_vault_event_becomes_exactly_one_chain_event(
    anvil, deployed_contracts, chain_user, run_listener, settings
):
    point_settings_at(settings, anvil, deployed_contracts)
    config = listener_config(anvil, deployed_contracts)
    user = chain_user(2)
    user.approve()
    with run_listener(config) as listener:
        d1 = user.deposit("AAPL", 11 * 10**6)
        d2 = user.deposit("TSLA", 12 * 10**6)
        cancel = user.request_cancel(user.deposit_id(d2))
        operator = anvil.client()
        dep1 = user.deposit_id(d1)
        operator.transact(
            private_key=settings.CHAIN_OPERATOR_PRIVATE_KEY,
            contract="BroncoVault",
            address=deployed_contracts.vault,
            fn="settleDeposit",
            args=named_deposit(dep1, mint_token_units=10**18, refund_usdt_units=0).vault_call()[1],
        )
        red = user.redeem("AAPL", 4 * 10**17)
        txs = [d1.tx_hash, d2.tx_hash, cancel.tx_hash, red.tx_hash]
        # The listener counts a batch after its transaction commits: the rows can be seen
        # a moment before the stats move, so the wait covers both.
        wait_for(lambda: len(events_for(txs)) == 4 and listener.stats.lag <= 1)

    names = sorted(e.name for e in events_for(txs))
    assert names == ["CancelRequested", "Deposit", "Deposit", "Redeem"]
    buy1 = Order.objects.get(order_type="BUY", onchain_id=dep1)
    assert (buy1.usdt_amount, buy1.symbol, buy1.stock_code) == (11 * 10**6, "AAPL", "US.AAPL")
    assert buy1.user_address == user.address and buy1.chain_tx_hash == d1.tx_hash
    buy2 = Order.objects.get(order_type="BUY", onchain_id=user.deposit_id(d2))
    assert buy2.cancel_requested_at is not None
    sell = Order.objects.get(order_type="SELL", onchain_id=user.redeem_id(red))
    assert (sell.token_amount, sell.usdt_amount) == (4 * 10**17, 0)
    assert ChainEvent.objects.filter(name="DepositSettled").exists()
    assert AuditLog.objects.filter(action="order.created", actor="listen_chain").count() == 3
    assert selectors.listener_lag(chain_id=config.chain_id, address=config.vault) == 0


def test_overlapping_subscription_and_backfill_make_no_duplicate(
    anvil, deployed_contracts, chain_user, run_listener
):
    config = listener_config(anvil, deployed_contracts, chunk_blocks=3)
    user = chain_user(3)
    user.approve()
    before = [user.deposit("NVDA", 10**6 + i).tx_hash for i in range(6)]
    during: list[str] = []
    producer = threading.Thread(
        target=lambda: during.extend(user.deposit("NVDA", 2 * 10**6 + i).tx_hash for i in range(8))
    )
    with run_listener(config) as listener:
        producer.start()  # lands while the listener backfills and subscribes
        producer.join()
        wait_for(lambda: len(events_for(before + during)) == 14)
        # Replay: move the checkpoint back, as a crashed batch or a second listener would.
        ChainCursor.objects.filter(address=config.vault).update(block_number=config.start_block - 1)
        last = user.deposit("NVDA", 3 * 10**6)
        wait_for(lambda: len(events_for([last.tx_hash])) == 1 and listener.stats.duplicates >= 14)
    all_txs = before + during + [last.tx_hash]
    assert len(events_for(all_txs)) == 15
    assert Order.objects.filter(chain_tx_hash__in=all_txs).count() == 15


def test_killed_and_restarted_listener_misses_nothing(
    anvil, deployed_contracts, chain_user, settings
):
    user = chain_user(4)
    user.approve()
    start = anvil.client().block_number() + 1
    env = django_test_env() | {
        "CHAIN_RPC_URL": anvil.rpc_url,
        "CHAIN_WS_URL": anvil.ws_url,
        "CHAIN_VAULT_ADDRESS": deployed_contracts.vault,
        "CHAIN_USDT_ADDRESS": deployed_contracts.usdt,
        "CHAIN_CONFIRMATIONS": "1",
    }
    argv = [sys.executable, "manage.py", "listen_chain", "--start-block", str(start)]

    def spawn():
        return subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    sent: list[str] = []
    done = threading.Event()

    def produce():
        for i in range(30):
            sent.append(user.deposit("AAPL", 10**6 + i).tx_hash)
            time.sleep(0.05)
        done.set()

    first = spawn()
    try:
        wait_for(lambda: ChainCursor.objects.filter(address=deployed_contracts.vault).exists())
        producer = threading.Thread(target=produce)
        producer.start()
        wait_for(lambda: len(events_for(sent)) >= 5)
        first.send_signal(signal.SIGKILL)  # no chance to finish anything
        first.wait(timeout=10)
        time.sleep(0.5)
        second = spawn()
        try:
            producer.join()
            wait_for(lambda: len(events_for(sent)) == 30, timeout=30)
            second.send_signal(signal.SIGTERM)  # graceful stop
            assert second.wait(timeout=15) == 0, second.stderr.read().decode()[-2000:]
        finally:
            if second.poll() is None:
                second.kill()
    finally:
        if first.poll() is None:
            first.kill()
    assert Order.objects.filter(chain_tx_hash__in=sent).count() == 30


def test_dropped_websocket_reconnects_and_backfills_the_gap(
    anvil_factory, chain_user, run_listener
):
    node = anvil_factory()
    contracts = deploy_contract_set(node)
    user = chain_user(2, node=node, contracts=contracts)
    user.approve()
    config = listener_config(node, contracts, reconnect_max_delay=2.0)
    with run_listener(config) as listener:
        first = [user.deposit("AAPL", 10**6 + i).tx_hash for i in range(3)]
        wait_for(lambda: len(events_for(first)) == 3)
        node.restart()  # the WebSocket drops; the chain state survives
        # Mined right away, while the listener is still reconnecting: only backfill sees them.
        gap = [user.deposit("AAPL", 2 * 10**6 + i).tx_hash for i in range(3)]
        wait_for(lambda: listener.stats.reconnects >= 1)
        later = [user.deposit("AAPL", 3 * 10**6 + i).tx_hash for i in range(2)]
        wait_for(lambda: len(events_for(first + gap + later)) == 8)
    assert Order.objects.filter(chain_tx_hash__in=first + gap + later).count() == 8


def test_reorg_before_confirmation_drops_the_orphan_and_takes_the_replacement(
    anvil_factory, chain_user, run_listener
):
    node = anvil_factory()
    contracts = deploy_contract_set(node)
    user = chain_user(2, node=node, contracts=contracts)
    user.approve()
    config = listener_config(node, contracts, confirmations=3)
    with run_listener(config) as listener:
        wait_for(lambda: listener.stats.head > 0)
        snapshot = node.rpc("evm_snapshot")
        orphan = user.deposit("AAPL", 111 * 10**6)
        orphan_id = user.deposit_id(orphan)
        wait_for(lambda: listener.unconfirmed_count >= 1)
        assert node.rpc("evm_revert", [snapshot]) is True
        replacement = user.deposit("TSLA", 222 * 10**6)
        # Ids are what a request is: another deposit never takes the orphan's id.
        assert user.deposit_id(replacement) != orphan_id
        node.rpc("anvil_mine", [hex(3)])
        wait_for(lambda: len(events_for([replacement.tx_hash])) == 1)
        wait_for(lambda: listener.stats.orphaned_dropped >= 1)
    assert not events_for([orphan.tx_hash])
    assert not Order.objects.filter(chain_id=contracts.chain_id, onchain_id=orphan_id).exists()
    order = Order.objects.get(
        order_type="BUY", chain_id=contracts.chain_id, onchain_id=user.deposit_id(replacement)
    )
    assert (order.chain_tx_hash, order.usdt_amount, order.symbol) == (
        replacement.tx_hash,
        222 * 10**6,
        "TSLA",
    )
    assert not Alert.objects.filter(key__startswith="chain.").exists()


def test_a_confirmed_event_that_vanishes_raises_an_alert_and_is_not_undone(
    anvil_factory, chain_user, run_listener
):
    node = anvil_factory()
    contracts = deploy_contract_set(node)
    user = chain_user(2, node=node, contracts=contracts)
    user.approve()
    config = listener_config(node, contracts, confirmations=1)
    with run_listener(config) as listener:
        snapshot = node.rpc("evm_snapshot")
        confirmed = user.deposit("AAPL", 5 * 10**6)
        wait_for(lambda: len(events_for([confirmed.tx_hash])) == 1)
        node.rpc("evm_revert", [snapshot])
        node.rpc("anvil_mine", [hex(3)])
        wait_for(
            lambda: (
                Alert.objects.filter(key__startswith="chain.").exists()
                and listener.stats.alerts >= 1
            )
        )
    assert Alert.objects.filter(
        key__in=["chain.deep_reorg", "chain.confirmed_event_removed"]
    ).exists()
    assert AuditLog.objects.filter(action__startswith="chain.alert.").exists()
    assert Order.objects.filter(chain_tx_hash=confirmed.tx_hash).count() == 1


def test_foreign_and_malformed_logs_are_quarantined_and_the_listener_carries_on(
    anvil_factory, chain_user, run_listener
):
    node = anvil_factory()
    contracts = deploy_contract_set(node)
    client = node.client()
    user = chain_user(2, node=node, contracts=contracts)
    user.approve()
    early = user.deposit("AAPL", 10**6)  # before the listener's start block
    rogue = client.transact(
        private_key=DEPLOYER_KEY, contract="RogueEmitter", address=None
    ).contract_address
    config = listener_config(node, contracts)
    deposit_topic = event_topic("Deposit")
    word = lambda n: "0x" + n.to_bytes(32, "big").hex()  # noqa: E731
    user_topic = "0x" + bytes(12).hex() + user.address[2:].lower()

    def emit_at_vault(topics, data):
        client.transact(
            private_key=DEPLOYER_KEY,
            contract="RogueEmitter",
            address=contracts.vault,
            fn="emitRaw",
            args=(topics, data),
        )

    with run_listener(config) as listener:
        vault_code = client.rpc("eth_getCode", [contracts.vault, "latest"])
        client.rpc("anvil_setCode", [contracts.vault, client.rpc("eth_getCode", [rogue, "latest"])])
        try:
            emit_at_vault([deposit_topic, word(900), user_topic], b"\x01\x02")  # wrong shape
            emit_at_vault(["0x" + keccak(text="Nope(uint256)").hex()], bytes(32))  # unknown
            bad_symbol = "0x" + (b"\xff" * 32).hex()
            emit_at_vault([deposit_topic, word(901), user_topic, bad_symbol], bytes(32))
        finally:
            client.rpc("anvil_setCode", [contracts.vault, vault_code])
        unknown_cancel = user.request_cancel(user.deposit_id(early))
        good = user.deposit("AAPL", 2 * 10**6)
        wait_for(lambda: len(events_for([good.tx_hash])) == 1)
        # Stats move after the batch's commit, a moment after its rows can be read.
        wait_for(lambda: listener.stats.quarantined >= 4)
        assert listener.stats.quarantined == 4

    reasons = sorted(QuarantinedLog.objects.values_list("reason", flat=True))
    assert reasons == ["cancel_for_unknown_deposit", "undecodable", "undecodable", "unknown_topic"]
    assert QuarantinedLog.objects.filter(tx_hash=unknown_cancel.tx_hash).exists()
    assert AuditLog.objects.filter(action="chain.log_quarantined").count() == 4
    assert not Order.objects.filter(onchain_id__in=[900, 901]).exists()

    # A log from another contract handed to the batch writer is quarantined, not acted on.
    receipt = client.transact(
        private_key=DEPLOYER_KEY,
        contract="RogueEmitter",
        address=rogue,
        fn="emitRaw",
        args=(
            [deposit_topic, word(902), user_topic, "0x" + symbol_to_bytes32("AAPL").hex()],
            word(5),
        ),
    )
    foreign = client.get_logs(
        from_block=receipt.block_number, to_block=receipt.block_number, address=rogue
    )
    cursor = ChainCursor.objects.get(address=contracts.vault)
    result = chain_logs_commit(
        chain_id=contracts.chain_id,
        vault=contracts.vault,
        logs=foreign,
        to_block=max(receipt.block_number, cursor.block_number + 1),
        to_block_hash="",
        head=receipt.block_number,
        actor="test",
    )
    assert result.quarantined == 1 and result.committed == 0
    assert QuarantinedLog.objects.get(tx_hash=receipt.tx_hash).reason == "foreign_address"


def test_poll_mode_for_http_only_nodes(anvil, deployed_contracts, chain_user, run_listener):
    config = listener_config(anvil, deployed_contracts, poll_interval=0.05)
    user = chain_user(5)
    user.approve()
    with run_listener(config, mode="poll") as listener:
        txs = [user.deposit("TSLA", 10**6 + i).tx_hash for i in range(5)]
        wait_for(lambda: len(events_for(txs)) == 5)
        wait_for(lambda: listener.stats.lag == 0)
    assert Order.objects.filter(chain_tx_hash__in=txs).count() == 5
    assert address_of_key(user.key) == user.address
