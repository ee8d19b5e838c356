"""Generates docs/api-reference.md from the comments in protos/partita/v1/*.proto.

    python -m tools.api_reference [OUT.md]     write the reference (default docs/api-reference.md)
    python -m tools.api_reference --check      exit 1 when the reference is stale or a comment is missing

The protos are compiled with `grpc_tools.protoc --include_source_info --descriptor_set_out`;
every service, RPC, message, field, oneof, enum and enum value is documented by the comment
right above it (its SourceCodeInfo leading comment; a trailing comment is used when there is
none). `missing_comments()` names every element without one: the reference is only as good as
the comments, so a test fails on any.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2

from tools.generate_protos import PROTO_ROOT, REPO

OUTPUT = REPO / "docs" / "api-reference.md"
PACKAGE = "partita.v1"

# Field numbers of the descriptor.proto messages, as SourceCodeInfo paths use them.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM, MESSAGE_ONEOF = 2, 3, 4, 8
ENUM_VALUE = 2
SERVICE_METHOD = 2

FieldProto = descriptor_pb2.FieldDescriptorProto
SCALAR_NAMES = {
    FieldProto.TYPE_DOUBLE: "double",
    FieldProto.TYPE_FLOAT: "float",
    FieldProto.TYPE_INT64: "int64",
    FieldProto.TYPE_UINT64: "uint64",
    FieldProto.TYPE_INT32: "int32",
    FieldProto.TYPE_FIXED64: "fixed64",
    FieldProto.TYPE_FIXED32: "fixed32",
    FieldProto.TYPE_BOOL: "bool",
    FieldProto.TYPE_STRING: "string",
    FieldProto.TYPE_BYTES: "bytes",
    FieldProto.TYPE_UINT32: "uint32",
    FieldProto.TYPE_SFIXED32: "sfixed32",
    FieldProto.TYPE_SFIXED64: "sfixed64",
    FieldProto.TYPE_SINT32: "sint32",
    FieldProto.TYPE_SINT64: "sint64",
}
WELL_KNOWN_DOCS = "https://protobuf.dev/reference/protobuf/google.protobuf/"


def proto_files(root: Path = PROTO_ROOT) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.proto"))


def descriptor_set(root: Path = PROTO_ROOT) -> descriptor_pb2.FileDescriptorSet:
    """The protos under `root` compiled with source info (comments), without their imports."""
    well_known = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory(prefix="partita-api-") as directory:
        out = Path(directory) / "descriptors.binpb"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{root}",
                f"-I{well_known}",
                "--include_source_info",
                f"--descriptor_set_out={out}",
                *proto_files(root),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(f"protoc failed:\n{result.stderr}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return files


# --- comments ---------------------------------------------------------------------------------


def comment_index(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """SourceCodeInfo path → the element's comment, one paragraph, whitespace collapsed."""
    comments = {}
    for location in file.source_code_info.location:
        text = location.leading_comments or location.trailing_comments
        if text.strip():
            comments[tuple(location.path)] = " ".join(text.split())
    return comments


@dataclass(frozen=True)
class Element:
    """One documented element of the protos."""

    kind: str  # service, rpc, message, field, oneof, enum, enum value
    name: str  # fully qualified (partita.v1.Run.state, partita.v1.RunService.GetRun, ...)
    file: str
    comment: str


def _message_elements(
    file: str,
    message: descriptor_pb2.DescriptorProto,
    prefix: str,
    path: tuple[int, ...],
    comments: dict[tuple[int, ...], str],
) -> Iterator[Element]:
    name = f"{prefix}.{message.name}"
    if message.options.map_entry:
        return  # map<K, V> fields' synthetic entry messages carry no comments of their own
    yield Element("message", name, file, comments.get(path, ""))
    for index, field in enumerate(message.field):
        yield Element("field", f"{name}.{field.name}", file, comments.get((*path, MESSAGE_FIELD, index), ""))
    for index, oneof in enumerate(message.oneof_decl):
        if _is_synthetic_oneof(message, index):
            continue  # `optional` fields get a oneof of their own; the field is documented
        yield Element("oneof", f"{name}.{oneof.name}", file, comments.get((*path, MESSAGE_ONEOF, index), ""))
    for index, nested in enumerate(message.nested_type):
        yield from _message_elements(file, nested, name, (*path, MESSAGE_NESTED, index), comments)
    for index, enum in enumerate(message.enum_type):
        yield from _enum_elements(file, enum, name, (*path, MESSAGE_ENUM, index), comments)


def _enum_elements(
    file: str,
    enum: descriptor_pb2.EnumDescriptorProto,
    prefix: str,
    path: tuple[int, ...],
    comments: dict[tuple[int, ...], str],
) -> Iterator[Element]:
    name = f"{prefix}.{enum.name}"
    yield Element("enum", name, file, comments.get(path, ""))
    for index, value in enumerate(enum.value):
        yield Element(
            "enum value", f"{name}.{value.name}", file, comments.get((*path, ENUM_VALUE, index), "")
        )


