"""Domain errors of the trading app. The Futu adapter translates every SDK error into one
of these; nothing outside `trading` ever sees a futu return code or message."""


class TradingError(Exception):
    """Base of every trading error."""


class RateLimited(TradingError):
    """Over Futu's request budget for this account. The work is not failed: the caller
    re-schedules it after `retry_after` seconds."""

    def __init__(self, retry_after: float, message: str = "") -> None:
        self.retry_after = max(float(retry_after), 0.0)
        super().__init__(message or f"broker rate limit reached; retry in {self.retry_after:.2f}s")


class BrokerRejected(TradingError):
    """The broker refused the request (bad price, no buying power, unknown order, ...).
    Retrying the same request will not help."""


class BrokerUnavailable(TradingError):
    """OpenD is unreachable, the connection dropped, or a request timed out. The outcome of a
    write is unknown: retry, and the remark lookup makes the retry safe."""


class BrokerSessionFault(BrokerUnavailable):
    """The session cannot trade as it is: trading is locked (another client of the same
    OpenD locked it, OpenD restarted) or the unlock failed. Not a rejection: the adapter
    re-reads the trade password and unlocks again; when that fails too it raises this with
    `alerted=True` (an operator alert is open) and the caller retries later."""

    def __init__(self, message: str, *, alerted: bool = False) -> None:
        self.alerted = alerted
        super().__init__(message)


class InsufficientBuyingPower(TradingError):
    """The account cannot pay for the order now. Not the user's fault and not final: the
    order waits (an operator alert is open) and is retried after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float = 30.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class PlacementInFlight(TradingError):
    """Another worker is placing this client id right now (its attempt lease has not run
    out): retry after `retry_after` seconds, when the attempt is either saved or expired."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class MarketClosed(TradingError):
    """The security's market is not in a trading session."""


class NoQuote(TradingError):
    """No usable price for the security (unknown code, suspended, zero price)."""
