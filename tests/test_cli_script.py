"""The `framecache` console script (pyproject's [project.scripts]) is `python cli.py`, under another name."""
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT):
    env = {**os.environ, "COLUMNS": "100", "TERM": "dumb"}
    return subprocess.run([*args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_pyproject_declares_framecache_as_cli_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"framecache": "cli:main"}


def test_the_entry_point_function_gives_what_cli_py_gives():
    """What the installed script runs (`from cli import main; main()`), compared with `python cli.py`."""
    as_script = run(sys.executable, "cli.py", "extract", "--help")
    as_entry = run(sys.executable, "-c", "import sys; sys.argv[0] = 'framecache'; from cli import main; main()",
                   "extract", "--help")
    assert as_script.returncode == as_entry.returncode == 0, as_entry.stderr
    words = [r.stdout.replace("framecache", "cli.py").split() for r in (as_entry, as_script)]
    assert words[0] == words[1]  # the same text, only the name and so the padding differ
    bad = run(sys.executable, "-c", "import sys; from cli import main; main()", "info", "/no/such/store")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def test_the_installed_framecache_command_runs_from_any_folder(tmp_path):
    """After `pip install -e .`: skipped where the environment was installed before the script existed."""
    script = Path(sys.executable).parent / "framecache"
    if not script.exists():
        pytest.skip(f"no framecache script beside {sys.executable}: run `pip install -e .` to install it")
    # torchvision's table only: the whole catalog would import timm, open_clip and transformers first (~4 s)
    res = run(str(script), "backbones", "--family", "torchvision", cwd=tmp_path)
    assert res.returncode == 0 and "resnet18" in res.stdout, res.stderr
