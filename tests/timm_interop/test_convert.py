"""Real timm models: convert_timm_model replaces every attention module by a generated one, and the
model computes the same function, forward and backward, in eval and in train mode."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import attnforge
from attnforge import convert_timm_model

timm = pytest.importorskip(
    "timm",
    reason="timm is not installed: `tox -e timm` runs these (timm needs torchvision, which needs "
    "torch 2.14.1, so they live in an env of their own)",
)

# timm's create_attn types of the gating family that attnforge reads. Not "ge": timm 1.0.31 cannot
# build its GatherExcite with an MLP or extra_params (it passes *dd for **dd), so no such model.
# Not "bat": its maps must be multiples of the block size 7 at every stage (224 x 224 inputs and
# up), which a fast float64 model comparison cannot afford; test_timm_interop compares it.
TYPES = [
    "se",
    "ese",
    "eca",
    "ecam",
    "ceca",
    "cbam",
    "lcbam",
    "coord",
    "scoord",
    "ela",
    "strip",
    "gc",
    "gca",
    "nl",
    "sk",
    "splat",
]


def _resnet(attn: str) -> nn.Module:
    """timm's smallest ResNet with ``attn`` in every block, random weights and statistics, float64."""
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=10, block_args={"attn_layer": attn})
    model = model.to(torch.float64)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=torch.float64) + 0.5)
    return model


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The output, the input gradient and every parameter gradient (by name), then the buffers."""
    x = x.clone().requires_grad_()
    y = model(x)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(y.square().sum(), [x, *params.values()], allow_unused=True)
    buffers = [b for _, b in sorted(model.named_buffers()) if b.is_floating_point()]
    return [y.detach(), *(g for g in grads if g is not None), *buffers]


@pytest.mark.parametrize("attn", TYPES)
def test_a_converted_model_computes_what_timm_computed(attn: str, tmp_path: Path):
    model = _resnet(attn)
    theirs = copy.deepcopy(model)
    x = torch.randn(2, 3, 48, 40, dtype=torch.float64)
    done = convert_timm_model(model, tmp_path, package=f"conv_{attn}", example=x[:1])
    assert done.model is model
    # Every attention module was replaced, by a generated block of the catalogue written here.
    assert done.replaced and set(done.replaced) == {
        p
        for p, m in theirs.named_modules()
        if type(m).__module__.startswith("timm.layers.") and p.endswith(".se")
    }
    blocks = {p: m for p, m in model.named_modules() if p in done.replaced}
    assert all(type(b).__module__.startswith(f"conv_{attn}.") for b in blocks.values())
    assert not any(
        type(m).__module__.startswith("timm.layers.")
        for m in model.modules()
        if type(m).__name__ in attnforge.interop.CONVERTERS
    )
    # The spec file is the record: it validates and names every variant the model uses.
    spec = yaml.safe_load(done.spec_file.read_text())
    assert {v["name"] for v in spec["variants"]} == set(done.replaced.values())
    # Through ten blocks of convs, norms and a squared loss, float64 rounding compounds: 1e-10 of
    # each tensor's scale (one module alone is held to 1e-12), 1e-7 where timm's nn.Hardsigmoid
    # backward multiplies by a float32 1/6.
    hard = any(isinstance(m, nn.Hardsigmoid) for m in theirs.modules())
    bound = 1e-7 if hard else 1e-10
    for mode in ("eval", "train"):
        model.train(mode == "train"), theirs.train(mode == "train")
        ours, ref = _outputs(model, x), _outputs(theirs, x)
        assert len(ours) == len(ref)
        for u, v in zip(ours, ref, strict=True):
            scale = max(1.0, v.abs().max().item())
            assert (u - v).abs().max().item() / scale < bound, f"{attn} {mode}"


def test_skresnet18_converts_with_its_strides_and_widths(tmp_path: Path):
    """timm's skresnet18 (random weights): its SelectiveKernel convs change width and stride;
    each becomes a generated sk block built with that out_channels and stride."""
    torch.manual_seed(0)
    model = timm.create_model("skresnet18", pretrained=False, num_classes=10).to(torch.float64)
    theirs = copy.deepcopy(model)
    x = torch.randn(2, 3, 40, 36, dtype=torch.float64)
    done = convert_timm_model(model, tmp_path, package="conv_skresnet18")
    assert set(done.replaced) == {f"layer{i}.{j}.conv1" for i in (1, 2, 3, 4) for j in (0, 1)}
    strided = model.get_submodule("layer2.0.conv1")
    assert (strided.channels, strided.out_channels) == (64, 128)
    assert strided.paths[0].conv.stride == (2, 2)
    for mode in ("eval", "train"):
        model.train(mode == "train"), theirs.train(mode == "train")
        for u, v in zip(_outputs(model, x), _outputs(theirs, x), strict=True):
            scale = max(1.0, v.abs().max().item())
            assert (u - v).abs().max().item() / scale < 1e-10, mode


def test_resnest14d_converts_with_its_batchnorms_and_strides(tmp_path: Path):
    """timm's resnest14d (random weights): each ResNestBottleneck's SplitAttn (radix 2,
    batchnorms) becomes a generated splat block, and the model computes what timm's computes."""
    torch.manual_seed(0)
    model = timm.create_model("resnest14d", pretrained=False, num_classes=10).to(torch.float64)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=torch.float64) + 0.5)
    theirs = copy.deepcopy(model)
    x = torch.randn(2, 3, 40, 36, dtype=torch.float64)
    done = convert_timm_model(model, tmp_path, package="conv_resnest14d")
    assert set(done.replaced) == {f"layer{i}.0.conv2" for i in (1, 2, 3, 4)}
    for name in done.replaced.values():
        spec = done.catalogue.spec_dict(name)
        assert (spec["kind"], spec["radix"], spec["norm"]) == ("splat", 2, "batchnorm")
    for mode in ("eval", "train"):
        model.train(mode == "train"), theirs.train(mode == "train")
        for u, v in zip(_outputs(model, x), _outputs(theirs, x), strict=True):
            scale = max(1.0, v.abs().max().item())
            assert (u - v).abs().max().item() / scale < 1e-10, mode