def elements(files: descriptor_pb2.FileDescriptorSet) -> Iterator[Element]:
    """Every service, RPC, message, field, oneof, enum and enum value of our protos."""
    for file in files.file:
        comments = comment_index(file)
        prefix = file.package
        for index, service in enumerate(file.service):
            path = (FILE_SERVICE, index)
            yield Element("service", f"{prefix}.{service.name}", file.name, comments.get(path, ""))
            for number, method in enumerate(service.method):
                yield Element(
                    "rpc",
                    f"{prefix}.{service.name}.{method.name}",
                    file.name,
                    comments.get((*path, SERVICE_METHOD, number), ""),
                )
        for index, message in enumerate(file.message_type):
            yield from _message_elements(file.name, message, prefix, (FILE_MESSAGE, index), comments)
        for index, enum in enumerate(file.enum_type):
            yield from _enum_elements(file.name, enum, prefix, (FILE_ENUM, index), comments)


def missing_comments(files: descriptor_pb2.FileDescriptorSet | None = None) -> list[str]:
    """`file: kind name` of every element without a comment."""
    files = files if files is not None else descriptor_set()
    return [f"{e.file}: {e.kind} {e.name}" for e in elements(files) if not e.comment]


def _is_synthetic_oneof(message: descriptor_pb2.DescriptorProto, index: int) -> bool:
    members = [f for f in message.field if f.HasField("oneof_index") and f.oneof_index == index]
    return len(members) == 1 and members[0].proto3_optional


# --- rendering --------------------------------------------------------------------------------


def anchor(title: str) -> str:
    """The anchor GitHub (and most renderers) derive from a heading's text."""
    text = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return text.replace(" ", "-")


def cell(text: str) -> str:
    return text.replace("|", "\\|")


# Files in reading order (the contract's order of services); any other file follows by name.
FILE_ORDER = ("workflow", "partitions", "asset", "run", "worker", "backfill")


def _file_rank(file: descriptor_pb2.FileDescriptorProto) -> tuple[int, str]:
    stem = Path(file.name).stem
    return (FILE_ORDER.index(stem) if stem in FILE_ORDER else len(FILE_ORDER), file.name)


