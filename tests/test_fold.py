"""Eager bf16 on CPUs (pipeline.fold): BatchNorm folded into the convolution that runs before it, weights cast to
bf16 once, only for models bf16 keeps accurate; everything else stays on autocast, and the backbone is not changed."""
import numpy as np
import torch
import torchvision
from torch import nn

from pipeline.backbones import Backbone, Preprocess
from pipeline.embed import Embedder

CPU = torch.device("cpu")
PRE = Preprocess(64, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def with_real_looking_statistics(model: nn.Module) -> nn.Module:
    """BatchNorm running statistics and affine terms away from their init values, so folding them changes weights."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t, lo, hi in ((m.running_mean, -0.2, 0.2), (m.running_var, 0.5, 1.5), (m.weight.data, 0.5, 1.5),
                              (m.bias.data, -0.2, 0.2)):
                t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return model.eval().requires_grad_(False)


def frames(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    small = torch.rand((n, 3, 8, 8), generator=g) * 255
    return nn.functional.interpolate(small, size=64, mode="bilinear").permute(0, 2, 3, 1).round().to(torch.uint8)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def backbone(model: nn.Module, dim: int) -> Backbone:
    return Backbone("test", model, PRE, dim, "none")


def test_eager_bf16_on_cpu_runs_folded_bf16_weights_within_cosine_0_9999_of_fp32_and_leaves_the_backbone_as_it_was():
    torch.manual_seed(0)
    b = backbone(with_real_looking_statistics(torchvision.models.resnet18(num_classes=10)), 10)
    x = frames(6)
    fp32 = Embedder(b, CPU, "fp32")
    bf16 = Embedder(b, CPU, "bf16")
    assert bf16.bf16_weights and not fp32.bf16_weights
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bf16.model.modules())
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert min_cosine(bf16(x), fp32(x)) > 0.9999
    assert {p.dtype for p in b.model.parameters()} == {torch.float32}  # the backbone's own model is untouched
    assert sum(isinstance(m, nn.BatchNorm2d) for m in b.model.modules()) == 20


class NormThenConv(nn.Module):
    """Declares conv before bn but runs bn first: folding by declaration order would fold the wrong way round."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(x)).mean((2, 3))


def test_a_batchnorm_that_runs_before_its_convolution_is_not_folded_into_it():
    torch.manual_seed(0)
    model = NormThenConv().eval().requires_grad_(False)
    bn = model.bn
    bn.running_mean.copy_(torch.tensor([0.5, -0.5, 0.3]))
    bn.running_var.copy_(torch.tensor([0.2, 3.0, 1.5]))
    b = backbone(model, 8)
    x = frames(4)
    bf16 = Embedder(b, CPU, "bf16")
    assert bf16.bf16_weights
    assert min_cosine(bf16(x), Embedder(b, CPU, "fp32")(x)) > 0.9999


class WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 8, 4, stride=4), nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(self.conv(x).flatten(2).transpose(1, 2)).mean(1)


def test_a_model_holding_a_module_outside_the_bf16_safe_list_runs_under_autocast_and_stays_close_to_fp32():
    torch.manual_seed(0)
    b = backbone(WithLayerNorm().eval().requires_grad_(False), 8)
    x = frames(4)
    bf16 = Embedder(b, CPU, "bf16")
    assert not bf16.bf16_weights and bf16.model is b.model
    assert min_cosine(bf16(x), Embedder(b, CPU, "fp32")(x)) > 0.999


def test_autocast_is_kept_where_asked_for_and_for_compiled_models():
    b = backbone(with_real_looking_statistics(torchvision.models.resnet18(num_classes=10)), 10)
    assert not Embedder(b, CPU, "bf16", fold=False).bf16_weights
    assert not Embedder(b, CPU, "bf16", compile=True).bf16_weights  # inductor folds with its own freezing


def test_a_hooked_model_such_as_a_layer_store_keeps_its_hook_and_runs_under_autocast():
    from pipeline.layers import LayerPool

    model = with_real_looking_statistics(torchvision.models.resnet18(num_classes=10))
    pooled = LayerPool(model, "layer2").eval()
    b = backbone(pooled, 128)
    x = frames(3)
    bf16 = Embedder(b, CPU, "bf16")
    assert not bf16.bf16_weights
    assert min_cosine(bf16(x), Embedder(b, CPU, "fp32")(x)) > 0.999


def test_a_model_its_owner_hands_over_is_folded_in_place_with_no_second_copy_and_the_same_features():
    torch.manual_seed(0)
    model = with_real_looking_statistics(torchvision.models.resnet18(num_classes=10))
    x = frames(4)
    copied = Embedder(backbone(model, 10), CPU, "bf16")(x)
    conv_weight = model.conv1.weight
    owned = Embedder(backbone(model, 10), CPU, "bf16", owns_model=True)
    assert owned.bf16_weights and model.conv1.weight is not conv_weight and model.conv1.weight.dtype == torch.bfloat16
    assert owned.model.conv1 is model.conv1  # the model's own module, folded: nothing was copied
    assert np.array_equal(owned(x), copied)
