"""`user.fields` and keyset pages of `user.get` (srv rest/lib/api/user.php)."""

from __future__ import annotations

from typing import Any

from tests.sandbox.conftest import RunningSandbox


def people(count: int, **fields: Any) -> list[dict[str, Any]]:
    return [
        {"ID": str(n), "ACTIVE": True, "NAME": f"Name{n}", "EMAIL": f"u{n}@example.com",
         "UF_DEPARTMENT": [1], **fields}
        for n in range(1, count + 1)
    ]  # fmt: skip


def token_for(sandbox: RunningSandbox, scopes: list[str]) -> str:
    response = sandbox.http.post(
        "/_sandbox/oauth/tokens", json={"user_id": 1, "scopes": scopes}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def user_ids(rows: list[dict[str, Any]]) -> list[int]:
    return [int(row["ID"]) for row in rows]


class TestUserFields:
    def test_every_key_user_get_shows_with_its_label(
        self, sandbox: RunningSandbox
    ) -> None:
        fields = sandbox.result("user.fields")

        assert fields["ID"] == "ID"
        assert fields["NAME"] == "First name"
        assert fields["UF_DEPARTMENT"] == "Departments"
        assert {"ACTIVE", "EMAIL", "WORK_POSITION", "USER_TYPE"} <= set(fields)
        assert all(isinstance(label, str) for label in fields.values())

    def test_the_keys_are_those_user_get_answers(self, sandbox: RunningSandbox) -> None:
        sandbox.load({"users": people(1, WORK_POSITION="Manager", UF_USR_SHIFT="A")})

        fields = sandbox.result("user.fields")
        (row,) = sandbox.result("user.get", {"ID": 1})

        assert set(row) <= set(fields)
        assert "UF_USR_SHIFT" in fields

    def test_a_brief_scope_lists_fewer_keys(self, sandbox: RunningSandbox) -> None:
        token = token_for(sandbox, ["user_brief"])

        response = sandbox.http.get("/rest/user.fields", params={"auth": token})

        assert response.status_code == 200
        fields = response.json()["result"]
        assert "NAME" in fields
        assert "EMAIL" not in fields


class TestUserGetKeyset:
    def test_above_an_id_sorted_by_id_counts_nothing(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load({"users": people(130)})

        answer = sandbox.call(
            "user.get",
            {"sort": "ID", "order": "ASC", "filter": {">ID": 60}, "start": -1},
        ).json()

        assert user_ids(answer["result"]) == list(range(61, 111))
        assert answer["total"] == 0
        assert "next" not in answer

    def test_a_batch_chains_pages_on_the_last_id(self, sandbox: RunningSandbox) -> None:
        sandbox.load({"users": people(120)})
        page = "user.get?sort=ID&order=ASC&select[0]=ID&start=-1&filter[%3EID]="

        body = sandbox.call(
            "batch",
            {
                "halt": 1,
                "cmd": {
                    "p0": page + "0",
                    "p1": page + "$result[p0][49][ID]",
                    "p2": page + "$result[p1][49][ID]",
                },
            },
        ).json()

        pages = body["result"]["result"]
        assert [user_ids(pages[name]) for name in ("p0", "p1", "p2")] == [
            list(range(1, 51)),
            list(range(51, 101)),
            list(range(101, 121)),
        ]
        assert pages["p0"][0] == {"ID": "1"}

    def test_lower_case_parameters_mean_the_same(self, sandbox: RunningSandbox) -> None:
        sandbox.load({"users": people(80)})

        upper = sandbox.result("user.get", {"FILTER": {">ID": 70}, "SELECT": ["ID"]})
        lower = sandbox.result("user.get", {"filter": {">id": 70}, "select": ["ID"]})

        assert user_ids(upper) == user_ids(lower) == list(range(71, 81))
