"""Domain errors of the order lifecycle."""


class OrderError(Exception):
    """Base of every order-lifecycle error."""


class IllegalTransition(OrderError):
    """The transition table does not allow this move (including any move out of a terminal
    status)."""

    def __init__(self, order_id: int, from_status: str, to_status: str) -> None:
        super().__init__(f"order {order_id}: {from_status} -> {to_status} is not allowed")
        self.order_id = order_id
        self.from_status = from_status
        self.to_status = to_status


class StaleOrderVersion(OrderError):
    """Another worker changed the order first: the conditional UPDATE matched no row."""

    def __init__(self, order_id: int, expected_version: int) -> None:
        super().__init__(
            f"order {order_id}: version {expected_version} is stale; another worker moved it first"
        )
        self.order_id = order_id
        self.expected_version = expected_version
