"""What `cli.py backbones` lists: torchvision's registry and every family's names (pipeline/families), each with its
row size, what a row is and whether its weights are on this machine.

A family holds far more names than a table can show (timm: ~1,400 architectures, ~1,800 pretrained tags), so each
lists a curated few by default and the library's own names matching `--filter` on request, described up to
DESCRIBED names (describing one traces the model on the meta device: ~0.1-1 s). A family whose library is not
installed is one row naming the extra to install. Light at import: cli.py builds its options from CatalogQuery.
"""
from __future__ import annotations

import fnmatch
import importlib.util
from dataclasses import dataclass

from featstore.errors import FramecacheError
from featstore.settings import setting

TORCHVISION = "torchvision"
DESCRIBED = 25  # names a family describes at most; the rest are counted in a note


@dataclass
class CatalogQuery:
    family: str | None = setting(None, "Only this family: torchvision, timm, ... (default: all of them).")
    # fnmatch wildcards as timm.list_models takes them; a pattern with a dot matches timm's pretrained tags
    filter: str | None = setting(None, "Names matching this pattern ('*dinov2*', 'convnext_tiny.*'), not the "
                                       "curated few.")


def catalog(query: CatalogQuery) -> list:
    """pipeline.weights_check.BackboneRow of every name asked for: torchvision's first, then each family's."""
    from pipeline.backbones import FAMILIES

    families = [TORCHVISION, *FAMILIES]
    if query.family is not None and query.family not in families:
        raise FramecacheError(f"--family {query.family!r} is not a family; choose one of: {', '.join(families)}")
    rows = []
    for family in families if query.family is None else [query.family]:
        rows += _torchvision_rows(query.filter) if family == TORCHVISION else _family_rows(family, query.filter)
    return rows


def _torchvision_rows(pattern: str | None) -> list:
    from pipeline.weights_check import backbone_rows

    return [r for r in backbone_rows() if pattern is None or fnmatch.fnmatch(r.name, pattern)]


def _family_rows(prefix: str, pattern: str | None) -> list:
    """The family's names (curated, or matching `pattern`), described up to DESCRIBED; one row with the install hint
    where its library is missing."""
    from pipeline.backbones import FAMILIES, BackboneError, family_of, get_spec
    from pipeline.weights_check import BackboneRow, rows_kind

    _, library, extra = FAMILIES[prefix]
    if importlib.util.find_spec(library) is None:
        return [BackboneRow(f"{prefix}:", None, "", [], prefix, None,
                            f"{library} is not installed: pip install -e \".[{extra}]\"")]
    module, _ = family_of(f"{prefix}:")
    if not hasattr(module, "names"):  # the listing hooks are optional (pipeline/families/__init__.py)
        return [BackboneRow(f"{prefix}:", None, "", [], prefix, None,
                            f"lists no names here: pass --backbone {prefix}:NAME with any name {library} knows")]
    names = module.names(pattern)
    rows = []
    for model in names[:DESCRIBED]:
        try:
            spec = get_spec(f"{prefix}:{model}")
        except BackboneError as e:  # a name the library lists but framecache cannot use: say why, list the rest
            rows.append(BackboneRow(f"{prefix}:{model}", None, "", [], prefix, None, str(e)))
            continue
        local = getattr(module, "weights_local", lambda _: None)(model)
        rows.append(BackboneRow(f"{prefix}:{model}", spec.dim, rows_kind(spec), [], prefix, local))
    if len(names) > DESCRIBED:
        rows.append(BackboneRow(f"{prefix}:", None, "", [], prefix, None,
                                f"and {len(names) - DESCRIBED} more names: narrow --filter"))
    elif pattern is None:
        rows.append(BackboneRow(f"{prefix}:", None, "", [], prefix, None,
                                f"a curated few: --family {prefix} --filter PATTERN searches {library}'s names"))
    return rows
