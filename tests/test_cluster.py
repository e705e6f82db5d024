"""heads.cluster: metrics against hand-computed values, and cluster_eval on small synthetic stores."""
import json
import math

import numpy as np
import pytest
from matplotlib.image import imread
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score
from sklearn.preprocessing import normalize

from featstore import Loaded, StoreWriter, VideoRecord, open_store
from heads import cluster
from heads.cluster import ClusterConfig, ClusterError, cluster_eval, pool_features
from heads.metrics import (clustering_metrics, conditional_entropy_bits, hungarian_accuracy, purity,
                           retrieval_precision)
from heads.plots import hungarian_column_order

H_QUARTER = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))  # entropy of a 3:1 split, 0.8113 bits


def make_store(path, n_classes=4, per_class=6, frames=5, dim=16, spread=0.05, labels=True,
               splits=None, seed=0, label_fn=None):
    """Clips of class c are noisy copies of a random class centre; `spread` sets how much classes overlap."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    with StoreWriter(path, config={"backbone": "synthetic", "dim": dim}, fingerprint_keys=["backbone", "dim"],
                     dim=dim, flush_videos=7) as w:
        for i in range(n_classes * per_class):
            c = i % n_classes
            feats = (centres[c] + spread * rng.normal(size=(frames, dim)) * np.sqrt(dim)).astype(np.float32)
            name = label_fn(c) if label_fn else f"class{c}"
            w.add(VideoRecord(f"v{i:03d}_c{c}", label=name if labels else "", group=f"g{i % 3}",
                              split=splits(i) if splits else "", features=feats,
                              frame_index=np.arange(frames) * 10, time_s=np.arange(frames) / 2.5))
    return path


def direct_points(path, ids=None):
    """The reference computation, written out with numpy and scikit-learn only."""
    store = open_store(path)
    ids = store.ids() if ids is None else ids
    X = normalize(np.stack([store.features(v).mean(axis=0) for v in ids]))
    return ids, X, [store.meta(v).labels[0] for v in ids]


def read_assignments(run):
    rows = (run / "assignments.csv").read_text().splitlines()[1:]
    return [r.split(",") for r in rows]


# -- metrics -----------------------------------------------------------------------------------------
def test_perfect_clustering_scores_one_under_any_cluster_naming():
    labels = ["a", "a", "b", "b", "b", "c"]
    for clusters in ([0, 0, 1, 1, 1, 2], [2, 2, 0, 0, 0, 1], [7, 7, 3, 3, 3, 5]):
        m = clustering_metrics(labels, clusters)
        for key in ("nmi", "ami", "ari", "v_measure", "homogeneity", "completeness", "purity", "accuracy"):
            assert m[key] == pytest.approx(1.0), key
        assert m["cond_entropy_bits"] == pytest.approx(0.0, abs=1e-12)


def test_one_big_cluster_keeps_all_label_entropy():
    labels, clusters = ["a", "a", "a", "b"], [0, 0, 0, 0]
    m = clustering_metrics(labels, clusters)
    assert m["purity"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["cond_entropy_bits"] == pytest.approx(H_QUARTER)
    assert m["label_entropy_bits"] == pytest.approx(H_QUARTER)
    assert m["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert m["ari"] == pytest.approx(0.0, abs=1e-12)


def test_partial_clustering_matches_hand_computation():
    labels, clusters = ["a", "a", "a", "b", "b", "b"], [0, 0, 1, 1, 1, 1]
    # cluster 0 = {a, a} is pure; cluster 1 = {a, b, b, b} holds a 1:3 split and 4/6 of the points
    h_given = 4 / 6 * H_QUARTER
    h_clusters = -(1 / 3 * math.log2(1 / 3) + 2 / 3 * math.log2(2 / 3))
    assert conditional_entropy_bits(labels, clusters) == pytest.approx(h_given)
    assert purity(labels, clusters) == pytest.approx(5 / 6)
    assert hungarian_accuracy(labels, clusters) == pytest.approx(5 / 6)
    mi = 1.0 - h_given
    assert clustering_metrics(labels, clusters)["nmi"] == pytest.approx(mi / ((1.0 + h_clusters) / 2))
    # permuting cluster ids and relabelling changes nothing
    assert conditional_entropy_bits(["y", "y", "y", "x", "x", "x"], [5, 5, 2, 2, 2, 2]) == pytest.approx(h_given)


def test_hungarian_accuracy_is_one_to_one_unlike_purity():
    # six a's split over two clusters, one b in the second: both clusters' majority is a
    labels, clusters = ["a"] * 6 + ["b"], [0, 0, 0, 1, 1, 1, 1]
    assert purity(labels, clusters) == pytest.approx(6 / 7)
    assert hungarian_accuracy(labels, clusters) == pytest.approx(4 / 7)


def test_column_order_puts_matched_clusters_on_the_diagonal():
    cont = np.array([[0, 9, 0, 1], [8, 0, 0, 0], [0, 1, 0, 7]])  # label0->c1, label1->c0, label2->c3
    assert hungarian_column_order(cont) == [1, 0, 3, 2]


def test_retrieval_precision_by_hand():
    v = normalize(np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.7, 0.7]], dtype=np.float32))
    labels = ["a", "a", "b", "b", "b"]
    # nearest (itself excluded): 0->1 a, 1->0 a, 2->3 b, 3->2 b, 4->1 or 0 (a): 4 of 5 right
    assert retrieval_precision(v, labels, ks=(1, 10)) == {"precision@1": pytest.approx(0.8)}


def test_pool_features_mean_and_max():
    feats = np.array([[1, 2], [3, 0], [5, 5], [0, 0], [2, 4], [4, -2]], dtype=np.float32)
    loaded = Loaded(feats, np.array([0, 2, 3]), np.array([2, 1, 3]), ["x", "y", "z"], [{}, {}, {}])
    np.testing.assert_allclose(pool_features(loaded, "mean"), [[2, 1], [5, 5], [2, 2 / 3]], rtol=1e-6)
    np.testing.assert_array_equal(pool_features(loaded, "max"), [[3, 2], [5, 5], [4, 4]])
    with pytest.raises(ClusterError, match="--pool"):
        pool_features(loaded, "median")


# -- cluster_eval ------------------------------------------------------------------------------------
def test_equals_direct_sklearn_on_overlapping_classes(tmp_path):
    store = make_store(tmp_path / "s", n_classes=5, per_class=10, spread=0.6, seed=3)
    res = cluster_eval(store, ClusterConfig(seed=7, n_init=4, plot="none"), tmp_path / "run")
    ids, X, labels = direct_points(store)
    ref = KMeans(n_clusters=5, n_init=4, random_state=7).fit(X)
    got = read_assignments(tmp_path / "run")
    assert [r[0] for r in got] == ids
    np.testing.assert_array_equal([int(r[3]) for r in got], ref.labels_)
    nmi = normalized_mutual_info_score(labels, ref.labels_)
    assert res["summary"]["nmi"] == nmi
    assert 0.2 < nmi < 0.99  # overlapping classes: the comparison is not between two trivial answers
    assert res["metrics"]["inertia"] == pytest.approx(ref.inertia_, rel=1e-5)
    assert res["config"]["k"] == 5 and res["config"]["k_source"] == "labels"


def test_outputs_files_and_self_description(tmp_path):
    store = make_store(tmp_path / "s")
    res = cluster_eval(store, ClusterConfig(k=4, plot="tsne", k_range=(2, 6)), tmp_path / "run")
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["kind"] == "cluster"
    assert set(saved["summary"]) == {"nmi", "ari", "purity", "accuracy", "cond_entropy_bits"}
    assert saved["summary"]["nmi"] == pytest.approx(1.0) and saved["summary"]["cond_entropy_bits"] < 1e-9
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["fingerprint"] == open_store(store).fingerprint and cfg["backbone"] == "synthetic"
    assert sorted(saved["clusters"]["sizes"]) == [6, 6, 6, 6]
    assert saved["retrieval"]["precision@1"] == pytest.approx(1.0)
    assert [r["k"] for r in saved["sweep"]] == [2, 3, 4, 5, 6]
    best = max(saved["sweep"], key=lambda r: r["silhouette"])
    assert best["k"] == 4  # the sweep finds the four planted classes
    assert saved["plots"] == res["plots"] == ["embedding.png", "contingency.png", "sweep.png"]
    for name in saved["plots"]:
        img = imread(run / name)
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 400, name
        assert img[..., :3].std() > 0.05, f"{name} looks blank"


def test_contingency_png_shows_a_diagonal(tmp_path):
    # the heat map's darkest cell in each row must sit in that row's column band
    store = make_store(tmp_path / "s", n_classes=3, per_class=8)
    cluster_eval(store, ClusterConfig(plot="none"), tmp_path / "run")
    rgb = imread(tmp_path / "run" / "contingency.png")[..., :3]
    dark = (rgb[..., 0] < 0.3) & (rgb[..., 2] > 0.4)  # dark blue cells; black text and white are not
    ys, xs = np.nonzero(dark[:, : int(rgb.shape[1] * 0.8)])  # leave out the colour bar
    # three dark cells: their centres go down and to the right together
    rows = np.array_split(np.sort(np.unique(ys)), 3)
    centres = [xs[np.isin(ys, r)].mean() for r in rows]
    assert centres[0] < centres[1] < centres[2]


def test_same_seed_same_result_and_seeds_are_averaged(tmp_path):
    store = make_store(tmp_path / "s", n_classes=5, per_class=10, spread=0.6, seed=3)
    a = cluster_eval(store, ClusterConfig(seeds=3, seed=1, n_init=1, plot="none"), tmp_path / "a")
    b = cluster_eval(store, ClusterConfig(seeds=3, seed=1, n_init=1, plot="none"), tmp_path / "b")
    assert a["per_seed"] == b["per_seed"]
    assert read_assignments(tmp_path / "a") == read_assignments(tmp_path / "b")
    assert [r["seed"] for r in a["per_seed"]] == [1, 2, 3]
    _, X, labels = direct_points(store)
    for r in a["per_seed"]:  # seed i is exactly KMeans(random_state=i): here the three runs all differ
        assert r["nmi"] == normalized_mutual_info_score(
            labels, KMeans(n_clusters=5, n_init=1, random_state=r["seed"]).fit(X).labels_)
    nmis = [r["nmi"] for r in a["per_seed"]]
    assert len(set(nmis)) == 3 and a["std"]["nmi"] > 0
    assert a["metrics"]["nmi"] == pytest.approx(np.mean(nmis))
    assert a["std"]["nmi"] == pytest.approx(np.std(nmis, ddof=1))  # sample std, as fit-head --seeds (issue 18)
    assert a["summary"]["ari"] == pytest.approx(np.mean([r["ari"] for r in a["per_seed"]]))


def test_label_free_mode(tmp_path):
    store = make_store(tmp_path / "s", labels=False)
    with pytest.raises(ClusterError, match="no labels.*--k"):
        cluster_eval(store, ClusterConfig(plot="none"))
    res = cluster_eval(store, ClusterConfig(k=4, plot="pca"), tmp_path / "run")
    assert set(res["summary"]) == {"inertia", "silhouette"}
    assert "nmi" not in res["metrics"] and res["retrieval"] == {}
    assert res["summary"]["silhouette"] > 0.8
    nearest = res["clusters"]["nearest_ids"]
    assert len(nearest) == 4 and all(len(ids) == 3 for ids in nearest)
    # ids end in their hidden class: the clips nearest each centroid share it, and each centroid has its own
    classes = [{vid.split("_")[1] for vid in ids} for ids in nearest]
    assert all(len(c) == 1 for c in classes) and len(set.union(*classes)) == 4
    assert res["plots"] == ["embedding.png"]
    assert imread(tmp_path / "run" / "embedding.png").shape[0] > 300


def test_frame_level(tmp_path):
    store = make_store(tmp_path / "s", per_class=5, frames=7)
    res = cluster_eval(store, ClusterConfig(level="frame", plot="none"), tmp_path / "run")
    assert res["n_points"] == 4 * 5 * 7 and res["n_items"] == 20
    assert res["config"]["algorithm"] == "KMeans"
    assert res["summary"]["nmi"] == pytest.approx(1.0)
    rows = read_assignments(tmp_path / "run")
    assert len(rows) == 140 and rows[1][:2] == ["v000_c0", "1"]
    # frames of one clip all fall in that clip's cluster
    by_clip = {}
    for vid, _, _, c in rows:
        by_clip.setdefault(vid, set()).add(c)
    assert all(len(c) == 1 for c in by_clip.values())
    nearest = res["clusters"]["nearest_ids"]
    assert all(len(set(ids)) == 3 for ids in nearest)  # three distinct clips, not three frames of one


def test_frame_level_equals_direct_sklearn_on_normalised_frames(tmp_path):
    store = make_store(tmp_path / "s", n_classes=3, per_class=4, frames=6, spread=0.8, seed=2)
    res = cluster_eval(store, ClusterConfig(level="frame", k=3, n_init=2, seed=4, plot="none"), tmp_path / "run")
    s = open_store(store)
    frames = normalize(np.concatenate([s.features(v) for v in s.ids()]))
    ref = KMeans(n_clusters=3, n_init=2, random_state=4).fit(frames)
    np.testing.assert_array_equal([int(r[3]) for r in read_assignments(tmp_path / "run")], ref.labels_)
    assert res["metrics"]["inertia"] == pytest.approx(ref.inertia_, rel=1e-5)


def test_large_frame_sets_switch_to_minibatch(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "MINIBATCH_ABOVE", 100)  # instead of writing 20k frames
    store = make_store(tmp_path / "s", per_class=5, frames=7)
    res = cluster_eval(store, ClusterConfig(level="frame", n_init=3, plot="none"))
    assert res["config"]["algorithm"] == "MiniBatchKMeans" and res["summary"]["nmi"] == pytest.approx(1.0)
    assert cluster_eval(store, ClusterConfig(level="video", plot="none"))["config"]["algorithm"] == "KMeans"


def test_progress_is_reported_through_the_callback(tmp_path):
    calls = []
    store = make_store(tmp_path / "s", per_class=3)
    cluster_eval(store, ClusterConfig(seeds=2, k_range=(2, 3), plot="pca"), tmp_path / "run",
                 on_progress=lambda e: calls.append((e["stage"], e["done"], e["total"])))
    assert ("fit", 2, 2) in calls and ("sweep", 2, 2) in calls and calls[-1] == ("plot", 1, 1)


def test_fit_on_one_split_score_another(tmp_path):
    store = make_store(tmp_path / "s", n_classes=4, per_class=10, spread=0.5, seed=5,
                       splits=lambda i: "test" if i % 5 == 0 else "train")
    res = cluster_eval(store, ClusterConfig(fit_split="train", split="test", n_init=3, plot="none"),
                       tmp_path / "run")
    store_ = open_store(store)
    train = [v for v in store_.ids() if store_.meta(v).split == "train"]
    test = [v for v in store_.ids() if store_.meta(v).split == "test"]
    _, Xtr, _ = direct_points(store, train)
    _, Xte, yte = direct_points(store, test)
    ref = KMeans(n_clusters=4, n_init=3, random_state=0).fit(Xtr)
    pred = ref.predict(Xte)
    got = read_assignments(tmp_path / "run")
    assert [r[0] for r in got] == test and res["n_fit_points"] == len(train)
    np.testing.assert_array_equal([int(r[3]) for r in got], pred)
    assert res["summary"]["nmi"] == pytest.approx(normalized_mutual_info_score(yte, pred))
    assert res["metrics"]["inertia"] == pytest.approx(-ref.score(Xte), rel=1e-5)
    # without --split, the items outside the fit split are scored
    assert cluster_eval(store, ClusterConfig(fit_split="train", n_init=3, plot="none"))["n_items"] == len(test)


def test_multi_label_items_use_their_first_label(tmp_path):
    store = make_store(tmp_path / "s", n_classes=3, label_fn=lambda c: f"class{c}|shared")
    res = cluster_eval(store, ClusterConfig(plot="none"))
    assert res["config"]["k"] == 3 and res["summary"]["nmi"] == pytest.approx(1.0)
    assert sorted(res["clusters"]["majority_label"]) == ["class0", "class1", "class2"]


def test_pca_whitening_and_max_pool(tmp_path):
    store = make_store(tmp_path / "s")
    res = cluster_eval(store, ClusterConfig(pca=5, whiten=True, pool="max", plot="none"))
    assert res["summary"]["nmi"] == pytest.approx(1.0)
    with pytest.raises(ClusterError, match="--pca"):
        cluster_eval(store, ClusterConfig(pca=500, plot="none"))


@pytest.mark.parametrize("kwargs, flag", [
    ({"split": "nope"}, "--split"), ({"fit_split": "nope"}, "--fit-split"), ({"k": 1}, "--k"),
    ({"k": 999}, "--k"), ({"level": "clip"}, "--level"), ({"seeds": 0}, "--seeds"),
    ({"whiten": True}, "--whiten"), ({"k_range": (1, 4)}, "--k-range"), ({"plot": "umap"}, "--plot"),
    ({"k_range": (2, 999)}, "--k-range"),
])
def test_user_errors_name_the_flag(tmp_path, kwargs, flag):
    store = make_store(tmp_path / "s", per_class=3)
    with pytest.raises(ClusterError, match=flag):
        cluster_eval(store, ClusterConfig(**{"plot": "none", **kwargs}))


def test_a_k_taken_from_the_labels_says_so_when_out_of_range(tmp_path):
    store = make_store(tmp_path / "s", n_classes=1, per_class=4)
    with pytest.raises(ClusterError, match="k defaults to the number of labels, 1.*pass --k N") as e:
        cluster_eval(store, ClusterConfig(plot="none"))
    assert "--k 1" not in str(e.value)
