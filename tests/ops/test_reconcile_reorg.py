"""`reconcile` after a reorg drops a deposit for good (a real anvil reorg and the listener):
the order is closed with nothing paid and reconciliation passes (the chaos run's failure:
the closed order's USDT was still counted as deposited); the same order's request coming
back on chain, and then settled there, must fail it."""

import pytest

from chain.services import settlement_check, settlement_submit
from chain.settlement import SettlementState
from ops.reconciliation import reconcile
from orders.models import Order, OrderStatus
from tests.chain.test_reorg import prepare, request_of
from tests.fixtures.chain import ALL_KEYS, listener_config, wait_for

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]

USERS = ALL_KEYS[2:7]
PER_USER = 5  # tests.chain.test_reorg's plan: five deposits each


def _text(result) -> str:
    return "\n".join(str(d) for d in result.discrepancies)


def _closed_one_and_released_the_rest() -> bool:
    held = Order.objects.filter(held_at__isnull=False).exists()
    return not held and Order.objects.filter(status=OrderStatus.FAILED).count() == 1


def test_a_deposit_a_reorg_dropped_reconciles_and_its_return_does_not(own_chain, run_listener):
    node, contracts = own_chain
    plan = prepare(node, contracts)
    user = USERS[0]
    dropped_raw = plan[user][PER_USER - 1][3]  # the user's last deposit: its nonce stays free
    snapshot = node.rpc("evm_snapshot")
    client = node.client()
    start = client.block_number() + 1
    config = listener_config(node, contracts, confirmations=2, start_block=start)
    with run_listener(config, mode="poll") as ln:
        for _address, _symbol, _amount, raw in plan[user]:
            client.send_raw(raw)
        node.rpc("anvil_mine", [hex(3)])
        wait_for(lambda: Order.objects.count() == PER_USER, timeout=60)
        before = reconcile(check_broker=False)
        assert before.ok, _text(before)

        # The reorg: every deposit comes back but the last, which is gone for good.
        assert node.rpc("evm_revert", [snapshot]) is True
        for _address, _symbol, _amount, raw in plan[user][:-1]:
            client.send_raw(raw)
        node.rpc("anvil_mine", [hex(6)])
        wait_for(lambda: ln.stats.reorgs >= 1 and _closed_one_and_released_the_rest(), timeout=60)
    gone = Order.objects.get(status=OrderStatus.FAILED)
    assert gone.outcome == OrderStatus.FAILED and gone.cost_usdt == 0

    after = reconcile(check_broker=False)
    assert after.ok, _text(after)  # before the fix: "USDT in != cost ..." and "deposits !="
    assert after.facts["deposit_events"] == PER_USER - 1
    assert after.facts["orders_vanished_in_reorg"] == 1

    # The user's signed transaction is sent again (anyone may): the request Bronco closed as
    # vanished is back on chain at the same id, and reconcile must say so.
    client.wait_receipt(client.send_raw(dropped_raw))
    back = reconcile(check_broker=False)
    assert not back.ok
    assert f"order {gone.pk} " in _text(back)
    assert "closed as vanished in a reorg, but its request is on chain" in _text(back)

    # ... and settled on chain although the database says nothing was paid.
    settlement_submit(request=request_of(gone), actor="test")
    wait_for(
        lambda: (
            settlement_check(kind="deposit", vault_id=int(gone.onchain_id))
            == SettlementState.CONFIRMED
        ),
        timeout=30,
    )
    paid = reconcile(check_broker=False)
    text = _text(paid)
    assert "closed as vanished in a reorg, but settled 1 time(s) on chain" in text, text
    assert f"token {gone.symbol}" in text, text  # tokens minted for no order
    assert "vault USDT" in text, text
