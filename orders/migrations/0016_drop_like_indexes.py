"""Drop the `varchar_pattern_ops` (`*_like`) twins PostgreSQL got for six columns of orders:
Django adds one per CharField with `db_index=True` or `unique=True`, for LIKE 'x%' look-ups
nothing makes, and every row a backfill COPYs paid to index it. The same indexes and uniqueness
are declared in Meta (an explicit Index or UniqueConstraint gets no twin); the existing indexes
and unique constraints are renamed to their Meta names (nothing is rebuilt, uniqueness holds
throughout) and only the twins are dropped (`core.schema.like_twins_dropped`)."""

from django.db import migrations, models

import orders.models
from core.schema import like_twins_dropped


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0015_merge_c_netting_speed"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="order",
                    name="chain_tx_hash",
                    field=models.CharField(max_length=66),
                ),
                migrations.AlterField(
                    model_name="order",
                    name="client_id",
                    field=models.CharField(default=orders.models.new_client_id, max_length=64),
                ),
                migrations.AlterField(
                    model_name="order",
                    name="futu_order_id",
                    field=models.CharField(blank=True, max_length=64),
                ),
                migrations.AlterField(
                    model_name="order",
                    name="settlement_tx_hash",
                    field=models.CharField(blank=True, max_length=66),
                ),
                migrations.AlterField(
                    model_name="order",
                    name="stock_code",
                    field=models.CharField(help_text="Futu code, e.g. US.AAPL", max_length=32),
                ),
                migrations.AlterField(
                    model_name="order",
                    name="user_address",
                    field=models.CharField(max_length=42),
                ),
                migrations.AddIndex(
                    model_name="order",
                    index=models.Index(fields=["chain_tx_hash"], name="order_chain_tx_hash"),
                ),
                migrations.AddIndex(
                    model_name="order",
                    index=models.Index(fields=["user_address"], name="order_user_address"),
                ),
                migrations.AddIndex(
                    model_name="order",
                    index=models.Index(fields=["stock_code"], name="order_stock_code"),
                ),
                migrations.AddIndex(
                    model_name="order",
                    index=models.Index(fields=["futu_order_id"], name="order_futu_order_id"),
                ),
                migrations.AddIndex(
                    model_name="order",
                    index=models.Index(
                        fields=["settlement_tx_hash"], name="order_settlement_tx_hash"
                    ),
                ),
                migrations.AddConstraint(
                    model_name="order",
                    constraint=models.UniqueConstraint(
                        fields=("client_id",), name="order_unique_client_id"
                    ),
                ),
            ],
            database_operations=[
                like_twins_dropped(
                    "orders_order",
                    indexes={
                        "orders_order_chain_tx_hash_fdab2f37": "order_chain_tx_hash",
                        "orders_order_user_address_126a9732": "order_user_address",
                        "orders_order_stock_code_c985762b": "order_stock_code",
                        "orders_order_futu_order_id_64bbcfd1": "order_futu_order_id",
                        "orders_order_settlement_tx_hash_19f63626": "order_settlement_tx_hash",
                    },
                    uniques={"orders_order_client_id_key": "order_unique_client_id"},
                    twins={
                        "orders_order_chain_tx_hash_fdab2f37_like": "chain_tx_hash",
                        "orders_order_client_id_67117a15_like": "client_id",
                        "orders_order_futu_order_id_64bbcfd1_like": "futu_order_id",
                        "orders_order_settlement_tx_hash_19f63626_like": "settlement_tx_hash",
                        "orders_order_stock_code_c985762b_like": "stock_code",
                        "orders_order_user_address_126a9732_like": "user_address",
                    },
                )
            ],
        )
    ]
