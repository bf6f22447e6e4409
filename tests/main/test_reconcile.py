"""`reconcile` against a real run (anvil, OpenD simulator, worker, listener): it passes on a
clean run and catches what is injected behind Bronco's back."""

import pytest
from django.core.management import call_command
from django.db.models import F
from web3 import Web3

from chain import selectors as chain_selectors
from chain.client import contract_abi
from chain.models import SettlementBatch, SettlementStatus, SettlementTx
from core.money import TOKEN_UNIT
from ops.reconciliation import reconcile
from orders.models import Order, OrderType
from tests.main.conftest import OPENING_CASH, run_small_scenario

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

OPENING = "USD=10000000,HKD=50000000"


def _reconcile_exit_code(**options) -> int:
    try:
        call_command("reconcile", opening_cash=OPENING, **options)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _subjects(result) -> str:
    return "\n".join(str(d) for d in result.discrepancies)


def test_clean_run_reconciles_then_an_altered_amount_is_caught(main_stack, capsys):
    run_small_scenario(main_stack)
    clean = reconcile(opening_cash=OPENING_CASH)
    assert clean.ok, _subjects(clean)
    assert clean.facts["deposit_events"] == 6
    assert _reconcile_exit_code() == 0
    assert "reconciliation: OK" in capsys.readouterr().out

    # Fractional fills refund only rounding dust: any settled deposit will do.
    refunded = (
        Order.objects.filter(order_type=OrderType.BUY, status="EXECUTED").order_by("pk").first()
    )
    Order.objects.filter(pk=refunded.pk).update(refund_usdt=F("refund_usdt") + 1)
    altered = reconcile(opening_cash=OPENING_CASH)
    text = _subjects(altered)
    assert not altered.ok
    assert f"order {refunded.pk} " in text
    assert "!= cost" in text  # conservation inside the database
    assert "on chain" in text  # the settlement event paid something else
    assert "vault USDT" in text  # and the vault's outflows no longer add up
    assert _reconcile_exit_code() == 1
    out = capsys.readouterr().out
    assert "DISCREPANCY" in out and "reconciliation: FAILED" in out

    Order.objects.filter(pk=refunded.pk).update(refund_usdt=F("refund_usdt") - 1)
    assert reconcile(opening_cash=OPENING_CASH).ok


def test_tokens_minted_outside_bronco_and_a_foreign_position_are_caught(main_stack):
    driver = run_small_scenario(main_stack, seed=11)
    assert reconcile(opening_cash=OPENING_CASH).ok
    vault = main_stack.contracts.vault
    token = chain_selectors.token_address(symbol="AAPL")
    stranger = driver.addresses[0]

    # Only the vault can mint: impersonate it on anvil and mint 5 tokens to a user.
    node = main_stack.node
    data = (
        Web3()
        .eth.contract(abi=contract_abi("StockToken"))
        .encode_abi("mint", args=[stranger, 5 * TOKEN_UNIT])
    )
    node.rpc("anvil_impersonateAccount", [vault])
    node.rpc("anvil_setBalance", [vault, hex(10**18)])
    tx = node.rpc("eth_sendTransaction", [{"from": vault, "to": token, "data": data}])
    node.rpc("anvil_stopImpersonatingAccount", [vault])
    assert node.client().wait_receipt(tx).succeeded

    minted = reconcile(opening_cash=OPENING_CASH)
    assert not minted.ok
    assert any(
        d.subject == "token AAPL" and f"+{5 * TOKEN_UNIT} units unexplained" in d.detail
        for d in minted.discrepancies
    ), _subjects(minted)

    # A position at the broker that no Bronco order explains.
    account = main_stack.sim.account()
    aapl = account["positions"].get("US.AAPL", "0")
    main_stack.sim.set_position(code="US.AAPL", qty=str(int(float(aapl)) + 3))
    both = reconcile(opening_cash=OPENING_CASH)
    assert any(d.subject == "position US.AAPL" for d in both.discrepancies), _subjects(both)


def test_a_recorded_settlement_hash_that_did_not_emit_the_settled_event_is_caught(main_stack):
    run_small_scenario(main_stack, seed=5)
    assert reconcile(opening_cash=OPENING_CASH).ok
    record = (
        SettlementTx.objects.filter(kind="deposit", status=SettlementStatus.CONFIRMED)
        .exclude(order_id=None)
        .select_related("batch")
        .order_by("pk")
        .first()
    )
    order = Order.objects.get(pk=record.order_id)
    emitted = record.tx_hash
    assert order.settlement_tx_hash == emitted
    # What the lagging-node bug recorded: another transaction (here the deposit's own).
    SettlementTx.objects.filter(pk=record.pk).update(tx_hash=order.chain_tx_hash)
    doctored = reconcile(opening_cash=OPENING_CASH)
    text = _subjects(doctored)
    assert not doctored.ok
    assert f"settlement record tx {order.chain_tx_hash} is not {emitted}" in text, text
    assert "the tx that emitted DepositSettled" in text
    SettlementTx.objects.filter(pk=record.pk).update(tx_hash=emitted)

    Order.objects.filter(pk=order.pk).update(settlement_tx_hash="0x" + "ab" * 32)
    text = _subjects(reconcile(opening_cash=OPENING_CASH))
    assert f"order's settlement tx 0x{'ab' * 32} is not {emitted}" in text, text
    Order.objects.filter(pk=order.pk).update(settlement_tx_hash=emitted)

    if record.batch is not None:  # a batched settlement: its batch's hash is checked too
        SettlementBatch.objects.filter(pk=record.batch.pk).update(tx_hash="0x" + "cd" * 32)
        text = _subjects(reconcile(opening_cash=OPENING_CASH))
        assert f"settlement batch {record.batch.pk} tx 0x{'cd' * 32}" in text, text
        SettlementBatch.objects.filter(pk=record.batch.pk).update(tx_hash=emitted)
    assert reconcile(opening_cash=OPENING_CASH).ok
