"""Real timm: spec_from_timm -> generate -> from_timm equals timm's module in float64, forward and
backward, eval and train (running statistics included), over many configurations of every timm
attention type attnforge reads."""

from __future__ import annotations

import copy
import functools
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import attnforge
from attnforge import Catalogue
from attnforge.generate import generate

timm_layers = pytest.importorskip(
    "timm.layers",
    reason="timm is not installed: `tox -e timm` runs these (timm needs torchvision, which needs "
    "torch 2.14.1, so they live in an env of their own)",
)
create_attn = timm_layers.create_attn

CHANNELS = (16, 64, 96, 200, 288)
# (timm's create_attn type, kwargs): every constructor option timm offers for these types.
CONFIGS: list[tuple[str, dict]] = [
    ("se", {}),
    ("se", {"rd_ratio": 1 / 8}),
    ("se", {"rd_ratio": 1 / 4, "rd_divisor": 1}),
    ("se", {"rd_ratio": 1 / 3}),
    ("se", {"add_maxpool": True}),
    ("se", {"bias": False}),
    ("se", {"act_layer": nn.SiLU}),
    ("se", {"act_layer": nn.GELU}),
    ("se", {"act_layer": nn.ReLU6}),
    ("se", {"act_layer": nn.Hardswish}),
    ("se", {"gate_layer": "hard_sigmoid"}),
    ("se", {"norm_layer": nn.BatchNorm2d}),
    ("ese", {}),
    ("ese", {"add_maxpool": True}),
    ("ese", {"gate_layer": "sigmoid"}),
    ("eca", {}),
    ("eca", {"gamma": 3, "beta": 2}),
    ("eca", {"gate_layer": "hard_sigmoid"}),
    ("ecam", {}),
    ("ecam", {"rd_ratio": 1 / 4, "act_layer": nn.SiLU}),
    ("ceca", {}),
    ("ceca", {"act_layer": nn.ReLU}),  # a conv bias, and (timm's quirk) no activation applied
    ("cbam", {}),
    ("cbam", {"rd_ratio": 1 / 8}),
    ("cbam", {"rd_divisor": 8}),
    ("cbam", {"spatial_kernel_size": 3}),
    ("cbam", {"mlp_bias": True}),
    ("cbam", {"act_layer": nn.SiLU}),
    ("cbam", {"gate_layer": "hard_sigmoid"}),
    ("lcbam", {}),
    ("lcbam", {"rd_ratio": 1 / 4, "spatial_kernel_size": 5}),
    ("lcbam", {"gate_layer": "hard_sigmoid"}),  # LightChannelAttn gates with sigmoid regardless
    ("ela", {}),
    ("ela", {"kernel_size": 3}),
    ("ela", {"kernel_size": 5, "bias": True}),
    ("ela", {"act_layer": nn.Identity}),
    ("ela", {"act_layer": nn.ReLU}),
    ("ela", {"act_layer": nn.GELU}),
    ("ela", {"act_layer": nn.Hardswish}),
    ("ela", {"gate_layer": "hard_sigmoid"}),
    ("ela", {"norm_layer": None}),
    ("ela", {"norm_layer": nn.BatchNorm2d}),
    ("ela", {"norm_layer": partial(nn.GroupNorm, 8)}),
    ("ela", {"norm_layer": partial(timm_layers.GroupNorm, num_groups=4)}),
    ("ela", {"has_skip": True}),
    ("ela", {"act_layer": nn.Identity, "norm_layer": None, "has_skip": True}),
    ("strip", {}),
    ("strip", {"use_conv": False}),
    ("strip", {"kernel_size": 7, "bias": True}),
    ("strip", {"kernel_size": 1}),
    ("strip", {"gate_layer": "hard_sigmoid"}),
    ("strip", {"has_skip": True}),
    ("strip", {"use_conv": False, "has_skip": True, "gate_layer": "hard_sigmoid"}),
]
CASES = [(i, attn, kwargs, c) for i, (attn, kwargs) in enumerate(CONFIGS) for c in CHANNELS]


def _timm_module(attn: str, kwargs: dict, channels: int, seed: int) -> nn.Module:
    module = create_attn(attn, channels, **kwargs).to(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.3)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=torch.float64) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=torch.float64) * 0.3)
    return module


