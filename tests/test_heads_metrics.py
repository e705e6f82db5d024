"""heads.metrics against values computed by hand on tiny arrays."""
import numpy as np
import pytest

from heads.metrics import headline, mean_std, multiclass_metrics, multilabel_metrics, ranking_at_k, tune_threshold

# 4 clips x 3 labels; the last clip has no positive label.
Y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
P = np.array([[0.9, 0.2, 0.4], [0.3, 0.8, 0.1], [0.6, 0.3, 0.7], [0.1, 0.2, 0.6]])


def test_multilabel_metrics_match_hand_computed_values():
    m = multilabel_metrics(Y, P, ["a", "b", "c"], threshold=0.5)
    # predictions at 0.5: [1,0,0] [0,1,0] [1,0,1] [0,0,1] -> TP 3, FP 2, FN 2
    assert m["micro_f1"] == pytest.approx(6 / 10)
    # per label F1: a 1, b 2/3 (one of two found), c 0; sklearn averages over every label
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    # AP: a and b rank their positives first (1, 1); c ranks its positive third, under 0.7 and 0.6 (1/3)
    assert m["ap_per_label"] == pytest.approx({"a": 1.0, "b": 1.0, "c": 1 / 3})
    assert m["mAP"] == pytest.approx((1 + 1 + 1 / 3) / 3) == headline("multilabel", Y, P)
    # top-1 of the three clips with positives: a (hit), b (hit), c (miss)
    assert m["precision@1"] == pytest.approx(2 / 3)
    assert m["mAP@1"] == pytest.approx(2 / 3)
    # top-3 = every label: hits 2, 1, 2 of 3; AP@3 = (1/1 + 2/2)/2, (1/1)/1, (1/2 + 2/3)/2
    assert m["precision@3"] == pytest.approx(5 / 9)
    assert m["mAP@3"] == pytest.approx((1 + 1 + 7 / 12) / 3)
    assert "mAP@5" not in m  # K above the number of labels is left out


def test_map_at_k_under_both_normalisations_and_per_label_prf():
    m = multilabel_metrics(Y, P, ["a", "b", "c"], threshold=0.5, tuned=0.65, fixed=0.5)
    # AP@3 numerators 2, 1, 7/6 (see above); ÷ min(3, positives) = 2, 1, 2 vs ÷ 3
    assert m["mAP@3_divmin"] == m["mAP@3"] == pytest.approx((1 + 1 + 7 / 12) / 3)
    assert m["mAP@3_divK"] == pytest.approx(25 / 54)
    assert m["per_label"]["a"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert (m["per_label"]["b"]["precision"], m["per_label"]["b"]["recall"]) == (1.0, 0.5)
    assert m["micro_f1_fixed"] == m["micro_f1"]  # decision threshold = the fixed one here
    # at 0.65: predictions [1,0,0] [0,1,0] [0,0,1] [0,0,0] -> TP 2, FP 1, FN 3
    assert m["tuned_threshold"] == 0.65 and m["micro_f1_tuned"] == pytest.approx(4 / 8)


def test_map_skips_labels_without_positives():
    y = np.array([[1, 0], [0, 0]])
    p = np.array([[0.9, 0.8], [0.2, 0.1]])
    m = multilabel_metrics(y, p, ["x", "never"], threshold=0.5)
    assert m["ap_per_label"] == {"x": 1.0}
    assert m["mAP"] == 1.0


def test_ranking_at_k_normalizes_by_the_positives_it_could_find():
    y = np.array([[0, 1, 1, 1]])
    p = np.array([[0.9, 0.8, 0.1, 0.2]])  # ranked: miss, hit, hit, hit
    ap2, p2 = ranking_at_k(y, p, 2)
    assert p2 == pytest.approx(1 / 2)
    assert ap2 == pytest.approx((1 / 2) / 2)  # one hit at rank 2, over min(K=2, 3 positives)


def test_multiclass_metrics_keys_and_values():
    labels = ["a", "b", "c", "d", "e", "f"]
    y = np.array([0, 1, 5])
    p = np.array([[0.5, 0.1, 0.1, 0.1, 0.1, 0.1],    # a: right
                  [0.1, 0.3, 0.4, 0.1, 0.05, 0.05],  # b: predicted c, b second
                  [0.3, 0.2, 0.2, 0.15, 0.1, 0.05]])  # f: predicted a, f last of 6
    m = multiclass_metrics(y, p, labels)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["top_k"] == 5 and m["top5_accuracy"] == pytest.approx(2 / 3)
    # F1 over the classes seen in truth or predictions (a, b, c, f): a = 2/3, the others 0
    assert m["macro_f1"] == pytest.approx((2 / 3) / 4)
    assert m["per_class"]["a"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert m["per_class"]["d"]["support"] == 0
    assert m["confusion_labels"] == labels
    cm = np.zeros((6, 6), int)
    cm[0, 0] = cm[1, 2] = cm[5, 0] = 1
    assert m["confusion"] == cm.tolist()
    assert headline("multiclass", y, p) == m["accuracy"]


def test_binary_top_k_is_trivially_one():
    m = multiclass_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]]), ["no", "yes"])
    assert m["top_k"] == 2 and m["top5_accuracy"] == 1.0
    assert m["accuracy"] == 0.5


def test_threshold_is_tuned_for_micro_f1():
    y = np.array([[1, 0], [0, 1], [1, 1]])
    p = np.array([[0.35, 0.1], [0.2, 0.3], [0.4, 0.32]])
    # positives score 0.3..0.4, negatives 0.1..0.2: 0.25 and 0.3 both separate them; 0.3 is nearer 0.5
    assert tune_threshold(y, p) == pytest.approx(0.3)


def test_mean_std_is_the_sample_std_and_zero_for_one_value():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(np.sqrt(2)))
    assert mean_std([0.5]) == (0.5, 0.0)
