#!/usr/bin/env bash
# The first numbers from a GPU node, in under 8 minutes: the CUDA tests (pytest -m gpu, at most 110 s) and the
# extraction benchmark (bench/gpu_check.py: B, D, E of resnet18, resnet50 and r2plus1d_18 with PyAV, torchcodec on
# CPU and torchcodec on the GPU, workers 4/8/15; no run starts after 320 s, and it is killed at 340 s), into one
# JSON. Without a CUDA device it fails at once with one line and exit code 3; a missing tool gives exit code 2.
#
#   bench/gpu_check.sh [OUT.json]      (default bench/results/gpu_check.json; PY=python to pick the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${1:-bench/results/gpu_check.json}

command -v "$PY" >/dev/null || { echo "gpu_check: $PY not found: set PY to the venv's python" >&2; exit 2; }
"$PY" -c '
import sys
try:
    import torch
except ImportError:
    sys.exit(2)
sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null
case $? in
    0) ;;
    2) echo "gpu_check: $PY cannot import torch: set PY to the venv's python" >&2; exit 2 ;;
    *) echo "gpu_check: torch sees no CUDA device (torch.cuda.is_available() is False): run it on a GPU node" >&2
       exit 3 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
timeout 110 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests >"$work/tests.txt" 2>&1
tests_rc=$?
timeout 340 "$PY" bench/gpu_check.py --budget-s 320 --out "$work/extract.json" >"$work/extract.log" 2>&1
bench_rc=$?

"$PY" - "$work" "$OUT" "$tests_rc" "$bench_rc" "$start" <<'EOF'
import json, sys, time
from pathlib import Path
work, out, tests_rc, bench_rc, start = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
tests = (work / "tests.txt").read_text().splitlines()
extract = json.loads((work / "extract.json").read_text()) if (work / "extract.json").exists() else None
result = {"seconds": round(time.time() - start), "gpu_tests": {"exit_code": tests_rc, "summary": tests[-1:] ,
          "failures": [ln for ln in tests if ln.startswith(("FAILED", "ERROR"))]},
          "extract": extract or {"exit_code": bench_rc, "log_tail": (work / "extract.log").read_text()[-2000:]}}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(result, indent=1) + "\n")
print(f"gpu_check: wrote {out} (gpu tests exit {tests_rc}, benchmark exit {bench_rc}, {result['seconds']} s)")
EOF
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