def _name(i: int, attn: str, channels: int) -> str:
    return f"t{i}_{attn}_c{channels}"


@functools.cache
def _catalogue(tmp: Path) -> Catalogue:
    variants = [
        attnforge.spec_from_timm(_timm_module(attn, kwargs, c, i), _name(i, attn, c), channels=c)
        for i, attn, kwargs, c in CASES
    ]
    specs = tmp / "specs"
    specs.mkdir()
    (specs / "timm.yaml").write_text(yaml.safe_dump({"variants": variants}, sort_keys=False))
    package = tmp / "timm_catalogue"
    generate(specs, package)
    return Catalogue.at(package)


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return _catalogue(tmp_path_factory.mktemp("timm"))


def _compare(
    ours: nn.Module, theirs: nn.Module, channels: int, seed: int, label: str, errors: list
) -> float:
    """Forward, input gradient and every parameter gradient, then (train) the buffers; float64.

    Errors are relative to each tensor's largest magnitude. Where timm gates with nn.Hardsigmoid
    the bound is 1e-7, not 1e-12: PyTorch's hardsigmoid backward multiplies by a float32 1/6 (3e-8
    relative), where ours divides relu6(s + 3) by 6 exactly.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(3, channels, 7, 9, generator=gen, dtype=torch.float64) + torch.randn(
        3, channels, 1, 1, generator=gen, dtype=torch.float64
    )
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = ours(xa), theirs(xb)
    up = torch.randn(a.shape, generator=gen, dtype=torch.float64)
    names = [n for n, _ in theirs.named_parameters()]
    ga = torch.autograd.grad(a, [xa, *(dict(ours.named_parameters())[n] for n in names)], up)
    gb = torch.autograd.grad(b, [xb, *(p for _, p in theirs.named_parameters())], up)

    def rel(u: torch.Tensor, v: torch.Tensor) -> float:
        return (u - v).abs().max().item() / max(1.0, v.abs().max().item())

    errs = [rel(a, b)] + [rel(u, v) for u, v in zip(ga, gb, strict=True)]
    for (name, mine), (_, yours) in zip(
        ours.state_dict().items(), theirs.state_dict().items(), strict=True
    ):
        if mine.is_floating_point():
            errs.append(rel(mine, yours))
        else:
            assert torch.equal(mine, yours), f"{label}: buffer {name}"
    worst = max(errs)
    hard = any(isinstance(m, nn.Hardsigmoid) for m in theirs.modules())
    bound = 1e-7 if hard else 1e-12
    assert worst < bound, f"{label}: max relative error {worst:.3g} (bound {bound:g})"
    errors.append((label, worst))
    return worst


@pytest.mark.parametrize(
    ("i", "attn", "kwargs", "channels"), CASES, ids=[_name(i, a, c) for i, a, _, c in CASES]
)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_from_timm_equals_timm(
    catalogue: Catalogue, i: int, attn: str, kwargs: dict, channels: int, mode: str, errors: list
):
    theirs = _timm_module(attn, kwargs, channels, i).train(mode == "train")
    ours = attnforge.from_timm(
        _name(i, attn, channels), theirs, catalogue=catalogue, channels=channels
    )
    assert ours.training == theirs.training
    # Compare on copies so both start from the same running statistics.
    _compare(
        copy.deepcopy(ours),
        copy.deepcopy(theirs),
        channels,
        i,
        f"{_name(i, attn, channels)} {mode}",
        errors,
    )


@pytest.mark.parametrize(
    ("variant", "attn", "kwargs"),
    [
        ("se_timm", "se", {}),
        ("se_bn", "se", {"norm_layer": nn.BatchNorm2d}),
        ("se_hard_sigmoid", "se", {"rd_ratio": 1 / 4, "gate_layer": "hard_sigmoid"}),
        ("se_timm_maxpool", "se", {"add_maxpool": True}),
        ("ese_timm", "ese", {}),
        ("ese_maxpool", "ese", {"add_maxpool": True}),
        ("eca_timm", "eca", {}),
        ("ecam_timm", "ecam", {}),
        ("ceca_timm", "ceca", {}),
        ("cbam_timm", "cbam", {}),
        ("lcbam_timm", "lcbam", {}),
        ("ela_timm", "ela", {}),
        ("ela_gn16", "ela", {"norm_layer": partial(nn.GroupNorm, 16), "act_layer": nn.Identity}),
        (
            "ela_bn_skip",
            "ela",
            {
                "kernel_size": 5,
                "norm_layer": nn.BatchNorm2d,
                "gate_layer": "hard_sigmoid",
                "has_skip": True,
            },
        ),
        ("strip_timm", "strip", {}),
        ("strip_pooled", "strip", {"use_conv": False}),
        ("strip_k7_skip", "strip", {"kernel_size": 7, "bias": True, "has_skip": True}),
    ],
)
@pytest.mark.parametrize("channels", [32, 64, 256])
def test_the_committed_timm_variants_load_timm_weights(
    variant: str, attn: str, kwargs: dict, channels: int, errors: list
):
    theirs = _timm_module(attn, kwargs, channels, 7).train()
    ours = attnforge.from_timm(variant, theirs, channels=channels)
    _compare(
        copy.deepcopy(ours), copy.deepcopy(theirs), channels, 7, f"{variant} c{channels}", errors
    )
    ours.load_state_dict(theirs.state_dict(), strict=True)  # the names are timm's


def test_a_different_configuration_is_a_clear_error():
    with pytest.raises(
        ValueError,
        match=r"se_resnet at 64 channels: fc1.weight is \(4, 64, 1, 1\), \(8, 64, 1, 1\) in the module",
    ):
        attnforge.from_timm("se_resnet", create_attn("se", 64))
    with pytest.raises(
        ValueError,
        match=r"se_timm does not match SEModule: gate: 'sigmoid' here, 'hard_sigmoid' in the module",
    ):
        attnforge.from_timm("se_timm", create_attn("se", 64, gate_layer="hard_sigmoid"))
    with pytest.raises(ValueError, match="not a timm attention module attnforge reads"):
        attnforge.spec_from_timm(nn.Conv2d(3, 3, 1), "x")
    with pytest.raises(ValueError, match="does not record its channel count"):
        attnforge.from_timm("eca_timm", create_attn("eca", 64))
    with pytest.raises(ValueError, match="activation Tanh is not supported"):
        attnforge.spec_from_timm(create_attn("se", 64, act_layer=nn.Tanh), "x")


def test_the_strip_blocks_options_timm_has_and_attnforge_does_not():
    # timm builds an even kernel, then its forward fails on every input: the strips come out one
    # longer than x. There is no such variant to load it into.
    ela = create_attn("ela", 64, kernel_size=4)
    with pytest.raises(RuntimeError):
        ela(torch.randn(1, 64, 7, 9))
    with pytest.raises(ValueError, match="EfficientLocalAttn: kernel_size 4 is even"):
        attnforge.spec_from_timm(ela, "x")
    with pytest.raises(ValueError, match="StripAttn: kernel_size 2 is even"):
        attnforge.spec_from_timm(create_attn("strip", 64, kernel_size=2), "x")
    with pytest.raises(ValueError, match="EfficientLocalAttn: norm LayerNorm2d is not supported"):
        attnforge.spec_from_timm(create_attn("ela", 64, norm_layer=timm_layers.LayerNorm2d), "x")
    with pytest.raises(ValueError, match=r"GroupNorm\(num_groups=2, eps=1e-06"):
        attnforge.spec_from_timm(
            create_attn("ela", 64, norm_layer=partial(nn.GroupNorm, 2, eps=1e-6)), "x"
        )
    with pytest.raises(ValueError, match="gate Tanh is not supported"):
        attnforge.spec_from_timm(create_attn("strip", 64, gate_layer=nn.Tanh), "x")
    with pytest.raises(
        ValueError,
        match=r"strip_timm does not match StripAttn: conv: True here, False in the module",
    ):
        attnforge.from_timm("strip_timm", create_attn("strip", 64, use_conv=False), channels=64)
    with pytest.raises(
        ValueError, match=r"ela_timm does not match EfficientLocalAttn: skip: False here, True"
    ):
        attnforge.from_timm("ela_timm", create_attn("ela", 64, has_skip=True))
    with pytest.raises(ValueError, match="does not record its channel count"):
        attnforge.from_timm("strip_pooled", create_attn("strip", 64, use_conv=False))
