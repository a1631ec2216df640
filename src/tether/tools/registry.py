"""Tools as plain Python functions: the `@tool` mark, schema generation and the per-app Registry.

A tool is a sync or async function with type hints and a docstring. Its JSON schema is generated
by pydantic from the signature; parameter descriptions come from the docstring (Google, NumPy or
Sphinx style) or from `Annotated[..., Field(description=...)]`.

`@tool` only marks a function; nothing is registered globally. A `Registry` is built per app and
holds the tools it was given plus any `ToolSource` (e.g. the MCP manager) whose tools come and go.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final, Protocol, TypeVar, overload

import docstring_parser
from pydantic import BaseModel, ConfigDict, Field, create_model

from tether.tools.base import ToolSpec

# What OpenAI (and llama.cpp chat templates) accept as a function name.
TOOL_NAME_RE: Final = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

_MARK: Final = "__tether_tool__"

F = TypeVar("F", bound=Callable[..., Any])


class ToolConfigError(ValueError):
    """A tool cannot be defined or loaded (bad signature, bad name, duplicate, import failure)."""


class ToolError(Exception):
    """Raised by a tool to report a failure to the model; the message is shown as is."""


@dataclass(frozen=True, slots=True)
class _Mark:
    name: str | None
    description: str | None
    timeout_s: float | None


@dataclass(frozen=True, slots=True)
class Tool:
    """A callable tool with its spec.

    With `model` set, `prepare` validates the arguments and `fn` receives them as parameters.
    With `model` None (MCP tools, whose servers validate), `fn` receives the raw arguments dict.
    """

    spec: ToolSpec
    fn: Callable[..., Any]
    model: type[BaseModel] | None = None
    # Parameter names in signature order, and how many leading ones are positional-only.
    params: tuple[str, ...] = ()
    positional_only: int = 0
    is_async: bool = False
    timeout_s: float | None = None  # overrides the executor's default

    @property
    def name(self) -> str:
        return self.spec.name

    def prepare(self, arguments: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Validate `arguments`; return (args, kwargs) for `fn`. Raises pydantic.ValidationError."""
        if self.model is None:
            return (dict(arguments),), {}
        validated = self.model.model_validate(arguments)
        values = [getattr(validated, _field_name(i)) for i in range(len(self.params))]
        n = self.positional_only
        return tuple(values[:n]), dict(zip(self.params[n:], values[n:], strict=True))


class ToolSource(Protocol):
    """Something that contributes tools that may change at run time (an MCP manager)."""

    def tools(self) -> Sequence[Tool]: ...


# ---------------------------------------------------------------------------------------------
# The decorator


@overload
def tool(fn: F, /) -> F: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, timeout_s: float | None = None
) -> Callable[[F], F]: ...


def tool(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
) -> F | Callable[[F], F]:
    """Mark a function as a tool (`@tool` or `@tool(name=..., description=..., timeout_s=...)`).

    The function is returned unchanged; loading its module through `tools.enabled` picks it up.
    """
    if name is not None and not TOOL_NAME_RE.match(name):
        raise ToolConfigError(f"invalid tool name {name!r}: use 1-64 of [a-zA-Z0-9_-]")

    def mark(f: F) -> F:
        setattr(f, _MARK, _Mark(name, description, timeout_s))
        return f

    return mark(fn) if fn is not None else mark


def is_marked(obj: object) -> bool:
    return isinstance(getattr(obj, _MARK, None), _Mark)


# ---------------------------------------------------------------------------------------------
# Building a Tool from a function


def make_tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
) -> Tool:
    """Build a Tool from a function; explicit arguments win over the `@tool` mark, then the
    function's own name and docstring."""
    mark = getattr(fn, _MARK, None)
    if isinstance(mark, _Mark):
        name = name or mark.name
        description = description or mark.description
        timeout_s = timeout_s if timeout_s is not None else mark.timeout_s
    fn_name = getattr(fn, "__name__", "")
    name = name or (fn_name if isinstance(fn_name, str) else "")
    if not TOOL_NAME_RE.match(name):
        raise ToolConfigError(f"invalid tool name {name!r}: use 1-64 of [a-zA-Z0-9_-]")
    summary, param_docs = parse_docstring(inspect.getdoc(fn))
    model, params, positional_only = _arguments_model(fn, name, param_docs)
    spec = ToolSpec(
        name=name,
        description=description if description is not None else summary,
        parameters=clean_schema(model.model_json_schema(by_alias=True)),
    )
    return Tool(
        spec=spec,
        fn=fn,
        model=model,
        params=params,
        positional_only=positional_only,
        is_async=_is_async(fn),
        timeout_s=timeout_s,
    )


def _is_async(fn: Callable[..., Any]) -> bool:
    # Also catches objects with an `async def __call__`; a sync function that returns an
    # awaitable is still handled by the executor, which awaits what it gets back.
    call = type(fn).__dict__.get("__call__") if not inspect.isroutine(fn) else None
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _field_name(i: int) -> str:
    # Internal field names never clash with BaseModel attributes ("json", "model_*", "schema");
    # the parameter's real name is the alias, used for validation and the schema.
    return f"p{i}"


