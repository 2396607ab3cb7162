"""Is the portal reachable? `server.time` through the inbound webhook, for /readyz.

The full gateway arrives later; this probe only answers yes or no, with a reason that
never contains the webhook URL (its path holds the webhook's secret code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

# Readiness must be answered quickly; a portal slower than this is not ready.
PROBE_TIMEOUT = httpx.Timeout(3.0)
_ERROR_CODE = re.compile(r"[A-Za-z_]{1,64}")


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


async def probe_server_time(client: httpx.AsyncClient, webhook_url: str) -> ProbeResult:
    """Call `server.time`; any answer with a `result` means the portal serves us."""
    base = webhook_url if webhook_url.endswith("/") else webhook_url + "/"
    try:
        response = await client.get(f"{base}server.time", timeout=PROBE_TIMEOUT)
    except httpx.TimeoutException:
        return ProbeResult(ok=False, detail="timed out")
    except httpx.HTTPError as exc:
        return ProbeResult(ok=False, detail=f"unreachable ({type(exc).__name__})")

    try:
        body = response.json()
    except ValueError:
        body = None

    if response.is_success and isinstance(body, dict) and "result" in body:
        return ProbeResult(ok=True, detail="ok")
    return ProbeResult(ok=False, detail=_failure(response.status_code, body))


def _failure(status: int, body: object) -> str:
    # Bitrix24 names the problem in `error` (INVALID_CREDENTIALS, QUERY_LIMIT_EXCEEDED);
    # the code is safe to show, `error_description` may echo request data.
    code = body.get("error") if isinstance(body, dict) else None
    if isinstance(code, str) and _ERROR_CODE.fullmatch(code):
        return f"HTTP {status}, error {code}"
    if body is None:
        return f"HTTP {status}, not a JSON answer"
    return f"HTTP {status}, no result in the answer"
