from django.apps import AppConfig


class CoreConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "core"
    verbose_name = "Bronco core"

    def ready(self) -> None:
        from celery.signals import worker_init
        from django.db import models

        from core.bulk import AnyOf

        models.Field.register_lookup(AnyOf)

        # A worker logs in to Vault before forking its pool: with AppRole, the pool's
        # children share that token instead of each spending a use of the secret id.
        worker_init.connect(_vault_login_at_worker_start, weak=False)


def _vault_login_at_worker_start(**_: object) -> None:
    from core.secrets import vault_login

    vault_login()
