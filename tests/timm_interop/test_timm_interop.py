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
from attnforge.interop import timm_create_attn

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
    # GatherExcite: timm 1.0.31 cannot build use_mlp=True (its default) nor extra_params=True (it
    # passes *dd for **dd); attnforge.interop.timm_create_attn builds those submodules as the
    # constructor means to and timm's own forward runs. The input is 7 x 9: no extent divides it,
    # so the gate map is always resized from a map that does not tile the input.
    ("ge", {}),
    ("ge", {"use_mlp": False}),
    ("ge", {"add_maxpool": True}),
    ("ge", {"rd_ratio": 1 / 8, "rd_divisor": 8}),
    ("ge", {"rd_channels": 6}),
    ("ge", {"act_layer": nn.SiLU}),
    ("ge", {"act_layer": "gelu"}),  # timm's GELU, which takes inplace= (nn.GELU does not)
    ("ge", {"gate_layer": "hard_sigmoid"}),
    ("ge", {"extent": 2}),
    ("ge", {"extent": 4, "use_mlp": False}),
    ("ge", {"extent": 8}),  # 7 x 9 gathers to 1 x 2
    ("ge", {"extent": 2, "add_maxpool": True}),
    ("ge", {"extent": 6, "use_mlp": False}),  # an 11-wide window, stride 6
    ("ge", {"extra_params": True, "feat_size": 7}),  # an odd kernel keeps the size
    ("ge", {"extra_params": True, "feat_size": (6, 8)}),  # even: one position lost, resized
    ("ge", {"extra_params": True, "feat_size": 5, "norm_layer": None}),
    ("ge", {"extra_params": True, "extent": 2}),
    ("ge", {"extra_params": True, "extent": 4}),
    ("ge", {"extra_params": True, "extent": 8, "act_layer": nn.SiLU, "use_mlp": False}),
    ("ge", {"extra_params": True, "extent": 4, "norm_layer": None}),
    ("ge", {"extra_params": True, "extent": 6}),  # int(log2(6)) = 2 convs: extent 4 here
    ("gc", {}),
    ("gca", {}),
    ("gc", {"use_attn": False}),
    ("gca", {"use_attn": False}),
    ("gc", {"fuse_add": True}),  # both fusions
    ("gc", {"rd_ratio": 1 / 4}),
    ("gc", {"rd_divisor": 8}),
    ("gc", {"rd_channels": 12}),
    ("gc", {"act_layer": nn.SiLU}),
    ("gc", {"gate_layer": "hard_sigmoid"}),
    ("gca", {"init_last_zero": True}),  # an initialisation flag timm stores and never reads
    ("coord", {}),
    ("coord", {"rd_ratio": 1 / 8}),
    ("coord", {"rd_ratio": 1 / 4, "rd_divisor": 1}),
    ("coord", {"rd_divisor": 16, "se_factor": 1.0}),
    ("coord", {"rd_channels": 24}),  # above C * 2/3 at 16 channels: the lower bound carries it
    ("coord", {"bias": True}),
    ("coord", {"act_layer": nn.SiLU}),
    ("coord", {"act_layer": nn.ReLU}),
    ("coord", {"act_layer": nn.GELU}),
    ("coord", {"norm_layer": None}),
    ("coord", {"gate_layer": "hard_sigmoid"}),
    ("coord", {"has_skip": True}),
    ("scoord", {}),
    ("scoord", {"rd_ratio": 1 / 16}),
    ("scoord", {"rd_divisor": 1}),
    ("scoord", {"se_factor": 0.5}),
    ("scoord", {"rd_channels": 12}),
    ("scoord", {"bias": False}),
    ("scoord", {"act_layer": nn.ReLU6}),
    ("scoord", {"act_layer": nn.Hardswish}),
    ("scoord", {"gate_layer": "hard_sigmoid"}),
    ("scoord", {"has_skip": True}),
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
    ("nl", {}),
    ("nl", {"use_scale": False}),
    ("nl", {"rd_ratio": 1 / 4}),
    ("nl", {"rd_ratio": 1 / 2, "rd_divisor": 1}),
    ("nl", {"rd_divisor": 16}),
    ("nl", {"rd_channels": 12}),
    # BatNonLocalAttn: H and W multiples of the block size (the input is 2n x 3n, see _size);
    # train mode with dropout compares under the same seed (Dropout2d draws the same mask).
    ("bat", {}),
    ("bat", {"act_layer": nn.SiLU}),
    ("bat", {"act_layer": "gelu"}),
    ("bat", {"act_layer": None}),
    ("bat", {"block_size": 4, "groups": 4}),
    ("bat", {"block_size": 1, "groups": 1, "drop_rate": 0.0}),
    ("bat", {"block_size": 3, "groups": 8, "drop_rate": 0.5}),
    ("bat", {"rd_ratio": 1 / 8}),
    ("bat", {"rd_divisor": 1}),
    ("bat", {"rd_channels": 12, "groups": 3}),
    ("bat", {"norm_layer": "groupnorm1"}),
    ("bat", {"norm_layer": "layernorm2d", "act_layer": nn.SiLU, "drop_rate": 0.0}),
    # SelectiveKernel: a conv block; out_channels and stride are constructor options of ours too.
    ("sk", {}),
    ("sk", {"stride": 2}),
    ("sk", {"out_channels": 48, "stride": 2}),
    ("sk", {"out_channels": 40}),
    ("sk", {"kernel_size": 3}),  # [3, 3]: two 3x3 paths at dilation 1
    ("sk", {"kernel_size": [5]}),  # one path: a softmax over one path, weights of 1
    ("sk", {"kernel_size": [3, 5, 7], "split_input": False}),
    ("sk", {"kernel_size": [3, 5], "keep_3x3": False}),
    ("sk", {"kernel_size": [5, 7], "keep_3x3": False, "dilation": 2, "stride": 2}),
    ("sk", {"dilation": 2}),  # paths at dilations 2 and 4
    ("sk", {"stride": 3, "dilation": 3}),
    ("sk", {"groups": 4}),
    ("sk", {"groups": 8, "split_input": False, "out_channels": 64}),
    ("sk", {"rd_ratio": 1 / 8, "rd_divisor": 16}),
    ("sk", {"rd_ratio": 1 / 4, "rd_divisor": 1}),
    ("sk", {"rd_channels": 12}),
    ("sk", {"act_layer": nn.SiLU}),
    ("sk", {"act_layer": nn.GELU, "split_input": False}),
    # SplitAttn: a conv block too, radix splits mixed by RadixSoftmax.
    ("splat", {}),
    ("splat", {"stride": 2}),
    ("splat", {"out_channels": 48, "stride": 2}),
    ("splat", {"radix": 1}),  # a sigmoid gate instead of the softmax
    ("splat", {"radix": 4}),
    ("splat", {"groups": 2}),
    ("splat", {"groups": 4, "norm_layer": nn.BatchNorm2d}),
    ("splat", {"norm_layer": nn.BatchNorm2d}),
    ("splat", {"kernel_size": 5}),
    ("splat", {"kernel_size": 1}),
    ("splat", {"dilation": 2, "padding": 2}),  # ResNeSt's dilated stages
    ("splat", {"dilation": 2}),  # padding 1: the map shrinks by 2
    ("splat", {"bias": True}),
    ("splat", {"rd_ratio": 0.5, "rd_divisor": 16}),
    ("splat", {"rd_channels": 12}),  # 24 hidden channels: below timm's floor of 32
    ("splat", {"rd_channels": 8, "radix": 1}),
    ("splat", {"act_layer": nn.SiLU}),
    ("splat", {"radix": 1, "groups": 2, "stride": 2}),
    # Self-attention layers, on (7, 9) maps (the size _compare draws): the size feat_size fixes.
    ("lambda", {}),
    ("lambda", {"stride": 2}),
    ("lambda", {"r": 3, "dim_head": 8, "qkv_bias": True}),
    ("lambda", {"num_heads": 2, "dim_head": None, "qk_ratio": 0.5}),
    ("lambda", {"r": None, "feat_size": (7, 9)}),
    ("lambda", {"r": None, "feat_size": (7, 9), "stride": 2, "num_heads": 1}),
    ("bottleneck", {"feat_size": (7, 9)}),
    ("bottleneck", {"feat_size": (7, 9), "stride": 2, "dim_head": 16}),
    ("bottleneck", {"feat_size": (7, 9), "num_heads": 2, "qk_ratio": 0.5, "qkv_bias": True}),
    ("bottleneck", {"feat_size": (7, 9), "num_heads": 1, "scale_pos_embed": True}),
    # Halo on maps of 2 x 3 blocks (_size): blocks of 3 (odd: stride 2 pools) and 1.
    ("halo", {"block_size": 3, "halo_size": 1, "num_heads": 4}),
    ("halo", {"block_size": 3, "halo_size": 2, "num_heads": 2, "stride": 2, "qkv_bias": True}),
    ("halo", {"block_size": 1, "halo_size": 1, "num_heads": 1, "dim_head": 8}),
    ("halo", {"block_size": 3, "halo_size": 0, "qk_ratio": 0.33, "scale_pos_embed": True}),
    ("halo", {"block_size": 2, "halo_size": 1, "num_heads": 2, "stride": 2, "avg_down": True}),
    ("halo", {"block_size": 2, "halo_size": 1, "num_heads": 2, "stride": 2}),
]


