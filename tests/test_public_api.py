"""Stage one's public API: pipeline/__init__.py exports what a notebook needs, and bench/ uses nothing else."""
import ast
from pathlib import Path

import pipeline

ROOT = Path(__file__).resolve().parents[1]


def test_every_exported_name_exists_and_is_public():
    assert all(hasattr(pipeline, name) and not name.startswith("_") for name in pipeline.__all__)
    for needed in ("load_backbone", "ClipStream", "decode_video", "Embedder", "run_extraction", "embed_files"):
        assert needed in pipeline.__all__


def test_bench_scripts_use_only_public_pipeline_names():
    for script in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
                assert node.module == "pipeline", f"{script.name} imports {node.module}: use `from pipeline import`"
                bad = [a.name for a in node.names if a.name not in pipeline.__all__]
                assert not bad, f"{script.name} imports {bad}, which pipeline does not export"
