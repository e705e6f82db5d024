"""featstore/lazy.py: the packages' public names load on first use, so importing a package costs no torch."""
import subprocess
import sys

import pytest

import finetune
import heads
import pipeline


def test_importing_the_packages_loads_no_torch_until_a_name_is_used():
    code = ("import sys, heads, finetune, pipeline; print('torch' in sys.modules); "
            "heads.TrainConfig; print('torch' in sys.modules); heads.fit_head; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "True"]  # TrainConfig imports nothing heavy


def test_a_lazy_name_is_the_modules_own_object_and_an_unknown_one_is_an_attribute_error():
    from finetune.run import finetune as run_finetune
    from pipeline.extract import extract

    assert finetune.finetune is run_finetune and pipeline.run_extraction is extract
    assert dir(heads) == heads.__all__ and "fit_head" in heads.__all__
    with pytest.raises(AttributeError, match="module 'heads' has no attribute 'fit_heads'"):
        heads.fit_heads
