"""cluster-eval --thumbnails: frames decoded again from the store's paths, drawn at their 2-D positions."""
import shutil

import pytest
from conftest import read_indices
from helpers import extract_flags, invoke, write_manifest
from matplotlib.image import imread

from explain.thumbnails import choose, decode_rows, draw_thumbnails, read_points, thumbnail_geometry
from featstore import open_store


def index_store(tmp_path, index_clip, other_clip=None, n=8):
    """Copies of the index clip (frame i has channel 0 = 8 i; 30 frames), labelled a, alternating with copies of
    `other_clip` labelled b; extracted every 3rd frame."""
    for i in range(n):
        shutil.copyfile(index_clip if i % 2 == 0 or other_clip is None else other_clip, tmp_path / f"c{i}.mp4")
    manifest = write_manifest(tmp_path, [(f"c{i}.mp4", "ab"[i % 2]) for i in range(n)])
    res = invoke("extract", manifest, *extract_flags(every=3), "--store", tmp_path / "s")
    assert res.exit_code == 0, res.output
    return tmp_path / "s"


def test_a_stored_row_decodes_again_to_its_own_frame(tmp_path, index_clip):
    store = open_store(index_store(tmp_path, index_clip, n=1))
    vid = store.ids()[0]
    rows = [0, 5, 9]
    got = decode_rows(store.meta(vid).path, store.config, rows, store.frame_index(vid),
                      thumbnail_geometry(store.config, 24))
    assert [read_indices(got[r][None])[0] for r in rows] == store.frame_index(vid)[rows].tolist() == [0, 15, 27]
    assert got[0].shape == (24, 24, 3)


@pytest.mark.slow
def test_cluster_eval_thumbnails_skip_missing_files_and_cap_frame_points(tmp_path, index_clip, odd_clip):
    store = index_store(tmp_path, index_clip, odd_clip)  # odd_clip: 10 frames, so 4 rows per clip
    (tmp_path / "c3.mp4").unlink()  # moved away after extraction
    res = invoke("cluster-eval", store, "--k", "2", "--plot", "tsne", "--thumbnails", "--out", tmp_path / "km")
    assert res.exit_code == 0, res.output
    assert "7 of 8 points drawn" in res.output and "c3" in res.output and "skipped" in res.output
    image = imread(tmp_path / "km" / "thumbnails.png")
    assert image.shape[0] > 500 and imread(tmp_path / "km" / "embedding.png").shape[0] > 0
    for run, cap in ((tmp_path / "km", 3), (tmp_path / "kf", 12)):
        if run.name == "kf":
            res = invoke("cluster-eval", store, "--k", "2", "--level", "frame", "--thumbnails", "--max-points", "12",
                         "--out", run)
            assert res.exit_code == 0 and "of 56 points drawn" in res.output, res.output
        points, _ = read_points(run)
        chosen = [points[i] for i in choose(points, cap, seed=0)]
        drawn = draw_thumbnails(run, max_points=cap)
        assert drawn.n_points == len(points) == (8 if run.name == "km" else 4 * 10 + 4 * 4)
        assert drawn.drawn == sum(p.id != "c3" for p in chosen) and len(chosen) == cap
    res = invoke("cluster-eval", store, "--plot", "none", "--thumbnails")
    assert res.exit_code == 1 and "--plot tsne" in res.output
