"""The limits' settings, and the one uvicorn configuration `tether serve` and the tests share."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from tether.config import ConfigError, load_settings
from tether.serving.config import uvicorn_config
from tether.serving.http import HeaderTimeoutH11Protocol, header_timeout_protocol
from tether.serving.websocket import DEFAULT_CLOSE_TIMEOUT_SEC, CloseNowProtocol, close_now_protocol


def test_limit_defaults_stay_out_of_a_normal_clients_way(tmp_path: Path) -> None:
    limits = load_settings(environ={}, cwd=tmp_path).limits
    assert limits.messages_per_sec >= 50
    assert limits.message_burst >= 100
    assert limits.rate_limit_close_after >= 10 * limits.messages_per_sec
    assert limits.idle_timeout_sec >= 300
    assert limits.handshake_timeout_sec >= 10
    assert limits.send_buffer_frames >= 10_000
    assert limits.send_timeout_sec >= 30


def test_limits_from_the_environment(tmp_path: Path) -> None:
    limits = load_settings(
        environ={
            "TETHER_LIMITS__MESSAGES_PER_SEC": "7.5",
            "TETHER_LIMITS__MESSAGE_BURST": "3",
            "TETHER_LIMITS__RATE_LIMIT_CLOSE_AFTER": "0",
            "TETHER_LIMITS__IDLE_TIMEOUT_SEC": "0",
            "TETHER_LIMITS__HANDSHAKE_TIMEOUT_SEC": "2.5",
        },
        cwd=tmp_path,
    ).limits
    assert (limits.messages_per_sec, limits.message_burst) == (7.5, 3)
    assert (limits.rate_limit_close_after, limits.idle_timeout_sec) == (0, 0)
    assert limits.handshake_timeout_sec == 2.5


@pytest.mark.parametrize(
    "key",
    [
        "messages_per_sec",
        "message_burst",
        "idle_timeout_sec",
        "handshake_timeout_sec",
        "send_buffer_frames",
        "send_timeout_sec",
    ],
)
def test_negative_limits_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=f"limits.{key}"):
        load_settings(environ={f"TETHER_LIMITS__{key.upper()}": "-1"}, cwd=tmp_path)


def test_uvicorn_config_carries_the_settings(tmp_path: Path) -> None:
    settings = load_settings(
        overrides={"server.port": 9123, "limits.max_frame_bytes": 4096},
        environ={"TETHER_LIMITS__HANDSHAKE_TIMEOUT_SEC": "3"},
        cwd=tmp_path,
    )
    config = uvicorn_config(Starlette(), settings)
    assert (config.host, config.port) == ("127.0.0.1", 9123)
    assert isinstance(config.ws, type)
    assert issubclass(config.ws, CloseNowProtocol)
    assert config.ws.close_after == 30  # limits.send_timeout_sec
    assert config.ws_max_size == 4096
    protocol = config.http
    assert isinstance(protocol, type)
    assert issubclass(protocol, HeaderTimeoutH11Protocol)
    assert protocol.header_timeout == 3
    assert uvicorn_config(Starlette(), settings, host="::1", port=0).port == 0


def test_a_zero_send_timeout_keeps_uvicorns_close_timeout() -> None:
    assert close_now_protocol(0).close_after == DEFAULT_CLOSE_TIMEOUT_SEC
    assert close_now_protocol(2.5).close_after == 2.5


def test_a_zero_handshake_timeout_is_plain_h11() -> None:
    assert header_timeout_protocol(0) is H11Protocol
    assert header_timeout_protocol(1.5).header_timeout == 1.5  # type: ignore[attr-defined]
