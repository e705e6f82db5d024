"""docs/cli.md is the CLI's own option definitions, written out (ui/reference.py): it cannot drift from --help."""
from pathlib import Path

import cli
from ui.reference import reference

ROOT = Path(__file__).resolve().parent.parent


def test_docs_cli_md_is_what_the_commands_declare():
    written = (ROOT / "docs" / "cli.md").read_text()
    assert written == reference(cli.app), "docs/cli.md differs from the CLI: run `make docs` and commit the result"


def test_the_reference_lists_every_command_and_every_option_of_it():
    import typer.main

    text = reference(cli.app)
    group = typer.main.get_command(cli.app)
    for name, command in group.commands.items():
        assert f"## {name}\n" in text
        for param in command.params:
            for flag in getattr(param, "opts", []):
                assert flag.startswith("--") is False or f"`{flag}" in text, (name, flag)
