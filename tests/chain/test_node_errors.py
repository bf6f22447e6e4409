"""Node errors by class (chain.node_errors): how each is recognised, and the listener's
backfill through a misbehaving JSON-RPC proxy for each class. Every proxy test asserts the
checkpoint reaches the head within a time bound and that the requests stay bounded."""

from __future__ import annotations

import random
import time

import pytest
import requests

from chain import node_errors
from chain.exceptions import (
    ChainUnavailable,
    NodeMisconfigured,
    NodeTimedOut,
    RangeTooLarge,
    RateLimited,
    TransactionRejected,
    UnknownBlock,
)
from chain.listener import ChainListener
from chain.models import ChainEvent
from core.models import Alert
from tests.chain.rpc_proxy import MisbehavingNode, Reply, log_span, rpc_error
from tests.fixtures.chain import listener_config, wait_for

# --- recognition (no node) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (-32005, "query returned more than 10000 results", RangeTooLarge),
        (-32602, "block range is too large", RangeTooLarge),
        (-32600, "exceed maximum block range: 5000", RangeTooLarge),
        (
            -32000,
            "Log response size exceeded. You can make eth_getLogs requests with",
            RangeTooLarge,
        ),
        (-32000, "query returned more than 10,000 results", RangeTooLarge),
        (-32000, "block range too wide", RangeTooLarge),
        (-32005, "block range exceeds 3", RangeTooLarge),
        (-32005, "limit exceeded", RateLimited),
        (-32005, "daily request count exceeded, request rate limited", RateLimited),
        (-32000, "Your app has exceeded its compute units per second capacity", RateLimited),
        (429, "Too Many Requests", RateLimited),
        (-32601, "the method eth_getLogs does not exist/is not available", NodeMisconfigured),
        (
            -32602,
            "invalid argument 0: hex string has length 6, want 40 for common.Address",
            NodeMisconfigured,
        ),
        # The head moved back (a shortened chain, a lagging backend): checked before the
        # range refusals, as geth's text names a "block range".
        (-32602, "BlockOutOfRangeError: block height is 20 but requested was 22", UnknownBlock),
        (-32602, "block range extends beyond current head block", UnknownBlock),
        (-32000, "header not found", UnknownBlock),
        (-32000, "unknown block", UnknownBlock),
        (-32000, "Block not found", UnknownBlock),
        (-32001, "8633830 could not be found", UnknownBlock),
        (-32000, "nonce too low", TransactionRejected),
        (-32000, "replacement transaction underpriced", TransactionRejected),
    ],
)
def test_rpc_errors_are_classified(code, message, expected):
    assert type(node_errors.rpc_error(code, message)) is expected


def _response(status: int, body: object = None, headers: dict | None = None) -> requests.Response:
    import json

    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode() if body is not None else b"<html>busy</html>"
    response.headers.update(headers or {})
    response.reason = "reason"
    return response


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            413,
            {"jsonrpc": "2.0", "id": 1, "error": {"code": -32600, "message": "too big"}},
            RangeTooLarge,
        ),
        (413, None, RangeTooLarge),
        (429, None, RateLimited),
        (502, None, ChainUnavailable),
        (503, {"error": {"code": -32005, "message": "limit exceeded"}}, RateLimited),
        (400, {"error": {"code": -32000, "message": "header not found"}}, UnknownBlock),
        (401, None, NodeMisconfigured),
        (403, None, NodeMisconfigured),
    ],
)
def test_http_errors_are_classified(status, body, expected):
    assert type(node_errors.http_error(_response(status, body))) is expected


def test_retry_after_is_read():
    error = node_errors.http_error(_response(429, None, {"Retry-After": "3"}))
    assert error.retry_after == 3.0


def test_a_read_timeout_is_its_own_class_and_refusal_is_transport():
    assert type(node_errors.transport_error(requests.exceptions.ReadTimeout("x"))) is NodeTimedOut
    refused = requests.exceptions.ConnectionError("refused")
    assert type(node_errors.transport_error(refused)) is ChainUnavailable


def test_misconfiguration_names_the_setting():
    error = node_errors.rpc_error(-32601, "method not found")
    assert error.setting == "CHAIN_RPC_URL" and "fix CHAIN_RPC_URL" in str(error)


