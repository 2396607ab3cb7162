"""How a webhook request is refused: each error carries its status and error code."""

from __future__ import annotations

from app.errors import ServiceError


class NotAuthenticated(ServiceError):
    """The shared secret or the signature header is missing."""

    status_code = 401
    code = "not_authenticated"


class BadSignature(ServiceError):
    """A secret or signature is present and wrong."""

    status_code = 403
    code = "bad_signature"


class HandshakeRefused(ServiceError):
    """A subscription handshake with the wrong mode or verify token."""

    status_code = 403
    code = "handshake_refused"


class MalformedBody(ServiceError):
    """The body is not JSON, or not the provider's envelope."""

    status_code = 400
    code = "malformed_body"


class BodyTooLarge(ServiceError):
    status_code = 413
    code = "body_too_large"


class WrongContentType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class NotAccepted(ServiceError):
    """Redis could not take the event; the provider's retry will be accepted."""

    status_code = 503
    code = "not_accepted"
