"""Config fields that carry their own flag, help, choices and bounds, and the one check of them.

Each config dataclass (ExtractConfig, TrainConfig, ClusterConfig, FinetuneConfig) declares a setting once:

    lr: float = setting(3e-3, "Peak learning rate.", gt=0)

`check_settings(cfg, error)` in its `__post_init__` enforces the choices and bounds, so a notebook caller gets the
same one-line errors as the command line, and cli.py derives its options (flag, help, default, choices, range) from
the same metadata (ui/options.py). Imports nothing heavy: configs stay cheap to import.
"""
from __future__ import annotations

from dataclasses import MISSING, Field, field, fields
from typing import Any, Iterable


def setting(default: Any = MISSING, help: str = "", *, choices: Iterable[str] | None = None,
            ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
            flag: str | None = None, cli: bool = True, default_factory: Any = MISSING) -> Any:
    """A dataclass field with its CLI flag (default `--name-with-dashes`), help text, allowed values and bounds.

    `cli=False` keeps a field out of the derived options (a setting only the library or another flag sets)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "flag": flag, "cli": cli,
            "ge": ge, "gt": gt, "le": le, "lt": lt}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: Field) -> str:
    """The command-line flag a field is set by."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def check_choice(flag: str, value: Any, allowed: Iterable[str], error: type[Exception] = ValueError) -> None:
    """Refuse a value outside `allowed`, naming the flag and listing the valid values."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise error(f"{flag} {value!r} is not valid; choose one of: {', '.join(map(str, allowed))}")


def bounds_text(meta: dict) -> str | None:
    """How a field's bounds read in an error ("must be between 0 and 1"), or None without bounds."""
    ge, gt, le, lt = (meta.get(k) for k in ("ge", "gt", "le", "lt"))
    low, high = (gt if gt is not None else ge), (lt if lt is not None else le)
    if low is not None and high is not None:
        if gt is not None and lt is not None:
            return f"must be between {low} and {high}"
        return f"must be in {'(' if gt is not None else '['}{low}, {high}{')' if lt is not None else ']'}"
    if gt is not None:
        return f"must be > {gt}"
    if ge is not None:
        return "must be at least 1" if ge == 1 else f"must be >= {ge}"
    if high is not None:
        return f"must be {'<' if lt is not None else '<='} {high}"
    return None


def within(value: Any, meta: dict) -> bool:
    """Whether `value` lies within a field's bounds (None, the "not set" of optional settings, always does)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    ge, gt, le, lt = (meta.get(k) for k in ("ge", "gt", "le", "lt"))
    return ((ge is None or value >= ge) and (gt is None or value > gt)
            and (le is None or value <= le) and (lt is None or value < lt))


def check_settings(cfg: Any, error: type[Exception] = ValueError) -> None:
    """Check every declared choice and bound of a config dataclass; the first violation raises `error`,
    naming the flag, the value and the rule."""
    for f in fields(cfg):
        value, meta = getattr(cfg, f.name), f.metadata
        if meta.get("choices") is not None and value is not None:
            check_choice(flag_of(f), value, meta["choices"], error)
        if not within(value, meta):
            raise error(f"{flag_of(f)} {value} {bounds_text(meta)}")
