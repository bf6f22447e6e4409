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


class MarketClosed(TradingError):
    """The security's market is not in a trading session."""


class NoQuote(TradingError):
    """No usable price for the security (unknown code, suspended, zero price)."""


class DepositTooSmall(TradingError):
    """The amount does not buy a single lot after fees. The pipeline refunds it."""

    def __init__(self, reason: str, *, required_usdt_units: int | None = None) -> None:
        self.reason = reason
        self.required_usdt_units = required_usdt_units
        super().__init__(reason)
