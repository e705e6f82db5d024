"""heads.models: the registry, one forward signature, and masking that makes padding invisible."""
import pytest
import torch

from heads.models import HEADS, HeadConfig, HeadError, build_head

D, C = 6, 3


def make(kind: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = HeadConfig(kind=kind, in_dim=D, n_classes=C, hidden=16, layers=2, heads=2, max_len=20, **kw)
    return build_head(cfg).eval()


def test_registry_lists_every_head():
    assert set(HEADS) == {"linear", "mlp", "rnn", "gru", "lstm", "attention", "transformer"}


def test_unknown_head_names_the_valid_ones():
    with pytest.raises(HeadError, match="--head 'cnn'.*linear, mlp, rnn, gru, lstm, attention, transformer"):
        build_head(HeadConfig(kind="cnn", in_dim=D, n_classes=C))


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_forward_gives_one_logit_row_per_clip(kind):
    x, lengths = torch.randn(4, 7, D), torch.tensor([7, 3, 1, 5])
    assert make(kind)(x, lengths).shape == (4, C)


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("extra", [{}, {"proj_dim": 4}, {"bidirectional": True}, {"pool": "cls"}])
def test_a_clip_scores_the_same_alone_and_beside_a_longer_clip(kind, extra):
    model = make(kind, **extra)
    clip = torch.randn(1, 5, D)
    alone = model(clip, torch.tensor([5]))
    # Batched with a 12-frame clip, the short clip gets 7 padding rows: fill them with garbage.
    x = torch.full((2, 12, D), 1e3)
    x[0, :5] = clip[0]
    x[1] = torch.randn(12, D)
    together = model(x, torch.tensor([5, 12]))
    torch.testing.assert_close(together[0:1], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["gru", "lstm", "transformer"])
def test_order_aware_heads_see_frame_order(kind):
    model = make(kind)
    x = torch.randn(1, 6, D)
    lengths = torch.tensor([6])
    assert not torch.allclose(model(x, lengths), model(x.flip(1), lengths), atol=1e-4)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_pooling_heads_are_order_blind(kind):
    model = make(kind)
    x = torch.randn(1, 6, D)
    lengths = torch.tensor([6])
    torch.testing.assert_close(model(x, lengths), model(x.flip(1), lengths), atol=1e-5, rtol=1e-4)


def test_normalization_stats_travel_in_the_state_dict():
    model = make("linear")
    model.input.set_stats(torch.full((D,), 2.0), torch.full((D,), 3.0))
    state = model.state_dict()
    assert torch.equal(state["input.mean"], torch.full((D,), 2.0))
    fresh = make("linear")
    fresh.load_state_dict(state)
    x, lengths = torch.randn(2, 4, D), torch.tensor([4, 2])
    torch.testing.assert_close(fresh(x, lengths), model(x, lengths))


def test_projection_sets_the_input_width():
    model = make("lstm", proj_dim=4)
    assert model.input.proj.weight.shape == (4, D)
    assert model.rnn.input_size == 4


def test_transformer_refuses_clips_longer_than_its_positions():
    with pytest.raises(HeadError, match="max_len 20.*--max-frames"):
        make("transformer")(torch.randn(1, 21, D), torch.tensor([21]))


def test_transformer_width_must_split_into_heads():
    with pytest.raises(HeadError, match="--hidden 10 must be a multiple of --heads 4"):
        build_head(HeadConfig(kind="transformer", in_dim=D, n_classes=C, hidden=10, heads=4))
