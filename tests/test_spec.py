"""The spec models: a valid and an invalid value for every field of every kind."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from attnforge import spec as specs

BASE = {kind: {"name": "v", "kind": kind} for kind in specs.MODELS}

# (kind, field, a valid value, an invalid value)
FIELDS = [
    ("channel", "name", "se_r4", "Se"),
    ("channel", "name", "se2", "2se"),
    ("channel", "name", "se", "lambda"),
    ("channel", "description", "any text", 3),
    ("channel", "dims", 3, 4),
    ("channel", "reduction", 1, 0),
    ("channel", "reduction", 1024, 1025),
    ("channel", "divisor", 8, 0),
    ("channel", "divisor", None, "8"),
    ("channel", "min_channels", 4, 0),
    ("channel", "pooling", ["avg", "max"], ["avg", "avg"]),
    ("channel", "pooling", ["max"], []),
    ("channel", "pooling", ["avg"], ["mean"]),
    ("channel", "pooling_merge", "before_mlp", "sum"),
    ("channel", "activation", "silu", "swish"),
    ("channel", "gate", "hard_sigmoid", "tanh"),
    ("channel", "bias", False, "false"),
    ("channel", "norm", "batchnorm", "layernorm"),
    ("channel", "round_limit", 0.0, 0.9),  # without a divisor
    ("channel", "round_limit", 0.0, 1.0),
    ("channel", "activation", "relu6", "relu7"),
    ("channel", "activation", "hard_swish", "hardswish"),
    ("spatial", "kernel_size", 1, 2),
    ("spatial", "kernel_size", 31, 33),
    ("spatial", "pooling", ["max", "mean"], ["max", "max"]),
    ("spatial", "pooling", ["mean"], ["avg"]),
    ("spatial", "gate", "sigmoid", "relu"),
    ("spatial", "bias", True, 1),
    ("spatial", "dims", 1, 0),
    ("spatial", "pooling_merge", "average", "sum"),
    ("spatial", "norm", "batchnorm", "groupnorm"),
    ("cbam", "channel", {"reduction": 8}, {"reduction": 0}),
    ("cbam", "channel", {"pooling": ["avg"]}, {"kernel_size": 3}),
    ("cbam", "spatial", {"kernel_size": 3}, {"kernel_size": 4}),
    ("cbam", "order", "spatial_first", "parallel"),
    ("cbam", "dims", 3, "2"),
    ("eca", "kernel_size", 5, 4),
    ("eca", "kernel_size", None, 33),
    ("eca", "gamma", 3.0, 0),
    ("eca", "beta", 0.5, 100),
    ("eca", "gate", "hard_sigmoid", "relu"),
    ("eca", "dims", 1, 4),
    ("eca", "min_kernel_size", 3, 0),
    ("eca", "padding", "circular", "reflect"),
    ("eca", "mlp", True, "yes"),
    ("eca", "reduction", 8, 4),  # without mlp
    ("eca", "divisor", 8, 1),  # without mlp
    ("eca", "round_limit", 0.9, 0.5),  # without mlp
    ("eca", "activation", "relu", "silu"),  # without mlp
    ("eca", "bias", True, 1),
    ("ese", "dims", 3, 0),
    ("ese", "pooling", ["avg", "max"], ["max", "max"]),
    ("ese", "gate", "sigmoid", "tanh"),
    ("ese", "bias", False, None),
    ("ge", "dims", 1, 4),
    ("ge", "extent", 4, 3),  # odd
    ("ge", "extent", 32, 34),
    ("ge", "extra_params", False, "true"),
    ("ge", "feat_size", None, [7, 7]),  # without extra_params
    ("ge", "norm", "batchnorm", "none"),  # without extra_params
    ("ge", "pooling", ["avg", "max"], ["avg", "avg"]),
    ("ge", "pooling", ["max"], ["mean"]),
    ("ge", "mlp", False, 1),
    ("ge", "reduction", 8, 0),
    ("ge", "divisor", None, 0),
    ("ge", "divisor", 8, 257),
    ("ge", "round_limit", 0.0, 1.0),
    ("ge", "activation", "silu", "tanh"),
    ("ge", "gate", "hard_sigmoid", "relu"),
    ("gc", "dims", 3, 0),
    ("gc", "context", "avg", "max"),
    ("gc", "fuse_scale", True, False),  # and fuse_add false: nothing fused
    ("gc", "fuse_add", True, "yes"),
    ("gc", "reduction", 16, 1025),
    ("gc", "divisor", None, 0),
    ("gc", "round_limit", 0.9, -0.1),
    ("gc", "activation", "gelu", "swish"),
    ("gc", "gate", "hard_sigmoid", "softmax"),
    ("simam", "dims", 3, 0),
    ("simam", "e_lambda", 1e-4, 0.0),  # must stay positive: a constant channel's 0 / (4 lambda)
    ("simam", "e_lambda", 1e-8, 5e-9),
    ("simam", "e_lambda", 100, 100.5),
    ("simam", "e_lambda", 1e-8, "1e-4"),
    ("sge", "dims", 1, 4),
    ("sge", "groups", 8, 0),
    ("sge", "groups", 1024, 1025),
    ("sge", "groups", 64, 64.0),
    ("ela", "dims", 2, 3),
    ("ela", "dims", 2, 1),
    ("ela", "kernel_size", 5, 4),
    ("ela", "kernel_size", 31, 33),
    ("ela", "kernel_size", 1, 0),
    ("ela", "bias", True, "true"),
    ("ela", "norm", "batchnorm", "layernorm"),
    ("ela", "norm", "none", "groupnorm1"),
    ("ela", "norm_groups", 16, 0),
    ("ela", "norm_groups", 1024, 1025),
    ("ela", "activation", "none", "identity"),
    ("ela", "activation", "hard_swish", "tanh"),
    ("ela", "gate", "hard_sigmoid", "tanh"),
    ("ela", "skip", True, "yes"),
    ("strip", "dims", 2, 3),
    ("strip", "dims", 2, 2.0),
    ("strip", "conv", False, 0),
    ("strip", "kernel_size", 7, 2),
    ("strip", "kernel_size", 1, 0),
    ("strip", "bias", True, None),
    ("strip", "gate", "hard_sigmoid", "relu"),
    ("strip", "skip", True, 1),
    ("nl", "dims", 3, 4),
    ("nl", "use_scale", False, "false"),
    ("nl", "reduction", 1, 0),
    ("nl", "reduction", 1024, 1025),
    ("nl", "divisor", 1, 0),
    ("nl", "divisor", 256, None),
    ("nl", "round_limit", 0.0, 1.0),
    ("nl", "round_limit", 0.5, -0.1),
    ("bat", "dims", 2, 3),
    ("bat", "block_size", 1, 0),
    ("bat", "block_size", 64, 65),
    ("bat", "groups", 1, 0),
    ("bat", "groups", 256, 257),
    ("bat", "reduction", 16, 0),
    ("bat", "divisor", 1, 257),
    ("bat", "round_limit", 0.0, "0.9"),
    ("bat", "drop_rate", 0.0, 1.0),
    ("bat", "drop_rate", 0.5, -0.1),
    ("bat", "activation", "none", "identity"),
    ("bat", "activation", "silu", "tanh"),
    ("bat", "norm", "layernorm2d", "groupnorm"),
    ("bat", "norm", "groupnorm1", "none"),
    ("coord", "dims", 2, 3),  # rows and columns only
    ("coord", "dims", 2, 2.0),
    ("coord", "reduction", 32, 0),
    ("coord", "divisor", 1, 0),
    ("coord", "divisor", 16, 257),
    ("coord", "min_channels", 8, 0),
    ("coord", "se_factor", 1.0, 0.0),
    ("coord", "se_factor", 0.5, 4.5),
    ("coord", "activation", "relu", "h_swish"),
    ("coord", "norm", "none", "groupnorm"),
    ("coord", "gate", "hard_sigmoid", "tanh"),
    ("coord", "bias", True, "true"),
    ("coord", "skip", True, 1),
    ("scoord", "dims", 2, 1),
    ("scoord", "reduction", 1024, 1025),
    ("scoord", "divisor", 8, "8"),
    ("scoord", "min_channels", 4096, 4097),
    ("scoord", "se_factor", 4.0, -0.5),
    ("scoord", "activation", "gelu", "swish"),
    ("scoord", "gate", "sigmoid", "softmax"),
    ("scoord", "bias", False, None),
    ("scoord", "skip", False, "no"),
    ("triplet", "dims", 2, 3),
    ("triplet", "dims", 2, 2.0),
    ("triplet", "kernel_size", 3, 4),
    ("triplet", "kernel_size", 31, 33),
    ("triplet", "no_spatial", True, "true"),
    ("bam", "dims", 2, 1),
    ("bam", "reduction", 1, 0),
    ("bam", "reduction", 1024, 1025),
    ("bam", "min_channels", 4, 0),
    ("bam", "dilation", 1, 0),
    ("bam", "dilation", 32, 33),
    ("bam", "dilated_convs", 0, -1),
    ("bam", "dilated_convs", 8, 9),
    ("bam", "merge", "product", "concat"),
    ("sk", "dims", 2, 3),
    ("sk", "kernel_size", [3, 5, 7], [3, 4]),
    ("sk", "kernel_size", [5], [1]),
    ("sk", "kernel_size", [3, 5, 7, 9], [3, 5, 7, 9, 11]),
    ("sk", "kernel_size", [3, 3], []),
    ("sk", "dilation", 8, 0),
    ("sk", "keep_3x3", False, "no"),
    ("sk", "split_input", False, 0),
    ("sk", "groups", 32, 0),
    ("sk", "reduction", 8, 0),
    ("sk", "divisor", 32, 257),
    ("sk", "activation", "silu", "tanh"),
    ("splat", "dims", 2, 1),
    ("splat", "kernel_size", 1, 0),
    ("splat", "kernel_size", 31, 32),
    ("splat", "padding", None, -1),
    ("splat", "padding", 0, "1"),
    ("splat", "dilation", 2, 9),
    ("splat", "groups", 4, 0),
    ("splat", "radix", 1, 0),
    ("splat", "radix", 8, 9),
    ("splat", "bias", True, "true"),
    ("splat", "reduction", 2, 0),
    ("splat", "divisor", 16, 0),
    ("splat", "min_channels", 8, 0),
    ("splat", "activation", "silu", "swish"),
    ("splat", "norm", "batchnorm", "groupnorm"),
    ("lambda", "dims", 2, 3),
    ("lambda", "num_heads", 64, 0),
    ("lambda", "dim_head", None, 0),
    ("lambda", "dim_head", 512, 513),
    ("lambda", "qk_ratio", 1.0, 0.0),  # qk_ratio other than 1 needs dim_head: null
    ("lambda", "qk_ratio", 1.0, 0.5),
    ("lambda", "qkv_bias", True, "true"),
    ("lambda", "r", None, 8),
    ("lambda", "r", 31, 33),
    ("bottleneck", "dims", 2, 1),
    ("bottleneck", "num_heads", 1, 65),
    ("bottleneck", "dim_head", 16, -1),
    ("bottleneck", "qk_ratio", 4.0, 4.5),
    ("bottleneck", "qkv_bias", False, 0),
    ("bottleneck", "scale_pos_embed", True, "yes"),
    ("halo", "dims", 2, 3),
    ("halo", "num_heads", 4, 0),
    ("halo", "dim_head", 16, 0),
    ("halo", "qk_ratio", 0.33, 0.0),
    ("halo", "qkv_bias", True, None),
    ("halo", "block_size", 1, 0),
    ("halo", "block_size", 64, 65),
    ("halo", "halo_size", 0, -1),
    ("halo", "halo_size", 32, 33),
    ("halo", "avg_down", True, 1),
    ("halo", "scale_pos_embed", False, "no"),
    ("sdpa", "causal_alignment", "top_left", "bottom_right"),  # bottom_right needs causal: true
    ("sdpa", "causal_alignment", "top_left", "center"),
    ("mha", "causal_alignment", "top_left", "bottom"),
    ("mha", "kv_heads", 2, 3),  # must divide the 8 heads
    ("mha", "kv_heads", 1, 0),
    ("mha", "qk_norm", "rmsnorm", "batchnorm"),
    ("mha", "return_weights", "per_head", True),
    ("sdpa", "scale", 0.125, 0),
    ("sdpa", "scale", None, -1.0),
    ("sdpa", "dropout", 0.5, 1.0),
    ("sdpa", "dropout", 0.0, -0.1),
    ("sdpa", "causal", True, "yes"),
    ("mha", "heads", 16, 0),
    ("mha", "heads", 256, 257),
    ("mha", "head_dim", 64, 0),
    ("mha", "value_head_dim", 32, 2000),
    ("mha", "qkv_bias", False, None),
    ("mha", "out_bias", False, "no"),
    ("mha", "dropout", 0.1, 1),
    ("mha", "causal", False, 0),
    ("mha", "scale", 1, "1"),
    ("sdpa", "window", 4, 0),
    ("mha", "window", None, 2.5),
    ("sdpa", "softcap", 50.0, 0),
    ("mha", "softcap", None, "50"),
    ("mha", "rope", "half", "neox"),
    ("mha", "rope", "interleaved", True),
    ("mha", "rope_base", 10000.0, 1.0),
    ("mha", "rope_fraction", 1.0, 0.0),
    ("mha", "rope_fraction", 1.0, 1.5),
    ("mha", "alibi", True, "true"),
]


@pytest.mark.parametrize(
    ("kind", "field", "good", "bad"), FIELDS, ids=[f"{k}-{f}-{b!r}" for k, f, _, b in FIELDS]
)
def test_field(kind, field, good, bad):
    assert specs.validate({**BASE[kind], field: good})
    with pytest.raises(ValidationError):
        specs.validate({**BASE[kind], field: bad})


def test_every_field_has_a_row():
    covered = {(k, f) for k, f, _, _ in FIELDS}
    shared = {"name", "description"}  # common to every kind, covered by the channel rows
    for kind, model in specs.MODELS.items():
        fields = set(model.model_fields) - {"kind"} - (shared if kind != "channel" else set())
        missing = fields - {f for k, f in covered if k == kind}
        assert not missing, f"{kind}: no valid/invalid row for {sorted(missing)}"


def test_unknown_fields_and_kinds_are_rejected():
    with pytest.raises(ValidationError, match="extra"):
        specs.validate({**BASE["sdpa"], "heads": 8})
    with pytest.raises(ValidationError, match="tag"):
        specs.validate({"name": "v", "kind": "se"})


def test_specs_are_frozen_and_defaults_documented():
    s = specs.validate(BASE["cbam"])
    with pytest.raises(ValidationError):
        s.order = "spatial_first"
    assert (s.channel.reduction, s.channel.pooling, s.channel.bias) == (16, ("avg", "max"), False)
    for model in specs.MODELS.values():
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description (editors show it)"


def test_description_is_normalised_only_at_line_ends():
    s = specs.validate({**BASE["sdpa"], "description": "\n  a  \r\n   b\t\x1e c \n\n"})
    assert s.description == "a\n   b\t\x1e c"  # \x1e is no line break here, unlike str.splitlines()


def test_a_partial_cbam_channel_mapping_keeps_cbam_defaults():
    s = specs.validate({**BASE["cbam"], "channel": {"reduction": 4}})
    assert (s.channel.reduction, s.channel.pooling, s.channel.bias) == (4, ("avg", "max"), False)
    s = specs.validate({**BASE["cbam"], "channel": {"pooling": ["avg"], "bias": True}})
    assert (s.channel.pooling, s.channel.bias) == (("avg",), True)


def test_cross_field_rules():
    assert specs.validate({**BASE["sdpa"], "causal": True, "causal_alignment": "bottom_right"})
    with pytest.raises(
        ValidationError, match="gamma, beta and min_kernel_size set the adaptive size"
    ):
        specs.validate({**BASE["eca"], "kernel_size": 3, "gamma": 3})
    with pytest.raises(ValidationError, match="reduction, activation apply only with mlp: true"):
        specs.validate({**BASE["eca"], "reduction": 4, "activation": "silu"})
    with pytest.raises(ValidationError, match="bias applies only without mlp"):
        specs.validate({**BASE["eca"], "mlp": True, "bias": True})
    with pytest.raises(ValidationError, match="use pooling_merge: before_mlp"):
        specs.validate({**BASE["channel"], "pooling": ["avg", "max"], "norm": "batchnorm"})
    assert specs.validate(
        {
            **BASE["channel"],
            "pooling": ["avg", "max"],
            "pooling_merge": "before_mlp",
            "norm": "batchnorm",
        }
    )
    assert specs.validate({**BASE["mha"], "heads": 6, "kv_heads": 3}).kv_heads == 3


def test_gather_excite_rules():
    ge = BASE["ge"]
    ok = [
        {"extent": 8, "extra_params": True},
        {"extra_params": True, "feat_size": [6, 8]},
        {"extra_params": True, "feat_size": [7], "dims": 1, "norm": "none"},
        {"extent": 4, "extra_params": True, "dims": 3, "mlp": False, "activation": "silu"},
        {"extent": 6, "pooling": ["max"]},  # any even extent pools without parameters
        {"mlp": False, "gate": "hard_sigmoid"},
    ]
    for fields in ok:
        assert specs.validate({**ge, **fields})
    rules = [
        ({"extent": 3}, "extent must be 0 .global. or even, got 3"),
        ({"extent": 6, "extra_params": True}, "extent must be a power of two, got 6"),
        ({"extra_params": True}, "extra_params with extent 0 needs feat_size"),
        ({"extent": 2, "extra_params": True, "feat_size": [3, 3]}, "feat_size applies only"),
        ({"extra_params": True, "feat_size": [7]}, r"feat_size needs one size per spatial dim"),
        ({"norm": "none"}, "norm applies only with extra_params: true"),
        (
            {"extent": 2, "extra_params": True, "pooling": ["avg", "max"]},
            "pooling applies only without extra_params",
        ),
        ({"extent": 2, "dims": 3}, "PyTorch refuses for inputs smaller than its kernel"),
        ({"mlp": False, "reduction": 4, "divisor": 8}, "reduction, divisor apply only with mlp"),
        ({"divisor": None, "round_limit": 0.5}, "round_limit applies only with a divisor"),
        ({"mlp": False, "activation": "silu"}, "activation applies only with mlp: true or"),
        (
            {"mlp": False, "extent": 2, "extra_params": True, "activation": "silu"},
            "activation applies only",  # one stride-2 conv: no activation between convs
        ),
    ]
    for fields, message in rules:
        with pytest.raises(ValidationError, match=message):
            specs.validate({**ge, **fields})


def test_global_context_rules():
    gc = BASE["gc"]
    assert specs.validate({**gc, "fuse_add": True})  # both fusions: scale, then add
    assert specs.validate({**gc, "fuse_add": True, "fuse_scale": False, "context": "avg"})
    with pytest.raises(ValidationError, match="fuse_scale and fuse_add both false"):
        specs.validate({**gc, "fuse_scale": False})
    with pytest.raises(ValidationError, match="gate applies only with fuse_scale: true"):
        specs.validate({**gc, "fuse_scale": False, "fuse_add": True, "gate": "hard_sigmoid"})
    with pytest.raises(ValidationError, match="round_limit applies only with a divisor"):
        specs.validate({**gc, "divisor": None, "round_limit": 0.5})


def test_strip_block_rules():
    for kind in ("ela", "strip"):
        for dims in (1, 3):
            with pytest.raises(
                ValidationError,
                match=rf"pools along H and along W separately: dims must be 2, got {dims}",
            ):
                specs.validate({**BASE[kind], "dims": dims})
    with pytest.raises(ValidationError, match="kernel_size must be odd"):
        specs.validate({**BASE["ela"], "kernel_size": 6})
    with pytest.raises(ValidationError, match="norm_groups applies only with norm: groupnorm"):
        specs.validate({**BASE["ela"], "norm": "batchnorm", "norm_groups": 2})
    assert (
        specs.validate({**BASE["ela"], "norm_groups": 16, "activation": "none"}).norm_groups == 16
    )
    with pytest.raises(ValidationError, match="kernel_size applies only with conv: true"):
        specs.validate({**BASE["strip"], "conv": False, "kernel_size": 5})
    with pytest.raises(ValidationError, match="kernel_size, bias apply only with conv: true"):
        specs.validate({**BASE["strip"], "conv": False, "kernel_size": 5, "bias": True})
    assert not specs.validate({**BASE["strip"], "conv": False, "skip": True}).conv


@pytest.mark.parametrize("kind", ["coord", "scoord"])
def test_coordinate_attention_rules(kind):
    with pytest.raises(ValidationError, match="se_factor applies only with a divisor"):
        specs.validate({**BASE[kind], "divisor": None})
    s = specs.validate({**BASE[kind], "divisor": None, "se_factor": 1.0, "min_channels": 8})
    assert (s.divisor, s.se_factor, s.min_channels) == (None, 1.0, 8)
    with pytest.raises(
        ValidationError, match=r"pools along H and along W .* dims must be 2, got 3"
    ):
        specs.validate({**BASE[kind], "dims": 3})
    with pytest.raises(ValidationError, match="extra"):
        specs.validate({**BASE[kind], "has_skip": True})  # ours is skip
    assert specs.validate(BASE["coord"]).norm == "batchnorm"
    with pytest.raises(ValidationError, match="extra"):
        specs.validate({**BASE["scoord"], "norm": "batchnorm"})  # SimpleCoordAttn has none


def test_triplet_bam_rules():
    for dims in (1, 3):
        with pytest.raises(ValidationError, match=rf"rotates C, H and W .* must be 2, got {dims}"):
            specs.validate({**BASE["triplet"], "dims": dims})
        with pytest.raises(ValidationError, match=rf"2D inputs only: dims must be 2, got {dims}"):
            specs.validate({**BASE["bam"], "dims": dims})
    with pytest.raises(ValidationError, match="kernel_size must be odd"):
        specs.validate({**BASE["triplet"], "kernel_size": 6})
    with pytest.raises(ValidationError, match="dilation applies only with dilated_convs"):
        specs.validate({**BASE["bam"], "dilated_convs": 0, "dilation": 2})
    assert specs.validate({**BASE["bam"], "dilated_convs": 0}).dilation == 4
    assert specs.validate({**BASE["bam"], "dilated_convs": 1, "dilation": 2}).dilation == 2


def test_position_options_hang_together():
    mha = BASE["mha"]
    assert specs.validate({**mha, "rope": "half", "rope_base": 5e5, "rope_fraction": 0.5})
    assert specs.validate({**mha, "rope": "interleaved", "head_dim": 8, "rope_fraction": 0.25})
    for bad, why in (
        ({"rope_base": 5e5}, "apply only with rope"),
        ({"rope_fraction": 0.5}, "apply only with rope"),
        ({"rope": "half", "alibi": True}, "choose one"),
        ({"rope": "half", "head_dim": 6, "rope_fraction": 0.5}, "= 3 must be even"),
        ({"rope": "half", "head_dim": 3}, "= 3 must be even"),
        ({"rope": "half", "head_dim": 8, "rope_fraction": 0.1}, "= 1 must be even and >= 2"),
    ):
        with pytest.raises(ValidationError, match=why):
            specs.validate({**mha, **bad})
