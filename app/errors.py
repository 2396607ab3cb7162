"""The service's error family: each subclass carries its HTTP status and error code."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of errors the API renders as `{"error": code, "detail": text}`."""

    status_code = 500
    code = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
