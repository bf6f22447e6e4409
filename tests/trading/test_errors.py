"""Broker errors by class, in both languages OpenD answers in, and over TCP: only a true
rejection is BrokerRejected (and refunds); a session fault re-unlocks with the password
read afresh, and alerts when it cannot."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core.models import Alert
from trading.broker import BrokerStatus
from trading.exceptions import (
    BrokerRejected,
    BrokerSessionFault,
    BrokerUnavailable,
    InsufficientBuyingPower,
    RateLimited,
)
from trading.futu import FutuBroker
from trading.futu.parsing import classify_error
from trading.opend_sim.market import MESSAGES

CASES = {
    "rate_limit": RateLimited,
    "locked": BrokerSessionFault,
    "wrong_password": BrokerSessionFault,
    "buying_power": InsufficientBuyingPower,
    "sellable": BrokerRejected,
    "lot": BrokerRejected,
    "rejected": BrokerRejected,
}


@pytest.mark.parametrize("language", [0, 1], ids=["en", "zh"])
@pytest.mark.parametrize("key", sorted(CASES))
def test_every_simulator_message_is_classified_in_both_languages(key, language):
    text = MESSAGES[key][language].format(
        limit=15, kind="place", window=30, qty=5, lot=100, code="HK.00700"
    )
    assert type(classify_error(text)) is CASES[key]


@pytest.mark.parametrize(
    "text",
    [
        "Connection lost",  # the SDK's own (futu/common/err.py), English only
        "Timeout",
        "Not connected",
        "网络连接断开",
        "请求超时",
        "网络错误",
        "网络中断",
        "连接中断",
        "系统繁忙，请稍后再试",
        "Network error",
        "Send fail",
        "PacketErr.Invalid",  # the SDK's: an answer that would not parse
    ],
)
def test_disconnects_and_timeouts_are_never_rejections(text):
    assert type(classify_error(text)) is BrokerUnavailable


def test_an_order_level_lock_is_a_rejection_not_a_session_fault():
    """Only the trading session's lock re-unlocks; a position that is locked is the order's
    own refusal (retrying the unlock forever would never place it)."""
    assert type(classify_error("持仓锁定，无法卖出")) is BrokerRejected
    assert type(classify_error("交易已锁定")) is BrokerSessionFault


@pytest.mark.broker
@pytest.mark.parametrize("language", ["en", "zh"])
def test_classes_over_tcp(broker_settings, language):
    from trading import services

    broker_settings.set_language(language=language)
    broker = services.get_broker()
    with pytest.raises(BrokerRejected):
        broker.place_order(
            client_id="e-lot", code="HK.00700", side="BUY", qty=Decimal(5), limit_price=Decimal(380)
        )
    broker_settings.set_cash(currency="USD", amount="10")
    with pytest.raises(InsufficientBuyingPower):
        broker.place_order(
            client_id="e-bp", code="US.AAPL", side="BUY", qty=Decimal(1), limit_price=Decimal(191)
        )
    broker_settings.set_accepting(accepting=False)
    with pytest.raises(BrokerUnavailable):
        broker.list_orders()
    broker_settings.set_accepting(accepting=True)


@pytest.mark.broker
def test_rate_limited_over_tcp_in_chinese(opend):
    """Futu's own refusal (the limiter bypassed): RateLimited, never a rejection."""
    opend.set_language(language="zh")
    broker = FutuBroker(host=opend.host, port=opend.port, acc_id=opend.acc_id)
    try:
        errors = set()
        for _ in range(12):
            try:
                broker._call(
                    lambda q, t: t.history_order_list_query(
                        trd_env="SIMULATE", acc_id=broker.acc_id
                    )
                )
            except RateLimited as exc:
                errors.add(type(exc))
        assert errors == {RateLimited}
    finally:
        broker.close()


def _real(opend, password):  # type: ignore[no-untyped-def]
    return FutuBroker(
        host=opend.host,
        port=opend.port,
        trd_env="REAL",
        acc_id=opend.real_acc_id,
        trade_password=password,
    )


@pytest.mark.broker
@pytest.mark.django_db
def test_a_session_locked_by_another_client_unlocks_again_and_places(opend):
    broker = _real(opend, lambda: "123456")
    try:
        broker.connect()
        opend.lock_trade()  # another client of the same OpenD locked trading
        order = broker.place_order(
            client_id="e-locked",
            code="US.AAPL",
            side="BUY",
            qty=Decimal(1),
            limit_price=Decimal(191),
        )
        assert order.status == BrokerStatus.FILLED
        assert len(opend.orders(remark="e-locked")) == 1
    finally:
        broker.close()


@pytest.mark.broker
@pytest.mark.django_db
def test_a_rotated_password_is_read_again_at_the_next_unlock(opend, settings):
    from trading.futu.connection import trade_password_reader

    settings.FUTU_TRADE_PASSWORD = "123456"
    broker = _real(opend, trade_password_reader("REAL"))
    try:
        broker.connect()
        opend.set_trade_password(password="rotated-1")  # rotated in Vault, OpenD restarted
        settings.FUTU_TRADE_PASSWORD = "rotated-1"
        order = broker.place_order(
            client_id="e-rot", code="US.AAPL", side="BUY", qty=Decimal(1), limit_price=Decimal(191)
        )
        assert order.broker_order_id
        # A password nobody knows: the session cannot trade; an alert, and no rejection.
        opend.set_trade_password(password="unknown")
        with pytest.raises(BrokerSessionFault) as raised:
            broker.place_order(
                client_id="e-rot-2",
                code="US.AAPL",
                side="BUY",
                qty=Decimal(1),
                limit_price=Decimal(191),
            )
        assert raised.value.alerted and not isinstance(raised.value, BrokerRejected)
        assert Alert.objects.filter(key__startswith="broker_session:REAL").exists()
        assert opend.orders(remark="e-rot-2") == []
    finally:
        broker.close()
