"""`event.bind/get/unbind` and the form-encoded POSTs bound handlers receive.

A small HTTP receiver runs in a thread and records every POST, so the tests assert
on the exact body that crossed the wire.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from sandbox.phpform import parse_str
from tests.sandbox.conftest import RunningSandbox, free_port

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bitrix24"


@dataclass
class Received:
    path: str
    content_type: str
    body: str

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return parse_qsl(self.body, keep_blank_values=True)

    @property
    def form(self) -> dict[str, Any]:
        return parse_str(self.body)


class Receiver:
    """Records each POST; `/fail` answers 500, `/slow?s=N` answers after N seconds."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.changed = threading.Condition()
        self.port = free_port()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode("ascii")
                url = urlsplit(self.path)
                if url.path == "/slow":
                    time.sleep(float(dict(parse_qsl(url.query)).get("s", "1")))
                with receiver.changed:
                    receiver.received.append(
                        Received(url.path, self.headers["Content-Type"], body)
                    )
                    receiver.changed.notify_all()
                status = 500 if url.path == "/fail" else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.received) >= count, timeout)
            return list(self.received)


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def receiver(receiver_server: Receiver) -> Receiver:
    with receiver_server.changed:
        receiver_server.received.clear()
    return receiver_server


def recorded(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text("utf-8"))


def bind(sandbox: RunningSandbox, event: str, handler: str, **extra: Any) -> Any:
    response = sandbox.call("event.bind", {"event": event, "handler": handler, **extra})
    assert response.status_code == 200, response.text
    return response.json()["result"]


def raise_event(sandbox: RunningSandbox, *events: tuple[str, dict[str, Any]]) -> None:
    """Emit in-process, then let one HTTP request pump the outbox, as a method would."""
    for event, data in events:
        sandbox.app.portal.emit(event, data, 1766047124.5)
    sandbox.call("server.time")


