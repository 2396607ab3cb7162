"""`leadloop doctor`: is everything leadloop talks to there and set up right?

Each check answers ok, warning, problem or skipped, in plain words, with the fix
for anything that is not ok. Problems make the command exit non-zero; warnings do
not. Checks that need the portal are skipped when the portal cannot be reached, so
one cause is reported once.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, cast

import httpx
from openai import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncOpenAI,
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
)
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError as RedisAuthenticationError
from redis.exceptions import RedisError

from app.clients import REDIS_AUTH_FIX, redact_url
from app.config import BusinessRules
from app.provision.common import (
    WEBHOOK_HOWTO,
    Explained,
    PublicUrls,
    explain_bitrix24,
    explain_telegram,
)
from app.provision.setup import EVENTS, pipeline_of, record_owner, wanted_stages
from app.settings import Settings
from connectors.bitrix24.admin import PortalAdmin, stage_directory
from connectors.bitrix24.errors import Bitrix24Error
from connectors.messengers.base import MessengerError
from connectors.messengers.telegram import ALLOWED_UPDATES
from connectors.messengers.telegram_webhook import TelegramWebhook

# Scopes leadloop calls, and what for (reference §1.3). The user scope may be
# granted in one of its narrower forms: user.get works with each.
NEEDED_SCOPES = {
    "crm": "leads, deals, contacts, stages and fields",
    "task": "the call-back tasks for managers",
    "log": "the weekly report in the feed",
    "im": "notifications to managers",
    "user": "the managers' names",
}
USER_SCOPES = frozenset({"user", "user_basic", "user_brief"})
WIDTH = 88  # of the printed report
MODEL_CHECK_TIMEOUT_S = 10.0
REDIS_TIMEOUT_S = 3.0
# Telegram keeps its last delivery error until the next one; older than this it
# says nothing about today.
RECENT_ERROR = timedelta(hours=24)


class Health(Enum):
    OK = "ok"
    WARNING = "warning"
    PROBLEM = "problem"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Check:
    """One check's verdict: what was found and, unless all is well, the fix."""

    name: str
    health: Health
    summary: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {**asdict(self), "health": self.health.value}


@dataclass
class Diagnosis:
    checks: list[Check] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(check.health is not Health.PROBLEM for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "checks": [check.as_dict() for check in self.checks],
        }


@dataclass(frozen=True)
class DoctorTarget:
    """What the doctor looks at; None where a part is not configured."""

    settings: Settings
    rules: BusinessRules
    redis: Redis
    http: httpx.AsyncClient
    admin: PortalAdmin | None
    telegram: TelegramWebhook | None
    public: PublicUrls | None


async def diagnose(target: DoctorTarget) -> Diagnosis:
    """Run every check, in the order a person would fix things."""
    diagnosis = Diagnosis()
    portal = await _connection(target)
    diagnosis.checks.append(portal)
    reachable = portal.health in (Health.OK, Health.WARNING)
    portal_checks: list[tuple[str, Callable[[PortalAdmin], Awaitable[Check]]]] = [
        ("bitrix24.scopes", _scopes),
        ("bitrix24.stages", lambda admin: _stages(target.rules, admin)),
        ("bitrix24.fields", lambda admin: _fields(target.rules, admin)),
        ("bitrix24.events", lambda admin: _events(target, admin)),
    ]
    for name, check in portal_checks:
        if not reachable or target.admin is None:
            reason = "needs the portal connection (see bitrix24.connection)"
            diagnosis.checks.append(Check(name, Health.SKIPPED, reason))
            continue
        diagnosis.checks.append(await _guarded(name, check(target.admin)))
    diagnosis.checks.append(await _telegram(target))
    diagnosis.checks.append(await _redis(target.settings, target.redis))
    diagnosis.checks.append(await _model(target.settings, target.http))
    return diagnosis


