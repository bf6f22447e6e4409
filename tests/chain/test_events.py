"""Typed events: every event of the contracts Bronco ships decodes from a real log on anvil
into its dataclass, with Bronco's types; a log that is not one still raises UndecodableLog."""

import dataclasses
import re
import typing
from dataclasses import replace

import pytest
from eth_utils import keccak, to_checksum_address

from chain.client import (
    RawLog,
    UndecodableLog,
    address_of_key,
    contract_abi,
    decode_log,
    symbol_to_bytes32,
)
from chain.events import (
    EVENT_TYPES,
    CancelRequested,
    ContractEvent,
    DefaultExpirySet,
    Deposit,
    DepositFilled,
    DepositRefunded,
    DepositSettled,
    DepositTerms,
    FeeScheduleSet,
    Redeem,
    RedeemCancelRequested,
    RedeemFilled,
    RedeemSettled,
    RedeemTerms,
    ReserveWithdrawn,
    SettlementSkipped,
    Transfer,
)
from tests.fixtures.chain import (
    DEPLOYER_KEY,
    OPERATOR_KEY,
    call_of,
    named_deposit,
    named_redeem,
    named_refund,
)

pytestmark = [pytest.mark.chain, pytest.mark.django_db]

UNIT = 10**6
TOKEN = 10**18
HASH32 = re.compile(r"^0x[0-9a-f]{64}$")
BYTES32_FIELDS = {"role", "previous_admin_role", "new_admin_role"}
POSITION_FIELDS = {"tx_hash", "log_index", "block_number", "block_hash"}


def test_every_event_in_the_abis_has_a_dataclass_naming_its_arguments():
    for contract in ("BroncoVault", "MockUSDT", "StockToken"):
        for item in contract_abi(contract):
            if item["type"] != "event":
                continue
            cls = EVENT_TYPES[(contract, item["name"])]
            assert set(cls.ABI_ARGS) == {i["name"] for i in item["inputs"]}, cls


def assert_bronco_types(event: ContractEvent, raw: RawLog, symbols: set[str]) -> None:
    assert (event.tx_hash, event.log_index) == (raw.tx_hash, raw.log_index)
    assert (event.block_number, event.block_hash) == (raw.block_number, raw.block_hash)
    assert HASH32.match(event.tx_hash) and HASH32.match(event.block_hash)
    assert event.address == raw.address == to_checksum_address(raw.address)
    hints = typing.get_type_hints(type(event))
    for f in dataclasses.fields(event):
        if f.name in POSITION_FIELDS:
            continue
        value = getattr(event, f.name)
        if hints[f.name] is int:
            assert type(value) is int and value >= 0, (event, f.name)
        elif f.name == "symbol":
            assert value in symbols, event
        elif f.name in BYTES32_FIELDS:
            assert HASH32.match(value), (event, f.name)
        else:
            assert hints[f.name] is str and value == to_checksum_address(value), (event, f.name)


