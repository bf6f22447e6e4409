from django.apps import AppConfig


class OrdersConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "orders"

    def ready(self) -> None:
        # Broker order pushes take the same path as polling: they enqueue a poll.
        from orders.services import order_broker_pushed
        from trading.services import register_order_update_callback

        register_order_update_callback(order_broker_pushed)
        # A worker's main process renews the leases of the steps it holds (worker_ready).
        import orders.held  # noqa: F401
