"""`GET /openapi.json`: the HTTP API as an OpenAPI 3.1 document, built from pydantic models.

Each route family exports `operations`, a mapping from `(method, path)` to an `Operation`: its
request body, query and response models (the ones the route validates with, where it has them),
the statuses it answers and the error model of those statuses. `build_document` walks the app's
own route table, so a route without an `Operation` is a `MissingOperation` (the document cannot
silently leave a route out) and an `Operation` without a route is one too (nor describe a route
that is gone). Path parameters come from the route's path (`{name}`, strings: the ids of
`tether.protocol.id_problem`).

Every operation also documents the refusals of the security middleware in front of it: 400
`invalid_host` (a `Host` that is not this server), 403 `forbidden_origin` (an unsafe method from
a foreign page) and, with `server.token` set, 401 `unauthorized` and the two ways to send the
token (`bearerAuth`: `Authorization: Bearer`; `tokenQuery`: `?token=`, for browsers), except on
the public paths (`security.public_paths`, GET and HEAD).

A route family with its own error shape (OpenAI's, under `/v1/`) passes its own `error_model`;
adding it is its `operations` given to `openapi_route` beside the others.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, compile_path

from tether import __version__
from tether.http_errors import ErrorBody
from tether.protocol import ID_SCHEMA
from tether.security.auth import PUBLIC_METHODS, TOKEN_PARAM

OPENAPI_PATH = "/openapi.json"
JSON = "application/json"
REF_TEMPLATE = "#/components/schemas/{model}"
# Statuses of the security middleware, on every route (401 only with a token set).
HOST_STATUS, ORIGIN_STATUS, AUTH_STATUS = 400, 403, 401
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
STATUS_TEXT = {
    400: "Bad request",
    401: "No or wrong bearer token",
    403: "Forbidden origin",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Too large",
    415: "The body is not JSON",
    422: "Unprocessable",
    429: "Too many requests",
    501: "Not implemented",
    502: "Engine error",
    503: "Busy or degraded",
}
SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer"},
    "tokenQuery": {"type": "apiKey", "in": "query", "name": TOKEN_PARAM},
}
Key = tuple[str, str]  # (method, path)
CONVERTOR = re.compile(r"{(\w+):\w+}")


class MissingOperation(Exception):
    """A route without its `Operation`, or an `Operation` without its route."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One successful answer: its body model (None: no body) and media type."""

    description: str
    model: type[BaseModel] | None = None
    media_type: str = JSON
    # The same status in other media types, as the request asks (`stream: true`: SSE lines).
    alternatives: Sequence[tuple[str, type[BaseModel]]] = ()

    def content(self) -> list[tuple[str, type[BaseModel]]]:
        main = [] if self.model is None else [(self.media_type, self.model)]
        return [*main, *self.alternatives]


@dataclass(frozen=True, slots=True)
class Operation:
    summary: str
    replies: Mapping[int, Reply]
    errors: Sequence[int] = ()  # statuses answered with `error_model`, beside the middleware's
    body: type[BaseModel] | None = None  # a JSON request body
    query: type[BaseModel] | None = None  # its fields are the query parameters
    error_model: type[BaseModel] = ErrorBody
    tags: Sequence[str] = field(default=())


@dataclass(frozen=True, slots=True)
class Security:
    """What the security middleware asks: a token (or not), and which paths are public."""

    token: bool
    public_paths: Sequence[str] = ()

    def is_public(self, method: str, path: str) -> bool:
        if method not in PUBLIC_METHODS:
            return False
        return any(
            path == public or (public.endswith("/*") and path.startswith(public[:-1]))
            for public in self.public_paths
        )


def http_keys(routes: Iterable[BaseRoute]) -> list[Key]:
    """(method, path) of every HTTP route (HEAD, which starlette adds to GET, left out)."""
    return [
        (method, route.path)
        for route in routes
        if isinstance(route, Route)
        for method in sorted(route.methods or ())
        if method != "HEAD"
    ]


