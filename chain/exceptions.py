"""Domain errors of the chain app. chain/client.py translates web3 and node errors into these."""


class ChainError(Exception):
    """Base of every chain error."""


class ChainUnavailable(ChainError):
    """The node did not answer (connection refused, closed, timed out). Transient."""


class NodeTimedOut(ChainUnavailable):
    """The node accepted the request but did not answer within the read timeout. On a wide
    eth_getLogs range this is how some nodes say "range too large" (see chain.node_errors)."""


class UnknownBlock(ChainUnavailable):
    """The node does not have a block the request named: it is beyond the node's head or no
    longer in its chain ("block out of range", "header not found", "unknown block"). The
    head moved back (a reorg that shortened the chain) or this node (a load-balanced
    backend) is behind the head Bronco saw. The listener re-reads the head and checks its
    checkpoint against the node (walking back to the common ancestor when its block is
    gone); elsewhere it is a transient fault like any other ChainUnavailable."""


class RateLimited(ChainUnavailable):
    """The node (or its provider) refused for rate or quota (HTTP 429, -32005 "limit
    exceeded"): wait with jitter and ask again, the same request."""


class RangeTooLarge(ChainError):
    """The node refused an eth_getLogs range (too many blocks or results): split it."""


class NodeMisconfigured(ChainError):
    """The node answers, but Bronco is pointed at the wrong thing (wrong chain id, no vault
    code at the address, unknown method, invalid address, refused credentials). Retrying
    cannot help; `setting` names what to fix."""

    def __init__(self, message: str, *, setting: str) -> None:
        super().__init__(f"{message} (fix {setting})")
        self.setting = setting


class ContractReverted(ChainError):
    """A call or gas estimate reverted. `error_name` is the contract's custom error, if any."""

    def __init__(self, message: str, *, error_name: str = "", error_args: tuple = ()) -> None:
        super().__init__(message)
        self.error_name = error_name
        self.error_args = error_args


class TransactionRejected(ChainError):
    """The node refused a signed transaction (nonce too low, underpriced, ...)."""


# The vault's errors for an id it holds no request at: the request is not on the chain the
# node serves now. Not for good while the listener holds the request's event live: a node
# that lags its peers (load-balanced RPC) or a reorg between a revert and the re-mined
# blocks answers so, and the request comes back (orders.pipeline.settle waits for it).
REQUEST_UNKNOWN_ERRORS = frozenset({"UnknownDeposit", "UnknownRedeem"})


class SettlementRejected(ChainError):
    """The vault would refuse this settlement (unknown id, refund above deposit): sending it
    would only burn gas. `error_name` is the vault's custom error ("" when the refusal was
    not one). Not retryable as it stands; `request_unknown` says the refusal is that the
    vault holds no request at the id, which a lagging node or a reorg in progress can make
    true for a while."""

    def __init__(self, message: str, *, error_name: str = "") -> None:
        super().__init__(message)
        self.error_name = error_name

    @property
    def request_unknown(self) -> bool:
        return self.error_name in REQUEST_UNKNOWN_ERRORS


class ReorgDetected(ChainError):
    """A block we had already acted on is no longer canonical."""


class NotConfigured(ChainError):
    """No vault address for this chain (run deploy_contracts or set CHAIN_VAULT_ADDRESS)."""
