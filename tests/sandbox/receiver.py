"""A webhook endpoint on a real socket that records what the sandbox delivers to it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.sandbox.conftest import free_port


@dataclass(frozen=True)
class Received:
    """One request exactly as it arrived: method, path, query, headers, raw bytes."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers 200 (or what is queued in `answers`: a status or a whole response)
    and keeps every request.

    A GET with `hub.challenge` is answered with the challenge as plain text, as a
    WhatsApp callback does, unless `echo_challenge` is off.
    """

    base_url: str = ""
    requests: list[Received] = field(default_factory=list)
    answers: deque[int | Response] = field(default_factory=deque)
    echo_challenge: bool = True

    @property
    def url(self) -> str:
        return f"{self.base_url}/hook"

    def clear(self) -> None:
        self.requests.clear()
        self.answers.clear()
        self.echo_challenge = True

    def posts(self) -> list[Received]:
        return [request for request in self.requests if request.method == "POST"]

    def wait_for_posts(self, count: int, timeout_s: float = 5.0) -> list[Received]:
        """The first `count` POSTs, waiting for deliveries sent in the background."""
        deadline = time.monotonic() + timeout_s
        while len(self.posts()) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.posts()

    async def endpoint(self, request: Request) -> Response:
        self.requests.append(
            Received(
                method=request.method,
                path=request.url.path,
                query=dict(request.query_params),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=await request.body(),
            )
        )
        challenge = request.query_params.get("hub.challenge")
        if request.method == "GET" and challenge is not None and self.echo_challenge:
            return PlainTextResponse(challenge)
        answer = self.answers.popleft() if self.answers else 200
        return answer if isinstance(answer, Response) else Response(status_code=answer)


@contextlib.contextmanager
def running_receiver() -> Iterator[Receiver]:
    """Serve a fresh receiver on a free loopback port until the block ends."""
    receiver = Receiver()
    port = free_port()
    receiver.base_url = f"http://127.0.0.1:{port}"
    app = Starlette(routes=[Route("/hook", receiver.endpoint, methods=["GET", "POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("receiver did not start")
        time.sleep(0.01)
    try:
        yield receiver
    finally:
        server.should_exit = True
        thread.join(timeout=10)
