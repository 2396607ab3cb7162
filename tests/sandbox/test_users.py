"""`user.get`, `user.current`, `department.get`, `profile`, `app.info` over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.sandbox.conftest import RunningSandbox
from tests.sandbox.shapes import shape_differences

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bitrix24"


def recorded(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text("utf-8"))


def person(user_id: int, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "ID": str(user_id),
        "ACTIVE": True,
        "NAME": f"Name{user_id}",
        "LAST_NAME": f"Last{user_id}",
        "EMAIL": f"user{user_id}@example.com",
        "IS_ONLINE": "N",
        "UF_DEPARTMENT": [1],
        "USER_TYPE": "employee",
        "DATE_REGISTER": "2024-07-15T00:00:00+03:00",
    }
    row.update(fields)
    return row


STAFF = {
    "users": [
        person(1, NAME="Admin", LAST_NAME="Sandbox", IS_ONLINE="Y"),
        person(2, NAME="Anna", LAST_NAME="Petrova", UF_DEPARTMENT=[3]),
        person(3, NAME="Boris", LAST_NAME="Ivanov", UF_DEPARTMENT=[3, 4]),
        person(4, NAME="Vera", LAST_NAME="Smirnova", ACTIVE=False),
        person(5, NAME="Robot", LAST_NAME="Helper", USER_TYPE="bot"),
        person(
            6, NAME="Eve", LAST_NAME="Guest", USER_TYPE="extranet", UF_DEPARTMENT=[]
        ),
    ],
    "departments": [
        {"ID": "1", "NAME": "Company", "SORT": 500, "UF_HEAD": "1"},
        {"ID": "3", "NAME": "Sales Department", "SORT": 500, "PARENT": "1"},
        {"ID": "4", "NAME": "Accounting", "SORT": 300, "PARENT": "1", "UF_HEAD": ""},
        {"ID": "5", "NAME": "Night shift", "SORT": 100, "PARENT": "3"},
    ],
}


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["ID"] for row in rows]


def mint(sandbox: RunningSandbox, **body: Any) -> dict[str, Any]:
    response = sandbox.http.post("/_sandbox/oauth/tokens", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


class TestUserGet:
    def test_rows_have_the_recorded_shape(self, sandbox: RunningSandbox) -> None:
        answer = sandbox.call("user.get", {"ID": 1}).json()

        row = answer["result"][0]
        assert (
            shape_differences(row, recorded("user.get.response.json")["result"][0])
            == []
        )
        assert row["ID"] == "1"
        assert row["ACTIVE"] is True
        assert row["IS_ONLINE"] in ("Y", "N")
        assert row["UF_DEPARTMENT"] == [1]
        assert answer["total"] == 1

    def test_unset_fields_are_left_out_and_dates_shown_empty(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load(STAFF)

        row = sandbox.result("user.get", {"ID": 2})[0]

        assert "PERSONAL_WWW" not in row
        assert row["LAST_LOGIN"] == ""
        assert row["PERSONAL_BIRTHDAY"] == ""
        assert list(row)[:3] == ["ID", "ACTIVE", "NAME"]
        assert list(row)[-1] == "USER_TYPE"

    def test_filter_keys_work_at_the_top_level_and_inside_filter(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load(STAFF)

        top = sandbox.result("user.get", {"UF_DEPARTMENT": 3})
        nested = sandbox.result("user.get", {"FILTER": {"UF_DEPARTMENT": 3}})

        assert ids(top) == ["2", "3"]
        assert ids(nested) == ["2", "3"]

    def test_the_whole_query_is_read_in_any_case(self, sandbox: RunningSandbox) -> None:
        sandbox.load(STAFF)

        rows = sandbox.result("user.get", {"filter": {"uf_department": [4]}})

        assert ids(rows) == ["3"]

    def test_unknown_filter_key_is_dropped_silently(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load(STAFF)

        rows = sandbox.result("user.get", {"NO_SUCH_FIELD": "x", "ACTIVE": True})

        assert ids(rows) == ["1", "2", "3", "6"]

    def test_active_false_finds_inactive_users(self, sandbox: RunningSandbox) -> None:
        sandbox.load(STAFF)

        rows = sandbox.result("user.get", {"ACTIVE": False})

        assert ids(rows) == ["4"]
        assert rows[0]["ACTIVE"] is False

    def test_user_type_employee_excludes_extranet(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load(STAFF)

        rows = sandbox.result("user.get", {"USER_TYPE": "employee"})

        assert ids(rows) == ["1", "2", "3", "4"]

    def test_bots_never_appear(self, sandbox: RunningSandbox) -> None:
        sandbox.load(STAFF)

        rows = sandbox.result("user.get", {"ID": 5})

        assert rows == []

    def test_name_filter_matches_case_insensitively_with_wildcards(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load(STAFF)

        exact = sandbox.result("user.get", {"NAME": "anna"})
        wildcard = sandbox.result("user.get", {"LAST_NAME": "%ov%"})
        substring = sandbox.result("user.get", {"%EMAIL": "user3@"})

        assert ids(exact) == ["2"]
        assert ids(wildcard) == ["2", "3", "4"]
        assert ids(substring) == ["3"]

    def test_operators_compare_ids(self, sandbox: RunningSandbox) -> None:
        sandbox.load(STAFF)

        rows = sandbox.result("user.get", {">ID": 2, "!ID": 4})

        assert ids(rows) == ["3", "6"]

    def test_sort_and_order_apply_only_together(self, sandbox: RunningSandbox) -> None:
        sandbox.load(STAFF)

        sorted_rows = sandbox.result("user.get", {"sort": "NAME", "order": "desc"})
        sort_alone = sandbox.result("user.get", {"SORT": "NAME"})

        assert ids(sorted_rows) == ["4", "6", "3", "2", "1"]
        assert ids(sort_alone) == ["1", "2", "3", "4", "6"]

    def test_form_encoded_filter_reaches_the_method(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load(STAFF)

        response = sandbox.http.post(
            "/rest/1/sandbox/user.get.json",
            content="filter%5BUF_DEPARTMENT%5D%5B%5D=4&filter%5BACTIVE%5D=Y",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

        assert response.status_code == 200
        assert ids(response.json()["result"]) == ["3"]


class TestUserGetPaging:
    def many(self, count: int) -> dict[str, Any]:
        return {"users": [person(user_id) for user_id in range(1, count + 1)]}

    def test_a_page_holds_50_rows_with_total_and_next(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load(self.many(120))

        answer = sandbox.call("user.get").json()

        assert len(answer["result"]) == 50
        assert answer["total"] == 120
        assert answer["next"] == 50

    def test_start_is_an_offset_taken_as_is(self, sandbox: RunningSandbox) -> None:
        sandbox.load(self.many(120))

        answer = sandbox.call("user.get", {"start": 10}).json()

        assert answer["result"][0]["ID"] == "11"
        assert answer["next"] == 60

    def test_the_last_page_has_no_next(self, sandbox: RunningSandbox) -> None:
        sandbox.load(self.many(120))

        answer = sandbox.call("user.get", {"start": 100}).json()

        assert len(answer["result"]) == 20
        assert answer["total"] == 120
        assert "next" not in answer

    def test_start_past_the_end_answers_an_empty_list_without_total(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load(self.many(120))

        answer = sandbox.call("user.get", {"start": 150}).json()

        assert answer["result"] == []
        assert "total" not in answer
        assert "next" not in answer

    def test_start_minus_one_counts_nothing(self, sandbox: RunningSandbox) -> None:
        sandbox.load(self.many(120))

        answer = sandbox.call("user.get", {"start": -1}).json()

        assert len(answer["result"]) == 50
        assert answer["total"] == 0
        assert "next" not in answer


class TestUserCurrent:
    def test_answers_the_webhook_user(self, sandbox: RunningSandbox) -> None:
        row = sandbox.result("user.current")

        assert row["ID"] == "1"
        assert row["ACTIVE"] is True
        assert row["UF_DEPARTMENT"] == [1]

    def test_answers_the_token_holder(self, sandbox: RunningSandbox) -> None:
        sandbox.load(STAFF)
        token = mint(sandbox, user_id=2, scopes=["user"])

        response = sandbox.http.get(
            "/rest/user.current", params={"auth": token["access_token"]}
        )

        assert response.status_code == 200
        assert response.json()["result"]["ID"] == "2"
        assert response.json()["result"]["EMAIL"] == "user2@example.com"

    def test_user_brief_scope_hides_the_email(self, sandbox: RunningSandbox) -> None:
        sandbox.load(STAFF)
        token = mint(sandbox, user_id=2, scopes=["user_brief"])

        response = sandbox.http.post(
            "/rest/user.current.json", json={"auth": token["access_token"]}
        )

        assert response.status_code == 200
        assert "EMAIL" not in response.json()["result"]
        assert response.json()["result"]["NAME"] == "Anna"

    def test_needs_a_user_scope(self, sandbox: RunningSandbox) -> None:
        token = mint(sandbox, user_id=1, scopes=["crm"])

        response = sandbox.http.get(
            "/rest/user.current", params={"auth": token["access_token"]}
        )

        assert response.status_code == 401
        assert response.json()["error"] == "insufficient_scope"


class TestDepartmentGet:
    def test_rows_have_the_recorded_shape(self, sandbox: RunningSandbox) -> None:
        sandbox.load(STAFF)

        answer = sandbox.call("department.get", {"ID": 3}).json()

        fixture = recorded("department.get.response.json")["result"][0]
        assert shape_differences(answer["result"][0], fixture) == []
        assert answer["result"] == [
            {"ID": "3", "NAME": "Sales Department", "SORT": 500, "PARENT": "1"}
        ]
        assert answer["total"] == 1

    def test_parent_and_head_are_absent_when_empty(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load(STAFF)

        rows = sandbox.result("department.get")

        by_id = {row["ID"]: row for row in rows}
        assert "PARENT" not in by_id["1"]
        assert by_id["1"]["UF_HEAD"] == "1"
        assert "UF_HEAD" not in by_id["4"]

    def test_default_order_walks_the_tree(self, sandbox: RunningSandbox) -> None:
        sandbox.load(STAFF)

        rows = sandbox.result("department.get")

        assert ids(rows) == ["1", "4", "3", "5"]

    def test_filters_by_parent_inside_filter(self, sandbox: RunningSandbox) -> None:
        sandbox.load(STAFF)

        rows = sandbox.result("department.get", {"FILTER": {"PARENT": 1}})

        assert ids(rows) == ["4", "3"]

    def test_sorts_by_name_on_request(self, sandbox: RunningSandbox) -> None:
        sandbox.load(STAFF)

        rows = sandbox.result("department.get", {"sort": "NAME", "order": "DESC"})

        assert ids(rows) == ["3", "5", "1", "4"]

    def test_miscased_filter_key_is_dropped(self, sandbox: RunningSandbox) -> None:
        sandbox.load(STAFF)

        rows = sandbox.result("department.get", {"parent": 3})

        assert len(rows) == 4


class TestProfile:
    def test_answers_the_caller_in_brief(self, sandbox: RunningSandbox) -> None:
        answer = sandbox.result("profile")

        assert answer == {
            "ID": "1",
            "ADMIN": True,
            "NAME": "Admin",
            "LAST_NAME": "Sandbox",
            "PERSONAL_GENDER": "",
            "TIME_ZONE": "",
        }

    def test_other_users_are_not_admins(self, sandbox: RunningSandbox) -> None:
        sandbox.load(STAFF)
        token = mint(sandbox, user_id=3, scopes=["crm"])

        response = sandbox.http.get(
            "/rest/profile",
            headers={"Authorization": f"Bearer {token['access_token']}"},
        )

        assert response.status_code == 200
        assert response.json()["result"]["ADMIN"] is False
        assert response.json()["result"]["ID"] == "3"


class TestAppInfo:
    def test_a_webhook_learns_its_scopes_and_the_plan(
        self, sandbox: RunningSandbox
    ) -> None:
        answer = sandbox.result("app.info")

        assert set(answer) == {"SCOPE", "LICENSE"}
        assert "crm" in answer["SCOPE"]
        assert isinstance(answer["LICENSE"], str)

    def test_an_app_learns_its_own_record(self, sandbox: RunningSandbox) -> None:
        token = mint(sandbox, user_id=1, scopes=["crm"], client_id="local.test")

        response = sandbox.http.get(
            "/rest/app.info", params={"access_token": token["access_token"]}
        )

        answer = response.json()["result"]
        assert answer["CODE"] == "local.test"
        assert answer["INSTALLED"] is True
        assert answer["STATUS"] == "L"
