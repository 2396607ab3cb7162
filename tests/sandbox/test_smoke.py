from tests.sandbox.conftest import RunningSandbox


class TestServerTime:
    def test_answers_in_the_portal_zone(self, sandbox: RunningSandbox) -> None:
        assert sandbox.result("server.time").endswith("+03:00")
