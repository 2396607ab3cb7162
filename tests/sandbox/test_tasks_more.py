"""`tasks.task.getFields` and keyset pages of `tasks.task.list`, over HTTP."""

from __future__ import annotations

from typing import Any

from tests.sandbox.conftest import RunningSandbox


def task_rows(count: int) -> list[dict[str, Any]]:
    return [
        {"id": str(n), "title": f"Call back {n}", "responsibleId": "1", "status": "2"}
        for n in range(1, count + 1)
    ]


def mint(sandbox: RunningSandbox, scopes: list[str]) -> str:
    response = sandbox.http.post(
        "/_sandbox/oauth/tokens", json={"user_id": 1, "scopes": scopes}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


class TestTaskGetFields:
    def test_fields_are_upper_names_with_title_and_type(
        self, sandbox: RunningSandbox
    ) -> None:
        fields = sandbox.result("tasks.task.getFields")["fields"]

        assert fields["ID"] == {"title": "ID", "type": "integer", "primary": True}
        assert fields["TITLE"] == {"title": "Title", "type": "string", "required": True}
        assert fields["RESPONSIBLE_ID"]["required"] is True
        assert fields["DEADLINE"]["type"] == "datetime"
        assert fields["UF_CRM_TASK"] == {"title": "CRM entities", "type": "crm"}
        assert all(name == name.upper() for name in fields)

    def test_enumerations_list_their_values_and_defaults(
        self, sandbox: RunningSandbox
    ) -> None:
        fields = sandbox.result("tasks.task.getFields")["fields"]

        assert fields["STATUS"]["values"] == {
            "2": "Pending",
            "3": "In Progress",
            "4": "Awaiting Control",
            "5": "Completed",
            "6": "Deferred",
        }
        assert fields["STATUS"]["default"] == 2
        assert fields["PRIORITY"]["default"] == 1
        assert fields["MARK"]["default"] is None
        assert fields["DURATION_TYPE"]["values"][:3] == ["secs", "mins", "hours"]

    def test_the_method_name_is_read_in_any_case(self, sandbox: RunningSandbox) -> None:
        assert sandbox.result("tasks.task.getfields") == sandbox.result(
            "TASKS.TASK.GETFIELDS"
        )

    def test_it_needs_the_task_scope(self, sandbox: RunningSandbox) -> None:
        token = mint(sandbox, ["crm"])

        response = sandbox.http.get(
            "/rest/tasks.task.getFields", params={"auth": token}
        )

        assert response.status_code == 401
        assert response.json()["error"] == "insufficient_scope"

    def test_the_id_and_assignee_it_names_filter_the_list(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load({"tasks": task_rows(3)})
        fields = sandbox.result("tasks.task.getFields")["fields"]

        narrowed = sandbox.result("tasks.task.list", {"filter": {"ID": 2}})
        by_responsible = sandbox.result(
            "tasks.task.list", {"filter": {"RESPONSIBLE_ID": 9}}
        )

        assert {"ID", "RESPONSIBLE_ID", "STATUS", "CREATED_DATE"} <= set(fields)
        assert [task["id"] for task in narrowed["tasks"]] == ["2"]
        assert by_responsible["tasks"] == []


class TestTaskListKeyset:
    def test_above_an_id_in_id_order_without_a_count(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load({"tasks": task_rows(130)})

        body = sandbox.call(
            "tasks.task.list",
            {
                "order": {"ID": "ASC"},
                "filter": {">ID": 50},
                "select": ["ID"],
                "start": -1,
            },
        ).json()

        assert [int(task["id"]) for task in body["result"]["tasks"]] == list(
            range(51, 101)
        )
        assert "total" not in body
        assert "next" not in body

    def test_a_batch_chains_pages_on_the_last_camel_case_id(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load({"tasks": task_rows(120)})
        page = "tasks.task.list?order[ID]=ASC&select[0]=ID&start=-1&filter[%3EID]="

        body = sandbox.call(
            "batch",
            {
                "halt": 1,
                "cmd": {
                    "p0": page + "0",
                    "p1": page + "$result[p0][tasks][49][id]",
                    "p2": page + "$result[p1][tasks][49][id]",
                },
            },
        ).json()

        pages = body["result"]["result"]
        assert [len(pages[name]["tasks"]) for name in ("p0", "p1", "p2")] == [
            50,
            50,
            20,
        ]
        assert pages["p2"]["tasks"][0]["id"] == "101"
