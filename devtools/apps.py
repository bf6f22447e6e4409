from django.apps import AppConfig


class DevtoolsConfig(AppConfig):
    """The local stack and the demo: installed by the local and test settings only."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "devtools"
