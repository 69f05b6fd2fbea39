"""Fuzzing spec documents with hypothesis (derandomized in CI: the same examples every run).

Valid documents generate a module that imports and keeps shapes; invalid ones yield only
``file:line:col: ...`` problems; nothing raises an internal exception.
"""

from __future__ import annotations

import importlib
import itertools
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from attnforge import kinds
from attnforge.generate import generate
from attnforge.kinds import output
from attnforge.load import SpecError, load_specs

names = (
    st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z")
    .filter(lambda n: n != "f")
    .filter(
        lambda n: (
            n
            not in {
                "and",
                "as",
                "if",
                "in",
                "is",
                "or",
                "not",
                "def",
                "del",
                "for",
                "try",
                "case",
                "type",
                "match",
                "with",
                "from",
                "pass",
                "else",
                "elif",
                "class",
                "while",
                "break",
                "async",
                "await",
                "raise",
                "yield",
                "global",
                "lambda",
                "return",
                "import",
                "assert",
                "except",
                "finally",
                "continue",
                "nonlocal",
                "_",
            }
        )
    )
)
descriptions = st.text(max_size=80)
gates = st.sampled_from(["sigmoid", "hard_sigmoid"])
channel_pools = st.sampled_from([["avg"], ["max"], ["avg", "max"], ["max", "avg"]])
spatial_pools = st.sampled_from([["mean"], ["max"], ["mean", "max"], ["max", "mean"]])

channel_opts = st.fixed_dictionaries(
    {},
    optional={
        "reduction": st.integers(1, 64),
        "divisor": st.none() | st.integers(1, 16),
        "min_channels": st.integers(1, 8),
        "pooling": channel_pools,
        "pooling_merge": st.sampled_from(["after_mlp", "before_mlp"]),
        "activation": st.sampled_from(["relu", "silu", "gelu"]),
        "gate": gates,
        "bias": st.booleans(),
    },
)
spatial_opts = st.fixed_dictionaries(
    {},
    optional={
        "kernel_size": st.sampled_from([1, 3, 5, 7, 9]),
        "pooling": spatial_pools,
        "gate": gates,
        "bias": st.booleans(),
    },
)
coord_opts = st.fixed_dictionaries(
    {},
    optional={
        "reduction": st.integers(1, 64),
        "min_channels": st.integers(1, 8),
        "activation": st.sampled_from(["relu", "hard_swish", "gelu"]),
        "norm": st.sampled_from(["none", "batchnorm"]),
        "gate": gates,
        "bias": st.booleans(),
        "skip": st.booleans(),
    },
)
# se_factor only with a divisor; the paper's floor(C / r) (divisor null) takes se_factor 1.
coord_width = st.fixed_dictionaries(
    {}, optional={"divisor": st.integers(1, 16), "se_factor": st.floats(0.1, 4.0)}
) | st.just({"divisor": None, "se_factor": 1.0})
attention_opts = {
    "scale": st.none() | st.floats(0.01, 10),
    "dropout": st.just(0.0) | st.floats(0.0, 0.9),
    "causal": st.booleans(),
    "window": st.none() | st.integers(1, 4),
    "softcap": st.none() | st.floats(0.5, 100),
}
# RoPE (the head width rounded to a multiple of 4, so that every rotary width is even) or ALiBi.
positions_opts = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {"rope": st.sampled_from(["half", "interleaved"])},
        optional={
            "rope_base": st.floats(2, 1e6),
            "rope_fraction": st.sampled_from([1.0, 0.5]),
        },
    ),
    st.just({"alibi": True}),
)