def test_each_event_decodes_from_a_real_log_into_its_dataclass(own_chain, chain_user, settings):
    node, contracts = own_chain
    client = node.client()
    user = chain_user(2, node=node, contracts=contracts)
    admin, operator = address_of_key(DEPLOYER_KEY), address_of_key(OPERATOR_KEY)

    def vault(key, fn, *args):
        return client.transact(
            private_key=key, contract="BroncoVault", address=contracts.vault, fn=fn, args=args
        )

    # A schedule wide enough for the fees below (10 % + 1 USDT), and a default expiry.
    vault(DEPLOYER_KEY, "setFeeSchedule", 100_000, UNIT)
    vault(DEPLOYER_KEY, "setDefaultExpiry", 3 * 24 * 3600)
    bought = user.deposit_id(user.deposit("AAPL", 40 * UNIT))
    user.request_cancel(bought)
    vault(
        OPERATOR_KEY,
        *call_of(named_deposit(bought, mint_token_units=2 * TOKEN, refund_usdt_units=15 * UNIT)),
    )
    sold = user.redeem_id(user.redeem("AAPL", TOKEN))
    # Requests with terms emit DepositTerms / RedeemTerms (market orders emit none).
    limit = client.transact(
        private_key=user.key,
        contract="BroncoVault",
        address=contracts.vault,
        fn="deposit",
        args=(symbol_to_bytes32("AAPL"), 5 * UNIT, 150 * UNIT, 0),
    )
    limited = user.deposit_id(limit)
    limit_sell = client.transact(
        private_key=user.key,
        contract="BroncoVault",
        address=contracts.vault,
        fn="redeem",
        args=(symbol_to_bytes32("AAPL"), TOKEN // 4, 50 * UNIT, 0),
    )
    limited_sell = user.redeem_id(limit_sell)
    client.transact(
        private_key=user.key,
        contract="BroncoVault",
        address=contracts.vault,
        fn="requestRedeemCancel",
        args=(sold,),
    )
    vault(
        OPERATOR_KEY,
        *call_of(named_redeem(sold, payout_usdt_units=7 * UNIT, return_token_units=0)),
    )
    refunded = user.deposit_id(user.deposit("AAPL", 10 * UNIT))
    vault(
        OPERATOR_KEY,
        *call_of(named_refund(refund_id=9001, deposit_id=refunded, refund_usdt_units=3 * UNIT)),
    )
    # Batched settlement: the settled deposit is skipped (SettlementSkipped), the new one
    # filled (DepositFilled); a redeem likewise (RedeemFilled).
    batched = user.deposit_id(user.deposit("AAPL", 20 * UNIT))
    settled_again = named_deposit(bought, mint_token_units=2 * TOKEN, refund_usdt_units=15 * UNIT)
    fresh = replace(
        named_deposit(batched, mint_token_units=TOKEN, refund_usdt_units=0),
        cycle_id=3,
        price_per_share_units=19 * UNIT,
        fee_units=UNIT,
    )
    vault(OPERATOR_KEY, "settleDeposits", [settled_again.batch_element(), fresh.batch_element()])
    sold_batched = user.redeem_id(user.redeem("AAPL", TOKEN // 2))
    redeemed = replace(
        named_redeem(sold_batched, payout_usdt_units=9 * UNIT, return_token_units=0),
        cycle_id=3,
        price_per_share_units=19 * UNIT,
        fee_units=UNIT // 2,
    )
    vault(OPERATOR_KEY, "settleRedeems", [redeemed.batch_element()])
    vault(DEPLOYER_KEY, "withdrawReserve", admin, 5 * UNIT)
    vault(DEPLOYER_KEY, "pause")
    vault(DEPLOYER_KEY, "unpause")
    role = "0x" + keccak(text="OPERATOR_ROLE").hex()
    vault(DEPLOYER_KEY, "grantRole", role, user.address)
    vault(DEPLOYER_KEY, "revokeRole", role, user.address)
    vault(DEPLOYER_KEY, "unlistSymbol", symbol_to_bytes32("AAPL"))
    aapl = contracts.tokens["AAPL"]
    client.transact(
        private_key=user.key, contract="StockToken", address=aapl, fn="approve", args=(admin, 1)
    )
    # The vault never changes a role's admin: a contract that emits any log emits that one.
    rogue = client.transact(private_key=DEPLOYER_KEY, contract="RogueEmitter", address=None)
    admin_changed = "0x" + keccak(text="RoleAdminChanged(bytes32,bytes32,bytes32)").hex()
    client.transact(
        private_key=DEPLOYER_KEY,
        contract="RogueEmitter",
        address=rogue.contract_address,
        fn="emitRaw",
        args=([admin_changed, role, "0x" + "00" * 32, role], b""),
    )

    head = client.block_number()
    sources = [
        ("BroncoVault", contracts.vault),
        ("BroncoVault", rogue.contract_address),
        ("MockUSDT", contracts.usdt),
        *(("StockToken", token) for token in contracts.tokens.values()),
    ]
    decoded: dict[type, list[ContractEvent]] = {}
    symbols = set(settings.BRONCO_SYMBOLS)
    for contract, address in sources:
        for raw in client.get_logs(from_block=0, to_block=head, address=address):
            event = decode_log(raw, contract)
            assert_bronco_types(event, raw, symbols)
            decoded.setdefault(type(event), []).append(event)
    assert set(decoded) == set(EVENT_TYPES.values())

    deposit = next(e for e in decoded[Deposit] if e.deposit_id == bought)
    assert (deposit.user, deposit.symbol, deposit.usdt_units) == (user.address, "AAPL", 40 * UNIT)
    assert deposit.address == contracts.vault
    (cancel,) = decoded[CancelRequested]
    assert (cancel.deposit_id, cancel.user) == (bought, user.address)
    settled, settled_batched = decoded[DepositSettled]
    assert (settled_batched.deposit_id, settled_batched.minted_token_units) == (batched, TOKEN)
    (filled,) = decoded[DepositFilled]
    assert (filled.deposit_id, filled.cycle_id, filled.price_per_share_units, filled.fee_units) == (
        batched,
        3,
        19 * UNIT,
        UNIT,
    )
    (skipped,) = decoded[SettlementSkipped]
    assert (skipped.kind, skipped.vault_id) == (1, bought)
    (redeem_filled,) = decoded[RedeemFilled]
    assert (redeem_filled.redeem_id, redeem_filled.fee_units) == (sold_batched, UNIT // 2)
    assert (settled.deposit_id, settled.minted_token_units, settled.refund_usdt_units) == (
        bought,
        2 * TOKEN,
        15 * UNIT,
    )
    redeem = next(e for e in decoded[Redeem] if e.redeem_id == sold)
    assert (redeem.redeem_id, redeem.symbol, redeem.token_units) == (sold, "AAPL", TOKEN)
    paid, _ = decoded[RedeemSettled]
    assert (paid.redeem_id, paid.payout_usdt_units, paid.returned_token_units) == (
        sold,
        7 * UNIT,
        0,
    )
    (manual,) = decoded[DepositRefunded]
    assert (manual.deposit_id, manual.refund_id, manual.refund_usdt_units) == (
        refunded,
        9001,
        3 * UNIT,
    )
    (terms,) = decoded[DepositTerms]
    assert (terms.deposit_id, terms.price_bound_units) == (limited, 150 * UNIT)
    assert terms.expiry > 0  # the default expiry, resolved
    (sell_terms,) = decoded[RedeemTerms]
    assert (sell_terms.redeem_id, sell_terms.price_bound_units) == (limited_sell, 50 * UNIT)
    (redeem_cancel,) = decoded[RedeemCancelRequested]
    assert (redeem_cancel.redeem_id, redeem_cancel.user) == (sold, user.address)
    assert (decoded[FeeScheduleSet][-1].rate_ppm, decoded[FeeScheduleSet][-1].flat_usdt_units) == (
        100_000,
        UNIT,
    )
    (default_expiry,) = decoded[DefaultExpirySet]
    assert default_expiry.seconds == 3 * 24 * 3600
    (withdrawn,) = decoded[ReserveWithdrawn]
    assert (withdrawn.to, withdrawn.usdt_units) == (admin, 5 * UNIT)
    assert any(
        t.from_address == user.address and t.to_address == contracts.vault and t.units == 40 * UNIT
        for t in decoded[Transfer]
    )
    assert operator in {e.account for e in decoded[EVENT_TYPES[("BroncoVault", "RoleGranted")]]}


def test_a_log_that_is_not_a_vault_event_still_raises_undecodable_log(chain_user, anvil):
    user = chain_user(3)
    receipt = user.deposit("AAPL", UNIT)
    logs = anvil.client().get_logs(
        from_block=receipt.block_number,
        to_block=receipt.block_number,
        address=[user.contracts.vault, user.contracts.usdt],
    )
    usdt_log = next(log for log in logs if log.address == user.contracts.usdt)
    deposit_log = next(log for log in logs if log.address == user.contracts.vault)
    assert isinstance(decode_log(deposit_log), Deposit)

    with pytest.raises(UndecodableLog) as foreign:
        decode_log(usdt_log)  # a USDT Transfer read as a vault event
    assert foreign.value.reason == "unknown_topic"
    bad_symbol = dataclasses.replace(
        deposit_log, topics=(*deposit_log.topics[:3], "0x" + "ff" * 32)
    )
    with pytest.raises(UndecodableLog) as symbol:
        decode_log(bad_symbol)
    assert (symbol.value.reason, symbol.value.event) == ("undecodable", "Deposit")
    short = dataclasses.replace(deposit_log, data="0x" + "00" * 31)
    with pytest.raises(UndecodableLog) as data:
        decode_log(short)
    assert (data.value.reason, data.value.event) == ("undecodable", "Deposit")