async def _guarded(name: str, check: Awaitable[Check]) -> Check:
    """A portal check whose calls failed reports why, as a problem."""
    try:
        return await check
    except Bitrix24Error as error:
        return _problem(name, explain_bitrix24(error))


def _problem(name: str, explained: Explained) -> Check:
    return Check(name, Health.PROBLEM, explained.summary, explained.fix)


# -- Bitrix24 --------------------------------------------------------------------------


async def _connection(target: DoctorTarget) -> Check:
    name = "bitrix24.connection"
    if target.admin is None:
        return Check(
            name,
            Health.PROBLEM,
            "no portal is configured: LEADLOOP_BITRIX24_WEBHOOK_URL is not set",
            WEBHOOK_HOWTO,
        )
    try:
        now = await target.admin.server_time()
    except Bitrix24Error as error:
        return _problem(name, explain_bitrix24(error))
    kind = "an OAuth app" if target.admin.is_app else "an inbound webhook"
    moved = target.admin.client.moved_to
    if moved is not None:
        return Check(
            name,
            Health.WARNING,
            f"the portal answers from a new address, {moved} (it was renamed)",
            "write the new address into LEADLOOP_BITRIX24_WEBHOOK_URL",
        )
    return Check(name, Health.OK, f"the portal answers through {kind} (time {now})")


async def _scopes(admin: PortalAdmin) -> Check:
    name = "bitrix24.scopes"
    granted = await admin.scopes()
    missing = [
        scope
        for scope in NEEDED_SCOPES
        if scope not in granted and not (scope == "user" and granted & USER_SCOPES)
    ]
    if missing:
        needs = "; ".join(f"{scope}: {NEEDED_SCOPES[scope]}" for scope in missing)
        holder = "app" if admin.is_app else "webhook"
        return Check(
            name,
            Health.PROBLEM,
            f"the {holder} lacks the scope(s) {', '.join(missing)}, needed for {needs}",
            f"edit the {holder}'s permissions in the portal and tick "
            f"{', '.join(missing)}"
            + ("; the webhook's URL stays the same" if holder == "webhook" else ""),
        )
    if not await admin.is_admin():
        return Check(
            name,
            Health.WARNING,
            "every scope is granted, but the webhook's user is not an administrator: "
            "`leadloop setup` cannot create fields, stages or sources",
            "create the webhook as a portal administrator, or let one run setup",
        )
    return Check(name, Health.OK, "crm, task, log, im and user are granted")


async def _stages(rules: BusinessRules, admin: PortalAdmin) -> Check:
    name = "bitrix24.stages"
    stages = wanted_stages(rules.crm.stages)
    pipelines = {pipeline.id: pipeline for pipeline in await admin.pipelines()}
    wanted = sorted({*rules.crm.pipelines, *(pipeline_of(s.status_id) for s in stages)})
    problems = [
        f"pipeline {pipeline_id} does not exist"
        for pipeline_id in wanted
        if pipeline_id not in pipelines and pipeline_id != 0
    ]
    for pipeline_id in wanted:
        if pipeline_id not in pipelines and pipeline_id != 0:
            continue
        present = {
            s.status_id for s in await admin.directory(stage_directory(pipeline_id))
        }
        problems += [
            f"stage {stage.status_id} ([crm.stages].{stage.role}) is not in pipeline "
            f"{pipeline_id}"
            for stage in stages
            if stage.pipeline == pipeline_id and stage.status_id not in present
        ]
    if await record_owner(rules, admin) == "lead":
        statuses = {s.status_id for s in await admin.directory("STATUS")}
        lead_statuses = [*rules.crm.lead_statuses.new, *rules.crm.lead_statuses.lost]
        problems += [
            f"lead status {status} ([crm.lead_statuses]) does not exist"
            for status in lead_statuses
            if status not in statuses
        ]
    if problems:
        return Check(
            name,
            Health.PROBLEM,
            "the rules file names what the portal does not have: "
            + "; ".join(problems),
            "run `leadloop setup --pipeline` to create them, or correct [crm] in the "
            "rules file to the portal's ids (Bitrix24: CRM → Deals → pipeline "
            "settings)",
        )
    count = len(stages)
    return Check(
        name,
        Health.OK,
        f"{count} stage(s) of pipeline(s) {', '.join(map(str, wanted))} found",
    )


