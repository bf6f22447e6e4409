"""Reorgs under load on a real anvil node (evm_snapshot / evm_revert, then the same signed
deposits re-mined in another order, some of them never again), deeper and shallower than the
listener's confirmation depth: no wrong payee, no second order for a deposit, no lost deposit;
every order ends settled (its request re-appeared) or closed with nothing paid (it vanished),
with alerts; the settlement records agree with the chain after the sender heals (vanished
settlements re-sent, the nonce sequence rebuilt)."""

import time

import pytest

from chain import selectors
from chain.client import address_of_key, decode_log, symbol_to_bytes32
from chain.healing import settlements_heal
from chain.models import ChainEvent, NonceSequence, SettlementStatus, SettlementTx
from chain.services import settlement_check, settlement_submit
from chain.settlement import DepositSettlement, SettlementState
from core.models import Alert, AuditLog
from ops.reconciliation import Reconciliation
from ops.reconciliation.chain import check_orders_against_chain, read_chain
from ops.reconciliation.database import vanished_order_ids
from orders.models import Order, OrderStatus
from orders.pipeline import order_settle
from orders.pipeline.common import settle_untraded
from tests.fixtures.chain import (
    ALL_KEYS,
    OPERATOR_KEY,
    ChainUser,
    deploy_contract_set,
    listener_config,
    point_settings_at,
    wait_for,
)
from tests.fixtures.pipeline import fast_pipeline

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]

UNIT, TOKEN = 10**6, 10**18
USERS = ALL_KEYS[2:7]  # five users
SYMBOLS = ("AAPL", "TSLA", "NVDA")
PER_USER = 5  # 25 deposits


def signed_deposits(node, contracts, key):
    """A user's deposits, signed once with consecutive nonces (so they can be re-mined):
    (address, symbol, USDT base units, raw transaction) each."""
    user = ChainUser(node, contracts, key)
    offset = int(user.address[-4:], 16) % 50
    deposits = [
        (SYMBOLS[2 * k % len(SYMBOLS)], (100 + 37 * k + offset) * UNIT) for k in range(PER_USER)
    ]
    raws = user.sign_deposits(deposits)
    return [
        (user.address, symbol, amount, raw)
        for (symbol, amount), raw in zip(deposits, raws, strict=True)
    ]


def prepare(node, contracts):
    """Every user's deposits, approved and signed (`signed_deposits`): key -> list."""
    return {key: signed_deposits(node, contracts, key) for key in USERS}


def mine_round_robin(client, plan, users, skip=frozenset()):
    """Send each user's k-th deposit in turn (users in the order given): one block each."""
    for k in range(PER_USER):
        for key in users:
            if (key, k) not in skip:
                client.send_raw(plan[key][k][3])