class Renderer:
    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.files = sorted((f for f in files.file if f.package == PACKAGE), key=_file_rank)
        self.comments = {f.name: comment_index(f) for f in self.files}
        # Fully qualified type name (".partita.v1.Run") → (short title, map entry or None).
        self.titles: dict[str, str] = {}
        self.map_entries: dict[str, descriptor_pb2.DescriptorProto] = {}
        for file in self.files:
            for message in file.message_type:
                self._index_message(message, f".{file.package}", "")
            for enum in file.enum_type:
                self.titles[f".{file.package}.{enum.name}"] = enum.name
        titles = list(self.titles.values()) + [s.name for f in self.files for s in f.service]
        anchors = [anchor(t) for t in titles]
        duplicates = sorted({a for a in anchors if anchors.count(a) > 1})
        if duplicates:
            raise SystemExit(f"two headings would share the anchors {duplicates}")
        self.lines: list[str] = []

    def _index_message(self, message: descriptor_pb2.DescriptorProto, scope: str, title_prefix: str) -> None:
        full = f"{scope}.{message.name}"
        if message.options.map_entry:
            self.map_entries[full] = message
            return
        title = f"{title_prefix}{message.name}"
        self.titles[full] = title
        for nested in message.nested_type:
            self._index_message(nested, full, f"{title}.")
        for enum in message.enum_type:
            self.titles[f"{full}.{enum.name}"] = f"{title}.{enum.name}"

    def type_link(self, type_name: str) -> str:
        if type_name in self.titles:
            title = self.titles[type_name]
            return f"[`{title}`](#{anchor(title)})"
        if type_name.startswith(".google.protobuf."):
            short = type_name.removeprefix(".google.protobuf.")
            return f"[`google.protobuf.{short}`]({WELL_KNOWN_DOCS}#{short.lower()})"
        return f"`{type_name.lstrip('.')}`"

    def field_type(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        if field.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM):
            entry = self.map_entries.get(field.type_name)
            if entry is not None:
                key, value = entry.field[0], entry.field[1]
                if value.type in SCALAR_NAMES:
                    return f"`map<{SCALAR_NAMES[key.type]}, {SCALAR_NAMES[value.type]}>`"
                return f"`map<{SCALAR_NAMES[key.type]}, …>` of {self.field_type(value)}"
            rendered = self.type_link(field.type_name)
        else:
            rendered = f"`{SCALAR_NAMES[field.type]}`"
        if field.label == FieldProto.LABEL_REPEATED:
            return f"repeated {rendered}"
        if field.proto3_optional:
            return f"optional {rendered}"
        return rendered

    def emit(self, *lines: str) -> None:
        self.lines.extend(lines)

    def render(self) -> str:
        self.emit(
            "# API reference",
            "",
            "<!-- Generated by `make docs` (tools/api_reference.py) from the comments in",
            "     protos/partita/v1/*.proto. Do not edit: change the protos' comments and regenerate. -->",
            "",
            f"Package `{PACKAGE}`: every service, RPC, message, field and enum value, with the comment it",
            "carries in the protos. RPCs whose capability has not landed yet answer `UNIMPLEMENTED`",
            "(ErrorInfo reason `CAPABILITY_PENDING`); `server/api/pending.py` lists them. Field names are",
            "shown as in the protos (snake_case); JSON clients such as `buf curl` use lowerCamelCase.",
            "",
            "## Services",
            "",
        )
        for file in self.files:
            for service in file.service:
                self.emit(f"- [`{service.name}`](#{anchor(service.name)}) — {file.name}")
        self.emit("", "## Types by file", "")
        for file in self.files:
            entries = [self.titles[f".{file.package}.{m.name}"] for m in file.message_type] + [
                e.name for e in file.enum_type
            ]
            links = ", ".join(f"[`{t}`](#{anchor(t)})" for t in entries)
            self.emit(f"- `{file.name}`: {links}")
        for file in self.files:
            comments = self.comments[file.name]
            for index, service in enumerate(file.service):
                self.render_service(file, service, (FILE_SERVICE, index), comments)
        for file in self.files:
            comments = self.comments[file.name]
            self.emit("", "---", "", f"## {file.name}")
            for index, message in enumerate(file.message_type):
                self.render_message(message, f".{file.package}", (FILE_MESSAGE, index), comments)
            for index, enum in enumerate(file.enum_type):
                self.render_enum(enum, f".{file.package}", (FILE_ENUM, index), comments)
        return "\n".join(self.lines).rstrip() + "\n"

    def render_service(
        self,
        file: descriptor_pb2.FileDescriptorProto,
        service: descriptor_pb2.ServiceDescriptorProto,
        path: tuple[int, ...],
        comments: dict[tuple[int, ...], str],
    ) -> None:
        self.emit("", f"## {service.name}", "", f"`{file.package}.{service.name}` ({file.name})")
        self.emit(
            "",
            comments.get(path, ""),
            "",
            "| RPC | Request | Response | Description |",
            "| --- | --- | --- | --- |",
        )
        for index, method in enumerate(service.method):
            request = self.type_link(method.input_type)
            response = self.type_link(method.output_type)
            if method.client_streaming:
                request = f"stream {request}"
            if method.server_streaming:
                response = f"stream {response}"
            description = comments.get((*path, SERVICE_METHOD, index), "")
            self.emit(f"| `{method.name}` | {request} | {response} | {cell(description)} |")

    def render_message(
        self,
        message: descriptor_pb2.DescriptorProto,
        scope: str,
        path: tuple[int, ...],
        comments: dict[tuple[int, ...], str],
    ) -> None:
        full = f"{scope}.{message.name}"
        if message.options.map_entry:
            return
        title = self.titles[full]
        self.emit("", f"### {title}", "", comments.get(path, ""))
        real_oneofs = {
            index: oneof.name
            for index, oneof in enumerate(message.oneof_decl)
            if not _is_synthetic_oneof(message, index)
        }
        for index, name in real_oneofs.items():
            members = ", ".join(
                f"`{f.name}`" for f in message.field if f.HasField("oneof_index") and f.oneof_index == index
            )
            oneof_comment = comments.get((*path, MESSAGE_ONEOF, index), "")
            self.emit("", f"Oneof `{name}` ({members}): {oneof_comment}")
        if message.field:
            self.emit("", "| Field | # | Type | Description |", "| --- | --- | --- | --- |")
            for index, field in enumerate(message.field):
                description = comments.get((*path, MESSAGE_FIELD, index), "")
                if field.HasField("oneof_index") and field.oneof_index in real_oneofs:
                    description = f"(oneof `{real_oneofs[field.oneof_index]}`) {description}"
                self.emit(
                    f"| `{field.name}` | {field.number} | {self.field_type(field)} | {cell(description)} |"
                )
        else:
            self.emit("", "No fields.")
        for index, nested in enumerate(message.nested_type):
            self.render_message(nested, full, (*path, MESSAGE_NESTED, index), comments)
        for index, enum in enumerate(message.enum_type):
            self.render_enum(enum, full, (*path, MESSAGE_ENUM, index), comments)

    def render_enum(
        self,
        enum: descriptor_pb2.EnumDescriptorProto,
        scope: str,
        path: tuple[int, ...],
        comments: dict[tuple[int, ...], str],
    ) -> None:
        title = self.titles[f"{scope}.{enum.name}"]
        self.emit("", f"### {title}", "", f"Enum. {comments.get(path, '')}", "")
        self.emit("| Value | # | Description |", "| --- | --- | --- |")
        for index, value in enumerate(enum.value):
            description = comments.get((*path, ENUM_VALUE, index), "")
            self.emit(f"| `{value.name}` | {value.number} | {cell(description)} |")


def render(files: descriptor_pb2.FileDescriptorSet | None = None) -> str:
    """The reference's Markdown."""
    return Renderer(files if files is not None else descriptor_set()).render()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    files = descriptor_set()
    missing = missing_comments(files)
    if missing:
        print("these proto elements have no comment:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    text = render(files)
    if args[:1] == ["--check"]:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT.relative_to(REPO)} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    out = Path(args[0]) if args else OUTPUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
