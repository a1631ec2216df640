"""One Settings model for the whole server: config.yaml < environment < command-line flags.

Environment: `TETHER_<SECTION>__<KEY>` for any key (e.g. `TETHER_LIMITS__MAX_TEXT_CHARS`), short
forms for the common ones (`TETHER_HOST`, `TETHER_PORT`, `TETHER_DB`, ...), and the seeds' names
`MLC_HOST`, `MLC_PORT`, `MLC_SQLITE_URL`, `MLC_DIST_PATH` as aliases (a `TETHER_*` name wins).
Relative paths in config.yaml are relative to the file; elsewhere to the working directory.
The models folder, when no setting names it, is found as `default_dist_path` says.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tether.config.schema import Settings, default_data_dir, sqlite_url_path


def source_checkout() -> Path | None:
    """The checkout Tether runs from (an editable install: `<root>/src/tether`), else None."""
    package = Path(__file__).resolve().parents[1]
    root = package.parents[1]
    if package.parent.name == "src" and (root / "pyproject.toml").is_file():
        return root
    return None


def default_dist_path(
    config_file: Path | None, environ: Mapping[str, str], checkout: Path | None
) -> Path:
    """The models folder when no setting names one: the first of `dist/` beside the config
    file, `dist/` in the checkout (where `setup.sh` puts the default model) that exists, else
    the per-user models folder `$XDG_DATA_HOME/tether/models` (`~/.local/share/tether/models`).
    Never the working directory: `tether serve` finds the same models wherever it is started."""
    beside = [] if config_file is None else [config_file.resolve().parent / "dist"]
    in_checkout = [] if checkout is None else [checkout / "dist"]
    for candidate in (*beside, *in_checkout):
        if candidate.is_dir():
            return candidate
    return default_data_dir(environ) / "models"


class ConfigError(Exception):
    """A setting is missing, malformed or out of range; the message names the key."""


# Short environment names -> dotted keys. Earlier names win over later ones.
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "server.host": ("TETHER_HOST", "MLC_HOST"),
    "server.port": ("TETHER_PORT", "MLC_PORT"),
    "server.token": ("TETHER_TOKEN",),
    "storage.path": ("TETHER_DB", "MLC_SQLITE_URL"),
    "engine.name": ("TETHER_ENGINE",),
    "engine.model": ("TETHER_MODEL",),
    "engine.dist_path": ("TETHER_DIST_PATH", "MLC_DIST_PATH"),
    "engine.openai.base_url": ("TETHER_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
    "engine.openai.api_key": ("TETHER_OPENAI_API_KEY", "OPENAI_API_KEY"),
    "log.level": ("TETHER_LOG_LEVEL",),
    "log.format": ("TETHER_LOG_FORMAT",),
    "security.allowed_origins": ("TETHER_ALLOWED_ORIGINS",),
    "security.allowed_hosts": ("TETHER_ALLOWED_HOSTS",),
}
SECRET_KEYS = frozenset({"server.token", "engine.openai.api_key", "storage.url"})  # never echoed
PATH_KEYS = ("storage.path", "engine.dist_path", "tools.files_root")
_NESTED_PREFIX = "TETHER_"
_NESTED_SEP = "__"


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = target
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config: {part} must be a mapping")
        node = child
    node[leaf] = value


def _get_dotted(source: Mapping[str, Any], dotted: str) -> Any:
    node: Any = source
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_value(raw: str) -> Any:
    # Lists and mappings come as JSON; scalars stay strings for pydantic to coerce and check.
    if raw[:1] in "[{":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def env_layer(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings the environment gives, and for each dotted key the variable that gave it.

    `TETHER_<SECTION>__<KEY>` names are read for Tether's own sections only, so another tool's
    `TETHER_SOMETHING__ELSE` is left alone; within a section a misspelt key is an error.
    """
    layer: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, raw in environ.items():
        if name.startswith(_NESTED_PREFIX) and _NESTED_SEP in name:
            dotted = name[len(_NESTED_PREFIX) :].lower().replace(_NESTED_SEP, ".")
            if dotted.split(".", 1)[0] in Settings.model_fields:
                _set_dotted(layer, dotted, _env_value(raw))
                sources[dotted] = name
    for dotted, names in ENV_ALIASES.items():
        for name in names:
            if name in environ:
                value = environ[name]
                if name == "MLC_SQLITE_URL":
                    try:
                        value = sqlite_url_path(value)
                    except ValueError as exc:
                        raise ConfigError(f"{name}: {exc}") from None
                _set_dotted(layer, dotted, value)
                sources[dotted] = name
                break
    return layer, sources


def _absolutize(layer: dict[str, Any], base: Path) -> dict[str, Any]:
    for dotted in PATH_KEYS:
        value = _get_dotted(layer, dotted)
        if isinstance(value, str | Path) and not Path(value).expanduser().is_absolute():
            _set_dotted(layer, dotted, str(base / value))
        elif isinstance(value, str | Path):
            _set_dotted(layer, dotted, str(Path(value).expanduser()))
    return layer


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what: `, line 3, column 9: is not valid YAML: expected ',' or ']' ...`."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = "" if mark is None else f", line {mark.line + 1}, column {mark.column + 1}"
    return f"{where}: is not valid YAML: {problem}" + (f" ({context})" if context else "")


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path}{_yaml_problem(exc)}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config: {path} must hold a mapping at the top level")
    return _absolutize(loaded, path.resolve().parent)


def find_config_file(explicit: Path | None, environ: Mapping[str, str], cwd: Path) -> Path | None:
    if explicit is not None:
        return explicit
    if "TETHER_CONFIG" in environ:
        return Path(environ["TETHER_CONFIG"])
    candidate = cwd / "config.yaml"
    return candidate if candidate.is_file() else None


def describe_validation_error(
    exc: ValidationError, sources: Mapping[str, str] | None = None
) -> str:
    """One line per problem, naming the key (and the environment variable that set it)."""
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(root)"
        source = (sources or {}).get(key)
        where = f"{key} (from {source})" if source else key
        got = "" if key in SECRET_KEYS else f" (got {error.get('input')!r})"
        lines.append(f"config: {where}: {error['msg']}{got}")
    return "\n".join(lines)


def load_settings(
    *,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Build Settings from config.yaml, then the environment, then `overrides` (dotted keys).

    `engine.dist_path` unset: see `default_dist_path`."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    data: dict[str, Any] = {}
    path = find_config_file(config_path, environ, cwd)
    if path is not None:
        data = read_config_file(path)
    from_env, sources = env_layer(environ)
    data = _merge(data, _absolutize(from_env, cwd))
    flags: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(flags, dotted, value)
            sources.pop(dotted, None)  # a flag overrode the variable: the flag is to blame
    data = _merge(data, _absolutize(flags, cwd))
    if _get_dotted(data, "storage.path") is None:
        _set_dotted(data, "storage.path", str(default_data_dir(environ) / "tether.db"))
    if _get_dotted(data, "engine.dist_path") is None:
        _set_dotted(
            data, "engine.dist_path", str(default_dist_path(path, environ, source_checkout()))
        )
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, sources)) from exc
