"""Server options a deployment sets through the environment."""

from __future__ import annotations

import pytest

from server.api.context import Limits
from server.app import server_options


def test_max_connection_age_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARTITA_MAX_CONNECTION_AGE_SECONDS", raising=False)
    assert "grpc.max_connection_age_ms" not in dict(server_options(Limits()))


def test_max_connection_age_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTITA_MAX_CONNECTION_AGE_SECONDS", "1800")
    options = dict(server_options(Limits()))
    assert options["grpc.max_connection_age_ms"] == 1_800_000
    assert options["grpc.max_connection_age_grace_ms"] == 30_000
    assert options["grpc.max_receive_message_length"] == Limits().max_message_bytes
