"""The admin app on Bronco's own site (Django's documented way to replace the default site).

Listed in INSTALLED_APPS instead of `django.contrib.admin`; a module of its own because an
AppConfig module must not import models.
"""

from django.contrib.admin.apps import AdminConfig


class BroncoAdminConfig(AdminConfig):
    default_site = "ops.admin_site.BroncoAdminSite"
