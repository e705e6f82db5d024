"""Command-line options declared once: derived from the config dataclasses' fields (featstore/settings.py), plus the
options several commands share.

    @app.command("fit-head")
    @config_options(TrainConfig)
    def fit_head(store: ..., cfg: TrainConfig, out_dir: ... = None) -> None: ...

adds one option per field of TrainConfig (flag, help, default, choices and range from the field's `setting(...)`)
and hands the command a TrainConfig built from them. A field the command declares itself, or lists in `skip`, is
left to the command.
"""
from __future__ import annotations

import functools
import inspect
import types
import typing
from dataclasses import MISSING, Field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from featstore.errors import FramecacheError
from featstore.settings import flag_of
from ui.errors import fail

FORCE_HELP = "Replace --out whole even if it holds other files or another kind of run (they are deleted)."
Force = Annotated[bool, typer.Option(help=FORCE_HELP)]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:i.")]
OutDir = Annotated[Optional[Path], typer.Option("--out", help="Output directory.")]
StoreWeights = Annotated[Optional[Path], typer.Option("--weights", help="The store's weights file, if it moved since "
                                                      "extract (checked against the sha256 the store recorded).")]


def choices(name: str, *values: str) -> type[Enum]:
    """A str Enum of CLI choices: typer lists them in --help and rejects anything else."""
    return Enum(name, {v: v for v in values}, type=str)


def plain(value: Any) -> Any:
    """An option's value as the library takes it: a choice Enum becomes its string."""
    return value.value if isinstance(value, Enum) else value


def _optional_inner(hint: Any) -> tuple[Any, bool]:
    """(T, True) for Optional[T] / T | None, else (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def option_param(f: Field, hint: Any) -> inspect.Parameter:
    """The typer parameter for one settings field."""
    meta, default = f.metadata, f.default if f.default is not MISSING else f.default_factory()
    kind, optional = _optional_inner(hint)
    if meta.get("choices") is not None:
        kind = choices("".join(w.title() for w in f.name.split("_")), *meta["choices"])
        # a choice setting whose "not set" is None reads "none" on the command line (--compression none)
        default = kind(default) if default is not None else kind("none") if "none" in meta["choices"] else None
    low = meta["ge"] if meta.get("ge") is not None else meta.get("gt")
    high = meta["le"] if meta.get("le") is not None else meta.get("lt")
    decls = () if not meta.get("flag") else ((flag_of(f) + "/--no-" + flag_of(f)[2:],) if kind is bool
                                            else (flag_of(f),))
    bounds = {}
    if kind in (int, float):  # cast: a float option's range reads 0.0 in --help, as its default does
        bounds = {"min": None if low is None else kind(low), "max": None if high is None else kind(high)}
    option = typer.Option(*decls, help=meta.get("help") or None, **bounds)
    annotation = Annotated[Optional[kind] if optional else kind, option]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def config_options(cls: type, *, skip: tuple[str, ...] = (), param: str = "cfg"):
    """Decorate a command so that its options include `cls`'s settings and it receives `param=cls(...)`.

    A bad value the config refuses in `__post_init__` ends the command with its one-line error (exit 1)."""
    def wrap(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != param]
        taken = {p.name for p in own} | set(skip)
        hints = typing.get_type_hints(cls)
        derived = [f for f in fields(cls) if f.init and f.metadata.get("cli", True) and f.name not in taken
                   and "help" in f.metadata]

        @functools.wraps(fn)
        def command(*args, **kwargs):
            values = {f.name: plain(kwargs.pop(f.name)) for f in derived if f.name in kwargs}
            try:
                kwargs[param] = cls(**values)
            except FramecacheError as e:
                fail(str(e))
            return fn(*args, **kwargs)

        # --help lists the arguments, then the config's options, then the command's own (keyword-only from here)
        arguments = [p for p in own if _is_argument(p)]
        options = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if not _is_argument(p)]
        command.__signature__ = sig.replace(
            parameters=arguments + [option_param(f, hints[f.name]) for f in derived] + options)
        return command
    return wrap


def _is_argument(p: inspect.Parameter) -> bool:
    return any(isinstance(m, typer.models.ArgumentInfo) for m in getattr(p.annotation, "__metadata__", ()))


def with_settings(cfg: Any, **changes: Any) -> Any:
    """`cfg` with the command's own flags applied (a frozen or plain dataclass alike); refusals end the command."""
    try:
        return replace(cfg, **changes)
    except FramecacheError as e:
        fail(str(e))


def parse_shard(value: Optional[str]) -> Optional[tuple[int, int]]:
    """--shard i/N as (i, N); None for no --shard and for "auto" (the launcher's part, pipeline.request.launched)."""
    if value is None or value == "auto":
        return None
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise typer.BadParameter(f"expected i/N such as 0/4, got {value!r}") from None
    return i, n
