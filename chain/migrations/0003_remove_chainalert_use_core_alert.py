# Chain alerts were always raised in the one Alert table too (key "chain.<kind>"): nothing is lost.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('chain', '0002_settlement_refund_kind'),
    ]

    operations = [
        migrations.DeleteModel(
            name='ChainAlert',
        ),
    ]
