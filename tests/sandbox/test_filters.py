"""The legacy filter grammar (reference §8) over real HTTP, on a small known portal."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sandbox.fields import STANDARD_FIELDS
from sandbox.filters import Condition, Group, compile_filter, parse_key
from sandbox.state import Table
from tests.sandbox.conftest import RunningSandbox

IS_HOT = {
    "ID": "1",
    "ENTITY_ID": "CRM_DEAL",
    "FIELD_NAME": "UF_CRM_IS_HOT",
    "USER_TYPE_ID": "boolean",
    "MULTIPLE": "N",
    "MANDATORY": "N",
    "SETTINGS": {"DEFAULT_VALUE": 0},
}
NOTE = {**IS_HOT, "ID": "2", "FIELD_NAME": "UF_CRM_NOTE", "USER_TYPE_ID": "string"}


def deal(deal_id: int, **fields: Any) -> dict[str, Any]:
    row = {
        "ID": str(deal_id),
        "TITLE": f"Deal {deal_id}",
        "TYPE_ID": "SALE",
        "CATEGORY_ID": "0",
        "STAGE_ID": "NEW",
        "STAGE_SEMANTIC_ID": "P",
        "OPPORTUNITY": "0.00",
        "CURRENCY_ID": "RUB",
        "ASSIGNED_BY_ID": "1",
        "COMPANY_ID": None,
        "COMMENTS": None,
        "OPENED": "Y",
        "CLOSED": "N",
        "DATE_CREATE": "2026-05-01T09:00:00+03:00",
        "CLOSEDATE": "",
    }
    row.update(fields)
    return row


DEALS = [
    deal(
        1,
        TITLE="Haircut",
        OPPORTUNITY="1500.50",
        CLOSEDATE="2026-05-04T03:00:00+03:00",
        UF_CRM_IS_HOT="1",
    ),
    deal(
        2,
        TITLE="Hair colouring",
        STAGE_ID="PREPARATION",
        OPPORTUNITY="1000.00",
        ASSIGNED_BY_ID="7",
        COMPANY_ID="5",
        COMMENTS="",
        DATE_CREATE="2026-05-01T10:00:00+03:00",
        CLOSEDATE="2026-05-10T03:00:00+03:00",
        UF_CRM_IS_HOT="0",
    ),
    deal(
        3,
        TITLE="Nails",
        STAGE_ID="WON",
        STAGE_SEMANTIC_ID="S",
        ASSIGNED_BY_ID="7",
        COMPANY_ID="0",
        COMMENTS="VIP",
        DATE_CREATE="2026-05-01T10:00:01+03:00",
        CLOSEDATE="2026-05-11T03:00:00+03:00",
        UF_CRM_IS_HOT="1",
    ),
    deal(
        4,
        TITLE="Massage 100%",
        STAGE_ID="LOSE",
        STAGE_SEMANTIC_ID="F",
        OPPORTUNITY=None,
        ASSIGNED_BY_ID="9",
        COMPANY_ID="6",
        COMMENTS="call back",
        DATE_CREATE="2026-04-30T23:59:59+03:00",
        UF_CRM_IS_HOT=None,
    ),
]

CONTACTS = [
    {
        "ID": "1",
        "NAME": "A",
        "PHONE": [
            {
                "ID": "1",
                "VALUE_TYPE": "WORK",
                "VALUE": "+79990000001",
                "TYPE_ID": "PHONE",
            }
        ],
        "EMAIL": [
            {
                "ID": "2",
                "VALUE_TYPE": "WORK",
                "VALUE": "a@example.com",
                "TYPE_ID": "EMAIL",
            }
        ],
    },
    {
        "ID": "2",
        "NAME": "B",
        "PHONE": [
            {
                "ID": "3",
                "VALUE_TYPE": "WORK",
                "VALUE": "+79990000002",
                "TYPE_ID": "PHONE",
            }
        ],
    },
    {"ID": "3", "NAME": "C"},
]


@pytest.fixture
def portal(sandbox: RunningSandbox) -> RunningSandbox:
    sandbox.load({"deals": DEALS, "contacts": CONTACTS, "userfields": [IS_HOT, NOTE]})
    return sandbox


def ids(
    sandbox: RunningSandbox, filter_: Any, method: str = "crm.deal.list"
) -> list[int]:
    response = sandbox.call(
        method, {"filter": filter_, "select": ["ID"], "order": {"ID": "ASC"}}
    )
    assert response.status_code == 200, response.text
    return [int(row["ID"]) for row in response.json()["result"]]


def check(sandbox: RunningSandbox, cases: list[tuple[Any, list[int]]]) -> None:
    answers = [(filter_, ids(sandbox, filter_)) for filter_, _ in cases]
    assert answers == cases


class TestKeyGrammar:
    @pytest.mark.parametrize(
        ("key", "parts"),
        [
            ("TITLE", ("TITLE", "=", False, False)),
            ("!=STAGE_ID", ("STAGE_ID", "=", True, False)),
            ("!@ID", ("ID", "IN", True, False)),
            ("+>=OPPORTUNITY", ("OPPORTUNITY", ">=", False, True)),
            ("=%TITLE", ("TITLE", "RLIKE", False, False)),
            ("%=TITLE", ("TITLE", "LLIKE", False, False)),
            ("?TITLE", ("TITLE", "QUERY", False, False)),
            ("+!ID", ("!ID", "=", False, True)),
        ],
    )
    def test_keys_split_like_the_server_splits_them(
        self, key: str, parts: tuple[str, str, bool, bool]
    ) -> None:
        assert tuple(parse_key(key)) == parts


class TestNumbers:
    def test_comparisons_cast_to_int_and_accept_a_decimal_comma(
        self, portal: RunningSandbox
    ) -> None:
        check(
            portal,
            [
                ({"ASSIGNED_BY_ID": 7}, [2, 3]),
                ({"=ASSIGNED_BY_ID": "7"}, [2, 3]),
                ({">ID": "2abc"}, [3, 4]),
                ({">=OPPORTUNITY": "1500,50"}, [1]),
                ({">OPPORTUNITY": 999}, [1, 2]),
                ({"<=OPPORTUNITY": "1000"}, [2, 3]),
            ],
        )

    def test_zero_means_null_or_zero(self, portal: RunningSandbox) -> None:
        check(
            portal,
            [
                ({"OPPORTUNITY": 0}, [3, 4]),
                ({"COMPANY_ID": 0}, [1, 3]),
                ({"COMPANY_ID": ""}, [1, 3]),
                ({"!COMPANY_ID": ""}, [2, 4]),
            ],
        )

    def test_negation_also_matches_null(self, portal: RunningSandbox) -> None:
        check(
            portal, [({"!COMPANY_ID": 5}, [1, 3, 4]), ({"!=COMPANY_ID": 6}, [1, 2, 3])]
        )

    def test_plus_adds_null_and_zero(self, portal: RunningSandbox) -> None:
        check(portal, [({"+>OPPORTUNITY": 1000}, [1, 3, 4])])

    def test_in_and_not_in_take_lists(self, portal: RunningSandbox) -> None:
        check(
            portal,
            [
                ({"@ASSIGNED_BY_ID": [7, "9"]}, [2, 3, 4]),
                ({"!@ASSIGNED_BY_ID": [7]}, [1, 4]),
                ({"!@COMPANY_ID": [5]}, [3, 4]),
                ({"@ID": []}, [1, 2, 3, 4]),
            ],
        )

    def test_like_on_numbers_is_equality(self, portal: RunningSandbox) -> None:
        check(portal, [({"%ASSIGNED_BY_ID": "7"}, [2, 3])])


class TestStrings:
    def test_empty_means_null_or_empty(self, portal: RunningSandbox) -> None:
        check(portal, [({"COMMENTS": ""}, [1, 2]), ({"!COMMENTS": ""}, [3, 4])])

    def test_equality_ignores_case_and_negation_matches_null(
        self, portal: RunningSandbox
    ) -> None:
        check(portal, [({"COMMENTS": "vip"}, [3]), ({"!COMMENTS": "VIP"}, [1, 2, 4])])

    def test_like_forms(self, portal: RunningSandbox) -> None:
        check(
            portal,
            [
                ({"%TITLE": "HAIR"}, [1, 2]),
                ({"%TITLE": "100%"}, [4]),
                ({"=%TITLE": "hair%"}, [1, 2]),
                ({"%=TITLE": "%ing"}, [2]),
                ({"=%TITLE": "Nail_"}, [3]),
            ],
        )

    def test_negated_like_is_a_plain_like_as_on_the_server(
        self, portal: RunningSandbox
    ) -> None:
        check(portal, [({"!%TITLE": "hair"}, [1, 2])])

    def test_search_syntax(self, portal: RunningSandbox) -> None:
        check(
            portal,
            [
                ({"?TITLE": "nails | massage"}, [3, 4]),
                ({"?TITLE": "hair ~colouring"}, [1]),
            ],
        )

    def test_status_fields_turn_like_into_equality(
        self, portal: RunningSandbox
    ) -> None:
        check(portal, [({"%STAGE_ID": "NE"}, []), ({"%STAGE_ID": "new"}, [1])])

    def test_lists_mean_any_of_and_in_lists_work_on_text(
        self, portal: RunningSandbox
    ) -> None:
        check(
            portal,
            [
                ({"STAGE_ID": ["NEW", "WON"]}, [1, 3]),
                ({"@STAGE_ID": ["NEW", "WON"]}, [1, 3]),
                ({"!@STAGE_ID": ["NEW"]}, [2, 3, 4]),
                ({"!=STAGE_ID": "NEW"}, [2, 3, 4]),
            ],
        )


class TestDates:
    def test_naive_strings_are_portal_local_and_offsets_are_honoured(
        self, portal: RunningSandbox
    ) -> None:
        check(
            portal,
            [
                ({">DATE_CREATE": "2026-05-01 10:00:00"}, [3]),
                ({">=DATE_CREATE": "2026-05-01 10:00:00"}, [2, 3]),
                ({">DATE_CREATE": "2026-05-01T07:00:00Z"}, [3]),
                ({">DATE_CREATE": "2026-05-01T09:00:00+02:00"}, [3]),
                ({"<DATE_CREATE": "2026-05-01"}, [4]),
                ({">=DATE_CREATE": "01.05.2026"}, [1, 2, 3]),
            ],
        )

    def test_like_on_datetimes_is_equality(self, portal: RunningSandbox) -> None:
        check(portal, [({"%DATE_CREATE": "2026-05-01T10:00:00+03:00"}, [2])])

    def test_empty_or_unparsable_means_null(self, portal: RunningSandbox) -> None:
        check(
            portal,
            [
                ({"DATE_CREATE": ""}, []),
                ({">DATE_CREATE": "next payday"}, []),
                ({"!DATE_CREATE": ""}, [1, 2, 3, 4]),
                ({"CLOSEDATE": ""}, [4]),
            ],
        )

    def test_a_week_of_close_dates_in_the_portal_zone(
        self, portal: RunningSandbox
    ) -> None:
        week = {">=CLOSEDATE": "2026-05-04", "<CLOSEDATE": "2026-05-11"}

        check(portal, [(week, [1, 2])])

    def test_a_date_filter_from_a_query_string(self, portal: RunningSandbox) -> None:
        response = portal.http.get(
            "/rest/1/sandbox/crm.deal.list",
            params={
                "filter[>DATE_CREATE]": "2026-05-01T10:00:00+03:00",
                "select[]": "ID",
            },
        )

        assert [row["ID"] for row in response.json()["result"]] == ["3"]


class TestDroppedKeys:
    def test_unknown_and_miscased_keys_widen_the_filter(
        self, portal: RunningSandbox
    ) -> None:
        check(
            portal,
            [
                ({"stage_id": "WON"}, [1, 2, 3, 4]),
                ({"NOPE": 1, "!NOPE": 2}, [1, 2, 3, 4]),
                ({"Title": "Nails", "ASSIGNED_BY_ID": 7}, [2, 3]),
            ],
        )

    def test_a_list_instead_of_a_map_has_no_usable_keys(
        self, portal: RunningSandbox
    ) -> None:
        check(portal, [([{"ID": 1}], [1, 2, 3, 4])])

    def test_a_filter_that_is_not_an_array_is_an_error(
        self, portal: RunningSandbox
    ) -> None:
        response = portal.call("crm.deal.list", {"filter": "ID=1"})

        assert response.status_code == 400
        assert response.json() == {
            "error": "",
            "error_description": "Parameter 'filter' must be array.",
        }

    def test_an_empty_bare_user_field_is_dropped(self, portal: RunningSandbox) -> None:
        check(portal, [({"UF_CRM_NOTE": ""}, [1, 2, 3, 4])])


class TestBooleanUserFields:
    def test_y_one_and_json_true_match_set_flags(self, portal: RunningSandbox) -> None:
        check(
            portal,
            [
                ({"UF_CRM_IS_HOT": "Y"}, [1, 3]),
                ({"UF_CRM_IS_HOT": "1"}, [1, 3]),
                ({"UF_CRM_IS_HOT": 1}, [1, 3]),
                ({"UF_CRM_IS_HOT": True}, [1, 3]),
                ({"UF_CRM_IS_HOT": "N"}, [2, 4]),
                ({"UF_CRM_IS_HOT": False}, [2, 4]),
            ],
        )

    def test_the_words_true_and_false_match_nothing(
        self, portal: RunningSandbox
    ) -> None:
        check(
            portal,
            [
                ({"UF_CRM_IS_HOT": "True"}, []),
                ({"UF_CRM_IS_HOT": "true"}, []),
                ({"UF_CRM_IS_HOT": "False"}, []),
            ],
        )

    def test_batched_pages_with_the_python_literal_come_back_empty(
        self, portal: RunningSandbox
    ) -> None:
        """B24-1: the sandbox, like Bitrix24, matches nothing for a literal True."""
        # Known fault B24-1: fast-bitrix24 sends `True` inside batch commands.
        result = portal.result(
            "batch",
            {
                "halt": 0,
                "cmd": {
                    "literal": "crm.deal.list?filter[UF_CRM_IS_HOT]=True&select[]=ID",
                    "explicit": "crm.deal.list?filter[UF_CRM_IS_HOT]=1&select[]=ID",
                },
            },
        )

        assert result["result"]["literal"] == []
        assert [row["ID"] for row in result["result"]["explicit"]] == ["1", "3"]
        assert result["result_total"] == {"literal": 0, "explicit": 2}


class TestMultifields:
    def test_bare_keys_compare_exactly_unless_the_value_has_a_percent(
        self, portal: RunningSandbox
    ) -> None:
        cases = [
            ({"PHONE": "+79990000001"}, [1]),
            ({"PHONE": "+7999000000"}, []),
            ({"PHONE": "+7999%"}, [1, 2]),
            ({"EMAIL": "A@EXAMPLE.COM"}, [1]),
            ({"PHONE": ["+79990000002", "+79990000001"]}, [2]),
        ]

        answers = [(f, ids(portal, f, "crm.contact.list")) for f, _ in cases]

        assert answers == cases

    def test_prefixed_or_empty_multifield_keys_are_dropped(
        self, portal: RunningSandbox
    ) -> None:
        cases: list[tuple[Any, list[int]]] = [
            ({"%PHONE": "7999"}, [1, 2, 3]),
            ({"PHONE": ""}, [1, 2, 3]),
            ({"LINK": "x"}, [1, 2, 3]),
        ]

        answers = [(f, ids(portal, f, "crm.contact.list")) for f, _ in cases]

        assert answers == cases


class TestFormEncodings:
    def test_operators_percent_encoded_in_a_form_body(
        self, portal: RunningSandbox
    ) -> None:
        response = portal.http.post(
            "/rest/1/sandbox/crm.deal.list",
            content="filter%5B%3E%3DOPPORTUNITY%5D=1000&filter[@STAGE_ID][]=NEW"
            "&filter[@STAGE_ID][]=PREPARATION&select[]=ID",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

        assert [row["ID"] for row in response.json()["result"]] == ["1", "2"]


class TestCompiledFilterApi:
    """The entry point `crm.item.list` reuses: resolved conditions and OR groups."""

    def test_or_groups_nest_inside_and(self) -> None:
        table = Table("deal")
        for row in DEALS:
            table.insert(dict(row), int(row["ID"]))
        node = Group(
            (
                Group(
                    (
                        Condition("STAGE_ID", "=", "WON"),
                        Condition("OPPORTUNITY", ">", 1200),
                    ),
                    logic="OR",
                ),
                Condition("ASSIGNED_BY_ID", "IN", [1, 7]),
            )
        )

        compiled = compile_filter(
            node, STANDARD_FIELDS["deal"], ZoneInfo("Europe/Moscow")
        )

        assert compiled.select(table, table.ids()) == [1, 3]
        assert [i for i in table.ids() if compiled.matcher(table)(i)] == [1, 3]

    def test_strict_negation_negates_like_for_engine_callers(self) -> None:
        table = Table("deal")
        for row in DEALS:
            table.insert(dict(row), int(row["ID"]))
        node = Condition("TITLE", "LIKE", "hair", negative=True)

        compiled = compile_filter(
            node, STANDARD_FIELDS["deal"], ZoneInfo("UTC"), strict_negation=True
        )

        assert compiled.select(table, table.ids()) == [3, 4]
