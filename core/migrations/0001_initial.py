import django.db.models.deletion
from django.db import migrations, models


def _content_types_to_core(apps, schema_editor):
    """Existing permissions follow the models: their content types change app label."""
    content_type = apps.get_model("contenttypes", "ContentType")
    content_type.objects.filter(app_label="orders", model__in=("auditlog", "alert")).update(
        app_label="core"
    )


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('contenttypes', '0002_remove_content_type_name'),
        ('orders', '0009_move_audit_and_alert_to_core'),
    ]

    operations = [
        migrations.RunPython(_content_types_to_core, migrations.RunPython.noop),
        migrations.SeparateDatabaseAndState(
            # Tables created by the orders app keep their names: only the state moves.
            database_operations=[],
            state_operations=[
        migrations.CreateModel(
            name='Alert',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('key', models.CharField(help_text='rule or condition, e.g. listener_lag', max_length=120)),
                ('severity', models.CharField(choices=[('info', 'Info'), ('warning', 'Warning'), ('critical', 'Critical')], default='warning', max_length=10)),
                ('source', models.CharField(help_text='component that raised it', max_length=120)),
                ('message', models.TextField()),
                ('details', models.JSONField(blank=True, default=dict)),
                ('count', models.PositiveIntegerField(default=1)),
                ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                ('last_seen_at', models.DateTimeField(auto_now=True)),
                ('notified_at', models.DateTimeField(blank=True, null=True)),
                ('resolved_at', models.DateTimeField(blank=True, null=True)),
            ],
            options={
                'db_table': 'orders_alert',
                'ordering': ('-last_seen_at',),
                'constraints': [models.UniqueConstraint(condition=models.Q(('resolved_at__isnull', True)), fields=('key',), name='alert_one_open_per_key'), models.CheckConstraint(condition=models.Q(('severity__in', ['info', 'warning', 'critical'])), name='alert_severity_valid')],
            },
        ),
        migrations.CreateModel(
            name='AuditLog',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('seq', models.BigIntegerField(unique=True)),
                ('created_at', models.DateTimeField()),
                ('actor', models.CharField(help_text='task, command or admin user', max_length=200)),
                ('action', models.CharField(db_index=True, max_length=64)),
                ('before', models.JSONField(blank=True, default=dict)),
                ('after', models.JSONField(blank=True, default=dict)),
                ('prev_hash', models.CharField(max_length=64)),
                ('entry_hash', models.CharField(max_length=64, unique=True)),
                ('order', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='audit_entries', to='orders.order')),
            ],
            options={
                'db_table': 'orders_auditlog',
                'ordering': ('seq',),
            },
        ),
                ],
        ),
    ]