CASES = [(i, attn, kwargs, c) for i, (attn, kwargs) in enumerate(CONFIGS) for c in CHANNELS]


def _timm_module(attn: str, kwargs: dict, channels: int, seed: int) -> nn.Module:
    module = timm_create_attn(attn, channels, **kwargs).to(torch.float64)
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


def _size(attn: str, kwargs: dict) -> tuple[int, int]:
    """The input's H x W: 7 x 9, or 2n x 3n where H and W must be multiples of a block size n
    (BAT's block_size, default 7; halo's, default 8)."""
    blocks = {"bat": 7, "halo": 8}
    if attn not in blocks:
        return (7, 9)
    n = kwargs.get("block_size", blocks[attn])
    return (2 * n, 3 * n)


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
    ours: nn.Module,
    theirs: nn.Module,
    channels: int,
    seed: int,
    label: str,
    errors: list,
    size: tuple[int, int] = (7, 9),
) -> float:
    """Forward, input gradient and every parameter gradient, then (train) the buffers; float64.

    Errors are relative to each tensor's largest magnitude. Where timm gates with nn.Hardsigmoid
    the bound is 1e-7, not 1e-12: PyTorch's hardsigmoid backward multiplies by a float32 1/6 (3e-8
    relative), where ours divides relu6(s + 3) by 6 exactly.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(3, channels, *size, generator=gen, dtype=torch.float64) + torch.randn(
        3, channels, 1, 1, generator=gen, dtype=torch.float64
    )
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(seed)  # the same dropout masks (BatNonLocalAttn in train mode)
    a = ours(xa)
    torch.manual_seed(seed)
    b = theirs(xb)
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
        size=_size(attn, kwargs),
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
        ("ge_timm", "ge", {}),
        ("ge_extent4", "ge", {"extent": 4, "use_mlp": False}),
        ("ge_extent2_mlp", "ge", {"extent": 2, "add_maxpool": True}),
        ("ge_params", "ge", {"extra_params": True, "extent": 8}),
        ("ge_params_global", "ge", {"extra_params": True, "feat_size": 7}),
        ("gc_timm", "gc", {}),
        ("gca_timm", "gca", {}),
        ("gc_both", "gc", {"fuse_add": True, "rd_ratio": 1 / 4}),
        ("gc_avg", "gca", {"use_attn": False}),
        ("coord_timm", "coord", {}),
        ("scoord_timm", "scoord", {}),
        ("scoord_skip", "scoord", {"has_skip": True, "gate_layer": "hard_sigmoid"}),
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
        ("nl_timm", "nl", {}),
        ("nl_unscaled_r2", "nl", {"use_scale": False, "rd_ratio": 1 / 2}),
        ("bat_timm", "bat", {}),
        ("bat_b4_g4", "bat", {"block_size": 4, "groups": 4, "drop_rate": 0.0}),
        ("sk_timm", "sk", {}),
        ("sk_timm", "sk", {"out_channels": 96, "stride": 2}),
        ("sk_resnet18", "sk", {"rd_ratio": 1 / 8, "rd_divisor": 16}),
        ("sk_resnext50", "sk", {"groups": 32, "rd_divisor": 32, "split_input": False}),
        ("splat_timm", "splat", {}),
        ("splat_timm", "splat", {"out_channels": 96, "stride": 2}),
        ("splat_resnest", "splat", {"norm_layer": nn.BatchNorm2d}),
        ("splat_resnest_4s2x", "splat", {"radix": 4, "groups": 2, "norm_layer": nn.BatchNorm2d}),
        ("lambda_timm", "lambda", {}),
        ("lambda_rpt", "lambda", {"r": None, "feat_size": (7, 9)}),
        ("bottleneck_timm", "bottleneck", {"feat_size": (7, 9)}),
        ("bottleneck_d16", "bottleneck", {"feat_size": (7, 9), "dim_head": 16}),
        ("halo_timm", "halo", {"block_size": 8, "halo_size": 2}),
        ("halo_h3", "halo", {"block_size": 8, "halo_size": 3}),
        ("halo_regnetz", "halo", {"block_size": 7, "halo_size": 2, "qk_ratio": 0.33}),
    ],
)
@pytest.mark.parametrize("channels", [32, 64, 256])
def test_the_committed_timm_variants_load_timm_weights(
    variant: str, attn: str, kwargs: dict, channels: int, errors: list
):
    theirs = _timm_module(attn, kwargs, channels, 7).train()
    ours = attnforge.from_timm(variant, theirs, channels=channels)
    _compare(
        copy.deepcopy(ours),
        copy.deepcopy(theirs),
        channels,
        7,
        f"{variant} c{channels}",
        errors,
        size=_size(attn, kwargs),
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
    with pytest.raises(
        ValueError,
        match=r"gc_timm does not match GlobalContext: fuse_scale: True here, False in the module; "
        r"fuse_add: False here, True in the module",
    ):
        attnforge.from_timm("gc_timm", create_attn("gca", 64))
    with pytest.raises(
        ValueError, match=r"ge_extent4 does not match GatherExcite: extent: 4 here, 2 in the module"
    ):
        attnforge.from_timm("ge_extent4", create_attn("ge", 64, extent=2, use_mlp=False))
    with pytest.raises(ValueError, match=r"GlobalContext.mlp_scale.act: activation Tanh"):
        attnforge.spec_from_timm(create_attn("gc", 64, act_layer=nn.Tanh), "x")
    with pytest.raises(ValueError, match=r"CoordAttn.bn1: norm GroupNorm1 is not supported"):
        attnforge.spec_from_timm(
            create_attn("coord", 64, norm_layer=timm_layers.get_norm_layer("groupnorm1")), "x"
        )
    with pytest.raises(
        ValueError,
        match=r"coord_timm does not match CoordAttn: skip: False here, True in the module",
    ):
        attnforge.from_timm("coord_timm", create_attn("coord", 64, has_skip=True))
    no_shift = create_attn("coord", 64, norm_layer=partial(nn.BatchNorm2d, bias=False))
    with pytest.raises(
        ValueError, match=r"CoordAttn.bn1: BatchNorm2d\(.*bias=False.*not supported"
    ):
        attnforge.from_timm("coord_timm", no_shift)
    with pytest.raises(ValueError, match=r"scoord_timm is a scoord variant; the module is coord"):
        attnforge.from_timm("scoord_timm", create_attn("coord", 64))


@pytest.mark.parametrize(
    ("variant", "kwargs"),
    [
        ("ge_extent4", {"extent": 4, "use_mlp": False}),
        ("ge_extent2_mlp", {"extent": 2, "add_maxpool": True}),
        ("ge_params", {"extra_params": True, "extent": 8}),
        ("ge_params_global", {"extra_params": True, "feat_size": 7}),
    ],
)
@pytest.mark.parametrize("size", [(1, 3), (2, 2), (5, 11), (13, 6), (16, 16), (17, 31)])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_gather_excite_resizes_as_timm_at_any_size(
    variant: str, kwargs: dict, size: tuple[int, int], mode: str, errors: list
):
    """The gathered map back to the input's size (F.interpolate, nearest) at sizes that are and
    are not multiples of the stride, down to a map smaller than one window."""
    theirs = _timm_module("ge", kwargs, 32, 11).train(mode == "train")
    ours = attnforge.from_timm(variant, theirs, channels=32)
    _compare(
        copy.deepcopy(ours),
        copy.deepcopy(theirs),
        32,
        11,
        f"{variant} {size} {mode}",
        errors,
        size=size,
    )


def test_gather_excite_without_the_workaround_is_timms_bug():
    """Documents the timm 1.0.31 bug timm_create_attn works around; fails (so the workaround can
    go) once timm builds these itself."""
    for kwargs, argument in (
        ({}, "act_layer"),
        ({"extra_params": True, "extent": 2}, "kernel_size"),
    ):
        with pytest.raises(TypeError, match=f"multiple values for argument '{argument}'"):
            create_attn("ge", 64, **kwargs)


def test_global_context_initialises_as_timm():
    """A fresh gca block adds only fc2's bias (mlp_add.fc2.weight zeros, as timm's); conv_attn is
    Kaiming-normal (fan_in, relu) in both: std sqrt(2 / C)."""
    channels = 4096
    torch.manual_seed(0)
    ours, theirs = attnforge.build("gca_timm", channels), create_attn("gca", channels)
    for module in (ours, theirs):
        assert torch.count_nonzero(module.mlp_add.fc2.weight) == 0
        std = module.conv_attn.weight.std().item()
        assert abs(std - (2 / channels) ** 0.5) < 0.05 * (2 / channels) ** 0.5, std
    assert torch.count_nonzero(attnforge.build("gc_timm", 64).mlp_scale.fc2.weight) > 0


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


def test_coordinate_attention_reads_timm_defaults():
    """create_attn's defaults read back as the kinds' defaults: coord_timm and scoord_timm are
    timm's modules, field for field."""
    assert attnforge.spec_from_timm(create_attn("coord", 64), "c") == {
        "name": "c",
        "kind": "coord",
        "reduction": 16,
        "activation": "hard_swish",
        "norm": "batchnorm",
        "gate": "sigmoid",
        "bias": False,
        "skip": False,
    }
    assert attnforge.spec_from_timm(create_attn("scoord", 64), "s") == {
        "name": "s",
        "kind": "scoord",
        "reduction": 4,
        "activation": "silu",
        "gate": "sigmoid",
        "bias": True,
        "skip": False,
    }


