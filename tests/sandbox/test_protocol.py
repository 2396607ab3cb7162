"""The REST layer over real HTTP: URL forms, auth, parameters, envelope, errors."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.sandbox.conftest import RunningSandbox
from tests.sandbox.echo import (
    CRASH,
    ECHO,
    ECHO_APP_ONLY,
    ECHO_CRM,
    MISSING,
    echo_methods,
)

HOOK = "/rest/1/sandbox"
TIME_TYPES = {
    "start": int,
    "finish": float,
    "duration": float,
    "processing": int,
    "date_start": str,
    "date_finish": str,
    "operating": float,
}


@pytest.fixture
def echo(sandbox: RunningSandbox) -> Iterator[RunningSandbox]:
    with echo_methods():
        yield sandbox


def add_token(
    sandbox: RunningSandbox,
    *,
    scopes: tuple[str, ...] = ("crm", "user"),
    expires_in: int = 3600,
    user_id: int = 1,
) -> str:
    """Mint an app token through the sandbox's OAuth control; returns the token."""
    response = sandbox.http.post(
        "/_sandbox/oauth/tokens",
        json={"user_id": user_id, "scopes": list(scopes), "expires_in": expires_in},
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert isinstance(token, str)
    return token


def parse_xml(content: bytes) -> ET.Element:
    return ET.fromstring(content)  # noqa: S314  (the local sandbox's own answer)


def assert_error(response: Any, status: int, code: str, description: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json() == {"error": code, "error_description": description}


class TestUrlForms:
    def test_a_method_answers_without_a_suffix(self, sandbox: RunningSandbox) -> None:
        response = sandbox.http.post(f"{HOOK}/server.time")

        assert response.status_code == 200
        assert isinstance(response.json()["result"], str)

    def test_a_json_suffix_answers_the_same_json(self, sandbox: RunningSandbox) -> None:
        response = sandbox.http.post(f"{HOOK}/scope.json")

        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert "crm" in response.json()["result"]

    def test_an_xml_suffix_answers_a_response_document(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.http.get(f"{HOOK}/scope.xml")

        assert response.status_code == 200
        assert response.headers["content-type"] == "text/xml; charset=utf-8"
        root = parse_xml(response.content)
        assert root.tag == "response"
        assert [child.tag for child in root] == ["result", "time"]
        result = root.find("result")
        block = root.find("time")
        assert result is not None
        assert block is not None
        assert "crm" in [item.text for item in result]
        assert {child.tag for child in block} >= set(TIME_TYPES)

    def test_an_xml_error_is_an_xml_document(self, echo: RunningSandbox) -> None:
        response = echo.http.get(f"{HOOK}/{MISSING}.xml")

        assert response.status_code == 400
        assert response.headers["content-type"] == "text/xml; charset=utf-8"
        root = parse_xml(response.content)
        assert [(child.tag, child.text) for child in root] == [
            ("error", None),
            ("error_description", "Not found"),
        ]

    def test_another_suffix_is_the_wrong_transport(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.http.get(f"{HOOK}/server.time.php")

        assert_error(response, 500, "INTERNAL_WRONG_TRANSPORT", "Wrong transport!")

    def test_method_names_are_lower_cased(self, sandbox: RunningSandbox) -> None:
        assert sandbox.http.get(f"{HOOK}/SERVER.TIME").status_code == 200
        assert sandbox.http.get(f"{HOOK}/Scope.JSON").status_code == 200

    def test_get_and_post_both_run_the_method(self, sandbox: RunningSandbox) -> None:
        assert sandbox.http.get(f"{HOOK}/server.time").status_code == 200
        assert sandbox.http.post(f"{HOOK}/server.time").status_code == 200

    def test_the_webhook_url_ends_with_a_slash_for_clients(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.http.get(f"{sandbox.webhook}server.time")

        assert response.status_code == 200


class TestAuthErrors:
    def test_an_unknown_method_is_404_even_without_credentials(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.http.get("/rest/no.such.method")

        assert_error(response, 404, "ERROR_METHOD_NOT_FOUND", "Method not found!")

    def test_an_unknown_method_is_404_even_with_a_bad_webhook_token(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.http.get("/rest/1/wrong/no.such.method")

        assert_error(response, 404, "ERROR_METHOD_NOT_FOUND", "Method not found!")

    def test_a_bad_webhook_token_is_invalid_credentials(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.http.get("/rest/1/wrong/server.time")

        assert_error(
            response, 401, "INVALID_CREDENTIALS", "Invalid request credentials"
        )

    def test_the_right_token_for_another_user_is_invalid_credentials(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.http.get("/rest/2/sandbox/server.time")

        assert_error(
            response, 401, "INVALID_CREDENTIALS", "Invalid request credentials"
        )

    def test_a_non_numeric_webhook_user_is_invalid_credentials(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.http.get("/rest/admin/sandbox/server.time")

        assert_error(
            response, 401, "INVALID_CREDENTIALS", "Invalid request credentials"
        )

    def test_the_app_path_without_a_token_is_no_auth_found(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.http.post("/rest/server.time.json")

        assert_error(response, 401, "NO_AUTH_FOUND", "Wrong authorization data")

    def test_an_unknown_access_token_is_invalid_token(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.http.get("/rest/server.time", params={"auth": "nope"})

        assert_error(
            response, 401, "invalid_token", "Unable to get application by token"
        )

    def test_an_expired_access_token_is_expired_token(
        self, sandbox: RunningSandbox
    ) -> None:
        old = add_token(sandbox, expires_in=0)

        response = sandbox.http.get("/rest/server.time", params={"auth": old})

        assert_error(
            response, 401, "expired_token", "The access token provided has expired"
        )

    def test_a_webhook_without_the_scope_gets_insufficient_scope(
        self, echo: RunningSandbox
    ) -> None:
        echo.app.portal.add_webhook(2, "narrow", frozenset({"task"}))

        response = echo.http.post(f"/rest/2/narrow/{ECHO_CRM}")

        assert_error(
            response,
            401,
            "insufficient_scope",
            "The request requires higher privileges than provided by the webhook token",
        )

    def test_an_app_token_without_the_scope_gets_insufficient_scope(
        self, echo: RunningSandbox
    ) -> None:
        narrow = add_token(echo, scopes=("task",))

        response = echo.http.post(f"/rest/{ECHO_CRM}", params={"auth": narrow})

        assert_error(
            response,
            401,
            "insufficient_scope",
            "The request requires higher privileges than provided by the access token",
        )

    def test_an_app_only_method_refuses_a_webhook(self, echo: RunningSandbox) -> None:
        response = echo.call(ECHO_APP_ONLY)

        assert_error(
            response,
            403,
            "WRONG_AUTH_TYPE",
            "Current authorization type is denied for this method",
        )

    def test_an_app_only_method_accepts_an_app_token(
        self, echo: RunningSandbox
    ) -> None:
        token = add_token(echo)

        response = echo.http.post(f"/rest/{ECHO_APP_ONLY}", data={"auth": token})

        assert response.status_code == 200
        assert response.json()["result"]["auth_kind"] == "oauth"


class TestAppTokens:
    def test_a_token_in_the_query_authorises(self, echo: RunningSandbox) -> None:
        echo.load({"users": [{"ID": "1", "NAME": "Anna"}, {"ID": "7", "NAME": "Bo"}]})
        token = add_token(echo, user_id=7)

        response = echo.http.get(f"/rest/{ECHO}", params={"auth": token})

        assert response.status_code == 200
        assert response.json()["result"]["user_id"] == 7

    def test_a_token_in_a_json_body_authorises(self, echo: RunningSandbox) -> None:
        token = add_token(echo)

        response = echo.http.post(f"/rest/{ECHO}.json", json={"auth": token})

        assert response.status_code == 200

    def test_a_token_in_a_form_body_authorises(self, echo: RunningSandbox) -> None:
        token = add_token(echo)

        response = echo.http.post(f"/rest/{ECHO}", data={"auth": token})

        assert response.status_code == 200

    def test_access_token_is_accepted_as_well(self, echo: RunningSandbox) -> None:
        token = add_token(echo)

        response = echo.http.get(f"/rest/{ECHO}", params={"access_token": token})

        assert response.status_code == 200

    def test_a_bearer_header_authorises(self, echo: RunningSandbox) -> None:
        token = add_token(echo)

        response = echo.http.get(
            f"/rest/{ECHO}", headers={"Authorization": f"Bearer {token}"}
        )

        assert response.status_code == 200
        assert response.json()["result"]["auth_kind"] == "oauth"

    def test_auth_and_access_token_are_stripped_before_the_method(
        self, echo: RunningSandbox
    ) -> None:
        token = add_token(echo)

        response = echo.http.post(
            f"/rest/{ECHO}",
            params={"access_token": token, "state": "xyz"},
            json={"auth": token, "ap": "1", "aplogin": "1", "keep": "me"},
        )

        assert response.json()["result"]["params"] == {"keep": "me"}


class TestParameters:
    def test_query_and_body_merge_with_the_body_winning(
        self, echo: RunningSandbox
    ) -> None:
        response = echo.http.post(
            f"{HOOK}/{ECHO}",
            params={"id": "1", "only_query": "q"},
            json={"id": 2, "only_body": True},
        )

        params = response.json()["result"]["params"]
        assert params == {"id": 2, "only_query": "q", "only_body": True}

    def test_a_body_key_replaces_a_whole_query_array(
        self, echo: RunningSandbox
    ) -> None:
        response = echo.http.post(
            f"{HOOK}/{ECHO}?filter[ID]=1&filter[TITLE]=x",
            json={"filter": {"STAGE_ID": "NEW"}},
        )

        assert response.json()["result"]["params"] == {"filter": {"STAGE_ID": "NEW"}}

    def test_malformed_json_is_ignored_and_the_query_alone_runs(
        self, echo: RunningSandbox
    ) -> None:
        response = echo.http.post(
            f"{HOOK}/{ECHO}?id=5",
            content=b'{"id": 6,',
            headers={"Content-Type": "application/json"},
        )

        assert response.status_code == 200
        assert response.json()["result"]["params"] == {"id": "5"}

    def test_a_json_body_that_is_not_an_object_is_ignored(
        self, echo: RunningSandbox
    ) -> None:
        response = echo.http.post(f"{HOOK}/{ECHO}?id=5", json=[1, 2])

        assert response.json()["result"]["params"] == {"id": "5"}

    def test_json_keeps_its_types(self, echo: RunningSandbox) -> None:
        body = {"fields": {"OPPORTUNITY": 15.5, "OPENED": True, "IDS": [1, None]}}

        response = echo.http.post(f"{HOOK}/{ECHO}", json=body)

        assert response.json()["result"]["params"] == body

    def test_a_form_body_is_parsed_with_php_brackets(
        self, echo: RunningSandbox
    ) -> None:
        response = echo.http.post(
            f"{HOOK}/{ECHO}",
            content=(
                "fields[TITLE]=Site+request&fields[PHONE][0][VALUE]=%2B79990000001"
                "&filter[%3E%3DOPPORTUNITY]=15&select[]=ID&select[]=TITLE"
            ),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

        assert response.json()["result"]["params"] == {
            "fields": {"TITLE": "Site request", "PHONE": [{"VALUE": "+79990000001"}]},
            "filter": {">=OPPORTUNITY": "15"},
            "select": ["ID", "TITLE"],
        }

    def test_a_query_string_is_parsed_with_php_brackets(
        self, echo: RunningSandbox
    ) -> None:
        response = echo.http.get(
            f"{HOOK}/{ECHO}?filter[@ASSIGNED_BY_ID][]=1&filter[@ASSIGNED_BY_ID][]=7"
        )

        assert response.json()["result"]["params"] == {
            "filter": {"@ASSIGNED_BY_ID": ["1", "7"]}
        }

    def test_a_multipart_form_is_parsed_with_php_brackets(
        self, echo: RunningSandbox
    ) -> None:
        response = echo.http.post(
            f"{HOOK}/{ECHO}",
            data={"fields[TITLE]": "Upload", "fields[PHONE][0][VALUE]": "+7999"},
            files={"ignored": ("a.txt", b"content", "text/plain")},
        )

        assert response.json()["result"]["params"] == {
            "fields": {"TITLE": "Upload", "PHONE": [{"VALUE": "+7999"}]}
        }

    def test_a_body_of_unknown_type_is_read_like_a_query(
        self, echo: RunningSandbox
    ) -> None:
        response = echo.http.post(
            f"{HOOK}/{ECHO}",
            content="id=9&fields[TITLE]=x",
            headers={"Content-Type": "text/plain"},
        )

        assert response.json()["result"]["params"] == {
            "id": "9",
            "fields": {"TITLE": "x"},
        }

    def test_start_reaches_the_method_through_intval(
        self, echo: RunningSandbox
    ) -> None:
        response = echo.http.get(f"{HOOK}/{ECHO}", params={"start": "50abc"})

        assert response.json()["result"]["start"] == 50


class TestEnvelope:
    def test_the_time_block_has_the_documented_keys_and_types(
        self, sandbox: RunningSandbox
    ) -> None:
        block = sandbox.call("server.time").json()["time"]

        assert set(block) == set(TIME_TYPES)
        for key, expected in TIME_TYPES.items():
            assert type(block[key]) is expected, key
        assert block["finish"] >= block["start"]
        assert block["duration"] >= 0

    def test_time_dates_are_in_the_portal_zone(self, sandbox: RunningSandbox) -> None:
        block = sandbox.call("server.time").json()["time"]

        started = datetime.fromisoformat(block["date_start"])
        assert started.utcoffset() == timedelta(hours=3)
        assert int(started.timestamp()) == block["start"]
        finished = datetime.fromisoformat(block["date_finish"])
        assert finished.utcoffset() == timedelta(hours=3)

    def test_no_operating_reset_at_before_a_slow_call(
        self, sandbox: RunningSandbox
    ) -> None:
        block = sandbox.call("server.time").json()["time"]

        assert "operating_reset_at" not in block
        assert block["operating"] == 0

    def test_total_and_next_are_lifted_to_the_top_level(
        self, echo: RunningSandbox
    ) -> None:
        body = echo.call(ECHO, {"reply": [1, 2], "total": "120", "next": 50}).json()

        assert list(body) == ["result", "total", "next", "time"]
        assert body["result"] == [1, 2]
        assert body["total"] == 120
        assert body["next"] == 50

    def test_a_plain_result_has_no_total_or_next(self, sandbox: RunningSandbox) -> None:
        assert list(sandbox.call("server.time").json()) == ["result", "time"]

    def test_errors_never_carry_time(self, echo: RunningSandbox) -> None:
        for response in (
            echo.call(MISSING),
            echo.http.get("/rest/no.such.method"),
            echo.http.get("/rest/1/wrong/server.time"),
        ):
            assert "time" not in response.json()
            assert set(response.json()) == {"error", "error_description"}

    def test_success_headers_match_the_portal(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call("server.time")

        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert response.headers["access-control-allow-origin"] == "*"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert float(response.headers["x-bitrix-rest-time"]) >= 0

    def test_error_headers_match_the_portal(self, sandbox: RunningSandbox) -> None:
        response = sandbox.http.get("/rest/no.such.method")

        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert response.headers["access-control-allow-origin"] == "*"
        assert response.headers["x-content-type-options"] == "nosniff"

    def test_non_ascii_text_is_sent_as_utf8_not_escaped(
        self, echo: RunningSandbox
    ) -> None:
        response = echo.call(ECHO, {"reply": "Сделка №1"})

        assert "Сделка №1".encode() in response.content
        assert response.json()["result"] == "Сделка №1"

    def test_a_method_error_is_400_with_an_empty_code(
        self, echo: RunningSandbox
    ) -> None:
        assert_error(echo.call(MISSING), 400, "", "Not found")

    def test_a_crashing_method_answers_json_error_core(
        self, echo: RunningSandbox, caplog: pytest.LogCaptureFixture
    ) -> None:
        response = echo.call(CRASH)

        assert response.status_code == 500
        assert response.json()["error"] == "ERROR_CORE"
        assert "NO_SUCH_FIELD" in response.json()["error_description"]
        assert "sandbox.method_crashed" in caplog.text


class TestSystemMethods:
    def test_server_time_is_iso_in_the_portal_zone(
        self, sandbox: RunningSandbox
    ) -> None:
        answered = datetime.fromisoformat(sandbox.result("server.time"))

        assert answered.utcoffset() == timedelta(hours=3)

    def test_scope_lists_the_webhook_scopes(self, sandbox: RunningSandbox) -> None:
        sandbox.app.portal.add_webhook(3, "two", frozenset({"crm", "task"}))

        response = sandbox.http.get("/rest/3/two/scope")

        assert response.json()["result"] == ["crm", "task"]

    def test_methods_lists_registered_names_in_lower_case(
        self, sandbox: RunningSandbox
    ) -> None:
        names = sandbox.result("methods")

        assert {"batch", "server.time", "scope", "methods"} <= set(names)
        assert all(name == name.lower() for name in names)


class TestThroughCrmDeals:
    def test_an_upper_case_method_name_lists_deals(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.result("crm.deal.add", {"fields": {"TITLE": "Loud"}})

        response = sandbox.http.post(f"{HOOK}/CRM.DEAL.LIST", json={"select": ["ID"]})

        assert response.status_code == 200
        assert response.json()["result"] == [{"ID": "1"}]
        assert response.json()["total"] == 1

    def test_a_form_encoded_add_is_read_like_json(
        self, sandbox: RunningSandbox
    ) -> None:
        added = sandbox.http.post(
            f"{HOOK}/crm.deal.add.json",
            content="fields[TITLE]=Form+deal&fields[OPPORTUNITY]=1500",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

        deal = sandbox.result("crm.deal.get", {"id": added.json()["result"]})

        assert isinstance(added.json()["result"], int)
        assert deal["TITLE"] == "Form deal"
        assert deal["OPPORTUNITY"] == "1500.00"

    def test_a_get_query_filters_a_list(self, sandbox: RunningSandbox) -> None:
        for title in ("One", "Two", "Three"):
            sandbox.result("crm.deal.add", {"fields": {"TITLE": title}})

        response = sandbox.http.get(
            f"{HOOK}/crm.deal.list?filter[%3EID]=1&select[]=ID&order[ID]=DESC"
        )

        assert response.json()["result"] == [{"ID": "3"}, {"ID": "2"}]

    def test_the_body_wins_over_the_query_for_a_write(
        self, sandbox: RunningSandbox
    ) -> None:
        added = sandbox.http.post(
            f"{HOOK}/crm.deal.add?fields[TITLE]=Query",
            json={"fields": {"TITLE": "Body"}},
        )

        deal = sandbox.result("crm.deal.get", {"id": added.json()["result"]})

        assert deal["TITLE"] == "Body"

    def test_an_app_token_writes_as_its_user(self, sandbox: RunningSandbox) -> None:
        token = add_token(sandbox, scopes=("crm",))

        added = sandbox.http.post(
            "/rest/crm.deal.add", json={"auth": token, "fields": {"TITLE": "App"}}
        )

        assert added.status_code == 200
        assert isinstance(added.json()["result"], int)


class TestIndex:
    def test_the_root_names_the_webhook_and_the_controls(
        self, sandbox: RunningSandbox
    ) -> None:
        index = sandbox.http.get("/").json()

        assert index["webhook"] == sandbox.webhook
        assert index["controls"] == f"{sandbox.base_url}/_sandbox/"
