"""bench/gpu_check.sh: on a machine without CUDA it stops at once with one line and exit code 3 (never a hang, never a
half-written JSON); its benchmark plan puts every backbone's 8-worker runs first, so a run cut short still has them."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def test_gpu_check_without_cuda_fails_with_one_line_and_exit_code_3(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PY": sys.executable, "CUDA_VISIBLE_DEVICES": ""}  # a GPU machine hides its GPUs too
    p = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 3
    assert p.stderr.strip().splitlines() == ["gpu_check: torch sees no CUDA device (torch.cuda.is_available() is "
                                             "False): run it on a GPU node"]
    assert not out.exists()


def test_gpu_check_without_torch_says_which_python_to_use(tmp_path):
    p = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "x.json")],
                       env={**os.environ, "PY": "/bin/false-python"}, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "set PY to the venv's python" in p.stderr


def test_gpu_check_plan_measures_every_backbone_and_decoder_with_8_workers_first():
    from gpu_check import BACKBONES, DECODERS, plan

    runs = plan([4, 8, 15])
    first = runs[:len(BACKBONES) * (1 + 2 * len(DECODERS))]
    eight = {(b, d) for part, b, d, w in first if part == "E" and w == 8}
    assert eight == {(b, d) for b in BACKBONES for d in DECODERS}
    assert {w for part, *_, w in runs if part == "E"} == {4, 8, 15}
    assert len(runs) == len(set(runs))
