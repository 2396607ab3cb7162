"""Every Bitrix24 error code of the reference maps into the documented tree."""

from __future__ import annotations

import pytest

from connectors.bitrix24.errors import (
    AuthFailed,
    Bitrix24Error,
    ExpiredToken,
    InsufficientScope,
    InvalidCredentials,
    NotFound,
    OperationTimeLimited,
    PortalBlocked,
    RateLimited,
    ReauthorizationRequired,
    Rejected,
    Unavailable,
    map_error,
)

# Reference §5.1, "System and auth errors": code | server status / docs status.
SYSTEM_AND_AUTH_TABLE = """
| `ERROR_METHOD_NOT_FOUND` | 404 / — |
| `NO_AUTH_FOUND` | 401 / 401 |
| `INVALID_CREDENTIALS` | 401 / 403 |
| `insufficient_scope` | 401 / 403 |
| `expired_token` | 401 / 401 |
| `invalid_token` | 401 / — |
| `authorization_error` | 401 / — |
| `user_access_error` | 401 / 403 |
| `APPLICATION_NOT_FOUND` | 401 / — |
| `CONNECTION_ERROR` | 401 / — |
| `ACCESS_DENIED` (plan) | 401 / 403 |
| `OVERLOAD_LIMIT` | 401 / 503 |
| `INVALID_REQUEST` | 401 / 400 |
| `PAYMENT_REQUIRED` | 401 / — |
| `METHOD_CONFIRM_WAITING` | 401 / — |
| `METHOD_CONFIRM_DENIED` | 403 / — |
| `ACCESS_DENIED` | 403 / — |
| `WRONG_AUTH_TYPE` | 403 / — |
| `WRONG_LICENSE` | 403 / — |
| `QUERY_LIMIT_EXCEEDED` | 503 / 503 |
| `OPERATION_TIME_LIMIT` | 429 / 429 |
| `PORTAL_DELETED` | 403 / 500 |
| `ERROR_CORE` | 400 / — |
| `ERROR_ARGUMENT` | 400 / — |
| `INTERNAL_SERVER_ERROR` | 500 / 500 |
| `ERROR_UNEXPECTED_ANSWER` | 500 / 500 |
"""

# Reference §5.2, "Method errors": engine and event codes, answered with HTTP 400.
METHOD_ERROR_CODES = """
NOT_FOUND ACCESS_DENIED INVALID_ARG_VALUE CRM_FIELD_ERROR_VALUE_NOT_VALID
OWNER_NOT_FOUND WRONG_DATETIME_FORMAT ENTITY_TYPE_NOT_SUPPORTED 100 0
ERROR_EVENT_NOT_FOUND ERROR_WRONG_HANDLER_URL ERROR_UNSUPPORTED_PROTOCOL
"""

# Reference §12, the auth server's refusals of a token request (HTTP 400).
AUTH_SERVER_CODES = """
invalid_request invalid_client invalid_grant invalid_scope insufficient_scope
PAYMENT_REQUIRED
"""

EXPECTED_BY_STATUS: dict[tuple[str, int], type[Bitrix24Error]] = {
    ("ERROR_METHOD_NOT_FOUND", 404): Rejected,
    ("NO_AUTH_FOUND", 401): InvalidCredentials,
    ("INVALID_CREDENTIALS", 401): InvalidCredentials,
    ("insufficient_scope", 401): InsufficientScope,
    ("expired_token", 401): ExpiredToken,
    ("invalid_token", 401): InvalidCredentials,
    ("authorization_error", 401): InvalidCredentials,
    ("user_access_error", 401): InsufficientScope,
    ("APPLICATION_NOT_FOUND", 401): InvalidCredentials,
    # The portal could not reach its auth server: nothing ran, try again later.
    ("CONNECTION_ERROR", 401): Unavailable,
    ("ACCESS_DENIED", 401): PortalBlocked,
    ("OVERLOAD_LIMIT", 401): PortalBlocked,
    ("INVALID_REQUEST", 401): AuthFailed,
    ("PAYMENT_REQUIRED", 401): PortalBlocked,
    ("METHOD_CONFIRM_WAITING", 401): AuthFailed,
    ("METHOD_CONFIRM_DENIED", 403): InsufficientScope,
    ("ACCESS_DENIED", 403): Rejected,
    ("WRONG_AUTH_TYPE", 403): InsufficientScope,
    ("WRONG_LICENSE", 403): Rejected,
    ("QUERY_LIMIT_EXCEEDED", 503): RateLimited,
    ("OPERATION_TIME_LIMIT", 429): OperationTimeLimited,
    ("PORTAL_DELETED", 403): PortalBlocked,
    ("ERROR_CORE", 400): Rejected,
    ("ERROR_ARGUMENT", 400): Rejected,
    ("INTERNAL_SERVER_ERROR", 500): Unavailable,
    ("ERROR_UNEXPECTED_ANSWER", 500): Unavailable,
    # §5.2
    ("NOT_FOUND", 400): NotFound,
    ("ACCESS_DENIED", 400): Rejected,
    ("INVALID_ARG_VALUE", 400): Rejected,
    ("CRM_FIELD_ERROR_VALUE_NOT_VALID", 400): Rejected,
    ("OWNER_NOT_FOUND", 400): NotFound,
    ("WRONG_DATETIME_FORMAT", 400): Rejected,
    ("ENTITY_TYPE_NOT_SUPPORTED", 400): Rejected,
    ("100", 400): Rejected,
    ("0", 400): Rejected,
    ("ERROR_EVENT_NOT_FOUND", 400): NotFound,
    ("ERROR_WRONG_HANDLER_URL", 400): Rejected,
    ("ERROR_UNSUPPORTED_PROTOCOL", 400): Rejected,
    # §12
    ("invalid_request", 400): AuthFailed,
    ("invalid_client", 400): InvalidCredentials,
    ("invalid_grant", 400): ReauthorizationRequired,
    ("invalid_scope", 400): InsufficientScope,
    ("insufficient_scope", 400): InsufficientScope,
    ("PAYMENT_REQUIRED", 400): PortalBlocked,
}


