"""`verify`: is every file of a store (header, shards, metadata updates) readable, consistent, of the store's
settings, and not a duplicate? `repair` rebuilds a lost or damaged header from the shards and moves every bad file
aside (as `quarantine` does for shards): what is left is a store every reader opens.

Each shard is opened once (`read_shard_index`, the same checks every reader makes on open); `deep` also reads
every block of its frame datasets in that same open. Cross-shard checks are one pass with a dict, so a store of
thousands of shards costs one open per shard. `quarantine` moves the bad shards to `STORE/_quarantine/`: their
videos are then absent, so the next `extract` redoes exactly them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from featstore.errors import StoreError
from featstore.format import HEADER, OPTIONAL_COLUMNS, VIDEO_COLUMNS, no_store, shard_files
from featstore.header import QUARANTINE, free_name, load_header, repair_header, shard_headers
from featstore.integrity import REMAKE_COMPACTED, BadShard, ForeignShard, read_shard_index
from featstore.meta import BadOverlay, list_overlays, read_overlay


@dataclass
class VerifyReport:
    store: str
    deep: bool
    shards: int = 0
    videos: int = 0                  # distinct ids in good shards
    ok: int = 0
    frames: int = 0                  # rows of ok videos in good shards
    bad: dict[str, str] = field(default_factory=dict)  # file name (shard, header, update) -> what is wrong
    quarantined: list[str] = field(default_factory=list)  # paths the bad files were moved to
    repaired: list[str] = field(default_factory=list)  # what --repair rebuilt (the header)
    lost_videos: int | None = 0      # videos only the bad shards held (the next extract redoes them); None: unknown,
                                     # a bad shard's ids were unreadable

    @property
    def passed(self) -> bool:
        return not self.bad

    @property
    def fix(self) -> str:
        """What to do about the bad files: a compacted file is made again, a store's shards are moved aside, its
        header rebuilt and its damaged metadata updates moved aside by --repair."""
        if Path(self.store).is_file():
            return REMAKE_COMPACTED
        deep = " --deep" if self.deep else ""  # without it, a shard bad only in its frame blocks looks good
        if any(_is_store_metadata(name) for name in self.bad):
            return (f"run `cli.py verify {self.store}{deep} --repair` to rebuild the header from the shards and move "
                    "the bad files aside, then rerun extract (with --update-meta for moved metadata updates)")
        return f"run `cli.py verify {self.store}{deep} --quarantine` to move them aside, then rerun extract"


def _is_store_metadata(name: str) -> bool:
    return name == HEADER or name.startswith("_meta.")


def verify_store(path: str | Path, deep: bool = False, quarantine: bool = False, repair: bool = False,
                 on_progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check every file of the store at `path`; with `quarantine`, move the bad shards aside; with `repair`, also
    rebuild a lost or damaged header from the shards and move bad metadata updates aside.

    Raises StoreError when there is no store or its header is unreadable and cannot be rebuilt."""
    path = Path(path)
    if not path.exists():
        raise no_store(path)
    if (quarantine or repair) and path.is_file():
        raise StoreError(f"{path} is a compacted file, which cannot be repaired in place: verify the store "
                         "directory it came from and compact it again")
    files = shard_files(path)
    report = VerifyReport(str(path), deep, shards=len(files))
    if repair and (done := repair_header(path)):
        report.repaired.append(done)
    header, problem = load_header(path, rebuild=False)
    if problem is not None:
        report.bad[HEADER] = f"{problem}; its {len(files)} shard(s) agree on the settings to rebuild it from"
    ok_in: dict[str, str] = {}          # id -> shard whose ok record it is
    status: dict[str, str] = {}         # id -> best status among good shards
    bad_ids: set[str] | None = set()    # ids held by bad shards; None once one shard's ids are unreadable
    foreign = 0                         # shards of other settings than the header
    for n, file in enumerate(files):
        try:
            columns = read_shard_index(file, header, VIDEO_COLUMNS, deep=deep, compacted=path.is_file(),
                                       optional=OPTIONAL_COLUMNS)
        except BadShard as e:
            report.bad[file.name] = e.problem
            foreign += isinstance(e, ForeignShard)
            ids = _ids_if_readable(file)
            bad_ids = None if ids is None or bad_ids is None else bad_ids | ids
        else:
            _account(file.name, columns, ok_in, status, report)
        if on_progress is not None:
            on_progress(n + 1, len(files))
    if foreign == len(files) > 1 and len(shard_headers(path)) == 1:  # the header is the odd one out, not them
        report.bad = {HEADER: f"matches none of its {len(files)} shards, which agree with each other (was it "
                              "replaced?)"}
    for file in list_overlays(path) if HEADER not in report.bad else []:  # checked against the store's fingerprint
        try:
            read_overlay(file, header.fingerprint)
        except BadOverlay as e:
            report.bad[file.name] = e.problem
    report.videos, report.ok = len(status), len(ok_in)
    report.lost_videos = None if bad_ids is None else len(bad_ids - set(status))
    if (quarantine or repair) and report.bad:
        report.quarantined = _quarantine(path, sorted(report.bad))
    return report


def _account(name: str, columns: dict, ok_in: dict[str, str], status: dict[str, str], report: VerifyReport) -> None:
    """Add one good shard's videos; a video that is ok twice marks the later shard bad (one copy is enough)."""
    ids = [v.decode() if isinstance(v, bytes) else str(v) for v in columns["video_id"]]
    states = [v.decode() if isinstance(v, bytes) else str(v) for v in columns["status"]]
    here: set[str] = set()
    for vid, st in zip(ids, states):
        if st == "ok" and (vid in ok_in or vid in here):
            report.bad[name] = f"video {vid} is stored ok twice (also in {ok_in.get(vid, name)})"
            return
        if st == "ok":
            here.add(vid)
    for vid, st, length in zip(ids, states, columns["length"]):
        if st == "ok":
            ok_in[vid] = name
            report.frames += int(length)
            status[vid] = "ok"
        else:
            status.setdefault(vid, st)


def _ids_if_readable(file: Path) -> set[str] | None:
    """The ids a bad shard holds, when its id column can still be read (to count what a rerun redoes)."""
    import h5py

    try:
        with h5py.File(file, "r") as f:
            return {v.decode() if isinstance(v, bytes) else str(v) for v in f["video_id"][()]}
    except (OSError, KeyError):
        return None


def _quarantine(store: Path, names: list[str]) -> list[str]:
    target = store / QUARANTINE
    target.mkdir(exist_ok=True)
    moved = []
    for name in names:
        if not (store / name).exists():  # a missing header: rebuilt, not moved
            continue
        dest = free_name(target / name)  # a file quarantined before under the same name is kept too
        (store / name).rename(dest)
        moved.append(str(dest))
    return moved
