"""The vault's user order terms and what it enforces, on a real anvil node: four-argument
deposit and redeem (price bound, expiry; 0 = none / the default) whose terms are hashed into
the id; the published fee schedule (admin only, FeeScheduleSet) and its quote; every new
refusal names the id and the values (price above / below the bound, fee above the schedule,
a settlement after the expiry that is not a full refund or return, out-of-range expiry);
redeems cancel like deposits; the two-argument calls keep working with the default expiry."""

import pytest

from chain import events
from chain.client import symbol_to_bytes32
from tests.chain.test_contract_reorg_safety import reverted_with, vault  # noqa: F401
from tests.fixtures.chain import DEPLOYER_KEY, OPERATOR_KEY, named_deposit, named_redeem

pytestmark = [pytest.mark.chain, pytest.mark.django_db]

UNIT, TOKEN = 10**6, 10**18
KIND_DEPOSIT, KIND_REDEEM = 1, 2
DAY = 24 * 3600


def _now(node):
    return int(node.client().rpc("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)


def _advance(node, seconds):
    node.client().rpc("evm_increaseTime", [seconds])
    node.client().rpc("evm_mine", [])


def _deposit(user, symbol, units, bound=0, expiry=0):
    user.approve()
    receipt = user._send(
        "BroncoVault",
        user.contracts.vault,
        "deposit",
        symbol_to_bytes32(symbol),
        units,
        bound,
        expiry,
    )
    return receipt, user.deposit_id(receipt)


def _redeem(user, symbol, shares, bound=0, expiry=0):
    receipt = user._send(
        "BroncoVault",
        user.contracts.vault,
        "redeem",
        symbol_to_bytes32(symbol),
        shares,
        bound,
        expiry,
    )
    return receipt, user.redeem_id(receipt)


def _settle(send, item):
    return send(OPERATOR_KEY, "settleDeposits", [item.batch_element()])


def _settle_redeem(send, item):
    return send(OPERATOR_KEY, "settleRedeems", [item.batch_element()])


def _tokens(send, view, user, symbol="AAPL", shares=10):
    """Give `user` `shares` whole stock tokens (a deposit settled at 1 USDT per share)."""
    deposit_id = user.deposit_id(user.deposit(symbol, shares * UNIT))
    item = named_deposit(deposit_id, mint_token_units=shares * TOKEN, refund_usdt_units=0)
    send(OPERATOR_KEY, *_call(item))


def _call(item):
    fn, args = item.vault_call()
    return (fn, *args)


def test_terms_are_recorded_and_hashed_into_the_id(own_chain, chain_user, vault):  # noqa: F811
    node, _ = own_chain
    send, view = vault
    user = chain_user(2, node=node, contracts=own_chain[1])
    aapl = symbol_to_bytes32("AAPL")
    expiry = _now(node) + 2 * DAY
    receipt, limit_id = _deposit(user, "AAPL", 50 * UNIT, bound=190 * UNIT, expiry=expiry)
    assert view("depositTerms", limit_id) == [190 * UNIT, expiry]
    terms = node.client().receipt_event(
        receipt, address=own_chain[1].vault, event_type=events.DepositTerms
    )
    assert (terms.deposit_id, terms.price_bound_units, terms.expiry) == (
        limit_id,
        190 * UNIT,
        expiry,
    )
    assert limit_id == view(
        "requestIdWithTerms", KIND_DEPOSIT, user.address, 0, aapl, 50 * UNIT, 190 * UNIT, expiry
    )
    # Other terms, same request otherwise: another id (terms are what the request is).
    assert limit_id != view("requestId", KIND_DEPOSIT, user.address, 0, aapl, 50 * UNIT)
    # The two-argument deposit: its id as before, no bound, the default expiry.
    before = _now(node)
    market_id = user.deposit_id(user.deposit("AAPL", 50 * UNIT))
    assert market_id == view("requestId", KIND_DEPOSIT, user.address, 1, aapl, 50 * UNIT)
    bound, expires = view("depositTerms", market_id)
    assert bound == 0 and before + 7 * DAY <= expires <= _now(node) + 7 * DAY
    # A four-argument call with zero terms is the market order, with the same id rule, and
    # like the two-argument call emits no terms event (the terms are in depositTerms).
    receipt, zero_id = _deposit(user, "AAPL", 50 * UNIT)
    assert zero_id == view("requestId", KIND_DEPOSIT, user.address, 2, aapl, 50 * UNIT)
    with pytest.raises(LookupError):
        node.client().receipt_event(
            receipt, address=own_chain[1].vault, event_type=events.DepositTerms
        )
    assert view("depositTerms", zero_id)[1] > 0


def test_expiry_out_of_range_is_refused_and_the_default_is_the_admins(own_chain, chain_user, vault):  # noqa: F811
    node, contracts = own_chain
    send, view = vault
    user = chain_user(3, node=node, contracts=contracts)
    now = _now(node)
    err = reverted_with("ExpiryOutOfRange", _deposit, user, "AAPL", UNIT, 0, now - 1)
    assert err.error_args[0] == now - 1
    reverted_with("ExpiryOutOfRange", _deposit, user, "AAPL", UNIT, 0, now + 31 * DAY)
    reverted_with("AccessControlUnauthorizedAccount", send, user.key, "setDefaultExpiry", DAY)
    reverted_with("ExpiryOutOfRange", send, DEPLOYER_KEY, "setDefaultExpiry", 31 * DAY)
    send(DEPLOYER_KEY, "setDefaultExpiry", DAY)
    assert view("defaultExpiry") == DAY
    deposit_id = user.deposit_id(user.deposit("AAPL", UNIT))
    assert view("depositTerms", deposit_id)[1] <= _now(node) + DAY


def test_fee_schedule_is_published_by_the_admin_and_quoted(own_chain, chain_user, vault):  # noqa: F811
    node, contracts = own_chain
    send, view = vault
    user = chain_user(4, node=node, contracts=contracts)
    # Deployment published Bronco's schedule (NETTING_FEE_RATE 0.1 %, no flat fee).
    assert (view("feeRatePpm"), view("feeFlat")) == (1000, 0)
    assert view("quoteFee", 100 * UNIT) == 100_000
    assert view("quoteFee", 1) == 1  # rounded up
    assert view("quoteFee", 0) == 0
    reverted_with("AccessControlUnauthorizedAccount", send, user.key, "setFeeSchedule", 0, 0)
    reverted_with("AccessControlUnauthorizedAccount", send, OPERATOR_KEY, "setFeeSchedule", 0, 0)
    reverted_with("FeeRateTooHigh", send, DEPLOYER_KEY, "setFeeSchedule", 100_001, 0)
    receipt = send(DEPLOYER_KEY, "setFeeSchedule", 2500, UNIT // 2)
    event = node.client().receipt_event(
        receipt, address=contracts.vault, event_type=events.FeeScheduleSet
    )
    assert (event.rate_ppm, event.flat_usdt_units) == (2500, UNIT // 2)
    assert view("quoteFee", 100 * UNIT) == 250_000 + UNIT // 2


def test_fee_above_the_schedule_is_refused(own_chain, chain_user, vault):  # noqa: F811
    node, contracts = own_chain
    send, view = vault
    user = chain_user(5, node=node, contracts=contracts)
    deposit_id = user.deposit_id(user.deposit("AAPL", 100 * UNIT))
    item = named_deposit(
        deposit_id,
        mint_token_units=TOKEN // 2,
        refund_usdt_units=49 * UNIT,
        cycle_id=1,
        price_per_share_units=100 * UNIT,
        fee_units=100_001,
    )
    err = reverted_with("FeeAboveSchedule", _settle, send, item)
    assert err.error_args == (deposit_id, 100_001, 100_000)
    ok = named_deposit(
        deposit_id,
        mint_token_units=TOKEN // 2,
        refund_usdt_units=49 * UNIT,
        cycle_id=1,
        price_per_share_units=100 * UNIT,
        fee_units=100_000,
    )
    assert _settle(send, ok).succeeded
    assert view("isDepositSettled", deposit_id) is True


def test_price_above_the_deposit_bound_is_refused(own_chain, chain_user, vault):  # noqa: F811
    node, contracts = own_chain
    send, view = vault
    user = chain_user(6, node=node, contracts=contracts)
    _, deposit_id = _deposit(user, "AAPL", 100 * UNIT, bound=10 * UNIT)

    def settlement(tokens):
        # 5 USDT refunded, 0.1 USDT fee: 94.9 USDT bought `tokens`.
        return named_deposit(
            deposit_id,
            mint_token_units=tokens,
            refund_usdt_units=5 * UNIT,
            cycle_id=1,
            price_per_share_units=0,
            fee_units=UNIT // 10,
        )

    err = reverted_with("PriceAboveBound", _settle, send, settlement(9 * TOKEN))
    assert err.error_args == (deposit_id, 94_900_000 // 9, 10 * UNIT)  # 10.544 USDT > 10
    assert _settle(send, settlement(9_490_000_000_000_000_000)).succeeded  # exactly 10 USDT


def test_after_the_expiry_only_a_full_refund_settles(own_chain, chain_user, vault):  # noqa: F811
    node, contracts = own_chain
    send, view = vault
    user = chain_user(7, node=node, contracts=contracts)
    _, deposit_id = _deposit(user, "AAPL", 20 * UNIT, expiry=_now(node) + 100)
    _advance(node, 200)
    partial = named_deposit(deposit_id, mint_token_units=TOKEN // 10, refund_usdt_units=10 * UNIT)
    err = reverted_with("SettlementAfterExpiry", send, OPERATOR_KEY, *_call(partial))
    assert err.error_args[0] == deposit_id and err.error_args[2] == TOKEN // 10
    full = named_deposit(deposit_id, mint_token_units=0, refund_usdt_units=20 * UNIT)
    assert send(OPERATOR_KEY, *_call(full)).succeeded


def test_redeem_terms_bound_expiry_and_cancel(own_chain, chain_user, vault):  # noqa: F811
    node, contracts = own_chain
    send, view = vault
    user = chain_user(8, node=node, contracts=contracts)
    other = chain_user(9, node=node, contracts=contracts)
    _tokens(send, view, user, shares=10)
    expiry = _now(node) + 3600
    receipt, redeem_id = _redeem(user, "AAPL", 4 * TOKEN, bound=50 * UNIT, expiry=expiry)
    assert view("redeemTerms", redeem_id) == [50 * UNIT, expiry]
    terms = node.client().receipt_event(
        receipt, address=contracts.vault, event_type=events.RedeemTerms
    )
    assert (terms.redeem_id, terms.price_bound_units, terms.expiry) == (
        redeem_id,
        50 * UNIT,
        expiry,
    )

    def sold_at(paid, fee=UNIT // 10):
        return named_redeem(
            redeem_id,
            payout_usdt_units=paid,
            return_token_units=0,
            cycle_id=1,
            price_per_share_units=0,
            fee_units=fee,
        )

    # 4 shares for 150 USDT + 0.1 fee: 37.525 per share, below the 50 bound.
    err = reverted_with("PriceBelowBound", _settle_redeem, send, sold_at(150 * UNIT))
    assert err.error_args == (redeem_id, 150_100_000 // 4, 50 * UNIT)
    # Cancel: only the redeemer, once.
    reverted_with(
        "NotRedeemer", other._send, "BroncoVault", contracts.vault, "requestRedeemCancel", redeem_id
    )
    receipt = user._send("BroncoVault", contracts.vault, "requestRedeemCancel", redeem_id)
    event = node.client().receipt_event(
        receipt, address=contracts.vault, event_type=events.RedeemCancelRequested
    )
    assert (event.redeem_id, event.user) == (redeem_id, user.address)
    assert view("redeemCancelRequested", redeem_id) is True
    reverted_with(
        "CancelAlreadyRequested",
        user._send,
        "BroncoVault",
        contracts.vault,
        "requestRedeemCancel",
        redeem_id,
    )
    # After the expiry only the full return settles.
    _advance(node, 7200)
    err = reverted_with("SettlementAfterExpiry", _settle_redeem, send, sold_at(250 * UNIT))
    assert err.error_args[0] == redeem_id and err.error_args[2] == 4 * TOKEN
    returned = named_redeem(
        redeem_id,
        payout_usdt_units=0,
        return_token_units=4 * TOKEN,
        cycle_id=1,
        price_per_share_units=0,
        fee_units=0,
    )
    assert _settle_redeem(send, returned).succeeded


def test_two_argument_redeem_still_works_and_settles(own_chain, chain_user, vault):  # noqa: F811
    node, contracts = own_chain
    send, view = vault
    user = chain_user(2, node=node, contracts=contracts)
    _tokens(send, view, user, shares=3)
    redeem_id = user.redeem_id(user.redeem("AAPL", 2 * TOKEN))
    assert view("redeemTerms", redeem_id)[0] == 0
    item = named_redeem(
        redeem_id,
        payout_usdt_units=199 * UNIT,
        return_token_units=0,
        cycle_id=1,
        price_per_share_units=100 * UNIT,
        fee_units=199_000,  # within the schedule: 0.1 % of 199.199 USDT
    )
    assert _settle_redeem(send, item).succeeded
    reverted_with(
        "AlreadySettled",
        user._send,
        "BroncoVault",
        contracts.vault,
        "requestRedeemCancel",
        redeem_id,
    )