def test_the_chunk_shrinks_to_its_minimum_and_grows_back_to_its_maximum():
    chunk = node_errors.LogChunk(maximum=64, minimum=4, grow_after=2)
    assert [chunk.shrink() for _ in range(5)] == [True, True, True, True, False]
    assert chunk.size == 4
    chunk.accepted(2)  # a short tail at the head says nothing
    assert chunk.streak == 0
    for _ in range(2 * 4):
        chunk.accepted(chunk.size)
    assert chunk.size == 64
    chunk.accepted(64)
    chunk.accepted(64)
    assert chunk.size == 64


def test_backoff_is_jittered_capped_and_honours_retry_after():
    backoff = node_errors.Backoff(base=0.2, cap=2.0, rng=random.Random(7))
    delays = [backoff.next() for _ in range(8)]
    assert all(0.1 <= d <= 2.0 for d in delays) and len(set(delays)) == 8
    assert backoff.next(at_least=5.0) == 5.0
    backoff.reset()
    assert backoff.next() <= 0.2


# --- through a misbehaving node --------------------------------------------------------------


@pytest.fixture
def spread_logs(anvil, deployed_contracts, chain_user):
    """Eight deposits spread over ~250 blocks: (first block, their tx hashes)."""
    user = chain_user(8)
    user.approve()
    client = anvil.client()
    start = client.block_number() + 1
    txs = []
    for i in range(8):
        txs.append(user.deposit("AAPL", 10**6 + i).tx_hash)
        client.rpc("anvil_mine", [hex(30)])
    return start, txs


def _listener(anvil, contracts, proxy, start, **overrides) -> ChainListener:
    values = {"rpc_url": proxy.url, "start_block": start, "chunk_blocks": 64}
    values.update(overrides)
    return ChainListener(listener_config(anvil, contracts, **values))


def _catch_up(listener: ChainListener, anvil, *, within: float) -> float:
    head = anvil.client().block_number()
    began = time.monotonic()
    listener.catch_up(head)
    elapsed = time.monotonic() - began
    assert listener.stats.checkpoint == head  # confirmations=1: the head itself is confirmed
    assert elapsed < within, elapsed
    return elapsed


@pytest.mark.chain
@pytest.mark.django_db(transaction=True)
def test_a_node_that_times_out_on_wide_ranges_gets_narrower_ones(
    anvil, deployed_contracts, spread_logs
):
    start, txs = spread_logs

    def slow_above_16(request, forward):
        return Reply(delay=1.5) if log_span(request) > 16 else None

    with MisbehavingNode(anvil.rpc_url, slow_above_16) as proxy:
        listener = _listener(
            anvil, deployed_contracts, proxy, start, rpc_timeout=0.5, chunk_grow_after=1000
        )
        _catch_up(listener, anvil, within=15)
        assert ChainEvent.objects.filter(tx_hash__in=txs).count() == 8
        assert listener.chunk.size == 16  # 64 -> 32 -> 16: two timeouts, then no more
        assert listener.stats.range_timeouts == 2
        assert proxy.calls["eth_getLogs"] <= 2 + 250 // 16 + 2


@pytest.mark.chain
@pytest.mark.django_db(transaction=True)
def test_http_413_with_a_json_rpc_body_splits_the_range(anvil, deployed_contracts, spread_logs):
    start, txs = spread_logs

    def refuse_above_20(request, forward):
        if log_span(request) > 20:
            return Reply(rpc_error(request, -32600, "block range is too large"), status=413)
        return None

    with MisbehavingNode(anvil.rpc_url, refuse_above_20) as proxy:
        listener = _listener(anvil, deployed_contracts, proxy, start, chunk_grow_after=1000)
        _catch_up(listener, anvil, within=10)
        assert ChainEvent.objects.filter(tx_hash__in=txs).count() == 8
        assert listener.chunk.size == 16 and listener.stats.chunk_halvings == 2
        assert proxy.calls["eth_getLogs"] <= 2 + 250 // 16 + 2


@pytest.mark.chain
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "refusal",
    [
        lambda request: Reply(
            rpc_error(request, 429, "Too Many Requests"), status=429, headers={"Retry-After": "0"}
        ),
        lambda request: Reply(rpc_error(request, -32005, "limit exceeded")),
    ],
    ids=["http-429", "rpc-32005-limit-exceeded"],
)
def test_a_rate_limit_is_waited_out_without_shrinking(
    anvil, deployed_contracts, spread_logs, refusal
):
    start, txs = spread_logs
    refused = []

    def every_other_refused(request, forward):
        if request.get("method") == "eth_getLogs" and len(refused) < 6:
            refused.append(1)
            return refusal(request)
        return None

    with MisbehavingNode(anvil.rpc_url, every_other_refused) as proxy:
        listener = _listener(anvil, deployed_contracts, proxy, start, reconnect_max_delay=0.5)
        _catch_up(listener, anvil, within=10)
        assert ChainEvent.objects.filter(tx_hash__in=txs).count() == 8
        assert listener.stats.rate_limited == 6
        assert listener.chunk.size == 64 and listener.stats.chunk_halvings == 0
        assert proxy.calls["eth_getLogs"] <= 6 + (250 + 63) // 64


