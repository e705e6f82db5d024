"""Eager bf16 on CPUs without autocast: each BatchNorm folded into the convolution before it, then the weights cast
to bf16 once, for models made only of modules bf16 keeps accurate (convolutions, linear layers, activations,
pooling). Autocast casts every weight again on every call and runs BatchNorm as a pass of its own; on the AMX Xeon
this path ran resnet18 1.31x, resnet50 1.30x and mobilenet_v2 1.35x autocast's images/s at batch 8, cosine to
fp32 unchanged (bench/results/backbone_amx.json, variants eager and autocast; docs/extract.md "Backbone speed on
CPU").

Which convolution a BatchNorm follows is read off the traced graph (torch.fx), so the order the model runs its
modules in decides, not the order it declares them in; a pair is folded only where the convolution feeds nothing
else and neither module is called twice. A model that does not trace, holds any other module (LayerNorm,
attention, a quantized op) or a hook (--layer's LayerPool keeps a block's output through one, which a traced copy
would not call) is left to autocast.

Folding works on a copy, or in place where the caller owns the model (extract builds one per run): then no second
fp32 copy is ever held, and the fp32 weights it replaced go back to the system (resnet50: 100 MB).
"""
from __future__ import annotations

import copy
import ctypes
from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

# Leaf modules a bf16 forward pass keeps within cosine 0.9999 of fp32 once BatchNorm is folded (a BatchNorm that
# follows no convolution stays, in bf16: a per-channel affine map).
BF16_SAFE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
             nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.Sigmoid, nn.GELU, nn.Hardtanh,
             nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
             nn.Dropout, nn.Identity, nn.Flatten)
PAIRS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


def folded_bf16(model: nn.Module, in_place: bool = False) -> nn.Module | None:
    """`model` (eval mode) as a traced module with BatchNorm folded into its convolutions and bf16 weights, or None
    where the model does not qualify: it does not trace, holds a module outside BF16_SAFE or has a hook. A copy
    unless `in_place` (then `model`'s own convolutions are changed: only its owner may ask)."""
    if model.training or any(not isinstance(m, BF16_SAFE) for m in _leaves(model)) or _hooked(model):
        return None
    try:
        traced = fx.symbolic_trace(model if in_place else copy.deepcopy(model))
    except Exception:  # noqa: BLE001 — not traceable by torch.fx (data-dependent control flow): autocast runs it
        return None
    _fold_pairs(traced)
    traced = traced.to(torch.bfloat16).eval().requires_grad_(False)
    release_freed_memory()
    return traced


def _fold_pairs(traced: fx.GraphModule) -> None:
    modules = dict(traced.named_modules())
    calls = Counter(n.target for n in traced.graph.nodes if n.op == "call_module")
    for node in list(traced.graph.nodes):
        conv_node = node.args[0] if node.op == "call_module" and node.args else None
        if not (isinstance(conv_node, fx.Node) and conv_node.op == "call_module" and len(conv_node.users) == 1
                and calls[node.target] == 1 and calls[conv_node.target] == 1):
            continue
        conv, bn = modules[conv_node.target], modules[node.target]
        if any(type(conv) is c and type(bn) is b for c, b in PAIRS) and bn.track_running_stats:
            conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                          bn.eps, bn.weight, bn.bias)
            node.replace_all_uses_with(conv_node)
            traced.graph.erase_node(node)
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()


def release_freed_memory() -> None:
    """Hand memory the allocator holds free back to the system (glibc's malloc_trim; nothing elsewhere): replaced
    weights would otherwise stay in the process's peak memory for the whole run."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _hooked(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if next(m.children(), None) is None]
