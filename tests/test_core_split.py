"""The core split of an extraction (ExtractConfig.model_threads, decode_nice; measured by bench/split.py) changes
where the work runs, not what is stored, and gives the process its torch threads back."""
import numpy as np
import torch
from helpers import tiny_config, write_clips

from featstore import open_store
from pipeline.extract import extract
from pipeline.sources import load_source


def test_a_run_with_its_own_core_split_stores_the_same_rows_and_gives_the_threads_back(tmp_path):
    items = load_source(write_clips(tmp_path, ["a.mkv", "b.mkv"], frames=4))
    before = torch.get_num_threads()
    extract(items, tmp_path / "default", tiny_config())
    extract(items, tmp_path / "split", tiny_config(model_threads=1, decode_nice=5, workers=1))
    assert torch.get_num_threads() == before
    a, b = open_store(tmp_path / "default").load_all(), open_store(tmp_path / "split").load_all()
    assert a.ids == b.ids
    np.testing.assert_allclose(a.features, b.features, atol=1e-5)
