"""`partita discover`: keys from a command or a `partita.discovery` entry point; --prune."""

from __future__ import annotations

import json
from pathlib import Path

from partita.v1 import asset_pb2, asset_pb2_grpc
from tests.cli.conftest import Cli, write
from tests.harness import RunningServer

CONFIG = """\
[workflows.customers.assets."customers/profiles"]
partitions = { dynamic = { key_pattern = "[a-z0-9-]+", initial_keys = ["acme"] } }
"""


def keys(server: RunningServer) -> list[str]:
    stub = server.stub(asset_pb2_grpc.AssetServiceStub)
    return list(
        stub.ListPartitionKeys(
            asset_pb2.ListPartitionKeysRequest(asset_id="customers/profiles")
        ).partition_keys
    )


def test_exec_adds_new_keys_and_prunes(cli: Cli, server: RunningServer, tmp_path: Path) -> None:
    assert cli("apply", "-f", str(write(tmp_path / "c.toml", CONFIG))).returncode == 0
    source = write(tmp_path / "customers.txt", "acme\nglobex\n# a comment\n\ninitech\nglobex\n")

    once = cli("discover", "customers/profiles", "--once", "--exec", f"cat {source}")
    assert once.returncode == 0, once.stderr
    assert once.stdout.strip() == "customers/profiles: 2 added (globex, initech), 0 removed, 1 unchanged"
    assert keys(server) == ["acme", "globex", "initech"]

    write(source, "globex\ninitech\numbrella\n")
    without_prune = cli("discover", "customers/profiles", "--once", "--exec", f"cat {source}", "--json")
    report = json.loads(without_prune.stdout)
    assert report["added"] == ["umbrella"] and report["removed"] == [] and report["unchanged"] == 2
    assert keys(server) == ["acme", "globex", "initech", "umbrella"]

    pruned = cli("discover", "customers/profiles", "--once", "--exec", f"cat {source}", "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert "0 added, 1 removed (acme), 3 unchanged" in pruned.stdout
    assert keys(server) == ["globex", "initech", "umbrella"]


def test_a_failing_command_changes_nothing(cli: Cli, server: RunningServer, tmp_path: Path) -> None:
    assert cli("apply", "-f", str(write(tmp_path / "c.toml", CONFIG))).returncode == 0
    failed = cli(
        "discover", "customers/profiles", "--once", "--prune", "--exec", "echo partial; echo oops >&2; exit 3"
    )
    assert failed.returncode == 1
    assert "exited with status 3: oops; nothing changed" in failed.stderr
    assert keys(server) == ["acme"]
    empty = cli("discover", "customers/profiles", "--once", "--prune", "--exec", "true")
    assert "the source returned no keys: not pruning all 1" in empty.stdout
    assert keys(server) == ["acme"]


def test_an_entry_point_source(cli: Cli, server: RunningServer, tmp_path: Path) -> None:
    assert cli("apply", "-f", str(write(tmp_path / "c.toml", CONFIG))).returncode == 0
    site = tmp_path / "site"
    info = site / "crm_source-1.0.dist-info"
    info.mkdir(parents=True)
    write(info / "METADATA", "Metadata-Version: 2.1\nName: crm-source\nVersion: 1.0\n")
    write(info / "entry_points.txt", "[partita.discovery]\ncrm = crm_source:customers\n")
    write(
        site / "crm_source.py",
        "def customers(asset_id):\n    assert asset_id == 'customers/profiles'\n    return ['hooli', 'acme', 'bad key with space ']\n",
    )
    env = {"PYTHONPATH": f"{site}:{Path(__file__).resolve().parents[2]}"}
    result = cli("discover", "customers/profiles", "--once", "--source", "crm", env=env)
    assert result.returncode == 0, result.stderr
    assert "1 added (hooli), 0 removed, 1 unchanged; skipped 1 unusable" in result.stdout
    assert keys(server) == ["acme", "hooli"]

    direct = cli("discover", "customers/profiles", "--once", "--source", "crm_source:customers", env=env)
    assert direct.returncode == 0 and "0 added" in direct.stdout
    unknown = cli("discover", "customers/profiles", "--once", "--source", "nope", env=env)
    assert unknown.returncode == 1 and "known: crm" in unknown.stderr
