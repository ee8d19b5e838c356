"""`partita.toml`: workflows, their assets, partitions and dependencies, as Workflow messages.

The schema is documented in docs/cli.md. In short:

    [workflows.SLUG]                      # one table per workflow; the key is its slug
    description = "..."
    max_concurrent_runs = 4
    execution_timeout = "30m"             # durations: 90, "500ms", "10s", "5m", "1h30m", "2d"
    retry_policy = { max_attempts = 3, initial_backoff = "10s" }
    default_parameters = { format = "csv" }
    consumes = ["upstream/asset", { asset = "other/asset", mapping = "all" }]
    # ...and any other field of partita.v1.Workflow by its proto name (enums by short name)

    [workflows.SLUG.assets."ASSET/ID"]    # what the workflow produces
    partitions = { daily = { start = "2024-01-01" } }   # or hourly/weekly/monthly/time_window,
                                                        # static = [...], dynamic = {...}

`load_config(path)` returns the workflows and, for every field it set, the TOML key it came
from, so a server error naming `workflow.produces[0].partitioning.time_window.start` points at
the line of `start` in the file. Errors are collected (not just the first) as ConfigError.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import descriptor, struct_pb2
from google.protobuf.message import Message

from cli.client import duration, parse_seconds
from cli.toml_lines import TomlLines
from partita.v1 import partitions_pb2, workflow_pb2

TomlPath = tuple[str | int, ...]

PRESETS = {
    "hourly": partitions_pb2.SCHEDULE_TYPE_HOURLY,
    "daily": partitions_pb2.SCHEDULE_TYPE_DAILY,
    "weekly": partitions_pb2.SCHEDULE_TYPE_WEEKLY,
    "monthly": partitions_pb2.SCHEDULE_TYPE_MONTHLY,
}
PARTITION_KINDS = (*PRESETS, "time_window", "static", "dynamic")
MAPPING_NAMES = ("identity", "all", "last")
# Set by the server; a file that sets them is refused rather than silently ignored.
OUTPUT_ONLY = frozenset({"create_time", "update_time"})
WORKFLOW_SUGAR = frozenset({"assets", "consumes"})
TOP_LEVEL = frozenset({"workflows"})


@dataclass(frozen=True)
class Problem:
    path: TomlPath
    message: str
    line: int | None = None


class ConfigError(Exception):
    """One or more problems in a config file; `str()` is one `file:line: message` per problem."""

    def __init__(self, file: str, problems: Sequence[Problem]) -> None:
        self.file = file
        self.problems = list(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        out = []
        for problem in self.problems:
            where = f"{self.file}:{problem.line}" if problem.line else self.file
            key = f" [{render_path(problem.path)}]" if problem.path else ""
            out.append(f"{where}: {problem.message}{key}")
        return out


def render_path(path: TomlPath) -> str:
    """`workflows.sales.assets."sales/daily".partitions` (array indexes as `[i]`)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if part and all(c.isalnum() or c in "_-" for c in part) else f'"{part}"'
        out += ("." if out else "") + text
    return out


@dataclass
class WorkflowConfig:
    slug: str
    workflow: workflow_pb2.Workflow
    # proto field path ("produces[0].partitioning.time_window.start") -> the TOML key it came from
    origins: dict[str, TomlPath] = field(default_factory=dict)
    path: TomlPath = ()

    def origin_of(self, proto_path: str) -> TomlPath:
        """The TOML key behind a server's field path (`workflow.` prefix allowed), or the nearest."""
        candidate = proto_path.removeprefix("workflow.").removeprefix("workflow")
        while candidate:
            if candidate in self.origins:
                return self.origins[candidate]
            cut = max(candidate.rfind("."), candidate.rfind("["))
            if cut <= 0:
                break
            candidate = candidate[:cut]
        return self.path