def test_the_non_local_block_initialises_as_timm():
    """A fresh NonLocalAttn is the identity (its norm's weight and bias zero); the convs are
    Kaiming-normal (fan_out, relu), std sqrt(2 / fan_out), with zero biases."""
    torch.manual_seed(0)
    ours, theirs = attnforge.build("nl_timm", 512), create_attn("nl", 512)
    x = torch.randn(2, 512, 5, 6)
    for module in (ours, theirs):
        assert torch.equal(module.eval()(x), x)
        for name in ("t", "z"):
            conv = getattr(module, name)
            want = (2 / conv.out_channels) ** 0.5
            assert abs(conv.weight.std().item() - want) < 0.05 * want, name
            assert torch.count_nonzero(conv.bias) == 0
    with pytest.raises(
        ValueError, match=r"nl_timm does not match NonLocalAttn: use_scale: True here, False"
    ):
        attnforge.from_timm("nl_timm", create_attn("nl", 64, use_scale=False))


def test_the_bat_block_refuses_what_timm_asserts_and_what_it_cannot_carry():
    """timm asserts H and W are multiples of the block size (AssertionError); the generated block
    raises ValueError naming the sizes. Norms other than BatchNorm2d are refused by name."""
    theirs = create_attn("bat", 64)
    with pytest.raises(AssertionError):
        theirs.eval()(torch.randn(1, 64, 7, 9))
    with pytest.raises(ValueError, match=r"expected H and W multiples of the block size 7"):
        attnforge.from_timm("bat_timm", theirs)(torch.randn(1, 64, 7, 9))
    with pytest.raises(
        ValueError, match=r"BatNonLocalAttn.conv1.bn: norm FilterResponseNormAct2d is not supported"
    ):
        attnforge.spec_from_timm(create_attn("bat", 64, norm_layer="frn"), "x")
    with pytest.raises(
        ValueError, match=r"bat_timm does not match BatNonLocalAttn: drop_rate: 0.2 here, 0.0"
    ):
        attnforge.from_timm("bat_timm", create_attn("bat", 64, drop_rate=0.0))


