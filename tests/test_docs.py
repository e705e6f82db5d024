"""Docs as tests: every fenced command line in README.md and docs/*.md runs, or its block says it is illustrative.

A command line is a `python cli.py ...` or `framecache ...` line in a fenced block (backslash continuations
joined). A block is illustrative when its fence says ```text (a synopsis) or a line of it starts with
`# illustrative` (it needs a cluster, the dataset, a GPU); every other block's commands are run here, in order, in
one folder, on generated clips, with the substitutions below making them small. They run in this process
(helpers.invoke): what is checked is each command's result, and a child process would pay the imports again for
every line. docs/cli.md is generated from the commands themselves and checked against them by its own test, so it is
left out here.
"""
import re
import shlex
from pathlib import Path

import pytest
import typer
from helpers import invoke

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "cli.md")]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
COMMAND = re.compile(r"^\s*(?:\$ )?(?:framecache|python cli\.py)\s+(\S+)")
# what makes a documented command small and offline here: (pattern, replacement) on the line, in order
SMALL = [
    (r"/data/UCF101", "{clips}/manifest.csv"),
    (r"--backbone resnet50 --weights IMAGENET1K_V2", "--backbone resnet18 --weights none --size 32 --crop none "
                                                     "--workers 0"),
    (r"--every 10", "--every 2"),
    (r"( fit-head .*)$", r"\1 --epochs 2"),
    (r"new_clip\.mp4", "{clip}"),
    (r"\.\./shared/weights/mobilenet_v2_float_dequantized\.pth", "{mobilenet}"),
]


def fenced_commands() -> list[tuple[str, bool, str]]:
    """(file, illustrative, command line) for every command line of every fenced block, in document order."""
    found = []
    for doc in DOCS:
        for m in FENCE.finditer(doc.read_text()):
            lines = m.group(2).replace("\\\n", " ").splitlines()
            illustrative = m.group(1) == "text" or any(line.startswith("# illustrative") for line in lines)
            found += [(doc.name, illustrative, " ".join(line.split())) for line in lines if COMMAND.match(line)]
    return found


def test_every_fenced_command_names_a_command_the_cli_has():
    import cli

    names = set(typer.main.get_command(cli.app).commands)
    unknown = [(doc, line) for doc, _, line in fenced_commands() if COMMAND.match(line).group(1) not in names]
    assert not unknown
    assert [line for _, illustrative, line in fenced_commands() if not illustrative]  # some are run below


@pytest.mark.slow
def test_every_fenced_command_that_is_not_illustrative_runs_on_generated_clips(tmp_path, monkeypatch):
    import torch

    from data.synth import make_temporal_dataset
    from pipeline.backbones import load_backbone

    clips = tmp_path / "clips"
    make_temporal_dataset(clips, n_per_class=4, frames=8, size=32, seed=1)
    mobilenet = tmp_path / "mobilenet_v2.pth"
    torch.save(load_backbone("mobilenet_v2", "none").model.state_dict(), mobilenet)
    monkeypatch.chdir(tmp_path)  # the documented relative paths (stores/, runs/) land here
    values = {"clips": clips, "clip": sorted(clips.rglob("*.mp4"))[0], "mobilenet": mobilenet}
    for doc, illustrative, line in fenced_commands():
        if illustrative:
            continue
        small = line
        for pattern, replacement in SMALL:
            small = re.sub(pattern, replacement.format(**values), small)
        args = shlex.split(re.sub(r"^(\$ )?(framecache|python cli\.py)", "", small), comments=True)
        res = invoke(*args)
        assert res.exit_code == 0, f"{doc}: {line}\n(run as: {' '.join(args)})\n{res.output[-1500:]}\n{res.exception!r}"