def _arguments_model(
    fn: Callable[..., Any], name: str, param_docs: Mapping[str, str]
) -> tuple[type[BaseModel], tuple[str, ...], int]:
    try:
        sig = inspect.signature(fn)
        # A callable object's hints live on its class's __call__.
        annotated = fn if inspect.isroutine(fn) or inspect.isclass(fn) else type(fn).__call__
        hints = typing.get_type_hints(annotated, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise ToolConfigError(f"tool {name!r}: cannot read its signature: {exc}") from exc
    fields: dict[str, Any] = {}
    params: list[str] = []
    positional_only = 0
    for i, (pname, p) in enumerate(sig.parameters.items()):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ToolConfigError(f"tool {name!r}: *args and **kwargs are not supported")
        if p.kind is p.POSITIONAL_ONLY:
            positional_only += 1
        params.append(pname)
        extra: dict[str, Any] = {"alias": pname}
        if pname in param_docs:
            extra["description"] = param_docs[pname]
        default = ... if p.default is p.empty else p.default
        fields[_field_name(i)] = (hints.get(pname, Any), Field(default, **extra))
    try:
        model = create_model(
            f"{name}_arguments",
            __config__=ConfigDict(extra="forbid", populate_by_name=False),
            **fields,
        )
        model.model_json_schema(by_alias=True)  # fail now, not on the first GET /tools
    except Exception as exc:
        raise ToolConfigError(f"tool {name!r}: cannot build its argument schema: {exc}") from exc
    return model, tuple(params), positional_only


# ---------------------------------------------------------------------------------------------
# Schema clean-up: small models read these schemas, so drop noise and inline $defs


_SCHEMA_MAPS: Final = ("properties", "$defs", "patternProperties")
_SCHEMA_LISTS: Final = ("anyOf", "allOf", "oneOf", "prefixItems")
_SCHEMA_ONES: Final = ("items", "additionalProperties", "not")


def clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's `title`s and inline non-recursive `$ref`s (returns a new dict)."""
    stripped: dict[str, Any] = _strip_titles(schema)
    defs = stripped.pop("$defs", None)
    if not defs:
        return stripped
    try:
        inlined = _inline(stripped, defs, ())
    except _Recursive:
        stripped["$defs"] = defs
        return stripped
    assert isinstance(inlined, dict)
    return dict(inlined)


def _strip_titles(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {k: _strip_titles(v) for k, v in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_strip_titles(v) for v in value]
        elif key in _SCHEMA_ONES:
            out[key] = _strip_titles(value)
        else:
            out[key] = value
    return out


class _Recursive(Exception):
    pass


def _inline(node: Any, defs: Mapping[str, Any], stack: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(v, defs, stack) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        key = ref.removeprefix("#/$defs/")
        if key in stack or key not in defs:
            raise _Recursive
        target: dict[str, Any] = dict(_inline(defs[key], defs, (*stack, key)))
        target.update({k: _inline(v, defs, stack) for k, v in node.items() if k != "$ref"})
        return target
    return {k: _inline(v, defs, stack) for k, v in node.items()}


# ---------------------------------------------------------------------------------------------
# Docstrings


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a docstring into (summary, {param: description}), by `docstring_parser`.

    The summary is the text before the first section, whitespace-collapsed. Google (`Args:` +
    `name (type): text`), NumPy (`Parameters` + dashes + `name : type`) and Sphinx
    (`:param name: text`) styles are understood; unknown shapes just yield fewer descriptions.
    """
    if not doc or not doc.strip():
        return "", {}
    parsed = docstring_parser.parse(doc)
    summary = " ".join(filter(None, (parsed.short_description, parsed.long_description)))
    params = {
        param.arg_name.lstrip("*"): " ".join(param.description.split())
        for param in parsed.params
        if param.description and param.description.strip()
    }
    return " ".join(summary.split()), params


# ---------------------------------------------------------------------------------------------
# The registry


class Registry:
    """The tools of one app: fixed ones added at build time, plus dynamic sources.

    Fixed tools win over a source's tool of the same name (sources' tools are namespaced,
    so this only matters for odd configurations).
    """

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._sources: list[ToolSource] = []

    def add(self, item: Tool | Callable[..., Any], **overrides: Any) -> Tool:
        """Add a Tool, or a function (made into one with `make_tool(fn, **overrides)`)."""
        new = item if isinstance(item, Tool) else make_tool(item, **overrides)
        if new.name in self._tools:
            raise ToolConfigError(f"duplicate tool name {new.name!r}")
        self._tools[new.name] = new
        return new

    def add_all(self, items: Iterable[Tool | Callable[..., Any]]) -> list[Tool]:
        return [self.add(item) for item in items]

    def add_module(self, module: ModuleType) -> list[Tool]:
        """Add every `@tool`-marked function found in the module's namespace."""
        seen: set[int] = set()
        found: list[Callable[..., Any]] = []
        for obj in vars(module).values():
            if is_marked(obj) and callable(obj) and id(obj) not in seen:
                seen.add(id(obj))
                found.append(obj)
        return self.add_all(found)

    def add_source(self, source: ToolSource) -> None:
        self._sources.append(source)

    def get(self, name: str) -> Tool | None:
        found = self._tools.get(name)
        if found is not None:
            return found
        for source in self._sources:
            for t in source.tools():
                if t.name == name:
                    return t
        return None

    def tools(self) -> list[Tool]:
        """Every tool available now, fixed ones first, without name clashes."""
        out = dict(self._tools)
        for source in self._sources:
            for t in source.tools():
                out.setdefault(t.name, t)
        return list(out.values())

    def specs(self) -> list[ToolSpec]:
        """What `GET /tools` lists and the model is told."""
        return [t.spec for t in self.tools()]

    def names(self) -> list[str]:
        return [t.name for t in self.tools()]
