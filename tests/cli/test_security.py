"""The CLI's --token (PARTITA_TOKEN) and --tls-ca/--tls-cert/--tls-key against a TLS server."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.test_auth import Pki, make_pki
from tests.cli.conftest import run_cli
from tests.harness import RunningServer, start_server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def mtls_server(tmp_path: Path, pki: Pki, token: str) -> Iterator[RunningServer]:
    running = start_server(
        f"sqlite:///{tmp_path / 'tls.db'}",
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca),
        log_dir=tmp_path,
        env={"PARTITA_TOKENS": f"ops:operator:{token}"},
    )
    try:
        yield running
    finally:
        assert running.stop() == 0, running.stderr()


def test_token_and_mutual_tls(mtls_server: RunningServer, pki: Pki, token: str) -> None:
    address = mtls_server.address
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    ok = run_cli(address, "runs", "ls", "--token", token, *tls)
    assert ok.returncode == 0, ok.stderr
    assert "RUN" in ok.stdout
    # The same from the environment, with the options before the command.
    from_env = run_cli(
        address,
        "--tls-ca",
        str(pki.ca),
        "--tls-cert",
        str(pki.client_cert),
        "--tls-key",
        str(pki.client_key),
        "runs",
        "ls",
        env={"PARTITA_TOKEN": token},
    )
    assert from_env.returncode == 0, from_env.stderr
    wrong = run_cli(address, "runs", "ls", "--token", "not-the-token-at-all", *tls)
    assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stderr
    no_client_cert = run_cli(
        address, "runs", "ls", "--token", token, "--tls-ca", str(pki.ca), "--server", address
    )
    assert no_client_cert.returncode == 1 and "UNAVAILABLE" in no_client_cert.stderr
    plaintext = run_cli(address, "runs", "ls", "--token", token)
    assert plaintext.returncode == 1 and "cannot reach the Partita server" in plaintext.stderr
    half = run_cli(address, "runs", "ls", "--tls-cert", str(pki.client_cert))
    assert half.returncode == 1 and "--tls-cert and --tls-key go together" in half.stderr
