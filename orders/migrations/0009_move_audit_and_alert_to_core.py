from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('orders', '0008_order_manual_refund_usdt'),
    ]

    # The models moved to the core app with their tables (db_table); only the state moves.
    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
        migrations.DeleteModel(
            name='Alert',
        ),
        migrations.DeleteModel(
            name='AuditLog',
        ),
                ],
            database_operations=[],
        ),
    ]
