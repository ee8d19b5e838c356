"""docs/api-reference.md is generated from the protos' comments; it must be fresh, and every
service, RPC, message, field, oneof, enum and enum value must carry a comment."""

from __future__ import annotations

from pathlib import Path

from tools.api_reference import OUTPUT, descriptor_set, missing_comments, render


def test_every_proto_element_has_a_comment() -> None:
    missing = missing_comments()
    assert not missing, "document these in protos/partita/v1 (a comment right above each):\n" + "\n".join(
        missing
    )


def test_api_reference_is_fresh() -> None:
    assert OUTPUT.exists(), "docs/api-reference.md is missing: run `make docs`"
    assert OUTPUT.read_text(encoding="utf-8") == render(), "docs/api-reference.md is stale: run `make docs`"


def test_reference_names_every_rpc_and_message() -> None:
    files = descriptor_set()
    text = render(files)
    for file in files.file:
        for service in file.service:
            assert f"## {service.name}\n" in text
            for method in service.method:
                assert f"| `{method.name}` |" in text
        for message in file.message_type:
            assert f"### {message.name}\n" in text


UNCOMMENTED = """\
syntax = "proto3";
package demo.v1;

// Documented.
service Documented {
  // Documented.
  rpc Good(GoodRequest) returns (GoodRequest);
}

service Bare {
  rpc Call(GoodRequest) returns (GoodRequest);
}

// Documented.
message GoodRequest {
  // Documented.
  string name = 1;
  int32 count = 2;
  // Documented.
  Kind kind = 3;
  map<string, string> labels = 4;  // a trailing comment counts
  oneof choice {
    // Documented.
    string a = 5;
    string b = 6;
  }
  // Documented.
  optional bool flag = 7;
  message Nested {}
}

// Documented.
enum Kind {
  KIND_UNSPECIFIED = 0;
  // Documented.
  KIND_ONE = 1;
}

enum Bare {
  // Documented.
  BARE_UNSPECIFIED = 0;
}
"""


def test_missing_comments_are_named(tmp_path: Path) -> None:
    root = tmp_path / "protos"
    (root / "demo" / "v1").mkdir(parents=True)
    (root / "demo" / "v1" / "demo.proto").write_text(UNCOMMENTED.replace("enum Bare", "enum BareKind"))
    missing = missing_comments(descriptor_set(root))
    assert sorted(missing) == sorted(
        f"demo/v1/demo.proto: {element}"
        for element in (
            "service demo.v1.Bare",
            "rpc demo.v1.Bare.Call",
            "field demo.v1.GoodRequest.count",
            "field demo.v1.GoodRequest.b",
            "oneof demo.v1.GoodRequest.choice",
            "message demo.v1.GoodRequest.Nested",
            "enum value demo.v1.Kind.KIND_UNSPECIFIED",
            "enum demo.v1.BareKind",
        )
    )