def wait_idle(sandbox: RunningSandbox, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    response = sandbox.http.post("/_sandbox/events/wait", json={"timeout_s": timeout_s})
    assert response.json()["idle"] is True
    deliveries: list[dict[str, Any]] = response.json()["deliveries"]
    return deliveries


def app_token(sandbox: RunningSandbox, scopes: list[str], **extra: Any) -> str:
    response = sandbox.http.post(
        "/_sandbox/oauth/tokens", json={"user_id": 1, "scopes": scopes, **extra}
    )
    token: str = response.json()["access_token"]
    return token


class TestEventBind:
    def test_bind_answers_true_and_get_lists_the_binding(
        self, sandbox: RunningSandbox
    ) -> None:
        assert bind(sandbox, "ONCRMDEALADD", "https://example.com/hook") is True

        bound = sandbox.result("event.get")

        assert bound == [
            {
                "event": "ONCRMDEALADD",
                "handler": "https://example.com/hook",
                "auth_type": "0",
                "offline": 0,
            }
        ]

    def test_event_names_are_stored_upper_case(self, sandbox: RunningSandbox) -> None:
        bind(sandbox, "onCrmDealUpdate", "https://example.com/hook")

        assert sandbox.result("event.get")[0]["event"] == "ONCRMDEALUPDATE"

    def test_parameter_names_are_read_in_any_case(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.call(
            "event.bind", {"EVENT": "ONTASKUPDATE", "Handler": "https://x.test/h"}
        )

        assert response.json()["result"] is True

    def test_a_duplicate_binding_is_refused(self, sandbox: RunningSandbox) -> None:
        bind(sandbox, "ONCRMDEALADD", "https://example.com/hook")

        response = sandbox.call(
            "event.bind",
            {"event": "ONCRMDEALADD", "handler": "https://example.com/hook"},
        )

        assert response.status_code == 400
        assert response.json() == {
            "error": "ERROR_CORE",
            "error_description": "Unable to set event handler: Handler already binded",
        }

    def test_an_unknown_event_is_not_found(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call(
            "event.bind", {"event": "ONNOTHING", "handler": "https://example.com/h"}
        )

        assert response.status_code == 400
        assert response.json() == {
            "error": "ERROR_EVENT_NOT_FOUND",
            "error_description": "Event not found",
        }

    def test_an_event_outside_the_app_scopes_is_not_found(
        self, sandbox: RunningSandbox
    ) -> None:
        token = app_token(sandbox, ["task"])

        response = sandbox.http.post(
            "/rest/event.bind",
            json={"auth": token, "event": "ONCRMDEALADD", "handler": "https://x.test/"},
        )

        assert response.json()["error"] == "ERROR_EVENT_NOT_FOUND"

    @pytest.mark.parametrize(
        ("handler", "code"),
        [
            ("not a url", "ERROR_WRONG_HANDLER_URL"),
            ("", "ERROR_WRONG_HANDLER_URL"),
            ("https:///no-host", "ERROR_WRONG_HANDLER_URL"),
            ("http://nodot/hook", "ERROR_WRONG_HANDLER_URL"),
            ("ftp://example.com/hook", "ERROR_UNSUPPORTED_PROTOCOL"),
        ],
    )
    def test_a_bad_handler_url_is_refused(
        self, sandbox: RunningSandbox, handler: str, code: str
    ) -> None:
        response = sandbox.call(
            "event.bind", {"event": "ONCRMDEALADD", "handler": handler}
        )

        assert response.status_code == 400
        assert response.json()["error"] == code

    def test_loopback_handlers_are_accepted_unlike_on_a_portal(
        self, sandbox: RunningSandbox
    ) -> None:
        assert bind(sandbox, "ONCRMLEADADD", "http://localhost:9/hook") is True
        assert bind(sandbox, "ONCRMLEADADD", "http://127.0.0.1:9/hook") is True

    def test_unbind_answers_the_count_removed(self, sandbox: RunningSandbox) -> None:
        bind(sandbox, "ONCRMDEALADD", "https://example.com/a")
        bind(sandbox, "ONCRMDEALADD", "https://example.com/a", auth_type=1)
        bind(sandbox, "ONCRMDEALADD", "https://example.com/b")

        removed = sandbox.result(
            "event.unbind",
            {"event": "ONCRMDEALADD", "handler": "https://example.com/a"},
        )

        assert removed == {"count": 2}
        assert [row["handler"] for row in sandbox.result("event.get")] == [
            "https://example.com/b"
        ]

    def test_unbind_of_nothing_counts_zero(self, sandbox: RunningSandbox) -> None:
        removed = sandbox.result(
            "event.unbind", {"event": "ONCRMDEALADD", "handler": "https://x.test/"}
        )

        assert removed == {"count": 0}

    def test_unbind_without_a_handler_is_an_argument_error(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.call("event.unbind", {"event": "ONCRMDEALADD"})

        assert response.status_code == 400
        assert response.json()["error"] == "ERROR_ARGUMENT"
        assert response.json()["argument"] == "HANDLER"

    def test_each_app_sees_only_its_own_bindings(self, sandbox: RunningSandbox) -> None:
        token = app_token(sandbox, ["crm"], client_id="local.other")
        sandbox.http.post(
            "/rest/event.bind",
            json={"auth": token, "event": "ONCRMDEALADD", "handler": "https://a.test/"},
        )

        mine = sandbox.result("event.get")
        theirs = sandbox.http.get("/rest/event.get", params={"auth": token}).json()

        assert mine == []
        assert [row["handler"] for row in theirs["result"]] == ["https://a.test/"]


class TestDelivery:
    def test_a_webhook_binding_receives_the_outgoing_webhook_form(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        bind(sandbox, "ONCRMDEALADD", receiver.url())

        raise_event(sandbox, ("ONCRMDEALADD", {"FIELDS": {"ID": "7"}}))

        [post] = receiver.wait_for(1)
        portal = sandbox.app.portal
        assert post.content_type == "application/x-www-form-urlencoded"
        assert post.pairs == [
            ("event", "ONCRMDEALADD"),
            ("event_handler_id", "1"),
            ("data[FIELDS][ID]", "7"),
            ("ts", "1766047124"),
            ("auth[domain]", portal.domain),
            ("auth[client_endpoint]", f"{sandbox.base_url}/rest/"),
            ("auth[server_endpoint]", f"{sandbox.base_url}/rest/"),
            ("auth[member_id]", portal.member_id),
            ("auth[application_token]", portal.application_token),
        ]

    def test_the_form_matches_the_recorded_outgoing_webhook_keys(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        bind(sandbox, "ONCRMDEALADD", receiver.url())

        raise_event(sandbox, ("ONCRMDEALADD", {"FIELDS": {"ID": "7405"}}))

        [post] = receiver.wait_for(1)
        fixture = recorded("event.ONCRMDEALADD.outgoing-webhook.body.json")
        assert set(post.form) == set(fixture)
        assert set(post.form["auth"]) == set(fixture["auth"])
        assert post.form["data"] == fixture["data"]

    def test_an_app_binding_gets_a_token_that_calls_back(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        token = app_token(sandbox, ["crm", "user"], client_id="local.events")
        sandbox.http.post(
            "/rest/event.bind",
            json={"auth": token, "event": "ONCRMDEALADD", "handler": receiver.url()},
        )

        raise_event(sandbox, ("ONCRMDEALADD", {"FIELDS": {"ID": "9"}}))

        [post] = receiver.wait_for(1)
        auth = post.form["auth"]
        fixture = recorded("event.ONCRMDEALADD.app.body.json")
        assert set(fixture["auth"]) <= set(auth)
        assert "refresh_token" not in auth
        assert auth["scope"] == "crm,user"
        assert all(isinstance(value, str) for value in auth.values())
        echo = sandbox.http.get(
            "/rest/user.current", params={"auth": auth["access_token"]}
        )
        assert echo.json()["result"]["ID"] == "1"

    def test_an_app_reuses_one_token_across_a_burst_of_events(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        token = app_token(sandbox, ["crm"], client_id="local.events")
        sandbox.http.post(
            "/rest/event.bind",
            json={"auth": token, "event": "ONCRMDEALADD", "handler": receiver.url()},
        )

        raise_event(
            sandbox,
            ("ONCRMDEALADD", {"FIELDS": {"ID": "1"}}),
            ("ONCRMDEALADD", {"FIELDS": {"ID": "2"}}),
        )

        posts = receiver.wait_for(2)
        assert len({post.form["auth"]["access_token"] for post in posts}) == 1

    def test_nested_data_travels_in_php_brackets(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        bind(sandbox, "ONTASKUPDATE", receiver.url())
        data = {"FIELDS_BEFORE": {"ID": 5}, "IS_ACCESSIBLE_BEFORE": "undefined"}

        raise_event(sandbox, ("ONTASKUPDATE", data))

        [post] = receiver.wait_for(1)
        assert ("data[FIELDS_BEFORE][ID]", "5") in post.pairs
        assert ("data[IS_ACCESSIBLE_BEFORE]", "undefined") in post.pairs

    def test_the_same_event_twice_in_one_request_is_sent_once(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        bind(sandbox, "ONCRMDEALUPDATE", receiver.url())

        raise_event(
            sandbox,
            ("ONCRMDEALUPDATE", {"FIELDS": {"ID": "7"}}),
            ("ONCRMDEALUPDATE", {"FIELDS": {"ID": "7"}}),
            ("ONCRMDEALUPDATE", {"FIELDS": {"ID": "8"}}),
        )

        deliveries = wait_idle(sandbox)
        assert [entry["data"]["FIELDS"]["ID"] for entry in deliveries] == ["7", "8"]
        assert len(receiver.wait_for(2)) == 2

    def test_each_bound_handler_gets_its_own_post(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        bind(sandbox, "ONCRMLEADADD", receiver.url("/one"))
        bind(sandbox, "ONCRMLEADADD", receiver.url("/two"))
        bind(sandbox, "ONCRMLEADUPDATE", receiver.url("/other"))

        raise_event(sandbox, ("ONCRMLEADADD", {"FIELDS": {"ID": "3"}}))

        wait_idle(sandbox)
        assert sorted(post.path for post in receiver.received) == ["/one", "/two"]

    def test_delivery_log_shows_each_outcome(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        bind(sandbox, "ONCRMDEALADD", receiver.url())

        raise_event(sandbox, ("ONCRMDEALADD", {"FIELDS": {"ID": "7"}}))

        wait_idle(sandbox)
        [entry] = sandbox.http.get("/_sandbox/events").json()["deliveries"]
        assert entry["status"] == "delivered"
        assert entry["http_status"] == 200
        assert entry["event"] == "ONCRMDEALADD"
        assert entry["event_handler_id"] == "1"

    def test_a_failing_handler_is_logged_and_never_retried(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        bind(sandbox, "ONCRMDEALADD", receiver.url("/fail"))

        raise_event(sandbox, ("ONCRMDEALADD", {"FIELDS": {"ID": "7"}}))

        [entry] = wait_idle(sandbox)
        sandbox.call("server.time")
        time.sleep(0.2)
        assert (entry["status"], entry["http_status"]) == ("failed", 500)
        assert len(receiver.received) == 1

    def test_a_slow_handler_times_out_and_loses_the_event(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        sandbox.http.post("/_sandbox/events/settings", json={"timeout_s": 0.3})
        bind(sandbox, "ONCRMDEALADD", receiver.url("/slow?s=1"))

        try:
            raise_event(sandbox, ("ONCRMDEALADD", {"FIELDS": {"ID": "7"}}))
            [entry] = wait_idle(sandbox)
        finally:
            sandbox.http.post("/_sandbox/events/settings", json={"timeout_s": 3})

        assert entry["status"] == "timeout"
        assert entry["http_status"] is None

    def test_an_unreachable_handler_is_logged_as_failed(
        self, sandbox: RunningSandbox
    ) -> None:
        bind(sandbox, "ONCRMDEALADD", f"http://127.0.0.1:{free_port()}/gone")

        raise_event(sandbox, ("ONCRMDEALADD", {"FIELDS": {"ID": "7"}}))

        [entry] = wait_idle(sandbox)
        assert entry["status"] == "failed"
        assert entry["error"]

    def test_offline_bindings_receive_no_posts(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        bind(sandbox, "ONCRMDEALADD", "", event_type="offline")

        raise_event(sandbox, ("ONCRMDEALADD", {"FIELDS": {"ID": "7"}}))

        assert wait_idle(sandbox) == []
        assert sandbox.result("event.get")[0]["offline"] == 1

    def test_an_unbound_event_goes_nowhere(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        bind(sandbox, "ONCRMDEALADD", receiver.url())

        raise_event(sandbox, ("ONCRMDEALDELETE", {"FIELDS": {"ID": "7"}}))

        assert wait_idle(sandbox) == []

    def test_a_task_added_over_http_reaches_its_handler(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        bind(sandbox, "ONTASKADD", receiver.url())

        sandbox.call(
            "tasks.task.add", {"fields": {"TITLE": "Call back", "RESPONSIBLE_ID": 1}}
        )

        [post] = receiver.wait_for(1)
        assert post.form["event"] == "ONTASKADD"
        assert post.form["data"]["FIELDS_AFTER"] == {"ID": "1"}

    def test_a_blog_post_reaches_its_handler(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        bind(sandbox, "OnLiveFeedPostAdd", receiver.url())

        post_id = sandbox.result("log.blogpost.add", {"POST_MESSAGE": "Hello"})

        [post] = receiver.wait_for(1)
        assert post.form["event"] == "ONLIVEFEEDPOSTADD"
        assert post.form["data"] == {"FIELDS": {"POST_ID": str(post_id)}}

    def test_reset_forgets_bindings_and_the_log(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        bind(sandbox, "ONCRMDEALADD", receiver.url())
        raise_event(sandbox, ("ONCRMDEALADD", {"FIELDS": {"ID": "7"}}))
        wait_idle(sandbox)

        sandbox.reset()

        assert sandbox.http.get("/_sandbox/events").json() == {"deliveries": []}
        assert sandbox.result("event.get") == []


class TestCrmChangesOverHttp:
    def test_a_deal_added_over_http_reaches_the_handler(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        bind(sandbox, "ONCRMDEALADD", receiver.url())

        deal_id = sandbox.result("crm.deal.add", {"fields": {"TITLE": "Site request"}})

        [post] = receiver.wait_for(1)
        portal = sandbox.app.portal
        assert post.content_type == "application/x-www-form-urlencoded"
        assert post.pairs[:3] == [
            ("event", "ONCRMDEALADD"),
            ("event_handler_id", "1"),
            ("data[FIELDS][ID]", str(deal_id)),
        ]
        assert post.form["auth"]["application_token"] == portal.application_token
        assert post.form["ts"].isdigit()

    def test_update_and_delete_send_their_own_events(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {"TITLE": "Deal"}})
        bind(sandbox, "ONCRMDEALUPDATE", receiver.url("/update"))
        bind(sandbox, "ONCRMDEALDELETE", receiver.url("/delete"))

        sandbox.result("crm.deal.update", {"id": deal_id, "fields": {"TITLE": "New"}})
        sandbox.result("crm.deal.delete", {"id": deal_id})

        posts = receiver.wait_for(2)
        events = {post.path: post.form for post in posts}
        assert events["/update"]["event"] == "ONCRMDEALUPDATE"
        assert events["/delete"]["event"] == "ONCRMDEALDELETE"
        assert events["/delete"]["data"] == {"FIELDS": {"ID": str(deal_id)}}

    def test_a_batch_of_adds_sends_one_post_per_deal(
        self, sandbox: RunningSandbox, receiver: Receiver
    ) -> None:
        bind(sandbox, "ONCRMDEALADD", receiver.url())
        commands = {f"d{n}": f"crm.deal.add?fields[TITLE]=Deal {n}" for n in range(3)}

        sandbox.result("batch", {"halt": 0, "cmd": commands})

        deliveries = wait_idle(sandbox)
        assert sorted(entry["data"]["FIELDS"]["ID"] for entry in deliveries) == [
            "1",
            "2",
            "3",
        ]
        assert len(receiver.wait_for(3)) == 3