async def _fields(rules: BusinessRules, admin: PortalAdmin) -> Check:
    name = "bitrix24.fields"
    problems: list[str] = []
    warnings: list[str] = []
    visit = rules.crm.visit_field
    if visit is None:
        warnings.append("[crm] visit_field is not set: no reminders are sent")
    elif visit.startswith("UF_CRM_"):
        found = (await admin.user_fields("deal")).get(visit)
        if found is None:
            problems.append(f"the visit field {visit} does not exist on deals")
        elif found.user_type not in ("datetime", "date"):
            problems.append(f"the visit field {visit} is {found.user_type}, not a date")
    if rules.intake.fields:
        owner = await record_owner(rules, admin)
        existing = await admin.user_fields(owner)
        problems += [
            f"{code} ([intake.fields].{item}) does not exist on {owner}s"
            for item, code in rules.intake.fields.items()
            if code.startswith("UF_CRM_") and code not in existing
        ]
    sources = {s.status_id for s in await admin.directory("SOURCE")}
    problems += [
        f"the source {source} ([intake.sources].{channel}) does not exist"
        for channel, source in rules.intake.sources.items()
        if source not in sources
    ]
    if problems:
        return Check(
            name,
            Health.PROBLEM,
            "; ".join(problems + warnings),
            "run `leadloop setup`, which creates the fields and sources the rules name",
        )
    if warnings:
        return Check(
            name,
            Health.WARNING,
            "; ".join(warnings),
            'set [crm] visit_field = "UF_CRM_LL_VISIT_AT" and run setup',
        )
    return Check(
        name, Health.OK, "the visit field, qualification fields and sources exist"
    )


async def _events(target: DoctorTarget, admin: PortalAdmin) -> Check:
    name = "bitrix24.events"
    if target.public is None:
        return Check(
            name,
            Health.PROBLEM,
            "LEADLOOP_PUBLIC_URL is not set: nobody knows where the portal should "
            "send deal changes, so reminders rely on the periodic reconcile alone",
            "set LEADLOOP_PUBLIC_URL to the API's public https address, then "
            + (
                "run `leadloop setup`, which binds the events"
                if admin.is_app
                else "in the portal open Developer resources → Other → Outgoing "
                "webhook, handler URL <LEADLOOP_PUBLIC_URL>/webhooks/bitrix24, tick "
                f"{', '.join(EVENTS)}, and put its application token in "
                "LEADLOOP_BITRIX24_APPLICATION_TOKEN (an inbound webhook cannot "
                "bind events itself)"
            ),
        )
    handler = target.public.bitrix24
    if target.settings.bitrix24_application_token is None:
        return Check(
            name,
            Health.PROBLEM,
            "LEADLOOP_BITRIX24_APPLICATION_TOKEN is not set: every event the portal "
            "sends is refused",
            "put the application token of the portal's outgoing webhook (or app) in "
            "LEADLOOP_BITRIX24_APPLICATION_TOKEN",
        )
    if not admin.is_app:
        return Check(
            name,
            Health.OK,
            "the application token is set; an inbound webhook cannot read the "
            f"portal's outgoing webhooks, so check there that {', '.join(EVENTS)} go "
            f"to {handler}",
        )
    bound = {b.event for b in await admin.bindings() if b.handler == handler}
    missing = [event for event in EVENTS if event not in bound]
    if missing:
        return Check(
            name,
            Health.PROBLEM,
            f"the app does not send {', '.join(missing)} to {handler}",
            "run `leadloop setup`, which binds them",
        )
    return Check(name, Health.OK, f"{', '.join(EVENTS)} are sent to {handler}")


