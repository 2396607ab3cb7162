"""Known public faults replayed against the whole service: real sockets, a real
worker, the sandbox's portal and bot, and a model endpoint of the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.e2e.conftest import TELEGRAM_SECRET, Stack, salon_rules, serve_stack
from tests.sandbox.conftest import RunningSandbox
from tests.support import serving

pytestmark = pytest.mark.slow

# TG-1's model takes 40 s and its repeat comes 30 s after the first delivery: the
# same shape, shortened. The repeat arrives while the model is still thinking.
MODEL_TAKES_S = 4.0
CHAT = 100000001
# Everything in one message, so that the one delivery is also one lead.
TEXT = "Здравствуйте, я Иван, хочу на стрижку завтра в 15:00, телефон 8 999 000-00-01"


@dataclass
class SlowModel:
    """An OpenAI-compatible endpoint that answers after MODEL_TAKES_S."""

    url: str = ""
    prompts: list[str] = field(default_factory=list)
    asked: asyncio.Event = field(default_factory=asyncio.Event)
    answered: int = 0

    async def completions(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.prompts.append(json.dumps(body["messages"], ensure_ascii=False))
        self.asked.set()
        await asyncio.sleep(MODEL_TAKES_S)
        self.answered += 1
        verdict = {
            "service": {"id": "haircut", "quote": "стрижку"},
            "preferred_time": {"quote": "завтра в 15:00"},
            "name": {"value": "Иван", "quote": "Иван"},
            "readiness": {"value": "hot", "quote": "хочу на стрижку"},
            "urgency": {"value": "normal", "quote": None},
            "budget": {"quote": None},
            "summary": "Клиент хочет записаться на стрижку.",
        }
        return JSONResponse(
            {
                "id": "chatcmpl-tg1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "slow-test-model",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": json.dumps(verdict, ensure_ascii=False),
                        },
                        "finish_reason": "stop",
                    }
                ],
            }
        )


@contextlib.asynccontextmanager
async def slow_model() -> AsyncIterator[SlowModel]:
    model = SlowModel()
    app = Starlette(
        routes=[Route("/v1/chat/completions", model.completions, methods=["POST"])]
    )
    async with serving(app) as url:
        model.url = f"{url}/v1"
        yield model


@pytest.fixture
async def model() -> AsyncIterator[SlowModel]:
    async with slow_model() as running:
        yield running


@pytest.fixture
async def stack(sandbox: RunningSandbox, model: SlowModel) -> AsyncIterator[Stack]:
    async with serve_stack(
        sandbox,
        salon_rules(),
        llm_base_url=model.url,
        llm_model="slow-test-model",
        llm_api_key=SecretStr("test-key-not-secret"),
        llm_response_format="json_object",
    ) as running:
        yield running


class TestTg1SlowModelAndRepeatedUpdate:
    """TG-1: Telegram sends one update again while the model is still answering."""

    @pytest.fixture(autouse=True)
    def _update(self) -> None:
        # The case's update, dated now: its own date is long past, and "завтра" too.
        self.update = {
            "update_id": 700000001,
            "message": {
                "message_id": 42,
                "from": {"id": CHAT, "is_bot": False, "first_name": "Иван"},
                "chat": {"id": CHAT, "type": "private"},
                "date": int(time.time()),
                "text": TEXT,
            },
        }

    async def post(self, api: httpx.AsyncClient) -> tuple[int, float]:
        """Straight to the webhook, as Telegram does, without the sandbox's queue."""
        started = time.monotonic()
        answer = await api.post(
            "/webhooks/telegram",
            json=self.update,
            headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET},
        )
        return answer.status_code, time.monotonic() - started

    async def test_three_deliveries_make_one_model_call_one_reply_and_one_deal(
        self, stack: Stack, model: SlowModel
    ) -> None:
        # The bot may write to the chat: Telegram knows it from the client's message.
        known = await stack.sandbox.post(
            "/_sandbox/telegram/chats", json={"id": CHAT, "first_name": "Иван"}
        )
        known.raise_for_status()
        async with httpx.AsyncClient(base_url=stack.api, timeout=10) as api:
            first, third = await asyncio.gather(self.post(api), self.post(api))
            # The repeat comes while the model is answering, as the case's does.
            async with asyncio.timeout(30):
                await model.asked.wait()
            second = await self.post(api)
            assert model.answered == 0
            await stack.settle(timeout_s=MODEL_TAKES_S + 30)
            # Once more after it was handled: the claim outlives the work.
            fourth = await self.post(api)
            await stack.settle()

        answers = [first, second, third, fourth]
        assert [status for status, _ in answers] == [200, 200, 200, 200]
        # Acknowledged at once: the model's seconds are the worker's, not Telegram's.
        assert max(took for _, took in answers) < 1.0
        assert len(model.prompts) == 1
        # Personal data is masked before it leaves for the model.
        assert "000-00-01" not in model.prompts[0]
        [reply] = await stack.telegram_messages(CHAT)
        assert "Стрижка, завтра" in reply["text"], reply["text"]
        crm = await stack.crm()
        [contact] = crm["contacts"]
        assert [phone["VALUE"] for phone in contact["PHONE"]] == ["+79990000001"]
        [deal] = crm["deals"]
        assert deal["CONTACT_ID"] == contact["ID"]
        assert "Готовность: горячий" in deal["COMMENTS"]
        assert len(crm["tasks"]) == 1
