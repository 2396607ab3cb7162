"""Reading a webhook body: of an expected media type, bounded in size, bytes kept as
received."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from webhooks.errors import BodyTooLarge, MalformedBody, WrongContentType

JSON = "application/json"
# Telegram updates and WhatsApp batches are a few KiB; a mebibyte is generous and
# keeps a hostile body out of memory.
MAX_BODY_BYTES = 1024 * 1024


def media_type(request: Request) -> str:
    """The Content-Type without its parameters, lower case."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, *, limit: int) -> bytes:
    """The raw bytes of the body, refused when larger than `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body must be at most {limit} bytes")

    # Content-Length can be absent (chunked) or wrong: count what really arrives.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body must be at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_body(request: Request, *, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw bytes of a JSON body, refused when larger than `limit`."""
    if media_type(request) != JSON:
        raise WrongContentType(f"the body must be {JSON}")
    return await read_body(request, limit=limit)


def decode_json(raw: bytes | str) -> Any:
    """The parsed body; anything that is not JSON is the sender's error, not ours."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MalformedBody("the body is not valid JSON") from None
    except RecursionError:
        raise MalformedBody("the body nests too deeply") from None