def request_of(order, mint=TOKEN // 100, refund=UNIT):
    return DepositSettlement(
        deposit_id=int(order.onchain_id),
        user=order.user_address,
        symbol=order.symbol,
        deposit_usdt_units=int(order.usdt_amount),
        mint_token_units=mint,
        refund_usdt_units=refund,
        order_id=order.pk,
    )


def assert_orders_name_the_vault_records(client, contracts, orders):
    for order in orders:
        user, symbol, amount, _cancel, _settled = client.call(
            "BroncoVault", contracts.vault, "deposits", int(order.onchain_id)
        )
        assert (user, int(amount)) == (order.user_address, int(order.usdt_amount)), order
        assert symbol == "0x" + symbol_to_bytes32(order.symbol).hex()


def settled_payees(client, contracts, from_block):
    """deposit id -> the user every DepositSettled on the canonical chain paid."""
    paid = {}
    for log in client.get_logs(
        from_block=from_block, to_block=client.block_number(), address=contracts.vault
    ):
        event = decode_log(log)
        if event.name == "DepositSettled":
            assert event.deposit_id not in paid, "a deposit settled twice"
            paid[event.deposit_id] = event.user
    return paid


def chain_before_reorg(anvil_factory, settings, *, confirmations):
    """A fresh node and contract set with the users' deposits signed, a snapshot to revert to,
    and a listener config from the first block after it: (node, contracts, client, plan,
    snapshot, start block, config)."""
    node = anvil_factory()
    contracts = deploy_contract_set(node)
    point_settings_at(settings, node, contracts)
    client = node.client()
    plan = prepare(node, contracts)
    snapshot = node.rpc("evm_snapshot")
    start = client.block_number() + 1
    config = listener_config(node, contracts, confirmations=confirmations, start_block=start)
    return node, contracts, client, plan, snapshot, start, config


def test_a_reorg_beyond_the_confirmation_depth_never_pays_the_wrong_person(
    anvil_factory, run_listener, settings
):
    node, contracts, client, plan, snapshot, start, config = chain_before_reorg(
        anvil_factory, settings, confirmations=2
    )
    last_user = USERS[-1]
    vanished = {(last_user, 3), (last_user, 4)}  # never mined again

    with run_listener(config, mode="poll") as listener:
        mine_round_robin(client, plan, USERS)
        node.rpc("anvil_mine", [hex(3)])
        wait_for(lambda: Order.objects.count() == len(USERS) * PER_USER, timeout=60)
        before = {int(o.onchain_id): o for o in Order.objects.all()}
        # Bronco settles ten of them (one of which will vanish) before the reorg.
        to_settle = sorted(before.values(), key=lambda o: o.pk)[:9]
        gone_ids = {
            int(o.onchain_id)
            for o in before.values()
            if any(
                o.user_address == plan[key][k][0]
                and o.usdt_amount == plan[key][k][2]
                and o.symbol == plan[key][k][1]
                for key, k in vanished
            )
        }
        assert len(gone_ids) == 2
        to_settle.append(before[min(gone_ids)])
        for order in to_settle:
            settlement_submit(request=request_of(order), actor="test")
        for order in to_settle:
            wait_for(
                lambda o=order: (
                    settlement_check(kind="deposit", vault_id=int(o.onchain_id))
                    == SettlementState.CONFIRMED
                )
            )
        operator = address_of_key(OPERATOR_KEY)
        stored_next = NonceSequence.objects.get(address=operator).next_nonce

        # The reorg: everything since the snapshot is replaced (35+ blocks, far beyond the
        # confirmation depth); the deposits come back in another order, two never do.
        assert node.rpc("evm_revert", [snapshot]) is True
        mine_round_robin(client, plan, list(reversed(USERS)), skip=vanished)
        node.rpc("anvil_mine", [hex(6)])
        wait_for(lambda: listener.stats.reorgs >= 1, timeout=30)
        wait_for(
            lambda: (
                Order.objects.filter(status=OrderStatus.FAILED).count() == 2
                and not Order.objects.filter(held_at__isnull=False).exists()
            ),
            timeout=60,
        )

    # No second order, no lost deposit: the re-mined deposits kept their ids and orders.
    orders = {int(o.onchain_id): o for o in Order.objects.all()}
    assert set(orders) == set(before)
    remined = [o for i, o in orders.items() if i not in gone_ids]
    assert len(remined) == len(USERS) * PER_USER - 2
    assert all(o.pk == before[int(o.onchain_id)].pk and o.held_at is None for o in remined)
    assert_orders_name_the_vault_records(client, contracts, remined)
    for vault_id in gone_ids:
        assert orders[vault_id].status == OrderStatus.FAILED
        assert int(client.call("BroncoVault", contracts.vault, "deposits", vault_id)[0], 16) == 0
    # Each deposit is recorded live once; the replaced rows stay as history.
    live = ChainEvent.objects.filter(name="Deposit", removed_at__isnull=True)
    assert live.count() == len(remined)
    assert live.values("vault_id").distinct().count() == len(remined)
    assert ChainEvent.objects.filter(name="Deposit", removed_at__isnull=False).count() == 25
    assert Alert.objects.filter(key="chain.deep_reorg").exists()
    assert Alert.objects.filter(key="chain.request_vanished").exists()

    # The sender heals: what it had confirmed in the replaced blocks is gone from the chain.
    assert client.pending_nonce(operator) < stored_next  # the gap the reorg left
    reopened = settlements_heal(from_block=start, actor="test")
    assert reopened == len(to_settle)
    for order in to_settle:
        wanted = (
            SettlementState.REVERTED
            if int(order.onchain_id) in gone_ids
            else SettlementState.CONFIRMED
        )
        wait_for(
            lambda o=order, w=wanted: (
                settlement_check(kind="deposit", vault_id=int(o.onchain_id)) == w
            ),
            timeout=30,
        )
    assert NonceSequence.objects.get(address=operator).next_nonce == client.pending_nonce(operator)
    # The records agree with the chain; nobody was paid another's settlement.
    paid = settled_payees(client, contracts, start)
    for row in SettlementTx.objects.all():
        vault_id = int(row.onchain_id)
        if vault_id in gone_ids:
            assert row.status == SettlementStatus.REVERTED and vault_id not in paid
            assert Alert.objects.filter(key=f"chain.settlement_refused:{row.pk}").exists()
        else:
            assert row.status == SettlementStatus.CONFIRMED
            assert selectors.is_settled(kind="deposit", onchain_id=vault_id)
            assert paid[vault_id] == orders[vault_id].user_address
    assert set(paid) == {int(o.onchain_id) for o in to_settle} - gone_ids
    # Reconciliation reads the chain the same way: nobody paid twice or paid another's trade,
    # and the vanished orders are accounted for (closed, nothing on chain).
    result = Reconciliation()
    check_orders_against_chain(result, list(Order.objects.all()), read_chain(), set())
    wrong = [
        str(d)
        for d in result.discrepancies
        if "not the order's user" in str(d)
        or "times on chain" in str(d)
        or "vanished" in str(d)
        or "no such vault event" in str(d)
    ]
    assert wrong == []


def test_a_reorg_within_the_confirmation_depth_simply_re_reads(
    anvil_factory, run_listener, settings
):
    node = anvil_factory()
    contracts = deploy_contract_set(node)
    point_settings_at(settings, node, contracts)
    client = node.client()
    plan = prepare(node, contracts)
    snapshot = node.rpc("evm_snapshot")
    config = listener_config(
        node, contracts, confirmations=40, start_block=client.block_number() + 1
    )
    with run_listener(config, mode="poll") as listener:
        mine_round_robin(client, plan, USERS)
        wait_for(lambda: listener.stats.head >= client.block_number(), timeout=30)
        assert Order.objects.count() == 0  # nothing confirmed, nothing acted on
        assert node.rpc("evm_revert", [snapshot]) is True
        mine_round_robin(client, plan, list(reversed(USERS)))
        node.rpc("anvil_mine", [hex(45)])
        wait_for(lambda: Order.objects.count() == len(USERS) * PER_USER, timeout=60)
        assert listener.stats.reorgs == 0
    orders = list(Order.objects.all())
    assert len({int(o.onchain_id) for o in orders}) == len(orders)
    assert not any(o.held_at for o in orders)
    assert_orders_name_the_vault_records(client, contracts, orders)
    assert ChainEvent.objects.filter(name="Deposit").count() == len(orders)
    assert not Alert.objects.filter(key__startswith="chain.").exists()


def test_a_settlement_re_mined_with_the_other_outcome_is_judged_again(
    anvil_factory, run_listener, settings
):
    """A reorg re-mines transactions in another order: a settlement that was confirmed can
    revert when re-mined (its deposit did not come back before it). The heal must not keep
    the old verdict because a receipt exists: it reopens the settlement, the check judges
    the new receipt (REVERTED, alerted), and nothing claims the user was paid."""
    node, contracts, client, plan, snapshot, start, config = chain_before_reorg(
        anvil_factory, settings, confirmations=1
    )
    key = USERS[0]
    with run_listener(config, mode="poll") as listener:
        client.send_raw(plan[key][0][3])
        node.rpc("anvil_mine", [hex(2)])
        wait_for(lambda: Order.objects.count() == 1, timeout=60)
        order = Order.objects.get()
        settlement_submit(request=request_of(order), actor="test")
        wait_for(
            lambda: (
                settlement_check(kind="deposit", vault_id=int(order.onchain_id))
                == SettlementState.CONFIRMED
            )
        )
        row = SettlementTx.objects.get()
        assert row.status == SettlementStatus.CONFIRMED and row.block_number >= start
        raw = row.attempts.get(tx_hash=row.tx_hash).raw_tx

        # The reorg: the settlement comes back from the mempool, its deposit does not.
        assert node.rpc("evm_revert", [snapshot]) is True
        client.send_raw(raw)
        node.rpc("anvil_mine", [hex(4)])
        receipt = client.receipt(row.tx_hash)
        assert receipt is not None and not receipt.succeeded  # re-mined, reverted
        wait_for(lambda: listener.stats.reorgs >= 1, timeout=30)

    assert settlements_heal(from_block=start, actor="test") == 1
    row.refresh_from_db()
    assert row.status == SettlementStatus.SENT and "other outcome" in row.last_error
    assert (
        settlement_check(kind="deposit", vault_id=int(order.onchain_id)) == SettlementState.REVERTED
    )
    row.refresh_from_db()
    assert row.status == SettlementStatus.REVERTED
    assert row.block_number == receipt.block_number
    assert Alert.objects.filter(key=f"chain.settlement_refused:{row.pk}").exists()
    assert not selectors.is_settled(kind="deposit", onchain_id=int(order.onchain_id))
    # A second heal finds the verdict holding: nothing reopened again.
    assert settlements_heal(from_block=start, actor="test") == 0


@pytest.mark.parametrize("settling", [False, True], ids=["waiting", "settlement in flight"])
def test_a_deposit_re_mined_under_another_id_is_a_new_order_and_the_old_one_closes(
    anvil_factory, run_listener, settings, settling
):
    """A vault id counts the user's requests, so a reorg that drops (or reverts) one of a
    user's requests gives that user's next request, re-mined from the same signed
    transaction, another id. Bronco must not wait for the old id to come back: its order
    closes with nothing paid (alerted), the re-mined request is an order of its own, and
    nothing stays held. With its settlement sent before the reorg (and sent again with the
    replaced blocks' transactions: it reverts, the id is gone), the old order must not stay
    SETTLING either (the 10,000-order chaos run's order 2120)."""
    fast_pipeline(settings)
    node = anvil_factory()
    contracts = deploy_contract_set(node)
    point_settings_at(settings, node, contracts)
    client = node.client()
    prepare(node, contracts)
    user_key, funder_key = USERS[0], USERS[1]
    user = address_of_key(user_key)
    fees = client.fee_quote(min_priority_fee=10**9)

    def signed(key, contract, address, fn, args, nonce):
        return client.sign(
            private_key=key,
            contract=contract,
            address=address,
            fn=fn,
            args=args,
            nonce=nonce,
            gas_limit=300_000,
            max_fee_per_gas=4 * fees.base_fee_per_gas + 10**10,
            max_priority_fee_per_gas=10**9,
            chain_id=contracts.chain_id,
        )

    nonce = client.pending_nonce(user)
    funding = signed(
        funder_key,
        "MockUSDT",
        contracts.usdt,
        "transfer",
        (user, 600_000 * UNIT),
        client.pending_nonce(address_of_key(funder_key)),
    )
    big = signed(
        user_key, "BroncoVault", contracts.vault, "deposit",
        (symbol_to_bytes32("AAPL"), 1_500_000 * UNIT), nonce,
    )  # fmt: skip
    small = signed(
        user_key, "BroncoVault", contracts.vault, "deposit",
        (symbol_to_bytes32("TSLA"), 250 * UNIT), nonce + 1,
    )  # fmt: skip
    snapshot = node.rpc("evm_snapshot")
    start = client.block_number() + 1
    config = listener_config(node, contracts, confirmations=2, start_block=start)
    with run_listener(config, mode="poll") as listener:
        for tx in (funding, big, small):
            client.send_raw(tx.raw)
        node.rpc("anvil_mine", [hex(3)])
        wait_for(lambda: Order.objects.count() == 2, timeout=60)
        before = {o.symbol: o for o in Order.objects.all()}
        resent = [big.raw, small.raw]
        if settling:
            # The small deposit is refused and its refund sent: mined, not yet confirmed.
            settings.CHAIN_SETTLEMENT_CONFIRMATIONS = 4
            order = before["TSLA"]
            settle_untraded(order, outcome=OrderStatus.FAILED, reason="test", stage="test")
            assert order_settle(order_id=order.pk) is not None
            order.refresh_from_db()
            assert order.status == OrderStatus.SETTLING and order.settlement_tx_hash
            resent.append(client.rpc("eth_getRawTransactionByHash", [order.settlement_tx_hash]))

        # The reorg: the user's two deposits come back, the funding does not. The big one
        # reverts, so the small one takes its place in the user's count: another id.
        assert node.rpc("evm_revert", [snapshot]) is True
        for raw in resent:
            client.send_raw(raw)
        node.rpc("anvil_mine", [hex(6)])
        assert not client.receipt(big.tx_hash).succeeded
        assert client.receipt(small.tx_hash).succeeded
        wait_for(lambda: listener.stats.reorgs >= 1, timeout=30)

        def settled_or_closed() -> bool:
            # The pipeline's settle stage follows the old order meanwhile, as it would.
            for o in Order.objects.filter(status=OrderStatus.SETTLING):
                order_settle(order_id=o.pk)
            return (
                Order.objects.count() == 3
                and Order.objects.filter(status=OrderStatus.FAILED).count() == 2
                and not Order.objects.filter(held_at__isnull=False).exists()
            )

        wait_for(settled_or_closed, timeout=60)

    live = ChainEvent.objects.get(name="Deposit", removed_at__isnull=True)
    assert live.tx_hash.lower() == small.tx_hash.lower()
    assert int(live.vault_id) != int(before["TSLA"].onchain_id)
    new = Order.objects.get(onchain_id=live.vault_id)
    assert (new.user_address, new.symbol, int(new.usdt_amount)) == (user, "TSLA", 250 * UNIT)
    assert new.status != OrderStatus.FAILED and new.held_at is None
    for old in before.values():
        old.refresh_from_db()
        assert old.status == OrderStatus.FAILED
        assert (
            int(client.call("BroncoVault", contracts.vault, "deposits", int(old.onchain_id))[0], 16)
            == 0
        )
    assert_orders_name_the_vault_records(client, contracts, [new])
    assert Alert.objects.filter(key="chain.request_vanished").exists()


def _settle_pending(until) -> bool:
    """The pipeline's settle stage, as its runs would call it, then the condition."""
    for o in Order.objects.filter(status=OrderStatus.SETTLING):
        order_settle(order_id=o.pk)
    return until()


def test_a_request_mined_again_after_its_order_was_closed_revives_the_order(
    anvil_factory, run_listener, settings
):
    """A reorg drops a deposit; Bronco closes its order as vanished (nothing in the pool,
    nothing at its id). Later the same signed transaction is mined after all (a node that
    had dropped it from its pool hears it again from a peer): the user's USDT is in the
    vault again. The order must not stay FAILED with the money in the vault (the
    10,000-order chaos run left 6 such deposits): it is revived, settles (here, untraded: a
    full refund), and says so loudly."""
    fast_pipeline(settings)
    node, contracts, client, plan, snapshot, start, config = chain_before_reorg(
        anvil_factory, settings, confirmations=1
    )
    key = USERS[0]
    address, _symbol, amount, raw = plan[key][0]
    with run_listener(config, mode="poll") as listener:
        client.send_raw(raw)
        node.rpc("anvil_mine", [hex(2)])
        wait_for(lambda: Order.objects.count() == 1, timeout=60)
        order = Order.objects.get()
        paid_in = selectors.usdt_balance(address=address)

        assert node.rpc("evm_revert", [snapshot]) is True
        node.rpc("anvil_mine", [hex(6)])  # the deposit is gone, and in no pool
        wait_for(lambda: listener.stats.reorgs >= 1, timeout=30)
        wait_for(
            lambda: Order.objects.filter(pk=order.pk, status=OrderStatus.FAILED).exists(),
            timeout=60,
        )
        assert Alert.objects.filter(key="chain.request_vanished").exists()

        client.send_raw(raw)  # mined after all: the same request, the same id
        node.rpc("anvil_mine", [hex(2)])
        assert selectors.usdt_balance(address=address) == paid_in
        wait_for(
            lambda: _settle_pending(
                lambda: selectors.is_settled(kind="deposit", onchain_id=int(order.onchain_id))
            ),
            timeout=60,
        )
    order.refresh_from_db()
    assert order.is_terminal and order.settlement_tx_hash
    assert int(order.refund_usdt) == amount  # untraded when it was closed: a full refund
    assert selectors.usdt_balance(address=address) == paid_in + amount
    actions = list(
        AuditLog.objects.filter(order_id=order.pk)
        .filter(action__in=("order.closed_vanished", "order.revived", "order.settled"))
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["order.closed_vanished", "order.revived", "order.settled"]
    assert Alert.objects.get(key=f"order.revived:{order.pk}").severity == "critical"
    assert Alert.objects.filter(key="chain.request_returned").exists()
    # reconcile's ledger counts it again: it is no longer an order that brought nothing in.
    assert order.pk not in vanished_order_ids()


def test_a_request_waiting_in_the_pool_after_a_reorg_keeps_its_order_held(
    anvil_factory, run_listener, settings
):
    """The reorg returns a user's second deposit to the pool, where it waits (here behind a
    nonce gap: the user's first deposit is not back yet; in the chaos run, behind a base fee
    above its fee cap). Its order stays held, not closed as vanished, while the node has it;
    the first deposit, in no pool, is closed. When the first is sent again both are mined:
    the second's order is released, the first's revived."""
    node, contracts, client, plan, snapshot, start, config = chain_before_reorg(
        anvil_factory, settings, confirmations=1
    )
    first, second = plan[USERS[0]][0], plan[USERS[0]][1]
    with run_listener(config, mode="poll") as listener:
        client.send_raw(first[3])
        client.send_raw(second[3])
        node.rpc("anvil_mine", [hex(2)])
        wait_for(lambda: Order.objects.count() == 2, timeout=60)
        orders = {o.usdt_amount: o for o in Order.objects.all()}
        gone, waiting = orders[first[2]], orders[second[2]]

        assert node.rpc("evm_revert", [snapshot]) is True
        second_hash = client.send_raw(second[3])  # back in the pool, behind the first's nonce
        node.rpc("anvil_mine", [hex(8)])
        assert client.receipt(second_hash) is None and client.transaction_known(second_hash)
        wait_for(lambda: listener.stats.reorgs >= 1, timeout=30)
        wait_for(
            lambda: Order.objects.filter(pk=gone.pk, status=OrderStatus.FAILED).exists(),
            timeout=30,
        )
        node.rpc("anvil_mine", [hex(2)])
        wait_for(lambda: listener.stats.checkpoint >= client.block_number(), timeout=30)
        time.sleep(1.0)  # more listener rounds, well past the replaced blocks
        waiting.refresh_from_db()
        assert waiting.status == OrderStatus.PENDING and waiting.held_at is not None

        client.send_raw(first[3])  # both are mined now
        node.rpc("anvil_mine", [hex(2)])
        assert client.receipt(second_hash).succeeded
        wait_for(
            lambda: (
                Order.objects.filter(pk=waiting.pk, held_at__isnull=True).exists()
                and Order.objects.filter(pk=gone.pk, status=OrderStatus.SETTLING).exists()
            ),
            timeout=30,
        )
    waiting.refresh_from_db()
    assert waiting.status == OrderStatus.PENDING
    assert Alert.objects.filter(key=f"order.revived:{gone.pk}").exists()
    assert not Alert.objects.filter(key=f"order.vanished_traded:{waiting.pk}").exists()
