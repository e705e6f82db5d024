"""The command-line reference (docs/cli.md), written from the commands' own option definitions.

`make docs` regenerates it; tests/test_cli_reference.py fails when the
file and the CLI differ, so the reference cannot drift from `--help`.
"""
from __future__ import annotations

import typing
from enum import Enum
from pathlib import Path

PIPE = "\\|"  # a literal | inside a markdown table cell
HEADER = """# Command-line reference

Generated from the commands' own option definitions by `make docs`;
`tests/test_cli_reference.py` fails when this page and the CLI differ. `python cli.py COMMAND --help` shows the same.
Why the commands behave as they do (exit codes, signals, run folders): [cli-decisions.md](cli-decisions.md).
Exit codes for every command: 0 success, 1 user error, 2 finished with failed items, 130 SIGINT, 143 SIGTERM.
"""


def _kind(param) -> str:
    """How a parameter's value reads: its choices, or the type's plain name, with its range."""
    annotation = param.type_descriptor.annotation
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        text = "|".join(str(m.value) for m in annotation)
    elif annotation is bool:
        text = "flag"
    else:
        text = {Path: "path", str: "text", int: "integer", float: "number"}.get(annotation, str(annotation))
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None or high is not None:
        text += f" ({low if low is not None else ''}..{high if high is not None else ''})"
    return text


def _default(param) -> str:
    if param.required:
        return "required"
    value = param.default
    if isinstance(value, Enum):
        value = value.value
    if value is None or value == [] or value == ():
        return ""
    if isinstance(value, bool) and param.secondary_opts:
        return f"`{param.opts[0] if value else param.secondary_opts[0]}`"
    return f"`{value}`"


def _row(param) -> str:
    if param.param_type_name == "argument":
        name = param.name.upper() + ("..." if param.nargs == -1 else "")
    else:
        name = " / ".join(param.opts + list(param.secondary_opts))
        name += " (repeatable)" if param.multiple else ""
    help_text = " ".join((param.help or "").split()).replace("|", PIPE)
    return f"| `{name}` | {_kind(param).replace('|', ' ' + PIPE + ' ')} | {_default(param)} | {help_text} |"


def command_section(name: str, command) -> str:
    """One command's usage line, help and parameter table."""
    arguments = " ".join(p.name.upper() + ("..." if p.nargs == -1 else "") for p in command.params
                         if p.param_type_name == "argument")
    lines = [f"## {name}", "", f"`python cli.py {name} {arguments} [OPTIONS]`".replace("  ", " "), "",
             " ".join((command.help or "").split()), ""]
    if command.params:
        lines += ["| parameter | value | default | what |", "| --- | --- | --- | --- |"]
        lines += [_row(p) for p in command.params if not getattr(p, "hidden", False)]
    return "\n".join(lines) + "\n"


def reference(app) -> str:
    """The whole reference page for a typer app, commands in the order they are declared."""
    import typer.main

    group = typer.main.get_command(app)
    sections = [command_section(name, group.commands[name]) for name in group.commands]
    return HEADER + "\n" + "\n".join(sections)

