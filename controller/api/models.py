"""What the API answers, as the OpenAPI description shows it: response models and error answers.

``/openapi.json`` is a contract clients and the test suite hold the API to (tests/test_api_contract.py
runs schemathesis against the real daemon): every status an endpoint can give is listed with its
body, and error bodies are the API's own ``{"error", "field", "details"}``, not FastAPI's default
validation shape. Models here describe; the routes build the answers (controller/api/routers/).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorOut(BaseModel):
    """Every 4xx/5xx body: a message a person can act on and the field it concerns."""

    error: str = Field(description="What is wrong, starting with the field when there is one")
    field: str | None = Field(description="Dotted path of the offending field (targets.area_codes.0) or null")
    details: list[Any] = Field(description="Every problem found: [{field, problem}, ...]")


def error_body(message: str, field: str | None = None, details: list[Any] | None = None) -> dict[str, Any]:
    """Every error answer's body (also those the HTTP layer sends itself, controller/api/http_protocol.py)."""
    return {"error": message, "field": field, "details": details or []}


ERROR_MEANINGS: dict[int, str] = {
    400: "Malformed request",
    401: "Missing, unknown or revoked token (with WWW-Authenticate: Bearer)",
    403: "The token's role may not do this",
    404: "No such resource (the message names the id), or no such endpoint",
    409: "Conflicts with the resource's state (the message says which)",
    413: "Request body over the limit",
    422: "Invalid request: `field` names the offending field",
    503: "The part of the gateway this needs is not available",
}


