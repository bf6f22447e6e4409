from django.urls import path, re_path

from api import views
from api.v1 import api

urlpatterns = [
    path("api/v1/", api.urls),
    re_path(r"^api/(?P<rest>.*)$", views.api_not_found),
    path("track/", views.track, name="track"),
]
