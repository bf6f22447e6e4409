from django.apps import AppConfig


class TradingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "trading"

    def ready(self) -> None:
        # Pushes learn final statuses and fill corrections (trading.order_records); each is
        # handled by one process only (trading.pushes).
        from trading.order_records import broker_deal_pushed, broker_order_pushed
        from trading.session import register_deal_update_callback, register_order_update_callback

        register_order_update_callback(broker_order_pushed)
        register_deal_update_callback(broker_deal_pushed)
