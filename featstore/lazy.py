"""A package's public names, loaded on first use (PEP 562): importing one light submodule (pipeline.launch,
heads.config, finetune.config for the CLI's choice tables) does not pay for torchvision, scikit-learn or the
training code behind the others. Here, in the lowest layer, so that pipeline/, heads/ and finetune/ share it."""
from __future__ import annotations

import sys
from importlib import import_module
from typing import Callable


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]],
                 aliases: dict[str, tuple[str, str]] | None = None) -> tuple[list[str], Callable, Callable]:
    """`__all__, __getattr__, __dir__` for `package`'s `__init__`: `exports` maps a module to the names it defines,
    `aliases` a public name to (module, the name there). A name, once loaded, is a plain module attribute."""
    where = {name: (module, name) for module, names in exports.items() for name in names} | (aliases or {})
    names = sorted(where)

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attr = where[name]
        value = getattr(import_module(module), attr)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return list(names)

    return names, __getattr__, __dir__