def _with_positions(opts: dict, positions: dict) -> dict:
    if positions.get("rope") and opts.get("head_dim") is not None:
        opts = {**opts, "head_dim": 4 * max(1, opts["head_dim"] // 4)}
    return {**opts, **positions}


ge_mlp_opts = st.fixed_dictionaries(
    {},
    optional={
        "reduction": st.integers(1, 64),
        "divisor": st.none() | st.integers(1, 16),
        "activation": st.sampled_from(["relu", "silu", "gelu"]),
    },
)
ge_gathers = st.one_of(
    # global or windowed pooling (3D pools globally only)
    st.fixed_dictionaries(
        {"extent": st.sampled_from([0, 2, 4, 6]), "pooling": channel_pools.map(sorted)},
        optional={"dims": st.sampled_from([1, 2])},
    ),
    st.fixed_dictionaries({"dims": st.just(3), "pooling": channel_pools.map(sorted)}),
    # strided depthwise convs
    st.fixed_dictionaries(
        {"extra_params": st.just(True), "extent": st.sampled_from([2, 4, 8])},
        optional={
            "norm": st.sampled_from(["batchnorm", "none"]),
            "dims": st.sampled_from([1, 2, 3]),
        },
    ),
    # timm's padded feat_size conv, one size per dim
    st.integers(1, 3).flatmap(
        lambda d: st.fixed_dictionaries(
            {
                "extra_params": st.just(True),
                "dims": st.just(d),
                "feat_size": st.lists(st.integers(1, 9), min_size=d, max_size=d),
            },
            optional={"norm": st.sampled_from(["batchnorm", "none"])},
        )
    ),
)
ge_opts = st.tuples(
    ge_gathers, st.booleans(), ge_mlp_opts, st.fixed_dictionaries({}, optional={"gate": gates})
).map(lambda t: {**t[0], "mlp": t[1], **(t[2] if t[1] else {}), **t[3]})
ese_opts = st.fixed_dictionaries(
    {},
    optional={
        "pooling": st.sampled_from([["avg"], ["avg", "max"]]),
        "gate": gates,
        "bias": st.booleans(),
        "dims": st.sampled_from([1, 2, 3]),
    },
)
odd_kernels = st.integers(0, 15).map(lambda k: 2 * k + 1)
# norm_groups only with a group norm (the spec refuses it elsewhere).
ela_norms = st.sampled_from([{"norm": "none"}, {"norm": "batchnorm"}]) | st.sampled_from(
    [1, 2, 4, 16]
).map(lambda g: {"norm": "groupnorm", "norm_groups": g})
ela_opts = st.fixed_dictionaries(
    {},
    optional={
        "kernel_size": odd_kernels,
        "bias": st.booleans(),
        "activation": st.sampled_from(["none", "relu", "silu", "hard_swish"]),
        "gate": gates,
        "skip": st.booleans(),
    },
)
# kernel_size and bias only with the convs (the spec refuses them without).
strip_opts = st.tuples(
    st.fixed_dictionaries({}, optional={"gate": gates, "skip": st.booleans()}),
    st.just({"conv": False})
    | st.fixed_dictionaries({}, optional={"kernel_size": odd_kernels, "bias": st.booleans()}),
).map(lambda t: {**t[0], **t[1]})
gc_opts = st.tuples(
    st.sampled_from([(True, False), (False, True), (True, True)]),
    st.fixed_dictionaries(
        {},
        optional={
            "context": st.sampled_from(["attention", "avg"]),
            "reduction": st.integers(1, 64),
            "divisor": st.none() | st.integers(1, 16),
            "activation": st.sampled_from(["relu", "silu", "gelu"]),
            "dims": st.sampled_from([1, 2, 3]),
        },
    ),
    gates,
).map(
    lambda t: {
        "fuse_scale": t[0][0],
        "fuse_add": t[0][1],
        **t[1],
        **({"gate": t[2]} if t[0][0] else {}),
    }
)

# sk: groups 1 or 2 (the tiny case's 4 channels split over up to 2 paths, 2 a path).
sk_opts = st.fixed_dictionaries(
    {},
    optional={
        "kernel_size": st.lists(st.sampled_from([3, 5, 7]), min_size=1, max_size=2),
        "dilation": st.integers(1, 3),
        "keep_3x3": st.booleans(),
        "split_input": st.booleans(),
        "groups": st.sampled_from([1, 2]),
        "reduction": st.integers(1, 32),
        "divisor": st.sampled_from([1, 8, 16]),
        "activation": st.sampled_from(["relu", "silu", "gelu"]),
    },
)

# splat: groups * radix divides the tiny case's 4 channels; the kernel's reach stays within its
# 3 x 2 map (padding k // 2 at dilation 1).
splat_opts = st.fixed_dictionaries(
    {},
    optional={
        "kernel_size": st.sampled_from([1, 3, 5]),
        "radix": st.sampled_from([1, 2, 4]),
        "bias": st.booleans(),
        "reduction": st.integers(1, 16),
        "divisor": st.sampled_from([1, 8]),
        "min_channels": st.integers(1, 32),
        "activation": st.sampled_from(["relu", "silu", "gelu"]),
        "norm": st.sampled_from(["none", "batchnorm"]),
    },
)


def _variant(kind: str, body: st.SearchStrategy) -> st.SearchStrategy:
    return st.tuples(names, descriptions, body).map(
        lambda t: {"name": t[0], "kind": kind, "description": t[1], **t[2]}
    )


dims = st.fixed_dictionaries({}, optional={"dims": st.sampled_from([1, 2, 3])})
variants = st.one_of(
    _variant("channel", st.tuples(channel_opts, dims).map(lambda t: {**t[0], **t[1]})),
    _variant("spatial", st.tuples(spatial_opts, dims).map(lambda t: {**t[0], **t[1]})),
    _variant(
        "cbam",
        st.fixed_dictionaries(
            {},
            optional={
                "channel": channel_opts,
                "spatial": spatial_opts,
                "order": st.sampled_from(["channel_first", "spatial_first"]),
                "dims": st.sampled_from([1, 2, 3]),
            },
        ),
    ),
    _variant(
        "eca",
        st.tuples(
            st.one_of(
                st.just({}),
                st.fixed_dictionaries({"kernel_size": st.sampled_from([1, 3, 5])}),
                st.fixed_dictionaries(
                    {}, optional={"gamma": st.floats(0.5, 4), "beta": st.floats(-2, 2)}
                ),
            ),
            dims,
            st.fixed_dictionaries({}, optional={"gate": gates}),
        ).map(lambda t: {**t[0], **t[1], **t[2]}),
    ),
    _variant("ese", ese_opts),
    _variant("ela", st.tuples(ela_opts, ela_norms).map(lambda t: {**t[0], **t[1]})),
    _variant("strip", strip_opts),
    _variant("ge", ge_opts),
    _variant("gc", gc_opts),
    _variant(
        "simam",
        st.tuples(st.fixed_dictionaries({}, optional={"e_lambda": st.floats(1e-8, 100)}), dims).map(
            lambda t: {**t[0], **t[1]}
        ),
    ),
    # groups always given: the default 64 does not divide the fuzz inputs' 6 channels.
    _variant(
        "sge",
        st.tuples(st.fixed_dictionaries({"groups": st.sampled_from([1, 2, 3, 6])}), dims).map(
            lambda t: {**t[0], **t[1]}
        ),
    ),
    _variant(
        "coord",
        st.tuples(coord_opts, coord_width).map(lambda t: {**t[0], **t[1]}),
    ),
    _variant(
        "scoord",
        st.tuples(coord_opts, coord_width).map(
            lambda t: {**{k: v for k, v in t[0].items() if k != "norm"}, **t[1]}
        ),
    ),
    _variant(
        "triplet",
        st.fixed_dictionaries(
            {}, optional={"kernel_size": st.sampled_from([1, 3, 7]), "no_spatial": st.booleans()}
        ),
    ),
    # qk_ratio only without dim_head (the spec refuses it with one).
    _variant(
        "lambda",
        st.tuples(
            st.fixed_dictionaries(
                {},
                optional={
                    "num_heads": st.sampled_from([1, 2, 3]),
                    "qkv_bias": st.booleans(),
                    "r": st.none() | st.sampled_from([1, 3, 5]),
                },
            ),
            st.just({})
            | st.fixed_dictionaries({"dim_head": st.integers(1, 8)})
            | st.fixed_dictionaries({"dim_head": st.none(), "qk_ratio": st.floats(0.25, 2.0)}),
        ).map(lambda t: {**t[0], **t[1]}),
    ),
    _variant(
        "bottleneck",
        st.tuples(
            st.fixed_dictionaries(
                {},
                optional={
                    "num_heads": st.sampled_from([1, 2, 3]),
                    "qkv_bias": st.booleans(),
                    "scale_pos_embed": st.booleans(),
                },
            ),
            st.just({})
            | st.fixed_dictionaries({"dim_head": st.integers(1, 8)})
            | st.fixed_dictionaries({"qk_ratio": st.floats(0.25, 2.0)}),
        ).map(lambda t: {**t[0], **t[1]}),
    ),
    _variant(
        "halo",
        st.tuples(
            st.fixed_dictionaries(
                {},
                optional={
                    "num_heads": st.sampled_from([1, 2, 3]),
                    "block_size": st.integers(1, 3),
                    "halo_size": st.integers(0, 2),
                    "qkv_bias": st.booleans(),
                    "avg_down": st.booleans(),
                    "scale_pos_embed": st.booleans(),
                },
            ),
            st.just({})
            | st.fixed_dictionaries({"dim_head": st.integers(1, 8)})
            | st.fixed_dictionaries({"qk_ratio": st.floats(0.25, 2.0)}),
        ).map(lambda t: {**t[0], **t[1]}),
    ),
    # dilation only with dilated convs (the spec refuses it without).
    _variant(
        "bam",
        st.tuples(
            st.fixed_dictionaries(
                {},
                optional={
                    "reduction": st.integers(1, 32),
                    "min_channels": st.integers(1, 8),
                    "merge": st.sampled_from(["sum", "product"]),
                },
            ),
            st.fixed_dictionaries(
                {"dilated_convs": st.integers(1, 3)}, optional={"dilation": st.integers(1, 5)}
            )
            | st.just({"dilated_convs": 0}),
        ).map(lambda t: {**t[0], **t[1]}),
    ),
    _variant(
        "nl",
        st.tuples(
            st.fixed_dictionaries(
                {},
                optional={
                    "use_scale": st.booleans(),
                    "reduction": st.integers(1, 32),
                    "divisor": st.integers(1, 16),
                    "round_limit": st.sampled_from([0.0, 0.5, 0.9]),
                },
            ),
            dims,
        ).map(lambda t: {**t[0], **t[1]}),
    ),
    _variant(
        "bat",
        st.fixed_dictionaries(
            {},
            optional={
                "block_size": st.integers(1, 4),
                "groups": st.integers(1, 4),
                "reduction": st.integers(1, 8),
                "divisor": st.integers(1, 8),
                "drop_rate": st.sampled_from([0.0, 0.2]),
                "activation": st.sampled_from(["none", "relu", "silu"]),
                "norm": st.sampled_from(["batchnorm", "groupnorm1", "layernorm2d"]),
            },
        ),
    ),
    _variant("sk", sk_opts),
    _variant("splat", splat_opts),
    _variant("sdpa", st.fixed_dictionaries({}, optional=attention_opts)),
    _variant(
        "mha",
        st.fixed_dictionaries(
            {},
            optional={
                **attention_opts,
                "heads": st.integers(1, 8),
                "head_dim": st.none() | st.integers(1, 16),
                "value_head_dim": st.none() | st.integers(1, 16),
                "qkv_bias": st.booleans(),
                "out_bias": st.booleans(),
                "qk_norm": st.sampled_from(["none", "layernorm", "rmsnorm"]),
                "return_weights": st.sampled_from(["none", "mean", "per_head"]),
                "kv_heads": st.sampled_from([None, 1]),
            },
        ).flatmap(lambda opts: positions_opts.map(lambda p: _with_positions(opts, p))),
    ),
)

_packages = itertools.count()


def _case(spec) -> tuple[tuple, dict, kinds.Inputs, tuple[int, ...]]:
    """The kind record's smallest case: constructor arguments and keyword options, inputs,
    expected output shape."""
    kind = kinds.record(spec)
    case = kind.tiny(spec)
    inputs = kind.inputs(spec, case, torch.float32, "cpu", torch.Generator().manual_seed(0))
    return case.ctor, case.options, inputs, kind.out_shape(spec, case)


def _formatter_agrees(package: Path) -> bool:
    """The pinned ruff leaves the package as generated (True when ruff is absent: tox has it)."""
    ruff = shutil.which("ruff")
    if ruff is None:
        return True
    proc = subprocess.run(
        [
            ruff,
            "format",
            "--check",
            "--no-cache",
            "--isolated",
            "--line-length=100",
            "--target-version=py310",
            str(package),
        ],
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


@given(variants)
def test_valid_specs_generate_modules_that_import_and_keep_shapes(variant):
    with tempfile.TemporaryDirectory() as tmp:
        specs = Path(tmp, "specs")
        specs.mkdir()
        (specs / "fuzz.yaml").write_text(
            yaml.safe_dump({"variants": [variant]}, allow_unicode=True), encoding="utf-8"
        )
        package = f"fuzz_pkg_{next(_packages)}"
        generate(specs, Path(tmp, package))
        formatted = _formatter_agrees(Path(tmp, package))
        sys.path.insert(0, tmp)
        try:
            module = importlib.import_module(f"{package}.{variant['name']}")
        finally:
            sys.path.remove(tmp)
        (spec,) = load_specs(specs)
        cls = next(
            v
            for k, v in vars(module).items()
            if isinstance(v, type) and k.lower() == spec.name.replace("_", "")
        )
        assert spec.spec.description in cls.__doc__.replace("\n    ", "\n")
        ctor, options, inputs, expected = _case(spec.spec)
        out = output(cls(*ctor, **options).eval()(*inputs.args, **inputs.kwargs))
        assert tuple(out.shape) == tuple(expected)
        assert formatted, "the templates laid this variant out differently from ruff"


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
FIELDS = [
    "radix",
    "padding",
    "keep_3x3",
    "split_input",
    "kv_heads",
    "qk_norm",
    "return_weights",
    "causal_alignment",
    "gamma",
    "beta",
    "e_lambda",
    "groups",
    "se_factor",
    "norm",
    "skip",
    "no_spatial",
    "dilation",
    "dilated_convs",
    "merge",
    "use_scale",
    "round_limit",
    "block_size",
    "drop_rate",
    "name",
    "kind",
    "reduction",
    "divisor",
    "min_channels",
    "pooling",
    "pooling_merge",
    "activation",
    "gate",
    "bias",
    "dims",
    "kernel_size",
    "channel",
    "spatial",
    "order",
    "scale",
    "dropout",
    "causal",
    "heads",
    "head_dim",
    "value_head_dim",
    "qkv_bias",
    "out_bias",
    "matrix",
    "description",
    "reductoin",
    "Kind",
]
PROBLEM = re.compile(r"^\S+\.yaml:\d+:\d+: .+")


def _problems_are_well_formed(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "fuzz.yaml").write_text(text, encoding="utf-8")
        try:
            load_specs(tmp)
        except SpecError as exc:
            assert exc.problems
            for problem in exc.problems:
                assert PROBLEM.match(str(problem)), str(problem)


@given(variants, st.sampled_from(FIELDS), junk)
def test_invalid_fields_give_positioned_errors(variant, field, value):
    _problems_are_well_formed(
        yaml.safe_dump({"variants": [{**variant, field: value}]}, allow_unicode=True)
    )


@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes_the_loader(text):
    _problems_are_well_formed(text)


@given(
    st.recursive(
        junk,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from([*FIELDS, "variants"]), inner, max_size=4)
        ),
        max_leaves=12,
    )
)
def test_arbitrary_structures_never_crash_the_loader(document):
    _problems_are_well_formed(yaml.safe_dump(document, allow_unicode=True))
