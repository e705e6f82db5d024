"""What `cli.py backbones` shows: the registry's backbones and the weights files they know, and whether a file on
disk is one of them.

torchvision names each released weights file after a prefix of its sha256 (`resnet50-11ad3fa6.pth`, as torch.hub
checks it on download); that prefix is what a copied file is checked against here, so an offline machine can tell a
complete download from a truncated or wrong one without network. With a backbone named, the file is also loaded
into that backbone, which catches a file of another architecture whatever it is called.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.backbones import BackboneError, file_sha256, available_backbones, get_spec, weights_for

_HASH_IN_NAME = re.compile(r"[-_]([0-9a-f]{8,64})$")  # torchvision's file stems end in -<sha256 prefix>


@dataclass(frozen=True)
class KnownFile:
    """One released weights file of a registry backbone: the enum member that downloads it and its sha256 prefix."""
    backbone: str
    weights: str        # the --weights name (enum member), e.g. IMAGENET1K_V2
    file: str           # the file name in $TORCH_HOME/hub/checkpoints/
    url: str
    sha256_prefix: str  # from the file name; '' where the name carries none


@dataclass(frozen=True)
class BackboneRow:
    """A backbone as a table row: embedding size, what one stored row is, the files it knows, whether weights are on
    this machine (pipeline.catalog lists the families' names with the same rows)."""
    name: str
    dim: int | None     # None: a row that is a note (a family not installed, names left out)
    rows: str           # "image" (a row per sampled frame) or "clip N" (a row per clip of N frames)
    files: list[KnownFile]
    family: str = "torchvision"
    local: bool | None = None  # its default weights are on this machine (None: it has none to download)
    note: str = ""


@dataclass(frozen=True)
class WeightsCheck:
    """`check_weights`' answer: the file's sha256, the known files it matches, and a verdict for people."""
    path: str
    sha256: str
    matches: list[KnownFile]
    ok: bool
    verdict: str


def known_files(name: str) -> list[KnownFile]:
    """The released weights files of backbone `name` ([] for a backbone without a weights enum of files)."""
    files = []
    for member in getattr(get_spec(name), "weights", None) or []:
        url = getattr(member, "url", "")
        file = url.rsplit("/", 1)[-1]
        found = _HASH_IN_NAME.search(Path(file).stem)
        files.append(KnownFile(name, member.name, file, url, found.group(1) if found else ""))
    return files


def rows_kind(spec) -> str:
    """What one stored row of a backbone with this spec (registry or family) is: 'image' or 'clip N'."""
    clip = getattr(spec, "clip", None)
    return f"clip {clip.default_len}" if clip else "image"


def backbone_rows() -> list[BackboneRow]:
    """Every backbone the registry holds, in name order; local where torch.hub's cache holds one of its files."""
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints"
    rows = []
    for name in available_backbones():
        files = known_files(name)
        local = any((cached / f.file).is_file() for f in files) if files else None
        rows.append(BackboneRow(name, get_spec(name).dim, rows_kind(get_spec(name)), files, local=local))
    return rows


def check_weights(path: str | Path, backbone: str | None = None) -> WeightsCheck:
    """Hash `path` and compare it with every known file's sha256 prefix; with `backbone`, also load it into that
    backbone (raises BackboneError naming what does not fit)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BackboneError(f"--check {path}: no such file")
    sha = file_sha256(path)
    known = [f for name in available_backbones() for f in known_files(name)]
    matches = [f for f in known if f.sha256_prefix and sha.startswith(f.sha256_prefix)]
    named = [f for f in known if f.file == path.name]
    if matches:
        ok, verdict = True, "matches " + ", ".join(f"{f.backbone} --weights {f.weights}" for f in matches)
    elif named:
        ok, verdict = False, (f"named like {named[0].backbone}'s {named[0].weights} file but its sha256 does not "
                              f"start with {named[0].sha256_prefix}: a truncated or altered download; fetch "
                              f"{named[0].url} again")
    else:
        ok, verdict = True, "not a torchvision file the registry knows (a state_dict of your own is fine)"
    if backbone is not None:
        from pipeline.backbones import build_backbone

        build_backbone(weights_for(backbone, str(path)))  # raises when the file does not fit
        verdict += f"; loads into {backbone}"
    return WeightsCheck(str(path), sha, matches, ok, verdict)
