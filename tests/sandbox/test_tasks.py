"""`tasks.task.add/get/list/update` over HTTP, against the recorded shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox.conftest import RunningSandbox
from tests.sandbox.shapes import shape_differences

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bitrix24"

PEOPLE = {
    "users": [
        {"ID": "1", "ACTIVE": True, "NAME": "Admin", "LAST_NAME": "Sandbox",
         "WORK_POSITION": "Administrator", "UF_DEPARTMENT": [1]},
        {"ID": "7", "ACTIVE": True, "NAME": "Irina", "LAST_NAME": "Orlova",
         "WORK_POSITION": "Manager", "UF_DEPARTMENT": [1]},
        {"ID": "8", "ACTIVE": True, "NAME": "Oleg", "LAST_NAME": "Belov",
         "UF_DEPARTMENT": [1]},
        {"ID": "13", "ACTIVE": True, "NAME": "Test", "LAST_NAME": "Auditor"},
        {"ID": "103", "ACTIVE": True, "NAME": "Second", "LAST_NAME": "Auditor"},
    ]
}  # fmt: skip


def recorded(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text("utf-8"))


def add_task(sandbox: RunningSandbox, **fields: Any) -> dict[str, Any]:
    fields.setdefault("TITLE", "Call the client back")
    fields.setdefault("RESPONSIBLE_ID", 7)
    response = sandbox.call("tasks.task.add", {"fields": fields})
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()["result"]["task"]
    return task


def task_ids(answer: dict[str, Any]) -> list[str]:
    return [task["id"] for task in answer["result"]["tasks"]]


@pytest.fixture
def staffed(sandbox: RunningSandbox) -> RunningSandbox:
    sandbox.load(PEOPLE)
    return sandbox


class TestTaskAdd:
    def test_answer_has_the_recorded_shape(self, staffed: RunningSandbox) -> None:
        task = add_task(staffed)

        fixture = recorded("tasks.task.add.response.json")["result"]["task"]
        assert shape_differences(task, fixture) == []
        assert list(task) == list(fixture)
        assert task["action"] == {key: task["action"][key] for key in fixture["action"]}

    def test_numbers_are_strings_and_action_flags_booleans(
        self, staffed: RunningSandbox
    ) -> None:
        task = add_task(staffed, PRIORITY=2)

        assert task["id"] == "1"
        assert task["responsibleId"] == "7"
        assert task["createdBy"] == "1"
        assert task["priority"] == "2"
        assert task["status"] == "2"
        assert all(isinstance(flag, bool) for flag in task["action"].values())

    def test_creator_and_responsible_are_people(self, staffed: RunningSandbox) -> None:
        task = add_task(staffed)

        assert task["responsible"] == {
            "id": "7",
            "name": "Irina Orlova",
            "link": "/company/personal/user/7/",
            "icon": "/bitrix/images/tasks/default_avatar.png",
            "workPosition": "Manager",
        }
        assert task["creator"]["id"] == "1"

    def test_dates_carry_the_portal_offset(self, staffed: RunningSandbox) -> None:
        task = add_task(staffed, DEADLINE="2031-12-31T18:00:00")

        assert task["deadline"] == "2031-12-31T18:00:00+03:00"
        assert task["createdDate"].endswith("+03:00")

    def test_a_deadline_with_an_offset_is_converted(
        self, staffed: RunningSandbox
    ) -> None:
        task = add_task(staffed, DEADLINE="2031-12-31T15:00:00Z")

        assert task["deadline"] == "2031-12-31T18:00:00+03:00"

    def test_missing_title_is_refused_with_the_server_text(
        self, staffed: RunningSandbox
    ) -> None:
        response = staffed.call(
            "tasks.task.add", {"fields": {"RESPONSIBLE_ID": 7, "TITLE": "  "}}
        )

        assert response.status_code == 400
        assert response.json() == {
            "error": "ERROR_CORE",
            "error_description": "Task title is not specified<br>",
        }

    def test_missing_responsible_is_refused(self, staffed: RunningSandbox) -> None:
        response = staffed.call("tasks.task.add", {"fields": {"TITLE": "x"}})

        assert response.status_code == 400
        assert response.json()["error"] == "ERROR_CORE"
        assert response.json()["error_description"] == "Assignee is not specified<br>"

    def test_unknown_responsible_is_refused(self, staffed: RunningSandbox) -> None:
        response = staffed.call(
            "tasks.task.add", {"fields": {"TITLE": "x", "RESPONSIBLE_ID": 99}}
        )

        assert response.status_code == 400
        assert "Assignee" in response.json()["error_description"]

    def test_missing_fields_is_an_engine_error(self, staffed: RunningSandbox) -> None:
        response = staffed.call("tasks.task.add", {"FIELDS": {"TITLE": "x"}})

        assert response.status_code == 400
        assert response.json()["error"] == "100"
        assert "{fields}" in response.json()["error_description"]

    def test_unknown_field_keys_are_dropped(self, staffed: RunningSandbox) -> None:
        task = add_task(staffed, NO_SUCH_FIELD="x", title="ignored")

        assert "noSuchField" not in task
        assert task["title"] == "Call the client back"

    def test_members_are_listed_with_their_data(self, staffed: RunningSandbox) -> None:
        task = add_task(staffed, AUDITORS=[8], ACCOMPLICES=["1"])

        assert task["auditors"] == ["8"]
        assert task["auditorsData"]["8"]["name"] == "Oleg Belov"
        assert task["accomplicesData"]["1"]["id"] == "1"


class TestTaskGet:
    def test_answers_the_stored_task(self, staffed: RunningSandbox) -> None:
        created = add_task(staffed, DESCRIPTION="Ask about the quote")

        answer = staffed.result("tasks.task.get", {"taskId": created["id"]})

        assert answer["task"]["description"] == "Ask about the quote"
        assert answer["task"]["id"] == created["id"]

    def test_crm_bindings_show_when_selected(self, staffed: RunningSandbox) -> None:
        created = add_task(staffed, UF_CRM_TASK=["D_10", "C_7"])

        plain = staffed.result("tasks.task.get", {"taskId": created["id"]})
        chosen = staffed.result(
            "tasks.task.get",
            {"taskId": created["id"], "select": ["ID", "TITLE", "UF_CRM_TASK"]},
        )

        assert "ufCrmTask" not in plain["task"]
        assert chosen["task"]["ufCrmTask"] == ["D_10", "C_7"]
        assert chosen["task"]["title"] == "Call the client back"
        assert "description" not in chosen["task"]

    def test_unknown_task_answers_an_empty_array(self, staffed: RunningSandbox) -> None:
        answer = staffed.call("tasks.task.get", {"taskId": 404}).json()

        assert answer["result"] == []

    def test_a_bad_task_id_is_refused(self, staffed: RunningSandbox) -> None:
        response = staffed.call("tasks.task.get", {"taskId": "abc"})

        assert response.status_code == 400
        assert response.json() == {"error": "0", "error_description": "wrong task id"}


class TestTaskUpdate:
    def test_changes_fields_and_answers_the_task(self, staffed: RunningSandbox) -> None:
        created = add_task(staffed)

        answer = staffed.result(
            "tasks.task.update",
            {"taskId": created["id"], "fields": {"TITLE": "Renamed", "STATUS": 3}},
        )

        assert answer["task"]["title"] == "Renamed"
        assert answer["task"]["status"] == "3"
        assert answer["task"]["action"]["pause"] is True

    def test_completing_records_who_closed_it(self, staffed: RunningSandbox) -> None:
        created = add_task(staffed)

        answer = staffed.result(
            "tasks.task.update", {"taskId": created["id"], "fields": {"STATUS": 5}}
        )

        assert answer["task"]["closedBy"] == "1"
        assert answer["task"]["closedDate"].endswith("+03:00")

    def test_an_empty_title_is_refused(self, staffed: RunningSandbox) -> None:
        created = add_task(staffed)

        response = staffed.call(
            "tasks.task.update", {"taskId": created["id"], "fields": {"TITLE": ""}}
        )

        assert response.status_code == 400
        assert response.json()["error_description"] == "Task title is not specified<br>"


class TestTaskList:
    def test_rows_have_the_recorded_shape(self, staffed: RunningSandbox) -> None:
        add_task(staffed, AUDITORS=[13, 103], DEADLINE="2031-10-24T19:00:00")
        fixture = recorded("tasks.task.list.response.json")
        select = ["ID", "TITLE", "DESCRIPTION", "DEADLINE", "CREATED_DATE",
                  "RESPONSIBLE_ID", "PRIORITY", "MARK", "STATUS", "AUDITORS",
                  "ACCOMPLICES"]  # fmt: skip

        answer = staffed.call("tasks.task.list", {"select": select}).json()

        row = answer["result"]["tasks"][0]
        skipped = frozenset(
            {"lengthDeadline", "taskRequireResult", "taskHasOpenResult",
             "taskHasResult", "timeElapsed", "timerIsRunningForCurrentUser",
             "parsedDescription", "counter", "tags"}
        )  # fmt: skip
        expected = fixture["result"]["tasks"][0]
        assert shape_differences(row, expected, allow_missing=skipped) == []
        assert row["status"] == "2"
        assert row["subStatus"] == "2"
        assert answer["total"] == 1

    def test_default_order_is_newest_first(self, staffed: RunningSandbox) -> None:
        for title in ("one", "two", "three"):
            add_task(staffed, TITLE=title)

        answer = staffed.call("tasks.task.list").json()

        assert task_ids(answer) == ["3", "2", "1"]

    def test_filter_uses_upper_keys_and_operators(
        self, staffed: RunningSandbox
    ) -> None:
        add_task(staffed, RESPONSIBLE_ID=7)
        add_task(staffed, RESPONSIBLE_ID=8)
        add_task(staffed, RESPONSIBLE_ID=7, PRIORITY=2)

        by_person = staffed.call(
            "tasks.task.list", {"filter": {"RESPONSIBLE_ID": 7}}
        ).json()
        above = staffed.call("tasks.task.list", {"filter": {">ID": 1}}).json()
        negated = staffed.call("tasks.task.list", {"filter": {"!PRIORITY": 2}}).json()

        assert task_ids(by_person) == ["3", "1"]
        assert task_ids(above) == ["3", "2"]
        assert task_ids(negated) == ["2", "1"]

    def test_filter_by_deadline_compares_instants(
        self, staffed: RunningSandbox
    ) -> None:
        add_task(staffed, DEADLINE="2026-05-01T10:00:00+03:00")
        add_task(staffed, DEADLINE="2026-06-01T10:00:00+03:00")

        answer = staffed.call(
            "tasks.task.list", {"filter": {"<=DEADLINE": "2026-05-15"}}
        ).json()

        assert task_ids(answer) == ["1"]

    def test_filter_by_crm_binding(self, staffed: RunningSandbox) -> None:
        add_task(staffed, UF_CRM_TASK=["D_10"])
        add_task(staffed, UF_CRM_TASK=["C_7"])

        answer = staffed.call(
            "tasks.task.list",
            {"filter": {"UF_CRM_TASK": "D_10"}, "select": ["ID", "UF_CRM_TASK"]},
        ).json()

        assert task_ids(answer) == ["1"]
        assert answer["result"]["tasks"][0]["ufCrmTask"] == ["D_10"]

    def test_order_by_a_known_key(self, staffed: RunningSandbox) -> None:
        add_task(staffed, TITLE="b")
        add_task(staffed, TITLE="a")
        add_task(staffed, TITLE="c")

        answer = staffed.call("tasks.task.list", {"order": {"TITLE": "asc"}}).json()

        assert task_ids(answer) == ["2", "1", "3"]

    def test_a_bad_order_key_fails_the_list(self, staffed: RunningSandbox) -> None:
        response = staffed.call("tasks.task.list", {"order": {"NO_SUCH": "asc"}})

        assert response.status_code == 400
        assert response.json() == {
            "error": "0",
            "error_description": "Invalid sorting key (internal error)",
        }

    def test_pages_engine_style(self, staffed: RunningSandbox) -> None:
        for number in range(60):
            add_task(staffed, TITLE=f"task {number}")

        first = staffed.call("tasks.task.list", {"select": ["ID"]}).json()
        second = staffed.call("tasks.task.list", {"select": ["ID"], "start": 50}).json()
        beyond = staffed.call(
            "tasks.task.list", {"select": ["ID"], "start": 100}
        ).json()

        assert len(first["result"]["tasks"]) == 50
        assert (first["total"], first["next"]) == (60, 50)
        assert len(second["result"]["tasks"]) == 10
        assert "next" not in second
        assert beyond["result"]["tasks"] == []
        assert beyond["total"] == 60

    def test_start_minus_one_sends_neither_total_nor_next(
        self, staffed: RunningSandbox
    ) -> None:
        add_task(staffed)

        answer = staffed.call("tasks.task.list", {"start": -1}).json()

        assert len(answer["result"]["tasks"]) == 1
        assert "total" not in answer
        assert "next" not in answer

    def test_an_overdue_task_shows_sub_status_minus_one(
        self, staffed: RunningSandbox
    ) -> None:
        add_task(staffed, DEADLINE="2020-01-01T10:00:00")

        answer = staffed.call(
            "tasks.task.list", {"select": ["ID", "STATUS"], "filter": {"STATUS": -1}}
        ).json()

        assert answer["result"]["tasks"][0]["subStatus"] == "-1"
        assert answer["result"]["tasks"][0]["status"] == "2"