@dataclass
class Config:
    file: str
    text: str
    workflows: list[WorkflowConfig]
    lines: TomlLines

    def line_of(self, path: TomlPath) -> int | None:
        return self.lines.locate(path)

    def error(self, problems: Sequence[Problem]) -> ConfigError:
        return ConfigError(
            self.file, [Problem(p.path, p.message, p.line or self.line_of(p.path)) for p in problems]
        )


class _Converter:
    """Builds messages from TOML values guided by their descriptors, collecting problems."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.origins: dict[str, TomlPath] = {}

    def problem(self, path: TomlPath, message: str) -> None:
        self.problems.append(Problem(path, message))

    def record(self, proto_path: str, toml_path: TomlPath) -> None:
        self.origins.setdefault(proto_path, toml_path)

    # --- generic ---
    def fill(
        self, message: Message, table: Any, path: TomlPath, proto: str, skip: frozenset[str] = frozenset()
    ) -> None:
        if not isinstance(table, Mapping):
            self.problem(path, f"expected a table for {message.DESCRIPTOR.name}, got {_kind(table)}")
            return
        fields = message.DESCRIPTOR.fields_by_name
        for key, value in table.items():
            if key in skip:
                continue
            if key in OUTPUT_ONLY or key not in fields:
                allowed = sorted((set(fields) - OUTPUT_ONLY - {"slug", "produces"}) | (skip & WORKFLOW_SUGAR))
                what = "is set by the server" if key in OUTPUT_ONLY else "is not a known key"
                self.problem((*path, key), f"`{key}` {what} (expected one of: {', '.join(allowed)})")
                continue
            self.set_field(message, fields[key], value, (*path, key), _join(proto, key))

    def set_field(self, message: Message, fd: Any, value: Any, path: TomlPath, proto: str) -> None:
        self.record(proto, path)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            if not isinstance(value, Mapping):
                self.problem(path, f"expected a table of {fd.name}, got {_kind(value)}")
                return
            value_fd = fd.message_type.fields_by_name["value"]
            target = getattr(message, fd.name)
            for key, item in value.items():
                converted = self.scalar(value_fd, item, (*path, key))
                if converted is not None:
                    target[str(key)] = converted
            return
        if fd.is_repeated:
            if not isinstance(value, list):
                self.problem(path, f"expected an array for `{fd.name}`, got {_kind(value)}")
                return
            target = getattr(message, fd.name)
            for index, item in enumerate(value):
                item_path = (*path, index)
                self.record(f"{proto}[{index}]", item_path)
                if fd.message_type is not None:
                    self.message_value(target.add(), item, item_path, f"{proto}[{index}]")
                else:
                    converted = self.scalar(fd, item, item_path)
                    if converted is not None:
                        target.append(converted)
            return
        if fd.message_type is not None:
            self.message_value(getattr(message, fd.name), value, path, proto)
            return
        converted = self.scalar(fd, value, path)
        if converted is not None:
            setattr(message, fd.name, converted)

    def message_value(self, target: Message, value: Any, path: TomlPath, proto: str) -> None:
        name = target.DESCRIPTOR.full_name
        if name == "google.protobuf.Duration":
            try:
                target.CopyFrom(duration(parse_seconds(value)))
            except (ValueError, TypeError) as error:
                self.problem(path, f'expected a duration such as "30s", "5m" or 90: {error}')
            return
        if name == "google.protobuf.Struct":
            if not isinstance(value, Mapping):
                self.problem(path, f"expected a table, got {_kind(value)}")
                return
            assert isinstance(target, struct_pb2.Struct)
            target.update(_plain(value))
            return
        if name == "google.protobuf.Timestamp":
            try:
                stamp = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
                if stamp.tzinfo is None:
                    stamp = stamp.replace(tzinfo=dt.UTC)
                target.FromDatetime(stamp)  # type: ignore[attr-defined]
            except ValueError as error:
                self.problem(path, f"expected a date-time: {error}")
            return
        if name == "partita.v1.PartitionsDefinition":
            self.partitions(target, value, path, proto)
            return
        if name == "partita.v1.PartitionMapping":
            self.mapping(target, value, path, proto)
            return
        if isinstance(value, Mapping) and not value:
            target.SetInParent()
            return
        self.fill(target, value, path, proto)
        if isinstance(value, Mapping):
            target.SetInParent()

    def scalar(self, fd: Any, value: Any, path: TomlPath) -> Any:
        types = descriptor.FieldDescriptor
        if fd.type == types.TYPE_ENUM:
            return self.enum(fd.enum_type, value, path)
        if fd.type == types.TYPE_BOOL:
            if isinstance(value, bool):
                return value
            self.problem(path, f"expected true or false, got {_kind(value)}")
        elif fd.type in (types.TYPE_DOUBLE, types.TYPE_FLOAT):
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            self.problem(path, f"expected a number, got {_kind(value)}")
        elif fd.type == types.TYPE_STRING:
            if isinstance(value, str):
                return value
            if isinstance(value, dt.date | dt.datetime | dt.time):
                return value.isoformat()  # `start = 2024-01-01` unquoted is a TOML date
            self.problem(path, f"expected a string, got {_kind(value)}")
        elif fd.cpp_type in (
            descriptor.FieldDescriptor.CPPTYPE_INT32,
            descriptor.FieldDescriptor.CPPTYPE_INT64,
            descriptor.FieldDescriptor.CPPTYPE_UINT32,
            descriptor.FieldDescriptor.CPPTYPE_UINT64,
        ):
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            self.problem(path, f"expected an integer, got {_kind(value)}")
        else:
            self.problem(path, f"unsupported field type for `{fd.name}`")
        return None

    def enum(self, enum_type: Any, value: Any, path: TomlPath) -> int | None:
        names = [v.name for v in enum_type.values]
        prefix = names[0].removesuffix("UNSPECIFIED") if names[0].endswith("_UNSPECIFIED") else ""
        if isinstance(value, str):
            wanted = value.strip().upper().replace("-", "_")
            for candidate in (wanted, prefix + wanted):
                if candidate in names and not candidate.endswith("_UNSPECIFIED"):
                    return int(enum_type.values_by_name[candidate].number)
        choices = [n.removeprefix(prefix).lower() for n in names if not n.endswith("_UNSPECIFIED")]
        self.problem(path, f"expected one of: {', '.join(choices)}; got {value!r}")
        return None

    # --- sugar ---
    def partitions(self, target: Message, value: Any, path: TomlPath, proto: str) -> None:
        assert isinstance(target, partitions_pb2.PartitionsDefinition)
        if not isinstance(value, Mapping) or len(value) != 1:
            self.problem(
                path,
                f"expected a table with exactly one of: {', '.join(PARTITION_KINDS)} "
                '(e.g. partitions = { daily = { start = "2024-01-01" } })',
            )
            return
        kind, spec = next(iter(value.items()))
        inner = (*path, kind)
        if kind in PRESETS:
            if not isinstance(spec, Mapping):
                self.problem(inner, f'expected a table such as {{ start = "2024-01-01" }}, got {_kind(spec)}')
                return
            for forbidden in ("schedule_type", "cron_schedule"):
                if forbidden in spec:
                    self.problem(
                        (*inner, forbidden), f"`{forbidden}` is set by `{kind}`; use time_window for a cron"
                    )
            spec = {k: v for k, v in spec.items() if k not in ("schedule_type", "cron_schedule")}
            window = target.time_window
            window.schedule_type = PRESETS[kind]
            self.record(f"{proto}.time_window.schedule_type", inner)
            self.record(f"{proto}.time_window", inner)
            self.fill(window, spec, inner, f"{proto}.time_window")
        elif kind == "time_window":
            self.record(f"{proto}.time_window", inner)
            self.fill(target.time_window, spec, inner, f"{proto}.time_window")
            target.time_window.SetInParent()
        elif kind == "static":
            self.record(f"{proto}.static", inner)
            keys = spec.get("keys") if isinstance(spec, Mapping) else spec
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                self.problem(inner, 'expected an array of keys, e.g. static = ["emea", "amer"]')
                return
            target.static.keys.extend(keys)
            target.static.SetInParent()
            for index in range(len(keys)):
                self.record(f"{proto}.static.keys[{index}]", (*inner, index))
        elif kind == "dynamic":
            self.record(f"{proto}.dynamic", inner)
            if spec is True:
                spec = {}
            self.fill(target.dynamic, spec, inner, f"{proto}.dynamic")
            target.dynamic.SetInParent()
        else:
            self.problem(
                inner, f"`{kind}` is not a kind of partitions (expected one of: {', '.join(PARTITION_KINDS)})"
            )

    def mapping(self, target: Message, value: Any, path: TomlPath, proto: str) -> None:
        assert isinstance(target, partitions_pb2.PartitionMapping)
        if isinstance(value, str):
            if value not in MAPPING_NAMES:
                self.problem(
                    path,
                    f"expected one of: {', '.join(MAPPING_NAMES)}, or a table "
                    "{ time_window = { start_offset = -1, end_offset = 0 } } / { static = { UP = [DOWN, ...] } }",
                )
                return
            getattr(target, value).SetInParent()
            return
        if isinstance(value, Mapping) and len(value) == 1 and "static" in value:
            entries = value["static"]
            if isinstance(entries, Mapping) and "entries" not in entries:
                for upstream, downstream in entries.items():
                    keys = downstream if isinstance(downstream, list) else [downstream]
                    target.static.entries.add(
                        upstream_key=str(upstream), downstream_keys=[str(k) for k in keys]
                    )
                target.static.SetInParent()
                self.record(f"{proto}.static", (*path, "static"))
                return
        self.fill(target, value, path, proto)

    def dependency(
        self, target: workflow_pb2.AssetDependency, value: Any, path: TomlPath, proto: str
    ) -> None:
        if isinstance(value, str):
            target.asset_id = value
            self.record(f"{proto}.asset_id", path)
            return
        if not isinstance(value, Mapping):
            self.problem(
                path,
                f'expected an asset id or a table {{ asset = "...", mapping = "..." }}, got {_kind(value)}',
            )
            return
        for key, item in value.items():
            if key in ("asset", "asset_id"):
                if isinstance(item, str):
                    target.asset_id = item
                    self.record(f"{proto}.asset_id", (*path, key))
                else:
                    self.problem((*path, key), f"expected a string, got {_kind(item)}")
            elif key in ("mapping", "partition_mapping"):
                self.record(f"{proto}.partition_mapping", (*path, key))
                self.mapping(target.partition_mapping, item, (*path, key), f"{proto}.partition_mapping")
            else:
                self.problem((*path, key), f"`{key}` is not a known key (expected asset, mapping)")
        if not target.asset_id:
            self.problem(path, "a dependency needs `asset`")

    def workflow(self, slug: str, table: Any, path: TomlPath) -> workflow_pb2.Workflow:
        workflow = workflow_pb2.Workflow(slug=slug)
        self.record("slug", path)
        if not isinstance(table, Mapping):
            self.problem(path, f"expected a table, got {_kind(table)}")
            return workflow
        if "slug" in table and table["slug"] != slug:
            self.problem((*path, "slug"), f"the workflow's slug is its table name ({slug!r}); drop `slug`")
        if "produces" in table:
            self.problem((*path, "produces"), 'declare assets as [workflows.SLUG.assets."ASSET/ID"] tables')
        self.fill(workflow, table, path, "", skip=WORKFLOW_SUGAR | {"slug", "produces"})
        assets = table.get("assets", {})
        if not isinstance(assets, Mapping):
            self.problem((*path, "assets"), f"expected a table of assets, got {_kind(assets)}")
            assets = {}
        for index, (asset_id, spec) in enumerate(assets.items()):
            asset_path = (*path, "assets", asset_id)
            proto = f"produces[{index}]"
            self.record(proto, asset_path)
            self.record(f"{proto}.asset_id", asset_path)
            declaration = workflow.produces.add(asset_id=asset_id)
            if not isinstance(spec, Mapping):
                self.problem(asset_path, f"expected a table, got {_kind(spec)}")
                continue
            for key, value in spec.items():
                if key in ("partitions", "partitioning"):
                    self.record(f"{proto}.partitioning", (*asset_path, key))
                    self.partitions(
                        declaration.partitioning, value, (*asset_path, key), f"{proto}.partitioning"
                    )
                elif key == "asset_id":
                    self.problem((*asset_path, key), "the asset id is the table's name; drop `asset_id`")
                else:
                    self.fill(declaration, {key: value}, asset_path, proto)
        consumes = table.get("consumes", [])
        if not isinstance(consumes, list):
            self.problem((*path, "consumes"), f"expected an array of dependencies, got {_kind(consumes)}")
            consumes = []
        for index, item in enumerate(consumes):
            item_path = (*path, "consumes", index)
            self.record(f"consumes[{index}]", item_path)
            self.dependency(workflow.consumes.add(), item, item_path, f"consumes[{index}]")
        return workflow


def _join(proto: str, key: str) -> str:
    return f"{proto}.{key}" if proto else key


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return type(value).__name__


def _plain(value: Any) -> Any:
    """TOML values as JSON-like values (dates become ISO strings) for a Struct."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    return value