@pytest.mark.chain
@pytest.mark.django_db(transaction=True)
def test_more_than_n_results_shrinks_then_the_chunk_grows_back(
    anvil, deployed_contracts, spread_logs
):
    start, txs = spread_logs
    refusals = []

    def busy_for_a_while(request, forward):
        if log_span(request) > 8 and len(refusals) < 3:
            refusals.append(1)
            return Reply(rpc_error(request, -32005, "query returned more than 10000 results"))
        return None

    with MisbehavingNode(anvil.rpc_url, busy_for_a_while) as proxy:
        listener = _listener(anvil, deployed_contracts, proxy, start, chunk_grow_after=2)
        _catch_up(listener, anvil, within=10)
        assert ChainEvent.objects.filter(tx_hash__in=txs).count() == 8
        assert listener.stats.chunk_halvings == 3  # 64 -> 32 -> 16 -> 8
        assert listener.stats.chunk_grows == 3 and listener.chunk.size == 64
        assert proxy.calls["eth_getLogs"] <= 3 + 250 // 8


@pytest.mark.chain
@pytest.mark.django_db(transaction=True)
def test_transport_errors_are_retried_and_alerted_after_a_while(
    anvil, deployed_contracts, spread_logs, run_listener
):
    start, txs = spread_logs
    failures = []

    def bad_gateway(request, forward):
        if request.get("method") == "eth_getLogs" and len(failures) < 4:
            failures.append(1)
            return Reply({"message": "bad gateway"}, status=502)
        return None

    with MisbehavingNode(anvil.rpc_url, bad_gateway) as proxy:
        config = listener_config(
            anvil,
            deployed_contracts,
            rpc_url=proxy.url,
            start_block=start,
            chunk_blocks=64,
            reconnect_max_delay=0.3,
            node_alert_after_seconds=0.2,
        )
        head = anvil.client().block_number()
        with run_listener(config, mode="poll") as listener:
            wait_for(lambda: listener.stats.checkpoint >= head, timeout=15)
            assert Alert.objects.filter(key="chain.node_unreachable").exists()
            wait_for(
                lambda: (
                    not Alert.objects.filter(
                        key="chain.node_unreachable", resolved_at=None
                    ).exists()
                )
            )
        assert ChainEvent.objects.filter(tx_hash__in=txs).count() == 8
        assert listener.chunk.size == 64
        assert proxy.calls["eth_getLogs"] <= 4 + 2 * ((250 + 63) // 64 + 1)


@pytest.mark.chain
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("overrides", "rule", "setting"),
    [
        ({"chain_id": 999}, None, "CHAIN_ID"),
        ({"vault": "0x00000000000000000000000000000000000000aa"}, None, "CHAIN_VAULT_ADDRESS"),
        ({"vault": "0x1234"}, None, "CHAIN_VAULT_ADDRESS"),
        (
            {},
            lambda request, forward: (
                Reply(rpc_error(request, -32601, "method not found"))
                if request.get("method") == "eth_getLogs"
                else None
            ),
            "CHAIN_RPC_URL",
        ),
    ],
    ids=["wrong-chain-id", "no-code-at-vault", "invalid-address", "unknown-method"],
)
def test_a_misconfigured_node_stops_the_listener_naming_the_setting(
    anvil, deployed_contracts, overrides, rule, setting
):
    """Not retried: `run` returns at once with the error (listen_chain exits naming it)."""
    with MisbehavingNode(anvil.rpc_url, rule) as proxy:
        config = listener_config(anvil, deployed_contracts, rpc_url=proxy.url, **overrides)
        anvil.client().rpc("anvil_mine", [hex(3)])
        with pytest.raises(NodeMisconfigured) as raised:
            ChainListener(config).run(mode="poll")
        assert setting in raised.value.setting
        assert proxy.calls["eth_getLogs"] <= 1
