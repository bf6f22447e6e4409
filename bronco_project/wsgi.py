import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault(
    "DJANGO_SETTINGS_MODULE", f"bronco_project.settings.{os.environ.get('BRONCO_ENV', 'local')}"
)
application = get_wsgi_application()
