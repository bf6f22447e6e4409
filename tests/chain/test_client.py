"""Decoding in the web3 adapter: symbols and vault logs (property tests, no node needed)."""

import pytest
from eth_utils import to_checksum_address
from hypothesis import given
from hypothesis import strategies as st

from chain.client import (
    RawLog,
    UndecodableLog,
    bytes32_to_symbol,
    decode_log,
    decode_revert,
    event_topic,
    symbol_to_bytes32,
)
from chain.events import Deposit

SYMBOLS = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=32
)


@given(SYMBOLS)
def test_symbols_round_trip_through_bytes32(symbol):
    assert bytes32_to_symbol(symbol_to_bytes32(symbol)) == symbol


@given(st.binary(min_size=32, max_size=32))
def test_bytes32_decoding_accepts_only_padded_ascii(raw):
    try:
        symbol = bytes32_to_symbol(raw)
    except ValueError:
        return
    assert symbol_to_bytes32(symbol) == raw


def log_with(topics, data):
    return RawLog(
        address="0x" + "11" * 20,
        topics=tuple(topics),
        data=data,
        block_number=1,
        block_hash="0x" + "22" * 32,
        tx_hash="0x" + "33" * 32,
        log_index=0,
    )


def word(n):
    return "0x" + n.to_bytes(32, "big").hex()


def test_a_deposit_log_decodes_to_bronco_types():
    user = "0x" + "00" * 12 + "ab" * 20
    decoded = decode_log(
        log_with(
            [event_topic("Deposit"), word(7), user, "0x" + symbol_to_bytes32("AAPL").hex()],
            word(123),
        )
    )
    assert isinstance(decoded, Deposit) and decoded.name == "Deposit"
    assert decoded.deposit_id == 7 and decoded.usdt_units == 123
    assert decoded.user == to_checksum_address("0x" + "ab" * 20)
    assert decoded.symbol == "AAPL"
    assert (decoded.tx_hash, decoded.log_index, decoded.block_number) == ("0x" + "33" * 32, 0, 1)


@given(
    topics=st.lists(st.binary(min_size=32, max_size=32), max_size=4),
    data=st.binary(max_size=200),
    use_known_topic=st.booleans(),
)
def test_decoding_any_log_either_succeeds_or_says_why(topics, data, use_known_topic):
    hex_topics = ["0x" + t.hex() for t in topics]
    if use_known_topic and hex_topics:
        hex_topics[0] = event_topic("Deposit")
    try:
        decode_log(log_with(hex_topics, "0x" + data.hex()))
    except UndecodableLog as exc:
        assert exc.reason in {"unknown_topic", "undecodable"}


def test_revert_data_names_the_custom_error():
    from eth_utils import keccak

    data = "0x" + keccak(text="AlreadySettled(uint256)")[:4].hex() + word(5)[2:]
    assert decode_revert(data) == ("AlreadySettled", (5,))
    assert decode_revert("0xdeadbeef") == ("", ())
    with pytest.raises(ValueError):
        symbol_to_bytes32("")