# -- Telegram --------------------------------------------------------------------------


async def _telegram(target: DoctorTarget) -> Check:
    name = "telegram.webhook"
    settings = target.settings
    if target.telegram is None:
        return Check(name, Health.SKIPPED, "Telegram is not configured")
    if settings.telegram_webhook_secret is None:
        return Check(
            name,
            Health.PROBLEM,
            "LEADLOOP_TELEGRAM_WEBHOOK_SECRET is not set: the API refuses every update",
            "choose a secret (A-Z a-z 0-9 _ -, up to 256 characters), set it and run "
            "`leadloop setup`",
        )
    try:
        info = await target.telegram.info()
    except MessengerError as error:
        return _problem(name, explain_telegram(error, settings.telegram_api_base))

    waiting = f"{info.pending_update_count} update(s) waiting"
    if not info.url:
        return Check(
            name,
            Health.PROBLEM,
            f"the bot has no webhook: chats are not delivered ({waiting})",
            "run `leadloop setup`",
        )
    expected = target.public.telegram if target.public else None
    if expected is not None and info.url != expected:
        return Check(
            name,
            Health.PROBLEM,
            f"the bot's webhook points at {info.url}, not {expected}: another "
            "deployment (or an old address) receives the chats",
            "run `leadloop setup` here, or stop the other deployment first",
        )
    missing = [
        kind
        for kind in ALLOWED_UPDATES
        if info.allowed_updates and kind not in info.allowed_updates
    ]
    if missing:
        return Check(
            name,
            Health.PROBLEM,
            f"Telegram does not send {', '.join(missing)} (buttons or blocks are lost)",
            "run `leadloop setup`, which sets the update kinds",
        )
    if info.last_error_at and datetime.now(UTC) - info.last_error_at < RECENT_ERROR:
        when = info.last_error_at.strftime("%Y-%m-%d %H:%M UTC")
        said = (
            f'Telegram\'s last delivery failed at {when}: "{info.last_error_message}"'
        )
        return Check(
            name,
            Health.PROBLEM if info.pending_update_count else Health.WARNING,
            f"{said} ({waiting})",
            f"make sure {info.url} is reachable from the internet over https and "
            "answers 200 (`leadloop serve` running, proxy and certificate in order)",
        )
    if expected is None:
        return Check(
            name,
            Health.WARNING,
            f"the webhook is {info.url}, but LEADLOOP_PUBLIC_URL is not set to "
            "compare it with",
            "set LEADLOOP_PUBLIC_URL to the API's public address",
        )
    return Check(
        name,
        Health.OK,
        f"{info.url}, {', '.join(ALLOWED_UPDATES)} ({waiting}); Telegram does not "
        "show the secret: `leadloop setup` sets it",
    )


# -- Redis -----------------------------------------------------------------------------


async def _redis(settings: Settings, redis: Redis) -> Check:
    name = "redis"
    where = redact_url(settings.redis_url)
    try:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            await redis.ping()
            server = await redis.info("server")
            persistence = await redis.info("persistence")
    except RedisAuthenticationError:
        return Check(
            name,
            Health.PROBLEM,
            f"Redis at {where} answers but refuses the user or password "
            "(AuthenticationError): no job is queued and webhooks answer 503",
            REDIS_AUTH_FIX,
        )
    except (TimeoutError, RedisError, OSError) as error:
        return Check(
            name,
            Health.PROBLEM,
            f"Redis at {where} does not answer ({type(error).__name__}): no job is "
            "queued and webhooks answer 503",
            "start Redis, or correct LEADLOOP_REDIS_URL",
        )
    version = str(server.get("redis_version", "?"))
    if str(persistence.get("aof_enabled", "0")) != "1":
        return Check(
            name,
            Health.PROBLEM if settings.is_production else Health.WARNING,
            f"Redis {version} at {where} answers, but append-only persistence is "
            "off: a restart can lose queued jobs and dialogs",
            "set `appendonly yes` (and `appendfsync everysec`) in redis.conf, or run "
            "`redis-cli CONFIG SET appendonly yes` and `CONFIG REWRITE`",
        )
    return Check(name, Health.OK, f"Redis {version} at {where}, append-only file on")