def _table_codes() -> list[tuple[str, int]]:
    codes = []
    for line in SYSTEM_AND_AUTH_TABLE.strip().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        code = cells[0].split("`")[1]
        server_status = int(cells[1].split("/")[0])
        codes.append((code, server_status))
    return codes


def _listed(codes: str, status: int) -> list[tuple[str, int]]:
    return [(code, status) for code in codes.split()]


REFERENCE_CODES = [
    *_table_codes(),
    *_listed(METHOD_ERROR_CODES, 400),
    *_listed(AUTH_SERVER_CODES, 400),
]


class TestMapError:
    def test_the_reference_lists_are_read_completely(self) -> None:
        assert len(_table_codes()) == 26
        assert set(REFERENCE_CODES) == set(EXPECTED_BY_STATUS)

    @pytest.mark.parametrize(("code", "status"), REFERENCE_CODES)
    def test_every_reference_code_maps_to_its_class(
        self, code: str, status: int
    ) -> None:
        body = {"error": code, "error_description": "text"}

        error = map_error(status, body, method="crm.deal.list")

        assert type(error) is EXPECTED_BY_STATUS[(code, status)]
        assert error.code == code
        assert error.status == status
        assert error.method == "crm.deal.list"

    @pytest.mark.parametrize(("code", "status"), REFERENCE_CODES)
    def test_every_code_maps_the_same_inside_a_batch_where_no_status_exists(
        self, code: str, status: int
    ) -> None:
        body = {"error": code, "error_description": ""}

        error = map_error(None, body)

        expected = EXPECTED_BY_STATUS[(code, status)]
        if (code, status) == ("ACCESS_DENIED", 401):
            expected = Rejected  # only the HTTP status tells the plan block apart
        assert type(error) is expected

    def test_engine_codes_sent_as_numbers_map_like_their_strings(self) -> None:
        error = map_error(400, {"error": 100, "error_description": "Could not find"})

        assert type(error) is Rejected
        assert error.code == "100"

    def test_legacy_not_found_in_the_description_is_not_found(self) -> None:
        body = {"error": "", "error_description": "Not found"}

        assert type(map_error(400, body)) is NotFound

    @pytest.mark.parametrize(
        "text",
        [
            "Access denied.",
            "ID is not defined or invalid.",
            "Parameter 'fields' must be array.",
            "Failed to get list. General error.",
            "Communication type is not defined.",
        ],
    )
    def test_other_legacy_texts_are_rejections(self, text: str) -> None:
        body = {"error": "", "error_description": text}

        assert type(map_error(400, body)) is Rejected

    def test_error_core_as_a_server_failure_is_unavailable(self) -> None:
        body = {"error": "ERROR_CORE", "error_description": "SQL query error!"}

        assert type(map_error(500, body)) is Unavailable

    @pytest.mark.parametrize("status", [200, 500, 502, 503, 504])
    def test_an_html_page_is_unavailable_not_a_crash(self, status: int) -> None:
        """B24-2: a text/html error body maps to Unavailable instead of crashing."""
        error = map_error(status, None, method="crm.deal.add")

        assert type(error) is Unavailable
        assert "not a Bitrix24 JSON answer" in str(error)

    def test_an_html_429_is_the_operating_limit_without_a_reset_time(self) -> None:
        error = map_error(429, "<html>blocked</html>")

        assert isinstance(error, OperationTimeLimited)
        assert error.reset_at is None

    @pytest.mark.parametrize(
        ("status", "expected"),
        [(401, AuthFailed), (403, Rejected), (404, NotFound), (418, Rejected)],
    )
    def test_unknown_codes_fall_back_on_the_status(
        self, status: int, expected: type[Bitrix24Error]
    ) -> None:
        error = map_error(status, {"error": "SOMETHING_NEW"})

        assert type(error) is expected

    def test_unknown_codes_with_a_5xx_are_unavailable(self) -> None:
        assert type(map_error(502, {"error": "SOMETHING_NEW"})) is Unavailable

    def test_a_long_description_is_cut_for_logs(self) -> None:
        error = map_error(400, {"error": "ERROR_CORE", "error_description": "x" * 5000})

        assert len(error.description) == 300