def parse_config(text: str, file: str = "partita.toml") -> Config:
    """Parses a config; raises ConfigError naming the file and lines of every problem."""
    lines = TomlLines(text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        line = None
        if "(at line " in message:
            message, _, where = message.partition(" (at line ")
            try:
                line = int(where.split(",")[0])
            except ValueError:
                line = None
        raise ConfigError(file, [Problem((), f"not valid TOML: {message}", line)]) from None
    converter = _Converter()
    problems: list[Problem] = []
    for key in data:
        if key not in TOP_LEVEL:
            problems.append(
                Problem((key,), f"`{key}` is not a known top-level key (expected [workflows.SLUG] tables)")
            )
    workflows_table = data.get("workflows", {})
    if not isinstance(workflows_table, Mapping) or not workflows_table:
        problems.append(Problem(("workflows",), "no workflows: declare at least one [workflows.SLUG] table"))
        workflows_table = {}
    configs: list[WorkflowConfig] = []
    for slug, table in workflows_table.items():
        converter.origins = {}
        path: TomlPath = ("workflows", slug)
        workflow = converter.workflow(slug, table, path)
        configs.append(WorkflowConfig(slug, workflow, dict(converter.origins), path))
    seen: dict[str, str] = {}
    for config in configs:
        for index, declaration in enumerate(config.workflow.produces):
            owner = seen.get(declaration.asset_id)
            if owner is not None:
                problems.append(
                    Problem(
                        config.origins.get(f"produces[{index}]", config.path),
                        f"asset {declaration.asset_id!r} is already produced by workflow {owner!r}",
                    )
                )
            seen[declaration.asset_id] = config.slug
    config_obj = Config(file, text, configs, lines)
    problems = converter.problems + problems
    if problems:
        raise config_obj.error(problems)
    return config_obj


def load_config(path: str | Path) -> Config:
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(file, [Problem((), f"cannot read: {error.strerror or error}")]) from None
    return parse_config(text, file)


def apply_order(configs: Sequence[WorkflowConfig]) -> list[WorkflowConfig]:
    """Producers before their consumers (file order otherwise; cycles keep file order)."""
    producer = {d.asset_id: c.slug for c in configs for d in c.workflow.produces}
    by_slug = {c.slug: c for c in configs}
    ordered: list[WorkflowConfig] = []
    state: dict[str, int] = {}

    def visit(config: WorkflowConfig) -> None:
        if state.get(config.slug):
            return
        state[config.slug] = 1
        for dependency in config.workflow.consumes:
            upstream = producer.get(dependency.asset_id)
            if upstream and upstream != config.slug and not state.get(upstream):
                visit(by_slug[upstream])
        state[config.slug] = 2
        ordered.append(config)

    for config in configs:
        visit(config)
    return ordered