# -- the model -------------------------------------------------------------------------


async def _model(settings: Settings, http: httpx.AsyncClient) -> Check:
    name = "model"
    if settings.llm_base_url is None or settings.llm_model is None:
        return Check(
            name,
            Health.OK,
            "no model configured (LEADLOOP_LLM_BASE_URL, LEADLOOP_LLM_MODEL): the "
            "rules qualifier is in use",
        )
    timeout = min(settings.llm_timeout_s, MODEL_CHECK_TIMEOUT_S)
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else "none"
    client = AsyncOpenAI(
        api_key=key,
        base_url=settings.llm_base_url,
        http_client=cast(Any, http),
        max_retries=0,
        timeout=timeout,
    )
    model = settings.llm_model
    fallback = "until it is fixed, the rules qualifier answers: no lead is lost"
    try:
        offered = await _offered_models(client, model)
    except APITimeoutError:
        return Check(
            name,
            Health.PROBLEM,
            f"the model endpoint did not answer in {timeout:.0f} s; {fallback}",
            "check LEADLOOP_LLM_BASE_URL and that the endpoint runs",
        )
    except APIConnectionError as error:
        return Check(
            name,
            Health.PROBLEM,
            f"no connection to the model endpoint ({type(error).__name__}); {fallback}",
            "check the host in LEADLOOP_LLM_BASE_URL and that the endpoint runs",
        )
    except (AuthenticationError, PermissionDeniedError) as error:
        return Check(
            name,
            Health.PROBLEM,
            f"the model endpoint refuses the key (HTTP {error.status_code}); "
            f"{fallback}",
            "put a valid key in LEADLOOP_LLM_API_KEY",
        )
    except APIStatusError as error:
        return Check(
            name,
            Health.PROBLEM,
            f"the model endpoint answered HTTP {error.status_code}; {fallback}",
            "check LEADLOOP_LLM_BASE_URL (it ends where /chat/completions begins) and "
            "the provider's status",
        )
    if offered is not None and model not in offered:
        shown = ", ".join(sorted(offered)[:5]) or "none"
        return Check(
            name,
            Health.PROBLEM,
            f"the endpoint does not offer the model {model} (it offers: {shown}); "
            f"{fallback}",
            "set LEADLOOP_LLM_MODEL to one of the offered models",
        )
    return Check(name, Health.OK, f"the endpoint answers and offers {model}")


async def _offered_models(client: AsyncOpenAI, model: str) -> set[str] | None:
    """The endpoint's model ids; None when it has no list and a one-token
    completion answered instead."""
    try:
        page = await client.models.list()
    except NotFoundError:
        # Some compatible endpoints (YandexGPT's among them) have no /models.
        await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "ok"}], max_tokens=1
        )
        return None
    return {entry.id for entry in page.data}


# -- the report ------------------------------------------------------------------------


def render(diagnosis: Diagnosis) -> str:
    lines = []
    indent = " " * 30
    for check in diagnosis.checks:
        head = f"{check.health.value:<8} {check.name:<20} "
        lines += textwrap.wrap(
            check.summary, WIDTH, initial_indent=head, subsequent_indent=indent
        )
        if check.fix:
            lines += textwrap.wrap(
                f"fix: {check.fix}",
                WIDTH,
                initial_indent=indent,
                subsequent_indent=indent + "     ",
            )
    verdict = (
        "All checks passed."
        if diagnosis.healthy
        else f"{_count(diagnosis.checks, Health.PROBLEM)} problem(s) to fix."
    )
    return "\n".join([*lines, verdict])


def _count(checks: Iterable[Check], health: Health) -> int:
    return sum(1 for check in checks if check.health is health)
