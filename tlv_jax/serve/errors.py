"""Errors a client is told about, as OpenAI error bodies: `{"error": {"message", "type", "code"}}`.

Everything a request can get wrong becomes an `ApiError` with its HTTP status; the routes turn it into the body and
count it in the metrics under `code`, so bad input is answered and the server keeps serving."""

from __future__ import annotations

from typing import Any

INVALID = "invalid_request_error"


class ApiError(Exception):
    """A request the server refuses: HTTP `status`, a one-line `message`, the OpenAI error `type` and a `code` that
    names the kind (also the metrics label)."""

    def __init__(self, status: int, message: str, code: str, type: str = INVALID):
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, code)


def queue_full(limit: int) -> ApiError:
    return ApiError(429, f"more than {limit} requests are waiting; retry later", "queue_full", "rate_limit_error")


def internal(exc: BaseException) -> ApiError:
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "internal_error", "server_error")
