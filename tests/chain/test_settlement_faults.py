"""The settlement sender against nodes that misbehave: a settlement dropped while the base fee
rose above its fee cap, a lagging load-balanced node that answers "nonce too low" for our
mined transaction and does not know its receipt, a node with no usable fee suggestion."""

import pytest

from chain.client import address_of_key
from chain.models import SettlementStatus
from chain.services import settlement_check, settlement_submit
from chain.settlement import SettlementState
from core.models import Alert, AuditLog
from tests.chain.rpc_proxy import MisbehavingNode, Reply, rpc_error, rpc_result
from tests.fixtures.chain import OPERATOR_KEY, named_deposit

pytestmark = [pytest.mark.chain, pytest.mark.django_db(transaction=True)]


def _deposit(user) -> int:
    user.approve()
    return user.deposit_id(user.deposit("AAPL", 10**6))


def _submit(deposit_id: int):
    return settlement_submit(
        request=named_deposit(
            deposit_id, mint_token_units=10**18, refund_usdt_units=0, order_id=None
        ),
        actor="test",
    )


def test_a_dropped_settlement_under_a_fifty_fold_base_fee_is_resigned_and_confirms(
    own_chain, chain_user, settings
):
    node, contracts = own_chain
    deposit_id = _deposit(chain_user(2, node=node, contracts=contracts))
    client = node.client()
    node.rpc("evm_setAutomine", [False])
    row = _submit(deposit_id)
    first = row.attempts.get()
    base = client.block("latest").base_fee_per_gas
    raised = max(50 * base, 2 * int(first.max_fee_per_gas))
    assert raised > int(first.max_fee_per_gas)
    node.rpc("anvil_dropTransaction", [first.tx_hash])
    node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(raised)])
    node.rpc("evm_mine")
    assert client.block("latest").base_fee_per_gas == raised
    settings.CHAIN_SETTLEMENT_STUCK_SECONDS = 3600  # only the refusal may cause the re-sign

    assert settlement_check(kind="deposit", vault_id=deposit_id) == SettlementState.PENDING
    node.rpc("evm_mine")
    assert settlement_check(kind="deposit", vault_id=deposit_id) == SettlementState.CONFIRMED

    row.refresh_from_db()
    second = row.attempts.order_by("-id").first()
    assert row.attempts.count() == 2 and second.nonce == first.nonce
    assert int(second.max_fee_per_gas) >= 2 * raised
    assert row.tx_hash == second.tx_hash and not row.already_settled
    assert client.receipt(second.tx_hash).succeeded


def test_a_fee_above_the_cap_is_sent_at_the_cap_with_an_alert(own_chain, chain_user, settings):
    node, contracts = own_chain
    deposit_id = _deposit(chain_user(2, node=node, contracts=contracts))
    client = node.client()
    node.rpc("evm_setAutomine", [False])
    row = _submit(deposit_id)
    first = row.attempts.get()
    settings.CHAIN_MAX_FEE_PER_GAS_WEI = int(first.max_fee_per_gas) * 3
    node.rpc("anvil_dropTransaction", [first.tx_hash])
    node.rpc("anvil_setNextBlockBaseFeePerGas", [hex(int(first.max_fee_per_gas) * 2)])
    node.rpc("evm_mine")
    settings.CHAIN_SETTLEMENT_STUCK_SECONDS = 3600

    settlement_check(kind="deposit", vault_id=deposit_id)
    second = row.attempts.order_by("-id").first()
    assert int(second.max_fee_per_gas) == settings.CHAIN_MAX_FEE_PER_GAS_WEI
    assert Alert.objects.filter(key=f"chain.settlement_fee_cap:{row.pk}").exists()
    node.rpc("evm_mine")
    assert settlement_check(kind="deposit", vault_id=deposit_id) == SettlementState.CONFIRMED
    assert client.receipt(second.tx_hash).succeeded