def test_selective_kernel_options_timm_has_and_attnforge_does_not():
    """What SelectiveKernel can be built with and no sk variant computes is a clear error."""
    from timm.layers import BlurPool2d, DropBlock2d, SelectiveKernel

    with pytest.raises(ValueError, match=r"SelectiveKernel.paths.0: aa_layer BlurPool2d"):
        attnforge.spec_from_timm(SelectiveKernel(64, stride=2, aa_layer=BlurPool2d), "x")
    with pytest.raises(ValueError, match=r"SelectiveKernel.paths.0.bn: BatchNorm2d\("):
        attnforge.spec_from_timm(SelectiveKernel(64, drop_layer=DropBlock2d), "x")
    # The geometry the weights do not show: a 3x3 kernel at another dilation, another stride.
    with pytest.raises(
        ValueError, match=r"sk_timm: paths.1.conv.dilation is \(2, 2\), \(3, 3\) in the module"
    ):
        attnforge.from_timm("sk_timm", SelectiveKernel(64, kernel_size=[3, 7]))
    with pytest.raises(
        ValueError, match=r"sk_timm does not match SelectiveKernel: split_input: True here, False"
    ):
        attnforge.from_timm("sk_timm", SelectiveKernel(64, split_input=False))


def test_selective_kernel_reads_timm_defaults():
    sk = create_attn("sk", 64, stride=2, out_channels=32)
    assert attnforge.spec_from_timm(sk, "s") == {
        "name": "s",
        "kind": "sk",
        "kernel_size": [3, 5],
        "dilation": 1,
        "split_input": True,
        "groups": 1,
        "reduction": 16,
        "divisor": 8,
        "activation": "relu",
    }
    assert attnforge.interop.layout(sk).options == {"out_channels": 32, "stride": 2}


