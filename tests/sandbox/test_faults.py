"""Test controls: scripted faults, stats and reset under `/_sandbox/`."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from sandbox.registry import lookup
from tests.sandbox.conftest import RunningSandbox

HOOK = "/rest/1/sandbox"


def add_fault(sandbox: RunningSandbox, **fault: Any) -> httpx.Response:
    response = sandbox.http.post("/_sandbox/faults", json=fault)
    assert response.status_code == 200, response.text
    return response


def needs_methods(*names: str) -> None:
    missing = [name for name in names if lookup(name) is None]
    assert not missing, f"methods not registered yet: {missing}"


def stage_rows(sandbox: RunningSandbox, name: str) -> list[dict[str, Any]]:
    rows = sandbox.result(
        "crm.status.list", {"filter": {"ENTITY_ID": "DEAL_STAGE", "NAME": name}}
    )
    assert isinstance(rows, list)
    return rows


class TestErrorFaults:
    def test_the_next_n_calls_fail_then_calls_are_normal(
        self, sandbox: RunningSandbox
    ) -> None:
        add_fault(
            sandbox,
            method="server.time",
            kind="error",
            code="QUERY_LIMIT_EXCEEDED",
            description="Too many requests",
            status=503,
            times=2,
        )

        answers = [sandbox.call("server.time") for _ in range(3)]

        assert [a.status_code for a in answers] == [503, 503, 200]
        assert answers[0].json() == {
            "error": "QUERY_LIMIT_EXCEEDED",
            "error_description": "Too many requests",
        }

    def test_an_error_fault_can_play_any_auth_error(
        self, sandbox: RunningSandbox
    ) -> None:
        add_fault(
            sandbox,
            method="scope",
            kind="error",
            code="expired_token",
            description="The access token provided has expired",
            status=401,
        )

        response = sandbox.call("scope")

        assert response.status_code == 401
        assert response.json()["error"] == "expired_token"
        assert "time" not in response.json()

    def test_an_error_fault_defaults_to_a_503_query_limit(
        self, sandbox: RunningSandbox
    ) -> None:
        add_fault(sandbox, method="server.time", kind="error")

        response = sandbox.call("server.time")

        assert response.status_code == 503
        assert response.json()["error"] == "QUERY_LIMIT_EXCEEDED"

    def test_a_star_fault_hits_whatever_method_comes_next(
        self, sandbox: RunningSandbox
    ) -> None:
        add_fault(sandbox, method="*", kind="error", status=500, code="ERROR_CORE")

        assert sandbox.call("scope").status_code == 500
        assert sandbox.call("server.time").status_code == 200

    def test_fault_method_names_are_case_insensitive(
        self, sandbox: RunningSandbox
    ) -> None:
        add_fault(sandbox, method="SERVER.TIME", kind="error")

        assert sandbox.call("server.time").status_code == 503

    def test_a_fault_on_one_method_leaves_others_alone(
        self, sandbox: RunningSandbox
    ) -> None:
        add_fault(sandbox, method="server.time", kind="error")

        assert sandbox.call("scope").status_code == 200
        assert sandbox.call("server.time").status_code == 503

    def test_a_status_fault_answers_the_given_body(
        self, sandbox: RunningSandbox
    ) -> None:
        body = {"error": "OVERLOAD_LIMIT", "error_description": "REST API is blocked"}
        add_fault(sandbox, method="scope", kind="status", status=401, body=body)

        response = sandbox.call("scope")

        assert response.status_code == 401
        assert response.json() == body


class TestPageFaults:
    def test_an_html_fault_answers_a_502_page(self, sandbox: RunningSandbox) -> None:
        add_fault(sandbox, method="server.time", kind="html")

        response = sandbox.call("server.time")

        assert response.status_code == 502
        assert response.headers["content-type"].startswith("text/html")
        assert "502 Bad Gateway" in response.text
        with pytest.raises(ValueError, match="Expecting value"):
            response.json()

    def test_an_html_fault_takes_another_status(self, sandbox: RunningSandbox) -> None:
        add_fault(sandbox, method="server.time", kind="html", status=500)

        response = sandbox.call("server.time")

        assert response.status_code == 500
        assert "500 Internal Server Error" in response.text

    def test_a_redirect_answers_302_with_location_and_no_json(
        self, sandbox: RunningSandbox
    ) -> None:
        new_host = "https://renamed.bitrix24.test/rest/1/sandbox/server.time"
        add_fault(sandbox, method="server.time", kind="redirect", location=new_host)

        response = sandbox.call("server.time")

        assert response.status_code == 302
        assert response.headers["location"] == new_host
        assert not response.headers["content-type"].startswith("application/json")
        with pytest.raises(ValueError, match="Expecting value"):
            response.json()


class TestSlowFaults:
    def test_latency_delays_then_answers_normally(
        self, sandbox: RunningSandbox
    ) -> None:
        add_fault(sandbox, method="server.time", kind="latency", seconds=0.3)

        began = time.monotonic()
        response = sandbox.call("server.time")
        took = time.monotonic() - began

        assert response.status_code == 200
        assert took >= 0.3
        assert response.json()["time"]["duration"] >= 0.3

    def test_timeout_after_write_keeps_the_write(self, sandbox: RunningSandbox) -> None:
        add_fault(
            sandbox, method="crm.status.add", kind="timeout_after_write", seconds=1.0
        )
        fields = {"ENTITY_ID": "DEAL_STAGE", "STATUS_ID": "LATE", "NAME": "Late"}

        with pytest.raises(httpx.ReadTimeout):
            sandbox.http.post(
                f"{HOOK}/crm.status.add", json={"fields": fields}, timeout=0.3
            )

        assert [row["STATUS_ID"] for row in stage_rows(sandbox, "Late")] == ["LATE"]

    def test_timeout_after_write_keeps_the_deal(self, sandbox: RunningSandbox) -> None:
        needs_methods("crm.deal.add", "crm.deal.list")
        add_fault(
            sandbox, method="crm.deal.add", kind="timeout_after_write", seconds=1.0
        )

        with pytest.raises(httpx.ReadTimeout):
            sandbox.http.post(
                f"{HOOK}/crm.deal.add",
                json={"fields": {"TITLE": "Written anyway"}},
                timeout=0.3,
            )

        deals = sandbox.result(
            "crm.deal.list", {"filter": {"TITLE": "Written anyway"}, "select": ["ID"]}
        )
        assert len(deals) == 1

    def test_a_patient_client_gets_the_answer_after_the_delay(
        self, sandbox: RunningSandbox
    ) -> None:
        add_fault(
            sandbox, method="server.time", kind="timeout_after_write", seconds=0.2
        )

        response = sandbox.call("server.time")

        assert response.status_code == 200
        assert isinstance(response.json()["result"], str)


class TestFaultsInBatch:
    def test_an_error_fault_fails_its_command_in_result_error(
        self, sandbox: RunningSandbox
    ) -> None:
        add_fault(
            sandbox,
            method="server.time",
            kind="error",
            code="ACCESS_DENIED",
            description="Access denied!",
            status=403,
        )

        response = sandbox.call(
            "batch", {"cmd": {"a": "server.time", "b": "server.time"}}
        )

        assert response.status_code == 200
        result = response.json()["result"]
        assert result["result_error"] == {
            "a": {"error": "ACCESS_DENIED", "error_description": "Access denied!"}
        }
        assert list(result["result"]) == ["b"]

    def test_latency_slows_a_command(self, sandbox: RunningSandbox) -> None:
        add_fault(sandbox, method="server.time", kind="latency", seconds=0.2)

        result = sandbox.result("batch", {"cmd": {"a": "server.time"}})

        assert result["result_time"]["a"]["duration"] >= 0.2

    def test_an_html_page_on_a_batched_method_fails_the_whole_request(
        self, sandbox: RunningSandbox
    ) -> None:
        add_fault(sandbox, method="server.time", kind="html")

        batched = sandbox.call("batch", {"cmd": {"a": "scope", "b": "server.time"}})
        direct = sandbox.call("server.time")

        assert batched.status_code == 502
        assert batched.headers["content-type"].startswith("text/html")
        assert direct.status_code == 200

    def test_a_rate_limit_fault_on_a_batched_method_is_a_503_for_the_batch(
        self, sandbox: RunningSandbox
    ) -> None:
        add_fault(sandbox, method="crm.deal.add", kind="error", times=2)

        first = sandbox.call("batch", {"cmd": {"a": "crm.deal.add?fields[TITLE]=x"}})
        second = sandbox.call("batch", {"cmd": {"a": "crm.deal.add?fields[TITLE]=x"}})
        third = sandbox.call("batch", {"cmd": {"a": "crm.deal.add?fields[TITLE]=x"}})

        assert [first.status_code, second.status_code] == [503, 503]
        assert first.json()["error"] == "QUERY_LIMIT_EXCEEDED"
        assert third.status_code == 200
        assert sandbox.result("crm.deal.list", {"select": ["ID"]}) == [{"ID": "1"}]

    def test_a_fault_marked_not_in_batch_waits_for_a_direct_call(
        self, sandbox: RunningSandbox
    ) -> None:
        add_fault(sandbox, method="server.time", kind="error", in_batch=False)

        batched = sandbox.result("batch", {"cmd": {"a": "server.time"}})

        assert batched["result_error"] == []
        assert sandbox.call("server.time").status_code == 503

    def test_a_fault_on_batch_fails_the_whole_request(
        self, sandbox: RunningSandbox
    ) -> None:
        add_fault(sandbox, method="batch", kind="html")

        response = sandbox.call("batch", {"cmd": {"a": "server.time"}})

        assert response.status_code == 502


class TestFaultControls:
    def test_get_lists_the_pending_faults(self, sandbox: RunningSandbox) -> None:
        add_fault(sandbox, method="scope", kind="error", times=3)
        sandbox.call("scope")

        faults = sandbox.http.get("/_sandbox/faults").json()["faults"]

        assert len(faults) == 1
        assert faults[0]["method"] == "scope"
        assert faults[0]["kind"] == "error"
        assert faults[0]["times"] == 2

    def test_a_used_up_fault_disappears(self, sandbox: RunningSandbox) -> None:
        add_fault(sandbox, method="scope", kind="error")
        sandbox.call("scope")

        assert sandbox.http.get("/_sandbox/faults").json() == {"faults": []}

    def test_a_list_of_faults_is_accepted_at_once(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.http.post(
            "/_sandbox/faults",
            json=[
                {"method": "scope", "kind": "error"},
                {"method": "server.time", "kind": "latency", "seconds": 0.01},
            ],
        )

        assert len(response.json()["faults"]) == 2

    def test_delete_clears_every_fault(self, sandbox: RunningSandbox) -> None:
        add_fault(sandbox, method="scope", kind="error", times=5)

        cleared = sandbox.http.delete("/_sandbox/faults")

        assert cleared.json() == {"faults": []}
        assert sandbox.call("scope").status_code == 200

    @pytest.mark.parametrize(
        ("fault", "named"),
        [
            ({"method": "scope", "kind": "explode"}, "explode"),
            ({"method": "scope", "kind": "error", "times": 0}, "times"),
            ({"method": "scope", "kind": "error", "status": 42}, "status"),
            ({"method": "scope", "kind": "latency", "seconds": -1}, "seconds"),
            ({"method": "scope", "kind": "redirect"}, "location"),
            ({"method": "scope", "kind": "error", "colour": "red"}, "colour"),
            ({"kind": "error"}, "method"),
        ],
    )
    def test_a_bad_fault_is_a_400_naming_the_problem(
        self, sandbox: RunningSandbox, fault: dict[str, Any], named: str
    ) -> None:
        response = sandbox.http.post("/_sandbox/faults", json=fault)

        assert response.status_code == 400
        assert named in response.json()["error"]
        assert sandbox.http.get("/_sandbox/faults").json() == {"faults": []}

    def test_a_body_that_is_not_json_is_a_400(self, sandbox: RunningSandbox) -> None:
        response = sandbox.http.post("/_sandbox/faults", content=b"{nope")

        assert response.status_code == 400
        assert "bad fault" in response.json()["error"]


class TestStats:
    def test_http_requests_and_batch_commands_are_counted_apart(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.call("server.time")
        sandbox.call("server.time")
        sandbox.call("batch", {"cmd": ["server.time", "scope", "scope"]})

        stats = sandbox.http.get("/_sandbox/stats").json()

        assert stats["requests"] == 3
        assert stats["http_by_method"] == {"batch": 1, "server.time": 2}
        assert stats["batch_by_method"] == {"scope": 2, "server.time": 1}
        assert stats["by_method"] == {"batch": 1, "scope": 2, "server.time": 3}

    def test_calls_that_fail_are_counted_too(self, sandbox: RunningSandbox) -> None:
        add_fault(sandbox, method="scope", kind="error")
        sandbox.call("scope")
        sandbox.http.get("/rest/1/wrong/scope")

        stats = sandbox.http.get("/_sandbox/stats").json()

        assert stats["http_by_method"] == {"scope": 2}

    def test_reset_zeroes_the_counters(self, sandbox: RunningSandbox) -> None:
        sandbox.call("server.time")

        sandbox.reset()

        assert sandbox.http.get("/_sandbox/stats").json() == {
            "requests": 0,
            "by_method": {},
            "http_by_method": {},
            "batch_by_method": {},
            "rejected_rate_limit": 0,
        }


class TestReset:
    def test_reset_clears_pending_faults(self, sandbox: RunningSandbox) -> None:
        add_fault(sandbox, method="scope", kind="error")

        sandbox.reset()

        assert sandbox.call("scope").status_code == 200

    def test_reset_removes_written_rows(self, sandbox: RunningSandbox) -> None:
        fields = {"ENTITY_ID": "DEAL_STAGE", "STATUS_ID": "TEMP", "NAME": "Temp"}
        assert sandbox.call("crm.status.add", {"fields": fields}).status_code == 200

        sandbox.reset()

        assert stage_rows(sandbox, "Temp") == []

    def test_reset_keeps_the_default_webhook(self, sandbox: RunningSandbox) -> None:
        sandbox.reset()

        assert sandbox.call("server.time").status_code == 200

    def test_reset_forgets_added_webhooks(self, sandbox: RunningSandbox) -> None:
        sandbox.app.portal.add_webhook(5, "extra", frozenset({"crm"}))

        sandbox.reset()

        assert sandbox.http.get("/rest/5/extra/scope").status_code == 401


class TestFaultDetails:
    def test_an_html_fault_answers_the_page_it_was_given(
        self, sandbox: RunningSandbox
    ) -> None:
        page = "<html><body>Сервис недоступен</body></html>"
        add_fault(sandbox, method="server.time", kind="html", status=503, body=page)

        response = sandbox.call("server.time")

        assert response.status_code == 503
        assert response.text == page

    def test_an_unknown_fault_field_is_named_in_a_400(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.http.post(
            "/_sandbox/faults", json={"method": "server.time", "time": 3}
        )

        assert response.status_code == 400
        assert "unknown fault fields: time" in response.text
