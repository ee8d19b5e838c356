"""`partita apply -f FILE`: diff against the server, dry runs, errors at the file's lines."""

from __future__ import annotations

from pathlib import Path

from partita.v1 import partitions_pb2, workflow_pb2, workflow_pb2_grpc
from tests.cli.conftest import Cli, write
from tests.harness import REPO_ROOT, RunningServer

CONFIG = """\
[workflows.sales]
description = "Daily sales"
execution_timeout = "15m"
retry_policy = { max_attempts = 2, initial_backoff = "1s" }
default_parameters = { currency = "EUR" }

[workflows.sales.assets."sales/daily-csv"]
partitions = { daily = { start = "2024-01-01", end = "2024-02-01" } }

[workflows.summary]
consumes = [{ asset = "sales/daily-csv", mapping = "identity" }]

[workflows.summary.assets."sales/summary"]
partitions.daily = { start = "2024-01-01", end = "2024-02-01" }

[workflows.regions.assets."regions/targets"]
partitions = { static = ["emea", "amer"] }

[workflows.customers.assets."customers/profiles"]
partitions = { dynamic = { key_pattern = "[a-z]+", initial_keys = ["acme"] } }
"""


def get(server: RunningServer, slug: str) -> workflow_pb2.Workflow:
    stub = server.stub(workflow_pb2_grpc.WorkflowServiceStub)
    return stub.GetWorkflow(workflow_pb2.GetWorkflowRequest(slug=slug)).workflow


def slugs(server: RunningServer) -> list[str]:
    stub = server.stub(workflow_pb2_grpc.WorkflowServiceStub)
    return sorted(w.slug for w in stub.ListWorkflows(workflow_pb2.ListWorkflowsRequest()).workflows)


def test_dry_run_then_apply_then_unchanged(cli: Cli, server: RunningServer, tmp_path: Path) -> None:
    config = write(tmp_path / "partita.toml", CONFIG)
    dry = cli("apply", "-f", str(config), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "+ workflow sales (new)" in dry.stdout
    assert "produces[sales/daily-csv].partitioning.time_window.start" in dry.stdout
    assert "dry run: 4 to create, 0 to update, 0 unchanged; nothing applied" in dry.stdout
    assert slugs(server) == []

    applied = cli("apply", "-f", str(config))
    assert applied.returncode == 0, applied.stderr
    assert "done: 4 created, 0 updated, 0 unchanged" in applied.stdout
    # Producers first: summary consumes sales' asset.
    assert applied.stdout.index("applied workflow sales") < applied.stdout.index("applied workflow summary")
    sales = get(server, "sales")
    assert sales.description == "Daily sales"
    assert sales.execution_timeout.seconds == 900
    assert sales.retry_policy.max_attempts == 2 and sales.retry_policy.initial_backoff.seconds == 1
    assert sales.default_parameters["currency"] == "EUR"
    window = sales.produces[0].partitioning.time_window
    assert window.schedule_type == partitions_pb2.SCHEDULE_TYPE_DAILY and window.start == "2024-01-01"
    summary = get(server, "summary")
    assert summary.consumes[0].asset_id == "sales/daily-csv"
    assert summary.consumes[0].partition_mapping.HasField("identity")
    assert list(get(server, "regions").produces[0].partitioning.static.keys) == ["emea", "amer"]
    assert list(get(server, "customers").produces[0].partitioning.dynamic.initial_keys) == ["acme"]

    again = cli("apply", "-f", str(config))
    assert again.returncode == 0, again.stderr
    assert "done: 0 created, 0 updated, 4 unchanged" in again.stdout


def test_a_change_shows_as_a_diff(cli: Cli, server: RunningServer, tmp_path: Path) -> None:
    config = write(tmp_path / "partita.toml", CONFIG)
    assert cli("apply", "-f", str(config)).returncode == 0
    changed = CONFIG.replace('description = "Daily sales"', 'description = "Daily sales, in EUR"').replace(
        'end = "2024-02-01" } }\n\n[workflows.summary]', 'end = "2024-03-01" } }\n\n[workflows.summary]'
    )
    write(config, changed)
    dry = cli("apply", "-f", str(config), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "~ workflow sales" in dry.stdout
    assert '~ description: "Daily sales" -> "Daily sales, in EUR"' in dry.stdout
    assert (
        '~ produces[sales/daily-csv].partitioning.time_window.end: "2024-02-01" -> "2024-03-01"' in dry.stdout
    )
    assert "workflow summary (unchanged)" in dry.stdout
    assert get(server, "sales").description == "Daily sales"
    applied = cli("apply", "-f", str(config))
    assert "done: 0 created, 1 updated, 3 unchanged" in applied.stdout, applied.stdout + applied.stderr
    assert get(server, "sales").description == "Daily sales, in EUR"


def test_config_errors_name_the_file_and_line(cli: Cli, server: RunningServer, tmp_path: Path) -> None:
    config = write(
        tmp_path / "bad.toml",
        """\
[workflows.sales]
descripton = "typo"
execution_timeout = "ten minutes"

[workflows.sales.assets."sales/daily"]
partitions = { yearly = { start = "2024-01-01" } }
retry = 3
""",
    )
    result = cli("apply", "-f", str(config))
    assert result.returncode == 1
    assert f"{config}:2: `descripton` is not a known key" in result.stderr
    assert f"{config}:3: expected a duration" in result.stderr
    assert f"{config}:6: `yearly` is not a kind of partitions" in result.stderr
    assert f"{config}:7: `retry` is not a known key" in result.stderr
    assert "Traceback" not in result.stderr
    assert slugs(server) == []


def test_invalid_toml_names_the_line(cli: Cli, tmp_path: Path) -> None:
    config = write(tmp_path / "broken.toml", '[workflows.sales]\ndescription = "unterminated\n')
    result = cli("apply", "-f", str(config))
    assert result.returncode == 1
    assert f"{config}:2: not valid TOML" in result.stderr


def test_server_field_errors_point_at_the_line(cli: Cli, server: RunningServer, tmp_path: Path) -> None:
    config = write(
        tmp_path / "partita.toml",
        """\
[workflows.hourly]
description = "bad cron"

[workflows.hourly.assets."hourly/x"]
partitions.time_window = { cron_schedule = "not a cron", start = "2024-01-01" }
""",
    )
    result = cli("apply", "-f", str(config))
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr
    assert f"{config}:5: " in result.stderr
    assert "cron_schedule" in result.stderr
    assert slugs(server) == []


def test_the_example_applies(cli: Cli, server: RunningServer) -> None:
    result = cli("apply", "-f", str(REPO_ROOT / "examples" / "partita.toml"))
    assert result.returncode == 0, result.stderr
    assert slugs(server) == ["customers", "sales", "sales-summary", "targets"]


def test_a_server_error_without_fields_names_the_workflow_table(cli: Cli, tmp_path: Path) -> None:
    first = write(tmp_path / "one.toml", '[workflows.one.assets."shared/asset"]\n')
    assert cli("apply", "-f", str(first)).returncode == 0
    second = write(tmp_path / "two.toml", '# another team\n\n[workflows.two.assets."shared/asset"]\n')
    result = cli("apply", "-f", str(second))
    assert result.returncode == 1
    assert f"{second}:3: workflow two: ALREADY_EXISTS" in result.stderr
