"""HTTP methods on /api/: HEAD answers as GET does without the body (RFC 9110 9.3.2: the
same header fields), and a method an endpoint does not take is a JSON 405 naming the ones
it takes (`Allow`), like the API's other errors."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse


class ApiMethodsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith("/api/"):
            return self.get_response(request)
        head = request.method == "HEAD"
        if head:
            request.method = "GET"
        response = self.get_response(request)
        if response.status_code == 405 and "json" not in response.get("Content-Type", ""):
            allow = response.get("Allow", "")
            methods = sorted({*allow.replace(" ", "").split(","), "HEAD"} - {""}) if allow else []
            method = "HEAD" if head else request.method
            answer = JsonResponse(
                {
                    "error": "method_not_allowed",
                    "detail": f"{request.path} does not take {method}; it takes "
                    f"{', '.join(methods) or 'no method'}",
                },
                status=405,
            )
            if methods:
                answer["Allow"] = ", ".join(methods)
            response = answer
        if head and not response.streaming:
            length = len(response.content)
            response.content = b""
            response["Content-Length"] = str(length)
        return response
