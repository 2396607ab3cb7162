"""Python values become the same wire values in a JSON body and a batch command."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum

import pytest

from connectors.bitrix24.encoding import (
    BatchRef,
    Encoder,
    batch_command,
    php_query,
    to_json_body,
)
from sandbox.phpform import parse_str
from tests.connectors.bitrix24.conftest import MOSCOW


class Stage(Enum):
    WON = "WON"


@pytest.fixture
def encoder() -> Encoder:
    return Encoder(MOSCOW)


class TestScalars:
    @pytest.mark.parametrize(("value", "wire"), [(True, "Y"), (False, "N")])
    def test_booleans_become_y_and_n(
        self, encoder: Encoder, value: bool, wire: str
    ) -> None:
        assert encoder.value(value) == wire

    @pytest.mark.parametrize("value", [None, [], {}, ()])
    def test_none_and_empty_containers_become_empty_strings(
        self, encoder: Encoder, value: object
    ) -> None:
        assert encoder.value(value) == ""

    @pytest.mark.parametrize(
        ("value", "wire"),
        [
            (Decimal("15000.80"), "15000.80"),
            (Decimal("1E+3"), "1000"),
            (Decimal("-0.10"), "-0.10"),
            (0.1, "0.1"),
            (1e20, "100000000000000000000"),
            (37, "37"),
            (-1, "-1"),
        ],
    )
    def test_numbers_are_plain_digits_without_exponent(
        self, encoder: Encoder, value: object, wire: str
    ) -> None:
        assert encoder.value(value) == wire

    @pytest.mark.parametrize("value", [Decimal("NaN"), float("inf")])
    def test_non_finite_numbers_are_refused(
        self, encoder: Encoder, value: object
    ) -> None:
        with pytest.raises(ValueError, match="cannot send"):
            encoder.value(value)

    def test_aware_datetimes_become_portal_local_naive_strings(
        self, encoder: Encoder
    ) -> None:
        """B24-4: an aware datetime goes out as a naive portal-local string."""
        utc_evening = datetime(2025, 1, 5, 21, 0, tzinfo=UTC)
        vladivostok = datetime(2025, 1, 6, 8, 0, tzinfo=timezone(timedelta(hours=10)))

        assert encoder.value(utc_evening) == "2025-01-06 00:00:00"
        assert encoder.value(vladivostok) == "2025-01-06 01:00:00"

    def test_naive_datetimes_are_refused(self, encoder: Encoder) -> None:
        with pytest.raises(ValueError, match="naive datetime"):
            encoder.value(datetime(2025, 1, 6, 0, 0))

    def test_dates_are_iso_days(self, encoder: Encoder) -> None:
        assert encoder.value(date(2025, 1, 6)) == "2025-01-06"

    def test_enums_send_their_value(self, encoder: Encoder) -> None:
        assert encoder.value(Stage.WON) == "WON"

    def test_unknown_types_are_refused(self, encoder: Encoder) -> None:
        with pytest.raises(TypeError, match="bytes"):
            encoder.value(b"raw")


class TestPhpQuery:
    def test_nested_filters_use_brackets_and_encoded_operators(
        self, encoder: Encoder
    ) -> None:
        params = encoder.params(
            {
                "filter": {
                    ">=OPPORTUNITY": Decimal("15"),
                    "@STAGE_ID": ["C1:NEW", "C1:WON"],
                    "OPENED": True,
                },
                "select": ["ID", "TITLE"],
                "start": -1,
            }
        )

        assert php_query(params) == (
            "filter[%3E%3DOPPORTUNITY]=15"
            "&filter[%40STAGE_ID][0]=C1%3ANEW&filter[%40STAGE_ID][1]=C1%3AWON"
            "&filter[OPENED]=Y&select[0]=ID&select[1]=TITLE&start=-1"
        )

    def test_text_is_utf8_percent_encoded(self, encoder: Encoder) -> None:
        params = encoder.params({"fields": {"TITLE": "Привет & co"}})

        assert php_query(params) == (
            "fields[TITLE]=%D0%9F%D1%80%D0%B8%D0%B2%D0%B5%D1%82%20%26%20co"
        )

    def test_lists_of_dicts_get_numeric_indices(self, encoder: Encoder) -> None:
        params = encoder.params(
            {"fields": {"PHONE": [{"VALUE": "+79990000001", "VALUE_TYPE": "WORK"}]}}
        )

        assert php_query(params) == (
            "fields[PHONE][0][VALUE]=%2B79990000001&fields[PHONE][0][VALUE_TYPE]=WORK"
        )

    def test_batch_references_go_in_verbatim(self, encoder: Encoder) -> None:
        params = encoder.params({"filter": {">ID": BatchRef("p0", 49, "ID")}})

        assert batch_command("crm.deal.list", params) == (
            "crm.deal.list?filter[%3EID]=$result[p0][49][ID]"
        )

    def test_a_command_without_parameters_is_the_bare_method(self) -> None:
        assert batch_command("server.time", {}) == "server.time"

    def test_references_are_refused_outside_a_batch(self, encoder: Encoder) -> None:
        params = encoder.params({"filter": {">ID": BatchRef("p0", 49, "ID")}})

        with pytest.raises(ValueError, match="only works inside a batch"):
            to_json_body(params)

    @pytest.mark.parametrize("name", ["", "a[b]", "x]"])
    def test_bracketed_or_empty_names_are_refused(
        self, encoder: Encoder, name: str
    ) -> None:
        with pytest.raises(ValueError, match="bad parameter name"):
            encoder.params({"filter": {name: 1}})


class TestSameValuesOnEveryTransport:
    """B24-1: the first page (JSON) and batched pages must carry the same filter."""

    def test_portal_parses_the_batch_command_into_the_json_body(
        self, encoder: Encoder
    ) -> None:
        params = encoder.params(
            {
                "filter": {
                    "UF_CRM_IS_HOT": True,
                    "STAGE_SEMANTIC_ID": "S",
                    ">=CLOSEDATE": datetime(2025, 1, 5, 21, 0, tzinfo=UTC),
                    "<CLOSEDATE": date(2025, 1, 13),
                    "!COMPANY_ID": None,
                    "@ASSIGNED_BY_ID": [7, 9],
                    "%TITLE": "Заявка 50% & co",
                },
                "order": {"ID": "ASC"},
                "select": ["ID", "OPPORTUNITY"],
                "start": -1,
            }
        )

        json_body = to_json_body(params)
        command = batch_command("crm.deal.list", params)
        query = command.split("?", 1)[1]

        assert parse_str(query) == json_body
        assert json_body["filter"] == {
            "UF_CRM_IS_HOT": "Y",
            "STAGE_SEMANTIC_ID": "S",
            ">=CLOSEDATE": "2025-01-06 00:00:00",
            "<CLOSEDATE": "2025-01-13",
            "!COMPANY_ID": "",
            "@ASSIGNED_BY_ID": ["7", "9"],
            "%TITLE": "Заявка 50% & co",
        }