def errors(*codes: int, **meanings: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each code with the error body, described by ``ERROR_MEANINGS``
    or by ``meanings`` (``e404="no broadcast with this id"``)."""
    return {code: {"model": ErrorOut, "description": meanings.get(f"e{code}", ERROR_MEANINGS[code])}
            for code in codes}


WAV_CONTENT = {"audio/wav": {"schema": {"type": "string", "format": "binary"}}}
"""A PCM WAV file as a request or response body."""
RECORDING_CONTENT = {**WAV_CONTENT, "audio/mpeg": {"schema": {"type": "string", "format": "binary"}}}
"""An uploaded recording: PCM WAV or MP3 (told apart by content, whatever the Content-Type says)."""

AUTH_ERRORS = (401, 403)
"""Every endpoint behind a token can answer these."""


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")  # a description, never a filter of what the route returns


class HealthOut(BaseModel):
    status: Literal["ok"]


class BroadcastAccepted(BaseModel):
    """A broadcast journalled (it is never lost after this answer)."""

    id: str
    state: str = Field(description="waiting, playing, … (GET the location for progress)")
    location: str = Field(description="Where to follow it: /api/v1/broadcasts/{id}")


class AudioClipOut(_Out):
    """An uploaded recording, kept under an id derived from its content."""

    audio_id: str
    duration_s: float = Field(description="What the file really holds, in seconds")
    sample_rate: int
    channels: int
    bytes: int
    format: Literal["wav", "mp3"] = Field(description="From the content: wav, or mp3 (decoded when played)")


class TokenOut(BaseModel):
    id: str
    name: str
    role: Literal["viewer", "operator", "admin", "feed"]
    created_at: float


class SessionOut(BaseModel):
    name: str
    role: Literal["viewer", "operator", "admin", "feed"] | None
    token_id: str | None
    timezone: str = Field(description="The gateway's IANA time zone: the console shows times in it")


class ScheduleOut(_Out):
    id: str
    cron: str
    enabled: bool
    request: dict[str, Any]
    source: Literal["config", "api"]


class DeviceOut(_Out):
    """A terminal or transmitter with its latest polled state."""

    id: str
    name: str
    village: str
    area_code: str
    line: str
    kind: Literal["terminal", "fm_transmitter"]
    online: bool | None = Field(description="Answers its polls; null until the first poll")
    last_seen: float | None = Field(description="Wall-clock time of the last good answer")
    failure: str | None = Field(description="Why the last poll got no answer")
    values: dict[str, Any] | None = Field(description="The points read at the last good poll")
    state: int | None = Field(description="1 normal, 2 off, 3 fault, 4 recovered, 5 broadcasting")
    state_name: str | None
    faults: list[dict[str, Any]] = Field(description="Active faults with reasons")
    location: dict[str, float] | None = Field(description="{lat, lon} from the config")
    zones: list[int] = Field(description="Speaker zones wired at a terminal; empty for a transmitter")


class ActorOut(_Out):
    """Who did it: a token's name and role, or the gateway itself (scheduler, county, CAP)."""

    name: str
    role: str | None
    token_id: str | None
    remote: str | None
    via: str


class BroadcastOut(_Out):
    """A journalled broadcast; one fetched by id also has ``outcomes`` and ``notes``."""

    id: str
    class_: str | None = Field(alias="class", description="emergency, drill, …")
    title: str
    request: dict[str, Any] = Field(description="The request as accepted")
    state: Literal["not_processed", "waiting", "playing", "succeeded", "failed", "cancelled"]
    state_code: int = Field(description="The national state code 0-5")
    reason: str | None
    actor: ActorOut
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float | None
    coverage: float | None = Field(description="Share of terminals that played it, 0-1")
    location: str = Field(description="/api/v1/broadcasts/{id}")
    outcomes: list[dict[str, Any]] | None = Field(default=None, description="Per terminal (by id only)")
    notes: list[dict[str, Any]] | None = Field(default=None, description="{ts, text} (by id only)")


class ScheduleListed(ScheduleOut):
    """A schedule as the running scheduler sees it."""

    next_at: str | None = Field(description="Its next run (ISO 8601, local time), or null when not active")
    problem: str | None = Field(description="Why it is not active, if so")


class AuditOut(_Out):
    """One audited action, newest first."""

    seq: int
    ts: float
    actor: str
    role: str | None
    token_id: str | None
    remote: str | None
    via: str
    action: str = Field(description="e.g. broadcast.submit, schedule.add, alert.approved")
    target: str
    details: dict[str, Any]


class AlertOut(_Out):
    """A CAP alert in the inbox with its disposition and plan (docs/alerts.md); one fetched by id
    also has the CAP ``document`` as received; a posted one has ``duplicate`` and ``location``."""

    id: str
    sender: str
    identifier: str
    sent: str
    msg_type: str
    status: str
    dialect: str
    source: str
    disposition: str = Field(description="broadcast, pending, rejected, expired, recorded, …")
    reason: str | None
    plan: dict[str, Any] | None = Field(description="Terminals, villages, text and request")


class FeedOut(_Out):
    """One configured CAP feed poller."""

    id: str
    type: str
    failures: int = Field(description="Failed polls in a row")


class TemplateOut(_Out):
    """A ready-made announcement from the config; ``tone`` is the one that will play."""

    id: str
    title: str
    tone: str


class GatewayOut(_Out):
    """Gateway health in one call: host figures, engine, lines and devices (when the health monitor
    runs), identity, the MQTT uplink, CAP feeds, pending alerts and speech (each when present)."""

    ts: float | None = None
    gateway: dict[str, Any] = Field(description="id, name, area_code, location, timezone")
    api_started_at: float
    mqtt: dict[str, Any] = Field(description="enabled, connected, broker")
    national_platform: dict[str, Any] | None = Field(
        default=None, description="With national_platform: codes, upper URL, link up/down, sent, refused, "
                                  "outbox depth")
    feeds: list[dict[str, Any]] | None = None
    alerts: dict[str, Any] | None = None
    speech: dict[str, Any] | None = None


def ok(model: Any, description: str = "Successful Response", status: int = 200) -> dict[int | str, Any]:
    """``responses=`` for a route that returns plain JSON described by ``model`` (``response_model=None``):
    the description without FastAPI validating and re-serialising, so no field is ever dropped."""
    return {status: {"model": model, "description": description}}


ERROR_REF = "#/components/schemas/ErrorOut"


def finish_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's description made true to this API.

    * FastAPI adds a 422 with its own HTTPValidationError shape to every route with parameters;
      this API never sends that shape, and routes that can answer 422 list it with :class:`ErrorOut`.
    * Error answers are JSON whatever the route's own media type.
    * The token check is a plain dependency (it must read only the Authorization header), so
      FastAPI does not know it: every operation that can answer 401 gets the bearer scheme.
    """
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            content = responses.get("422", {}).get("content", {})
            ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
            if ref.endswith("/HTTPValidationError"):
                del responses["422"]
            for status, response in responses.items():
                if int(status) >= 400:  # FastAPI files them under the route type (text/plain, audio/wav)
                    response["content"] = {"application/json": {"schema": {"$ref": ERROR_REF}}}
            if "401" in responses:
                operation["security"] = [{"bearer": []}]
    components = schema.setdefault("components", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(name, None)
    components["securitySchemes"] = {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "A token from `ebc token create NAME --role ROLE` (never in the URL)"}}
    return schema