# timm's self-attention models (byoanet), small and H != W: (model, input (H, W)).
SELF_ATTENTION_MODELS = [
    ("lambda_resnet26t", (64, 48), {}),
    ("botnet26t_256", (64, 96), {}),  # fixed sizes: a multiple of the stride 32
    # Halo maps must be multiples of the block size at both stages (4 x 8 and 2 x 4 here).
    ("halonet26t", (64, 128), {"self_attn_kwargs": {"block_size": 2, "halo_size": 1}}),
]


@pytest.mark.parametrize(("name", "size", "cfg"), SELF_ATTENTION_MODELS)
def test_a_converted_self_attention_model_computes_what_timm_computed(
    name: str, size: tuple[int, int], cfg: dict, tmp_path: Path
):
    """Every self-attention layer of a byoanet model (with its out width, stride and feat_size)
    replaced: the model computes what timm's computed, forward and backward, eval and train."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, img_size=size, **cfg)
    model = model.to(torch.float64)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.05)
        for n, b in model.named_buffers():
            if n.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=torch.float64) + 0.5)
    theirs = copy.deepcopy(model)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    done = convert_timm_model(model, tmp_path, package=f"conv_{name}")
    converters = attnforge.interop.CONVERTERS
    attn = {p for p, m in theirs.named_modules() if type(m).__name__ in converters}
    assert attn and set(done.replaced) == attn
    for mode in ("eval", "train"):
        model.train(mode == "train"), theirs.train(mode == "train")
        ours, ref = _outputs(model, x), _outputs(theirs, x)
        assert len(ours) == len(ref)
        for u, v in zip(ours, ref, strict=True):
            scale = max(1.0, v.abs().max().item())
            assert (u - v).abs().max().item() / scale < 1e-10, f"{name} {mode}"


def test_identical_configurations_share_one_variant_and_widths_come_from_the_example(
    tmp_path: Path,
):
    model = _resnet("eca")
    done = convert_timm_model(
        model,
        tmp_path,
        package="conv_shared",
        example=torch.randn(1, 3, 32, 32, dtype=torch.float64),
    )
    # ECA's kernel follows the width (3 at 64 channels, 5 from 128 on): two variants, four blocks.
    assert sorted(set(done.replaced.values())) == ["eca_1", "eca_2"]
    assert [done.replaced[f"layer{i}.0.se"] for i in (1, 2, 3, 4)] == [
        "eca_1",
        "eca_2",
        "eca_2",
        "eca_2",
    ]
    assert [model.get_submodule(f"layer{i}.0.se").channels for i in (1, 2, 3, 4)] == [
        64,
        128,
        256,
        512,
    ]


def test_what_cannot_be_converted_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match="holds no timm attention module"):
        convert_timm_model(nn.Sequential(nn.Conv2d(3, 3, 1)), tmp_path, package="conv_none")
    with pytest.raises(
        ValueError, match=r"layer1\.0\.se: EcaModule with use_mlp does not record .* from example="
    ):
        convert_timm_model(_resnet("ecam"), tmp_path, package="conv_no_example")
    with pytest.raises(ValueError, match=r"layer1\.0\.se: EcaModule does not record its channel"):
        convert_timm_model(_resnet("eca"), tmp_path, package="conv_no_example")
    with pytest.raises(ValueError, match=r"use attnforge\.from_timm"):
        convert_timm_model(timm.layers.create_attn("se", 8), tmp_path, package="conv_single")
    assert not (tmp_path / "conv_none").exists() and not (tmp_path / "conv_no_example").exists()


def test_the_readme_timm_example_is_true(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The README's timm block runs, and its comments say what it returns."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## timm and the zoo") :]
    code = section[section.index("```python\n") + 10 : section.index("```\n", 10)]
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    spec = attnforge.spec_from_timm(ns["se"], "my_se")
    assert list(spec.items())[:3] == [("name", "my_se"), ("kind", "channel"), ("reduction", 16)]
    assert type(ns["mine"]).__name__ == "SeTimm" and ns["mine"].training == ns["se"].training
    replaced = list(ns["done"].replaced.items())
    assert replaced[:2] == [("layer1.0.se", "eca_1"), ("layer2.0.se", "eca_2")]
    assert ns["done"].spec_file == Path("converted/specs/timm_attention/attention.yaml")
    for comment in ("'kind': 'channel', 'reduction': 16", "SeTimm(64)", "'layer2.0.se': 'eca_2'"):
        assert comment in code
