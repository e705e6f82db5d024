"""pipeline.weights_check through `cli.py backbones`: the registry listed, a weights file checked offline."""
import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cli
from pipeline.backbones import available_backbones, load_backbone
from pipeline.weights_check import backbone_rows, known_files

runner = CliRunner()
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "weights"


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def test_backbones_lists_every_registry_backbone_with_its_dim_and_rows():
    res = invoke("backbones", "--family", "torchvision", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert sorted(rows) == available_backbones()
    assert rows["resnet50"]["dim"] == 2048 and rows["resnet50"]["rows"] == "image"
    assert rows["r2plus1d_18"]["rows"] == "clip 16"


def test_every_torchvision_weights_file_carries_its_sha256_prefix_in_its_name():
    files = [f for r in backbone_rows() for f in r.files if f.url.startswith("https://download.pytorch.org")]
    assert files and all(len(f.sha256_prefix) >= 8 and f.file in f.url for f in files)
    assert {f.weights: f.sha256_prefix for f in known_files("resnet50")} == {"IMAGENET1K_V1": "0676ba61",
                                                                            "IMAGENET1K_V2": "11ad3fa6"}


def test_a_truncated_download_under_torchvisions_name_fails_naming_the_url(tmp_path):
    bad = tmp_path / "resnet18-f37072fd.pth"
    bad.write_bytes(b"\x00" * 1000)
    res = invoke("backbones", "--check", bad)
    assert res.exit_code == 1 and "truncated" in res.stderr and "download.pytorch.org" in res.stderr


def test_a_state_dict_of_ones_own_is_checked_by_loading_it_into_the_named_backbone(tmp_path):
    path = tmp_path / "mine.pth"
    torch.save(load_backbone("resnet18", "none").model.state_dict(), path)
    res = invoke("backbones", "--check", path, "--backbone", "resnet18", "--json")
    assert res.exit_code == 0, res.output
    assert "loads into resnet18" in json.loads(res.stdout)["verdict"]
    res = invoke("backbones", "--check", path, "--backbone", "mobilenet_v2")
    assert res.exit_code == 1 and "does not fit mobilenet_v2" in res.output and "Traceback" not in res.output
    res = invoke("backbones", "--check", tmp_path / "absent.pth")
    assert res.exit_code == 1 and "no such file" in res.output


def test_the_shared_float_mobilenet_weights_load_into_mobilenet_v2():
    path = SHARED / "mobilenet_v2_float_dequantized.pth"
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    res = invoke("backbones", "--check", path, "--backbone", "mobilenet_v2")
    assert res.exit_code == 0 and "loads into mobilenet_v2" in res.stdout


def test_docs_backbones_table_lists_the_registrys_sha256_prefixes():
    text = (Path(__file__).resolve().parents[1] / "docs" / "backbones.md").read_text()
    table = text[text.index("| backbone | --weights"):].split("\n\n")[0]
    documented = {p for line in table.splitlines()[2:] for p in re.findall(r"\b[0-9a-f]{8}\b", line.split("|")[-2])}
    assert documented == {f.sha256_prefix for r in backbone_rows() for f in r.files
                          if f.sha256_prefix and f.url.startswith("https://download.pytorch.org")}