def test_split_attention_options_timm_has_and_attnforge_does_not():
    from timm.layers import DropBlock2d, SplitAttn

    with pytest.raises(ValueError, match=r"SplitAttn.drop: drop_layer DropBlock2d"):
        attnforge.spec_from_timm(SplitAttn(64, drop_layer=DropBlock2d), "x")
    with pytest.raises(ValueError, match=r"SplitAttn.conv: a \(3, 3\) conv with stride \(1, 1\)"):
        attnforge.spec_from_timm(SplitAttn(64, padding_mode="reflect"), "x")
    with pytest.raises(
        ValueError, match=r"splat_timm does not match SplitAttn: radix: 2 here, 4 in the module"
    ):
        attnforge.from_timm("splat_timm", SplitAttn(64, radix=4))
    with pytest.raises(
        ValueError,
        match=r"splat_timm does not match SplitAttn: padding: None here, 2 in the module",
    ):
        attnforge.from_timm("splat_timm", SplitAttn(64, padding=2))


def test_split_attention_reads_timm_defaults():
    splat = create_attn("splat", 64, stride=2, out_channels=128)
    assert attnforge.spec_from_timm(splat, "s") == {
        "name": "s",
        "kind": "splat",
        "kernel_size": 3,
        "dilation": 1,
        "groups": 1,
        "radix": 2,
        "bias": False,
        "reduction": 4,
        "activation": "relu",
        "norm": "none",
    }
    assert attnforge.interop.layout(splat).options == {"out_channels": 128, "stride": 2}