class _Schemas:
    """The models of the document: one JSON schema each, under components/schemas."""

    def __init__(self, operations: Iterable[Operation]) -> None:
        wanted: set[tuple[type[BaseModel], JsonSchemaMode]] = set()
        for op in operations:
            wanted.update((m, "validation") for m in (op.body, op.query) if m is not None)
            wanted.update(
                (model, "serialization") for r in op.replies.values() for _, model in r.content()
            )
            wanted.add((op.error_model, "serialization"))
        ordered = sorted(wanted, key=lambda item: (item[0].__name__, item[1]))
        self.refs, defs = models_json_schema(ordered, ref_template=REF_TEMPLATE)
        self.components: dict[str, Any] = defs.get("$defs", {})

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(self.refs[(model, mode)])

    def resolved(self, model: type[BaseModel]) -> dict[str, Any]:
        schema = self.ref(model, "validation")
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[1]]
        return schema


def _content(schema: dict[str, Any], media_type: str) -> dict[str, Any]:
    return {media_type: {"schema": schema}}


def _parameters(path: str, op: Operation, schemas: _Schemas) -> list[dict[str, Any]]:
    _, _, convertors = compile_path(path)
    params: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": dict(ID_SCHEMA),
        }
        for name in convertors
    ]
    if op.query is not None:
        schema = schemas.resolved(op.query)
        required = set(schema.get("required", ()))
        for name, prop in schema.get("properties", {}).items():
            param = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if "description" in prop:
                param["description"] = prop["description"]
            params.append(param)
    return params


def _operation(
    method: str, path: str, op: Operation, schemas: _Schemas, security: Security
) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, reply in op.replies.items():
        answer: dict[str, Any] = {"description": reply.description}
        content = {
            media_type: {"schema": schemas.ref(model, "serialization")}
            for media_type, model in reply.content()
        }
        if content:
            answer["content"] = content
        responses[str(status)] = answer
    public = security.is_public(method, path)
    errors = {*op.errors, HOST_STATUS}
    if method not in SAFE_METHODS:
        errors.add(ORIGIN_STATUS)
    if security.token and not public:
        errors.add(AUTH_STATUS)
    error_schema = _content(schemas.ref(op.error_model, "serialization"), JSON)
    for status in sorted(errors):
        responses.setdefault(
            str(status), {"description": STATUS_TEXT.get(status, "Error"), "content": error_schema}
        )
    doc: dict[str, Any] = {
        "operationId": method.lower() + re.sub(r"[{}]|:\w+", "", path).replace("/", "_"),
        "summary": op.summary,
        "responses": responses,
    }
    if op.tags:
        doc["tags"] = list(op.tags)
    params = _parameters(path, op, schemas)
    if params:
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {
            "required": False,
            "content": _content(schemas.ref(op.body, "validation"), JSON),
        }
    if security.token:
        doc["security"] = [] if public else [{"bearerAuth": []}, {"tokenQuery": []}]
    return doc


def build_document(
    routes: Iterable[BaseRoute], operations: Mapping[Key, Operation], security: Security
) -> dict[str, Any]:
    """The OpenAPI document of `routes`; raises MissingOperation (see the module docstring)."""
    keys = http_keys(routes)
    missing = [key for key in keys if key not in operations]
    unrouted = sorted(set(operations) - set(keys))
    if missing or unrouted:
        raise MissingOperation(
            f"routes without an operation: {missing}; without a route: {unrouted}"
        )
    schemas = _Schemas(operations[key] for key in keys)
    paths: dict[str, dict[str, Any]] = {}
    for method, path in keys:
        template = CONVERTOR.sub(r"{\1}", path)  # starlette's {model:path} is {model} here
        paths.setdefault(template, {})[method.lower()] = _operation(
            method, path, operations[(method, path)], schemas, security
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tether", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas.components, "securitySchemes": SECURITY_SCHEMES},
    }


def openapi_route(operations: Mapping[Key, Operation], security: Security) -> Route:
    """`GET /openapi.json` for the app it is mounted in (built once, on the first request)."""
    document: dict[str, Any] = {}

    async def openapi(request: Request) -> Response:
        if not document:
            document.update(build_document(request.app.routes, operations, security))
        return JSONResponse(document)

    return Route(OPENAPI_PATH, openapi, methods=["GET"])
