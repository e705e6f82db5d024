"""Where the items come from: a manifest CSV, a UCF101 or HMDB51 root, a folder per class, a flat folder, one file.

`load_source` turns any of these into a list of `Item`s (id, path, labels, group, split, kind). Nothing is decoded
here and missing video files are not an error: they become failed items at extract time, where the reason is recorded.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from featstore.errors import FramecacheError

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ogv"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS

# UCF101 names clips v_<Class>_g<group>_c<clip>; clips of one group share actor and scene, so they must not be
# split across train and test.
_UCF_NAME = re.compile(r"^v_(?P<cls>.+)_g(?P<group>\d+)_c\d+$")
_HMDB_SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<split>\d+)\.txt$")
_HMDB_SPLIT_CODES = {"0": "", "1": "train", "2": "test"}  # 0 = not used in this split
_UCF_VIDEO_DIRS = ("", "UCF-101", "videos")  # where the official archive and common re-packs put the class folders


@dataclass(frozen=True)
class Item:
    """One video or image to embed."""

    id: str                     # unique; default = path relative to the source root, no extension, '/' separators
    path: str                   # absolute path
    labels: tuple[str, ...]     # () when unlabeled; several for multi-label
    group: str = ""             # videos that look alike (UCF101 'ApplyEyeMakeup_g08'); '' when unknown
    split: str = ""             # 'train' | 'test' | any name; '' when unknown
    kind: str = "video"         # 'video' | 'image'

    @property
    def label(self) -> str:
        """All labels joined with '|', the form a manifest uses ('' when unlabeled)."""
        return "|".join(self.labels)


class SourceError(FramecacheError, ValueError):
    """The source cannot be read as a list of items: the message says which file or value and what to fix."""


def load_source(source: str | Path, split_id: int = 1, subset: "Subset | None" = None) -> list[Item]:
    """Items from a manifest CSV, a UCF101/HMDB51 root (official split `split_id`), a folder per class,
    a flat folder of files, or a single video/image file; only those `subset` keeps (see `select_items`).

    Folder layouts come back sorted by id; a manifest keeps its row order. Ids are unique (duplicates raise)."""
    root = Path(os.path.abspath(os.path.expanduser(source)))
    if not root.exists():
        raise SourceError(f"source {root} does not exist; pass a manifest .csv, a dataset folder or a video file")
    if root.is_file():
        items = _from_file(root)
    elif (lists := _find_ucf_lists(root)) is not None:
        items = _from_ucf101(root, lists, split_id)
    elif hmdb_splits := _find_hmdb_splits(root):
        items = _from_hmdb51(root, hmdb_splits, split_id)
    else:
        items = _from_folder(root)
    _check_unique_ids(items, root)
    return items if subset is None else select_items(items, subset)


def shard_items(items: list[Item], index: int, count: int) -> list[Item]:
    """The items of shard `index` out of `count`, chosen by a stable hash of the id (same answer in every process
    and Python version), so `count` processes get disjoint subsets that together cover all items. Order is kept."""
    if count < 1 or not 0 <= index < count:
        raise SourceError(f"--shard {index}/{count} is invalid: need 0 <= i < N, e.g. --shard 0/4 ... --shard 3/4")
    return [item for item in items if _stable_hash(item.id) % count == index]


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def item_kind(path: Path) -> str:
    """'image' or 'video', by the file's extension."""
    return "image" if path.suffix.lower() in IMAGE_EXTENSIONS else "video"


