"""HTTP middleware of the registry."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from registry.context import new_request_id, request_id_var


class RequestIdMiddleware:
    """Give every request an id (``X-Request-ID``), visible to services and echoed back."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = new_request_id(request.headers.get("X-Request-ID"))
        token = request_id_var.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = request_id
        return response
