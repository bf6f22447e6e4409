"""Domain errors of the chain app. chain/client.py translates web3 and node errors into these."""


class ChainError(Exception):
    """Base of every chain error."""


class ChainUnavailable(ChainError):
    """The node did not answer (connection refused, closed, timed out). Transient."""


class RangeTooLarge(ChainError):
    """The node refused an eth_getLogs range (too many blocks or results): halve it."""


class ContractReverted(ChainError):
    """A call or gas estimate reverted. `error_name` is the contract's custom error, if any."""

    def __init__(self, message: str, *, error_name: str = "", error_args: tuple = ()) -> None:
        super().__init__(message)
        self.error_name = error_name
        self.error_args = error_args


class TransactionRejected(ChainError):
    """The node refused a signed transaction (nonce too low, underpriced, ...)."""


class SettlementRejected(ChainError):
    """The vault would refuse this settlement for good (unknown id, refund above deposit):
    sending it would only burn gas. Not retryable."""


class ReorgDetected(ChainError):
    """A block we had already acted on is no longer canonical."""


class NotConfigured(ChainError):
    """No vault address for this chain (run deploy_contracts or set CHAIN_VAULT_ADDRESS)."""