def test_a_lagging_node_saying_nonce_too_low_gets_no_second_transaction(
    own_chain, chain_user, settings
):
    node, contracts = own_chain
    deposit_id = _deposit(chain_user(3, node=node, contracts=contracts))
    lagging = {"on": False}

    def lag(request, forward):
        if not lagging["on"]:
            return None
        method = request.get("method")
        if method in ("eth_getTransactionReceipt", "eth_getTransactionByHash"):
            return Reply(rpc_result(request, None))
        if method == "eth_sendRawTransaction":
            return Reply(rpc_error(request, -32000, "nonce too low"))
        return None

    with MisbehavingNode(node.rpc_url, lag) as proxy:
        settings.CHAIN_RPC_URL = proxy.url
        row = _submit(deposit_id)  # automine: mined at once
        mined = row.attempts.get()
        assert node.client().receipt(mined.tx_hash).succeeded
        operator = address_of_key(OPERATOR_KEY)
        nonce_after = node.client().pending_nonce(operator)
        lagging["on"] = True

        assert settlement_check(kind="deposit", vault_id=deposit_id) == SettlementState.CONFIRMED

        row.refresh_from_db()
        assert row.attempts.count() == 1
        assert row.tx_hash == mined.tx_hash and not row.already_settled
        assert node.client().pending_nonce(operator) == nonce_after
        assert proxy.calls["eth_sendRawTransaction"] == 2  # the first send, one rebroadcast
        assert AuditLog.objects.filter(action="chain.settlement_replaced").count() == 0


@pytest.mark.parametrize("malformed", ["null", "missing", "empty per block", "rate limited"])
def test_a_node_without_a_usable_fee_suggestion_still_gets_the_settlement(
    own_chain, chain_user, settings, malformed
):
    node, contracts = own_chain
    deposit_id = _deposit(chain_user(4, node=node, contracts=contracts))

    def no_fee_suggestion(request, forward):
        method = request.get("method")
        if method == "eth_maxPriorityFeePerGas":
            if malformed == "rate limited":
                return Reply(rpc_error(request, -32005, "rate limit exceeded"))
            return Reply(rpc_error(request, -32601, "the method does not exist/is not available"))
        if method == "eth_feeHistory":
            answer = forward()
            if malformed == "null":
                answer["result"]["reward"] = None
            elif malformed == "missing":
                answer["result"].pop("reward", None)
            else:  # one empty list per block: web3's fallback indexes [0] of each
                answer["result"]["reward"] = [[] for _ in answer["result"]["reward"] or [0]]
            return Reply(answer)
        return None

    with MisbehavingNode(node.rpc_url, no_fee_suggestion) as proxy:
        settings.CHAIN_RPC_URL = proxy.url
        row = _submit(deposit_id)
        assert row.status == SettlementStatus.SENT
        assert int(row.attempts.get().max_priority_fee_per_gas) == (
            settings.CHAIN_MIN_PRIORITY_FEE_WEI
        )
        assert settlement_check(kind="deposit", vault_id=deposit_id) == SettlementState.CONFIRMED
        assert proxy.calls["eth_maxPriorityFeePerGas"] >= 1


@pytest.mark.parametrize("answer", [{}, {"result": "0x1"}], ids=["no result", "not an object"])
def test_a_receipt_answer_that_is_neither_a_result_nor_an_error_is_not_taken_for_none(
    own_chain, chain_user, settings, answer
):
    """Read raw (no web3 formatting), a receipt the node garbles must not pass for "no
    receipt yet": that would have a confirmed settlement re-broadcast or healed as
    vanished. It is a node fault (ChainUnavailable), retried like any other."""
    from chain.client import ChainClient
    from chain.exceptions import ChainUnavailable

    node, contracts = own_chain
    deposit_id = _deposit(chain_user(5, node=node, contracts=contracts))
    row = _submit(deposit_id)
    mined = row.attempts.get().tx_hash

    def garble(request, forward):
        if request.get("method") in ("eth_getTransactionReceipt", "eth_getTransactionByHash"):
            return Reply({"jsonrpc": "2.0", "id": request.get("id"), **answer})
        return None

    with MisbehavingNode(node.rpc_url, garble) as proxy:
        client = ChainClient(proxy.url)
        with pytest.raises(ChainUnavailable):
            client.receipt(mined)
        if "result" not in answer:
            with pytest.raises(ChainUnavailable):
                client.transaction_known(mined)
    assert node.client().receipt(mined).succeeded


@pytest.mark.parametrize(
    "result",
    [None, {"logs": []}, [None], [{"blockNumber": "0x1"}]],
    ids=["null", "an object", "a null log", "a log without its fields"],
)
def test_a_log_answer_that_is_not_a_list_is_a_node_fault(own_chain, result):
    """A listener reading such an answer must retry it as a node fault, not die on a
    TypeError outside its handlers."""
    from chain.client import ChainClient
    from chain.exceptions import ChainUnavailable

    node, contracts = own_chain

    def garble(request, forward):
        if request.get("method") == "eth_getLogs":
            return Reply(rpc_result(request, result))
        return None

    with MisbehavingNode(node.rpc_url, garble) as proxy:
        with pytest.raises(ChainUnavailable):
            ChainClient(proxy.url).get_logs(from_block=0, to_block=1, address=contracts.vault)
