"""Key indexes kept in memory by the transform process: reused while the friend files are unchanged,
reloaded when one changes (same path, other content) or the file list changes, duplicate-checked once per
load, and refused outside the allowed locations."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from joiner.engine import Role
from joiner.errors import DuplicateKeyError, MissingColumnError
from joiner.index import DatasetIndex
from joiner.spec import DuplicatePolicy, JoinSpec, parse_spec
from tests.worker_support import write_friend
from transformer.errors import LocationNotAllowedError
from transformer.index_memory import IndexMemory, local_fingerprint
from transformer.locations import AllowedLocations
from transformer.storage.local import LocalFragmentStore


class _CountingStore(LocalFragmentStore):
    """A fragment store that counts reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets = 0

    def get(self, name: str) -> bytes | None:
        self.gets += 1
        return super().get(name)


@pytest.fixture
def friends(tmp_path: Path, data_dir: Path) -> Path:
    folder = tmp_path / "friends"
    folder.mkdir()
    for name in ("nano_dy.root", "nano_dimuon.root"):
        primary = Path(shutil.copy(data_dir / name, tmp_path / name))
        write_friend(primary, folder / ("sf_" + name), seed=3, reorder=True)
    return folder


def _spec(folder: Path, **friend: object) -> JoinSpec:
    return parse_spec({
        "primary": {"columns": ["nMuon"]}, "key": "cms",
        "friends": [{"name": "sys", "files": [str(folder / "sf_*.root")], "columns": ["sf"], **friend}],
    })


def test_reused_while_unchanged_reloaded_when_a_file_changes(
    tmp_path: Path, data_dir: Path, friends: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(friends)
    store = _CountingStore(tmp_path / "cache")
    memory = IndexMemory()
    checks: list[DuplicatePolicy] = []
    original = DatasetIndex.check_duplicates

    def counting(self: DatasetIndex, policy: DuplicatePolicy) -> None:
        checks.append(policy)
        original(self, policy)

    monkeypatch.setattr(DatasetIndex, "check_duplicates", counting)
    first = memory.resolve(spec, Role.PRIMARY, fragment_store=store)["sys"]
    for _ in range(5):
        assert memory.resolve(spec, Role.PRIMARY, fragment_store=store)["sys"] is first
    # two fragments, each looked up once and its build lease checked once: four reads of the store
    assert (memory.loads, memory.reuses, store.gets, len(checks)) == (1, 5, 4, 1)

    # the same path with other content: the index is loaded again (one fragment rebuilt) and checked
    changed = friends / "sf_nano_dy.root"
    before = local_fingerprint(str(changed))
    write_friend(tmp_path / "nano_dy.root", changed, seed=9, reorder=True)  # same keys, other order
    assert local_fingerprint(str(changed)) != before
    second = memory.resolve(spec, Role.PRIMARY, fragment_store=store)["sys"]
    assert second is not first and memory.loads == 2 and len(checks) == 2
    assert [f.content_name for f in second.fragments] != [f.content_name for f in first.fragments]

    # touched but identical content: the identity is read again, the index is kept
    changed.touch()
    assert memory.resolve(spec, Role.PRIMARY, fragment_store=store)["sys"] is second
    assert memory.loads == 2

    # a file added to the dataset: another file list, another load
    write_friend(data_dir / "nano_dy.root", friends / "sf_z.root", seed=4, reorder=False)
    with pytest.raises(DuplicateKeyError):  # its keys repeat nano_dy's: refused, once, at its load
        memory.resolve(spec, Role.PRIMARY, fragment_store=store)
    assert len(checks) == 3


def test_locations_are_checked_on_every_file(friends: Path) -> None:
    spec = _spec(friends)
    memory = IndexMemory()
    memory.resolve(spec, Role.PRIMARY, path_check=AllowedLocations([str(friends)]))
    with pytest.raises(LocationNotAllowedError):
        memory.resolve(spec, Role.PRIMARY, path_check=AllowedLocations(["/elsewhere/"]))


def test_a_friend_with_its_own_key_names_is_indexed_by_them(tmp_path: Path, data_dir: Path) -> None:
    import uproot

    events = uproot.open(data_dir / "nano_dy.root")["Events"].arrays(["run", "luminosityBlock", "event"], library="np")
    with uproot.recreate(tmp_path / "renamed.root") as out:
        out["Events"] = {"RUN": events["run"][::-1], "LUMI": events["luminosityBlock"][::-1],
                         "EVT": events["event"][::-1]}
    spec = parse_spec({
        "primary": {"columns": ["nMuon"]}, "key": "cms",
        "friends": [{"name": "r", "files": [str(tmp_path / "renamed.root")], "columns": ["*"],
                     "key": ["RUN", "LUMI", "EVT"]}],
    })
    store = LocalFragmentStore(tmp_path / "cache")
    index = IndexMemory().resolve(spec, Role.PRIMARY, fragment_store=store)["r"]
    assert index.key_branches is not None and index.key_branches.candidates("event") == ("EVT",)
    (fragment,) = index.fragments
    assert fragment.key_columns == ("RUN", "LUMI", "EVT") and fragment.num_entries == len(events["event"])
    # the same file read under the spec's own names is another fragment (its key branches are absent)
    plain = parse_spec({**spec.normalised(), "friends": [{**spec.normalised()["friends"][0], "key": None}]})
    with pytest.raises(MissingColumnError, match="no key branch 'run'"):
        IndexMemory().resolve(plain, Role.PRIMARY, fragment_store=store)