# Files that are not regular files never end or never answer when read as a video: a named pipe waits for a writer,
# /dev/zero never ends, a socket cannot be opened. They are refused by their type, before anything opens them.
_SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_file(path: str | os.PathLike) -> str:
    """Why `path` must not be opened as a video or image ('' for a regular file, a folder or a missing path):
    it names the kind of file, so the item can be recorded as failed without reading it (which could block)."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks: a link to /dev/zero is a device
    except OSError:
        return ""
    kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "")
    return f"{kind}, not a regular file: reading it could wait forever; give a video or image file" if kind else ""


def _relative_id(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root)
    except ValueError:  # a manifest row pointing outside the manifest's folder keeps its absolute path as id
        rel = path
    return rel.with_suffix("").as_posix()


def _ucf_group(stem: str) -> str:
    m = _UCF_NAME.match(stem)
    return f"{m['cls']}_g{m['group']}" if m else ""


def _check_unique_ids(items: list[Item], root: Path) -> None:
    seen: dict[str, list[str]] = {}
    for item in items:
        seen.setdefault(item.id, []).append(item.path)
    dups = {k: v for k, v in seen.items() if len(v) > 1}
    if dups:
        shown = "; ".join(f"{k!r} ({', '.join(v)})" for k, v in list(dups.items())[:10])
        more = f" and {len(dups) - 10} more" if len(dups) > 10 else ""
        raise SourceError(f"{len(dups)} duplicate item ids in {root}: {shown}{more}. Ids must be unique: "
                          "rename the files or give them distinct values in a manifest 'id' column")


# --- a single file: a manifest or one video/image -------------------------------------------------------------


def _from_file(path: Path) -> list[Item]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _from_manifest(path)
    if suffix not in MEDIA_EXTENSIONS:
        raise SourceError(f"{path} is neither a manifest (.csv) nor a video/image file "
                          f"(known extensions: {', '.join(sorted(MEDIA_EXTENSIONS))})")
    return [Item(id=path.stem, path=str(path), labels=(), group=_ucf_group(path.stem), kind=item_kind(path))]


def _from_manifest(manifest: Path) -> list[Item]:
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheets prepend a BOM
            items = _read_manifest(csv.DictReader(f), manifest)
    except (UnicodeDecodeError, csv.Error) as e:
        raise SourceError(f"cannot read manifest {manifest} as CSV: {e}; save it as UTF-8 CSV") from e
    if not items:
        raise SourceError(f"manifest {manifest} has a header but no rows")
    return items


def _read_manifest(reader: csv.DictReader, manifest: Path) -> list[Item]:
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    if "path" not in columns:
        raise SourceError(f"manifest {manifest} has no 'path' column (found columns: {columns or 'none'}); "
                          "the first line must name the columns, e.g. path,label,group,split")
    reader.fieldnames = columns
    return [_manifest_item(row, manifest, reader.line_num) for row in reader]


def _manifest_item(row: dict, manifest: Path, line: int) -> Item:
    def cell(name: str) -> str:
        return (row.get(name) or "").strip()

    if not cell("path"):
        raise SourceError(f"{manifest}, line {line}: empty 'path' cell")
    path = Path(os.path.normpath(manifest.parent / Path(cell("path")).expanduser()))
    labels = tuple(dict.fromkeys(x.strip() for x in cell("label").split("|") if x.strip()))
    return Item(id=cell("id") or _relative_id(path, manifest.parent), path=str(path), labels=labels,
                group=cell("group"), split=cell("split"), kind=item_kind(path))


# --- folders: one sub-folder per class, or flat -------------------------------------------------------------


def _media_files(root: Path) -> list[Path]:
    found = []
    # followlinks: datasets are often assembled from symlinked class folders.
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # hidden folders hold caches and metadata
        found += [Path(folder, f) for f in files
                  if not f.startswith(".") and Path(f).suffix.lower() in MEDIA_EXTENSIONS]
    return found


def _from_folder(root: Path) -> list[Item]:
    files = _media_files(root)
    if not files:
        raise SourceError(f"no video or image files found in {root} "
                          f"(looked for {', '.join(sorted(MEDIA_EXTENSIONS))})")
    top = [f for f in files if f.parent == root]
    if top and len(top) != len(files):
        raise SourceError(f"{root} has {len(top)} files at its top level and {len(files) - len(top)} in sub-folders; "
                          "put every file in a class sub-folder (or none of them), or pass a manifest CSV")
    # The folder that directly holds a file names its class, so root/videos/<Class>/x.mp4 works like root/<Class>/x.mp4.
    items = [Item(id=_relative_id(f, root), path=str(f), labels=() if top else (f.parent.name,),
                  group=_ucf_group(f.stem), kind=item_kind(f)) for f in files]
    return sorted(items, key=lambda item: item.id)


# --- official split files: UCF101 and HMDB51 ----------------------------------------------------------------


def _candidate_dirs(root: Path) -> list[Path]:
    return [root] + sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _find_ucf_lists(root: Path) -> Path | None:
    for d in _candidate_dirs(root):
        if (d / "classInd.txt").is_file() and any(d.glob("trainlist*.txt")):
            return d
    return None


def _find_hmdb_splits(root: Path) -> list[Path]:
    for d in _candidate_dirs(root):
        found = sorted(p for p in d.glob("*_test_split*.txt") if _HMDB_SPLIT_FILE.match(p.name))
        if found:
            return found
    return []


class _VideoFinder:
    """Finds a listed video among a few candidate folders, caching each folder's listing. Accepts the same name
    with another video extension, because re-packed copies of these datasets are often re-encoded to .mp4."""

    def __init__(self) -> None:
        self._listings: dict[Path, dict[str, str]] = {}

    def find(self, folders: list[Path], name: str) -> Path:
        stem = Path(name).stem
        for key in (name, stem):
            for folder in folders:
                if key in self._listing(folder):
                    return folder / self._listing(folder)[key]
        return folders[0] / name  # missing: the extract step records it as a failed item

    def _listing(self, folder: Path) -> dict[str, str]:
        if folder not in self._listings:
            names = sorted(os.listdir(folder)) if folder.is_dir() else []
            stems = {Path(n).stem: n for n in reversed(names) if Path(n).suffix.lower() in VIDEO_EXTENSIONS}
            self._listings[folder] = {**stems, **{n: n for n in names}}
        return self._listings[folder]


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f if line.strip()]


def _from_ucf101(root: Path, lists: Path, split_id: int) -> list[Item]:
    train, test = lists / f"trainlist{split_id:02d}.txt", lists / f"testlist{split_id:02d}.txt"
    if not train.is_file() or not test.is_file():
        found = sorted(int(m[1]) for p in lists.glob("trainlist*.txt") if (m := re.search(r"(\d+)", p.name)))
        raise SourceError(f"UCF101 split {split_id} not found in {lists} (need {train.name} and {test.name}); "
                          f"available splits: {found}")
    classes = {line.split()[-1] for line in _read_lines(lists / "classInd.txt")}
    finder = _VideoFinder()
    items = []
    for split, list_file in (("train", train), ("test", test)):
        for line in _read_lines(list_file):
            items.append(_ucf_item(line.split()[0], split, root, classes, finder, list_file))
    return sorted(items, key=lambda item: item.id)


def _ucf_item(entry: str, split: str, root: Path, classes: set[str], finder: _VideoFinder, list_file: Path) -> Item:
    cls, _, name = entry.replace("\\", "/").rpartition("/")
    if cls not in classes:
        raise SourceError(f"{list_file}: entry {entry!r} names class {cls!r}, which classInd.txt does not list")
    path = finder.find([root / d / cls for d in _UCF_VIDEO_DIRS], name)
    # The id comes from the list entry, so it stays the same whichever folder layout holds the videos.
    return Item(id=f"{cls}/{Path(name).stem}", path=str(path), labels=(cls,), group=_ucf_group(Path(name).stem),
                split=split)


def _from_hmdb51(root: Path, split_files: list[Path], split_id: int) -> list[Item]:
    chosen = [p for p in split_files if int(_HMDB_SPLIT_FILE.match(p.name)["split"]) == split_id]
    if not chosen:
        found = sorted({int(_HMDB_SPLIT_FILE.match(p.name)["split"]) for p in split_files})
        raise SourceError(f"HMDB51 split {split_id} not found next to {split_files[0]}: available splits {found}")
    finder = _VideoFinder()
    video_dirs = _candidate_dirs(root)  # videos sit in root/<class>/ or one level deeper (root/hmdb51_org/<class>/)
    items = []
    for split_file in chosen:
        cls = _HMDB_SPLIT_FILE.match(split_file.name)["cls"]
        for line_no, line in enumerate(_read_lines(split_file), start=1):
            item = _hmdb_item(line, cls, split_file, line_no, [d / cls for d in video_dirs], finder)
            if item is not None:
                items.append(item)
    return sorted(items, key=lambda item: item.id)


def _hmdb_item(line: str, cls: str, split_file: Path, line_no: int, folders: list[Path],
               finder: _VideoFinder) -> Item | None:
    parts = line.split()
    if len(parts) != 2 or parts[1] not in _HMDB_SPLIT_CODES:
        raise SourceError(f"{split_file}, line {line_no}: expected 'NAME.avi CODE' with CODE 0, 1 or 2, got {line!r}")
    name, code = parts
    if not _HMDB_SPLIT_CODES[code]:
        return None
    return Item(id=f"{cls}/{Path(name).stem}", path=str(finder.find(folders, name)), labels=(cls,),
                group=_hmdb_movie(Path(name).stem, cls), split=_HMDB_SPLIT_CODES[code])


def _hmdb_movie(stem: str, cls: str) -> str:
    # HMDB51 names end in _<class>_<body>_<camera>_<people>_<view>_<quality>_<n>; what precedes is the source movie,
    # and clips cut from one movie share actors and scenes.
    m = re.match(rf"^(?P<movie>.+)_{re.escape(cls)}(?:_[^_]+){{5}}_\d+$", stem)
    return m["movie"] if m else ""


# --- subsets: chosen classes, N items per class ---------------------------------------------------------------


@dataclass(frozen=True)
class Subset:
    """Which items of a source to keep: only `classes` (all when empty), at most `per_class` items per class."""

    classes: tuple[str, ...] = ()
    per_class: int | None = None

    def __post_init__(self):
        if self.per_class is not None and self.per_class < 1:
            raise SourceError(f"--per-class {self.per_class} must be at least 1 (leave it out to keep every item)")

    @property
    def empty(self) -> bool:
        return not self.classes and self.per_class is None

    def record(self) -> dict | None:
        """What the store config records (None when nothing is selected): it picks items, not features."""
        return None if self.empty else {"classes": list(self.classes), "per_class": self.per_class}


def read_classes(classes: str | None = None, classes_file: str | Path | None = None) -> tuple[str, ...]:
    """Class names from a comma-separated list and/or a file (one per line or comma-separated, # comments)."""
    names: list[str] = []
    if classes:
        names += classes.split(",")
    if classes_file is not None:
        path = Path(classes_file)
        if not path.is_file():
            raise SourceError(f"--classes-file {path} does not exist; give a text file with one class per line")
        names += [x for line in _read_lines(path) if not line.startswith("#") for x in line.split(",")]
    return tuple(dict.fromkeys(n.strip() for n in names if n.strip()))


def select_items(items: list[Item], subset: Subset) -> list[Item]:
    """The items `subset` keeps, in their order. A multi-label item stays when any of its labels is chosen and
    keeps only the chosen labels. `per_class` takes whole groups (an item without a group is its own), in an order
    fixed by a hash of the group name, so a subset mixes train and test groups as the full set does and never
    splits a group; a class may therefore end a little under N, and goes over it only when its first group
    alone is larger (a class never vanishes)."""
    if subset.empty:
        return items
    if subset.classes:
        _check_known(items, subset.classes)
        chosen = set(subset.classes)
        items = [_restrict(it, chosen) for it in items if chosen & set(it.labels)]
    if subset.per_class is None:
        return items
    keep = _groups_per_class(items, subset.per_class)
    return [it for it in items if (it.labels[:1], it.group or it.id) in keep]


def _check_known(items: list[Item], classes: tuple[str, ...]) -> None:
    known = sorted({x for it in items for x in it.labels})
    unknown = [c for c in classes if c not in set(known)]
    if not unknown:
        return
    import difflib

    hints = [m for c in unknown for m in difflib.get_close_matches(c, known, n=1)]
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    shown = ", ".join(known[:40]) + (f", ... ({len(known)} in all)" if len(known) > 40 else "")
    raise SourceError(f"--classes: unknown class {', '.join(repr(c) for c in unknown)}{hint}; "
                      f"the source has: {shown or '(no labels)'}")


def _restrict(item: Item, chosen: set[str]) -> Item:
    labels = tuple(x for x in item.labels if x in chosen)
    return item if labels == item.labels else Item(item.id, item.path, labels, item.group, item.split, item.kind)


def _groups_per_class(items: list[Item], n: int) -> set[tuple[tuple[str, ...], str]]:
    """(class, group) pairs to keep: groups in hash order, each taken while the class stays within n items.
    A multi-label item counts for its first label."""
    sizes: dict[tuple[str, ...], dict[str, int]] = {}
    for it in items:
        groups = sizes.setdefault(it.labels[:1], {})
        groups[it.group or it.id] = groups.get(it.group or it.id, 0) + 1
    keep = set()
    for cls, groups in sizes.items():
        taken = 0
        for group in sorted(groups, key=lambda g: (_stable_hash(g), g)):
            if taken == 0 or taken + groups[group] <= n:
                keep.add((cls, group))
                taken += groups[group]
            if taken >= n:
                break
    return keep
