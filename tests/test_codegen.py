"""The code generator's work without HTTP: checks of a spec against the deployment, the generated zip."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from joiner.errors import SpecError
from joiner.spec import parse_spec
from transformer.api.friend_files import RemoteFileResolver
from transformer.codegen import (
    CAPABILITIES,
    COMMAND,
    LANGUAGE,
    CodegenLimits,
    SpecRefusedError,
    build_zip,
    check_spec,
    generate,
    parse_selection,
)
from transformer.locations import AllowedLocations
from transformer.science import SCRIPT_TEXT

DEFAULT = AllowedLocations(("root://", "https://", "s3://"))
ROOMY = CodegenLimits(max_friend_files=100, max_friend_bytes=10**12)
RESOLVER = RemoteFileResolver(None)


def spec_with(files: list[str], **friend: Any) -> dict[str, Any]:
    return {
        "primary": {"columns": ["Jet_pt"]},
        "friends": [{"name": "f", "files": files, "columns": ["x"], **friend}],
    }


def test_the_zip_is_flat_and_holds_capabilities_spec_and_entry_script() -> None:
    spec = parse_spec(spec_with(["root://eos//f.root"]))
    data = build_zip(spec)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == [
            "transformer_capabilities.json",
            "join_spec.json",
            "transform_single_file.py",
        ]
        capabilities = json.loads(archive.read("transformer_capabilities.json"))
        shipped = json.loads(archive.read("join_spec.json"))
        script = archive.read("transform_single_file.py").decode()
        mode = archive.getinfo("transform_single_file.py").external_attr >> 16
    assert capabilities["file-formats"] == ["parquet", "root"]
    assert capabilities["stats-parser"] == "UprootStats"
    assert capabilities["language"] == LANGUAGE == "python"
    assert capabilities["command"] == COMMAND == "/generated/transform_single_file.py"
    assert capabilities == CAPABILITIES
    assert shipped == spec.normalised()
    assert parse_spec(shipped) == spec
    assert script == SCRIPT_TEXT
    assert mode & 0o777 == 0o755


def test_the_same_spec_always_gives_the_same_zip() -> None:
    one = parse_spec(spec_with(["root://eos//f.root"]))
    again = parse_spec(dict(reversed(list(spec_with(["root://eos//f.root"]).items()))))
    assert build_zip(one) == build_zip(again)
    assert build_zip(one) != build_zip(parse_spec(spec_with(["root://eos//g.root"])))


def test_generate_answers_image_language_command_and_zip() -> None:
    selection = parse_spec(spec_with(["root://eos//f.root"])).canonical_json()
    code, checked = generate(selection, transformer_image="img:1", allowed=DEFAULT, limits=ROOMY, resolver=RESOLVER)
    assert (code.transformer_image, code.language, code.command) == ("img:1", "python", COMMAND)
    assert code.zip_data == build_zip(checked.spec)
    assert (checked.friend_files, checked.friend_bytes, checked.unsized_files) == (1, 0, 1)
    seen: list[str] = []
    generate(
        selection,
        transformer_image="img:1",
        allowed=DEFAULT,
        limits=ROOMY,
        resolver=RESOLVER,
        check_inference=lambda spec: seen.append(spec.spec_hash()),
    )
    assert seen == [checked.spec.spec_hash()]


@pytest.mark.parametrize(
    ("selection", "match"),
    [
        ("", "the selection is empty"),
        ("{not json", "not valid YAML/JSON"),
        ('["a list"]', "expected a mapping"),
        (json.dumps(spec_with(["root://eos//f.root"], how="sideways")), r"friends\.0\.how"),
        (json.dumps({"primary": {"colums": []}}), r"primary\.colums: unknown field"),
    ],
)
def test_an_invalid_selection_names_the_field(selection: str, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        parse_selection(selection)


@pytest.mark.parametrize(
    ("files", "match"),
    [
        (["/etc/passwd"], r"friends\.0\.files\.0: friend file '/etc/passwd' is not in an allowed location"),
        (["file:///etc/passwd"], "JOINER_ALLOWED_LOCATIONS permits only"),
        (["root://eos//ok.root", "s3://b/../x"], r"friends\.0\.files\.1"),
        (["https://host/data/*.root"], "globs are read only for s3:// and local paths"),
    ],
)
def test_friend_files_outside_the_allowed_locations_are_refused(files: list[str], match: str) -> None:
    with pytest.raises(SpecRefusedError, match=match):
        check_spec(parse_spec(spec_with(files)), allowed=DEFAULT, limits=ROOMY, resolver=RESOLVER)


def test_primary_files_of_right_joins_are_checked_too() -> None:
    spec = spec_with(["root://eos//f.root"], how="right")
    spec["primary"]["files"] = ["root://eos//p.root", "/home/user/p.root"]
    with pytest.raises(SpecRefusedError, match=r"primary\.files\.1"):
        check_spec(parse_spec(spec), allowed=DEFAULT, limits=ROOMY, resolver=RESOLVER)


def test_the_number_of_friend_files_is_limited() -> None:
    files = [f"root://eos//f{i}.root" for i in range(4)]
    limits = CodegenLimits(max_friend_files=3, max_friend_bytes=10**12)
    with pytest.raises(SpecRefusedError, match=r"name 4 files.*at most 3 friend files.*JOINER_MAX_FRIEND_FILES"):
        check_spec(parse_spec(spec_with(files)), allowed=DEFAULT, limits=limits, resolver=RESOLVER)
    checked = check_spec(parse_spec(spec_with(files[:3])), allowed=DEFAULT, limits=limits, resolver=RESOLVER)
    assert checked.friend_files == 3


def test_local_friends_are_globbed_sized_and_limited(tmp_path: Path) -> None:
    for i, size in enumerate((100, 200, 300)):
        (tmp_path / f"friend_{i}.root").write_bytes(b"x" * size)
    allowed = AllowedLocations((str(tmp_path) + "/",))
    spec = parse_spec(spec_with([str(tmp_path / "friend_*.root")]))
    checked = check_spec(spec, allowed=allowed, limits=ROOMY, resolver=RESOLVER)
    assert (checked.friend_files, checked.friend_bytes, checked.unsized_files) == (3, 600, 0)
    two_files = CodegenLimits(max_friend_files=2, max_friend_bytes=10**12)
    with pytest.raises(SpecRefusedError, match="match 3 files"):
        check_spec(spec, allowed=allowed, limits=two_files, resolver=RESOLVER)
    few_bytes = CodegenLimits(max_friend_files=10, max_friend_bytes=599)
    with pytest.raises(SpecRefusedError, match=r"hold 600 bytes.*at most 599 bytes.*JOINER_MAX_FRIEND_BYTES"):
        check_spec(spec, allowed=allowed, limits=few_bytes, resolver=RESOLVER)
    with pytest.raises(SpecRefusedError, match=r"friends\.0\.files\.0: .* matches no file"):
        check_spec(
            parse_spec(spec_with([str(tmp_path / "none_*.root")])),
            allowed=allowed,
            limits=ROOMY,
            resolver=RESOLVER,
        )
    with pytest.raises(SpecRefusedError, match=r"friends\.0\.files\.0: .* does not exist"):
        check_spec(
            parse_spec(spec_with([str(tmp_path / "gone.root")])),
            allowed=allowed,
            limits=ROOMY,
            resolver=RESOLVER,
        )
