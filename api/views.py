"""The status page (/track/): paste a transaction hash or an address and watch each order's
stages; the page polls /api/v1/ (plain template, a few lines of JavaScript, no build)."""

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render


def track(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "api/track.html",
        {"poll_ms": int(settings.API_TRACK_POLL_SECONDS * 1000), "q": request.GET.get("q", "")},
    )


def api_not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    """Any /api/ path that is no endpoint: a JSON 404, like the API's own errors."""
    return JsonResponse(
        {"error": "not_found", "detail": f"no endpoint at {request.path}; see /api/v1/docs"},
        status=404,
    )
