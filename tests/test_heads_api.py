"""heads.api: what the stage-two commands call, used from Python: fit's shapes and rules, typed results,
evaluate's report kept inside the run whatever the split is called."""
import json

import pytest
from helpers import SMALL, blob_clips, write_store

import heads
from heads.models import HeadError

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {**SMALL, "epochs": 2, "patience": 2, "device": "cpu"}


@pytest.mark.parametrize("kwargs, stores, message", [
    ({"seeds": 2}, 2, "--seeds/--folds take a single store"),
    ({"folds": 2, "fuse": "concat"}, 2, "--seeds/--folds take a single store"),
    ({"seeds": 2, "folds": 2}, 1, "choose one of --seeds"),
])
def test_fit_refuses_shapes_it_cannot_train_before_touching_out(tmp_path, kwargs, stores, message):
    store = write_store(tmp_path / "s", blob_clips(per_class=4))
    with pytest.raises(HeadError, match=message):
        heads.fit([store] * stores, heads.TrainConfig(**FAST), tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()


def test_fit_and_evaluate_say_what_kind_of_run_they_made(tmp_path):
    store = write_store(tmp_path / "s", blob_clips(per_class=8))
    single = heads.fit(store, heads.TrainConfig(**FAST), tmp_path / "one")
    seeds = heads.fit([store], heads.TrainConfig(**FAST), tmp_path / "rep", seeds=2)
    assert (single.kind, seeds.kind) == ("single", "seeds")
    assert single.metrics == json.loads((tmp_path / "one" / "metrics.json").read_text())
    scored = heads.evaluate(tmp_path / "one", split="test")
    assert scored.kind == "single" and scored.report == [] and scored.metrics["n"] == single.metrics["n_test"]


def test_evaluate_report_stays_inside_the_run_whatever_the_split_is_called(tmp_path):
    clips = [(vid, label, group, "../../evil" if i % 3 == 0 else split, f)
             for i, (vid, label, group, split, f) in enumerate(blob_clips(per_class=8))]
    store = write_store(tmp_path / "data" / "s", clips)
    run = tmp_path / "data" / "run"
    heads.fit(store, heads.TrainConfig(**FAST), run)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if run not in p.parents)
    result = heads.evaluate(run, split="../../evil", report=True)
    assert result.report and all(run in p.parents for p in result.report)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if run not in p.parents) == before
