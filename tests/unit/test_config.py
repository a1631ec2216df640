"""Settings: config.yaml < environment < flags; every bad value names its key."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tether.config import ConfigError, default_dist_path, load_settings, source_checkout
from tether.store.factory import build_store
from tether.store.postgres import PostgresStore
from tether.store.sqlite import SQLiteStore


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_any_source(tmp_path: Path) -> None:
    settings = load_settings(environ={"XDG_DATA_HOME": str(tmp_path)}, cwd=tmp_path)
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8000)
    assert settings.storage.path == tmp_path / "tether" / "tether.db"
    assert settings.storage.synchronous == "FULL"
    assert settings.limits.max_frame_bytes == 1024 * 1024


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "server:\n  host: 10.0.0.1\n  port: 7000\n")
    env = {"TETHER_PORT": "7001"}
    from_file_and_env = load_settings(config_path=config, environ=env, cwd=tmp_path)
    assert from_file_and_env.server.host == "10.0.0.1"
    assert from_file_and_env.server.port == 7001
    with_flag = load_settings(
        config_path=config, environ=env, cwd=tmp_path, overrides={"server.port": 7002}
    )
    assert with_flag.server.port == 7002


def test_seed_aliases_and_tether_names_win(tmp_path: Path) -> None:
    env = {
        "MLC_HOST": "0.0.0.0",
        "MLC_PORT": "9000",
        "MLC_SQLITE_URL": "sqlite:///sessions.db",
        "MLC_DIST_PATH": "/models",
    }
    settings = load_settings(environ=env, cwd=tmp_path)
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 9000
    assert settings.storage.path == tmp_path / "sessions.db"
    assert settings.engine.dist_path == Path("/models")
    settings = load_settings(environ={**env, "TETHER_PORT": "9001"}, cwd=tmp_path)
    assert settings.server.port == 9001


def test_nested_environment_names(tmp_path: Path) -> None:
    env = {"TETHER_LIMITS__MAX_TEXT_CHARS": "42", "TETHER_TOOLS__ENABLED": '["calculator"]'}
    settings = load_settings(environ=env, cwd=tmp_path)
    assert settings.limits.max_text_chars == 42
    assert settings.tools.enabled == ["calculator"]


def test_relative_paths_in_the_file_are_relative_to_it(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    config = write(folder / "config.yaml", "storage:\n  path: data/t.db\n")
    elsewhere = tmp_path / "elsewhere"
    settings = load_settings(config_path=config, environ={}, cwd=elsewhere)
    assert settings.storage.path == folder / "data" / "t.db"
    flagged = load_settings(environ={}, cwd=elsewhere, overrides={"storage.path": "x.db"})
    assert flagged.storage.path == elsewhere / "x.db"


def test_config_yaml_in_the_working_directory_is_found(tmp_path: Path) -> None:
    write(tmp_path / "config.yaml", "engine:\n  name: echo\nserver:\n  port: 8123\n")
    assert load_settings(environ={}, cwd=tmp_path).server.port == 8123


@pytest.mark.parametrize(
    ("yaml_text", "env", "says"),
    [
        ("server:\n  port: 70000\n", {}, "server.port"),
        ("server:\n  prot: 1\n", {}, "server.prot"),
        ("engine:\n  name: gpt\n", {}, "engine.name"),
        ("engine:\n  llamacpp:\n    flash_attn: fast\n", {}, "engine.llamacpp.flash_attn"),
        ("", {"TETHER_PORT": "eighty"}, "server.port"),
        ("", {"TETHER_LIMITS__MAX_TEXT_CHARS": "0"}, "limits.max_text_chars"),
        ("", {"TETHER_TOKEN": " "}, "server.token (from TETHER_TOKEN): Value error, the token"),
        ("server:\n  token: 'two words'\n", {}, "server.token"),
        ("mcp:\n  servers:\n    - name: x\n      transport: stdio\n", {}, "mcp.servers.0"),
    ],
)
def test_bad_values_name_the_key(
    tmp_path: Path, yaml_text: str, env: dict[str, str], says: str
) -> None:
    config = write(tmp_path / "c.yaml", yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config_path=config, environ=env, cwd=tmp_path)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("written", "meant"),
    [("off", "off"), ("on", "on"), ('"off"', "off"), ("auto", "auto"), ("false", "off")],
)
def test_flash_attention_reads_as_written(tmp_path: Path, written: str, meant: str) -> None:
    # YAML 1.1 reads a bare on/off as a boolean; the setting takes it as the word.
    config = write(tmp_path / "c.yaml", f"engine:\n  llamacpp:\n    flash_attn: {written}\n")
    settings = load_settings(config_path=config, environ={}, cwd=tmp_path)
    assert settings.engine.llamacpp.flash_attn == meant
    from_env = {"TETHER_ENGINE__LLAMACPP__FLASH_ATTN": meant}
    assert load_settings(environ=from_env, cwd=tmp_path).engine.llamacpp.flash_attn == meant


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(config_path=tmp_path / "missing.yaml", environ={}, cwd=tmp_path)
    bad = write(tmp_path / "bad.yaml", "server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(config_path=bad, environ={}, cwd=tmp_path)
    listed = write(tmp_path / "list.yaml", "- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(config_path=listed, environ={}, cwd=tmp_path)


def test_repository_config_yaml_is_valid() -> None:
    repo_config = Path(__file__).resolve().parents[2] / "config.yaml"
    settings = load_settings(config_path=repo_config, environ={}, cwd=repo_config.parent)
    assert settings.storage.path == repo_config.parent / "data" / "tether.db"


def test_other_tools_tether_variables_are_left_alone(tmp_path: Path) -> None:
    settings = load_settings(environ={"TETHER_SOMETHING__ELSE": "x"}, cwd=tmp_path)
    assert settings.server.port == 8000
    with pytest.raises(ConfigError, match=r"limits\.max_txt"):
        load_settings(environ={"TETHER_LIMITS__MAX_TXT": "1"}, cwd=tmp_path)


def test_errors_name_the_variable_that_set_the_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.port \(from MLC_PORT\)"):
        load_settings(environ={"MLC_PORT": "http"}, cwd=tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"MLC_PORT": "8001"}, cwd=tmp_path, overrides={"server.port": -1})
    assert "MLC_PORT" not in str(caught.value)


def test_a_bad_token_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"TETHER_TOKEN": "sec ret"}, cwd=tmp_path)
    assert "sec ret" not in str(caught.value)


def test_the_models_folder_does_not_depend_on_the_working_directory(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "dist").mkdir(parents=True)  # a dist/ where tether happens to be started
    settings = load_settings(environ={}, cwd=elsewhere)
    assert settings.engine.dist_path != elsewhere / "dist"
    assert settings.engine.dist_path == default_dist_path(None, {}, source_checkout())


def test_the_models_folder_beside_the_config_then_the_checkout_then_per_user(
    tmp_path: Path,
) -> None:
    conf, checkout = tmp_path / "conf", tmp_path / "checkout"
    conf.mkdir()
    config = write(tmp_path / "conf" / "config.yaml", "engine:\n  name: echo\n")
    env = {"XDG_DATA_HOME": str(tmp_path / "data")}
    per_user = tmp_path / "data" / "tether" / "models"
    assert default_dist_path(config, env, checkout) == per_user  # neither folder exists
    (checkout / "dist").mkdir(parents=True)
    assert default_dist_path(config, env, checkout) == checkout / "dist"
    assert default_dist_path(None, env, None) == per_user
    (conf / "dist").mkdir()
    assert default_dist_path(config, env, checkout) == conf / "dist"
    assert load_settings(config_path=config, environ=env).engine.dist_path == conf / "dist"


def test_this_checkout_is_found() -> None:
    checkout = source_checkout()
    assert checkout is not None
    assert (checkout / "src" / "tether" / "config" / "loader.py").is_file()


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "server:\n  host: 127.0.0.1\n  port: : 8000\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config_path=bad, environ={}, cwd=tmp_path)
    message = str(caught.value)
    assert f"{bad}, line 3, column" in message
    assert "<unicode string>" not in message


@pytest.mark.parametrize(
    ("environ", "overrides", "says"),
    [
        ({"TETHER_STORAGE__URL": "mysql://tether:hunter2@db/tether"}, {}, "databases are not"),
        ({}, {"storage.url": "mongodb://tether:hunter2@db/tether"}, "databases are not served"),
        # MLC_SQLITE_URL names a SQLite file; a PostgreSQL URL goes in storage.url.
        ({"MLC_SQLITE_URL": "postgresql://tether:hunter2@db/tether"}, {}, "storage.url"),
    ],
)
def test_a_database_url_tether_does_not_serve_is_refused(
    tmp_path: Path, environ: dict[str, str], overrides: dict[str, str], says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ, overrides=overrides, cwd=tmp_path)
    message = str(caught.value)
    assert says in message
    assert "hunter2" not in message  # the URL's password is never echoed


@pytest.mark.parametrize(
    ("environ", "overrides"),
    [
        ({"TETHER_STORAGE__URL": "postgresql://tether:hunter2@db:5432/tether"}, {}),
        ({}, {"storage.url": "postgres://tether@db/tether"}),
    ],
)
def test_a_postgresql_url_chooses_postgresql(
    tmp_path: Path, environ: dict[str, str], overrides: dict[str, str]
) -> None:
    settings = load_settings(environ=environ, overrides=overrides, cwd=tmp_path)
    assert settings.storage.postgres_url == settings.storage.url
    assert isinstance(build_store(settings.storage, settings.server), PostgresStore)
    sqlite = load_settings(environ={}, cwd=tmp_path)
    assert sqlite.storage.postgres_url is None
    assert isinstance(build_store(sqlite.storage, sqlite.server), SQLiteStore)


@pytest.mark.parametrize(
    ("environ", "overrides", "expected"),
    [
        ({}, {"server.port": 8123}, f"{socket.gethostname()}:8123"),  # stable by default
        ({"TETHER_SERVER__REPLICA_ID": "east-1"}, {}, "east-1"),
        ({}, {"server.replica_id": "west-2"}, "west-2"),
    ],
)
def test_a_replica_id_is_configured_or_derived_stably(
    tmp_path: Path, environ: dict[str, str], overrides: dict[str, object], expected: str
) -> None:
    environ = {**environ, "TETHER_STORAGE__URL": "postgresql://tether@db/tether"}
    settings = load_settings(environ=environ, overrides=overrides, cwd=tmp_path)
    store = build_store(settings.storage, settings.server)
    assert isinstance(store, PostgresStore)
    assert store.replica_id == expected


def test_any_free_port_gets_a_random_replica_id(tmp_path: Path) -> None:
    environ = {"TETHER_STORAGE__URL": "postgresql://tether@db/tether"}
    settings = load_settings(environ=environ, overrides={"server.port": 0}, cwd=tmp_path)
    stores = [build_store(settings.storage, settings.server) for _ in range(2)]
    ids = {store.replica_id for store in stores if isinstance(store, PostgresStore)}
    assert len(ids) == 2
    assert all(ids)


def test_an_empty_replica_id_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.replica_id"):
        load_settings(environ={"TETHER_SERVER__REPLICA_ID": ""}, cwd=tmp_path)


def test_a_sqlite_storage_url_sets_the_path(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'seed.db'}"
    settings = load_settings(overrides={"storage.url": url}, environ={}, cwd=tmp_path)
    assert settings.storage.path == tmp_path / "seed.db"
