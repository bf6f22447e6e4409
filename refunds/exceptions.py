"""Domain errors of refunds."""


class RefundError(Exception):
    """Base of every refunds error."""


class RefundRefused(RefundError):
    """A refund request or approval that cannot go ahead. The message says why and what the
    operator can do instead; nothing was changed."""
