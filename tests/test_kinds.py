"""One kind, one record: every kind is known in its five places, and the checks know none by name."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from attnforge import checks, context, kinds, references, spec
from attnforge.generate import TEMPLATES_DIR

HARNESS = Path(checks.__file__).parent


def test_every_kind_has_its_model_record_builder_and_template():
    assert set(spec.MODELS) == set(kinds.KIND_DB) == set(context.BUILDERS)
    for kind in spec.MODELS:
        assert (TEMPLATES_DIR / f"{kind}.py.j2").is_file(), kind


def test_the_checks_never_branch_on_a_kind_name():
    tree = ast.parse((HARNESS / "checks.py").read_text())
    named = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in spec.KIND_NAMES
    ]
    assert named == [], f"checks.py names kinds {named}: move that knowledge into harness/kinds.py"


def test_plan_names_every_dtype_and_only_cuda_adds_devices():
    subject = checks.Subject.of("se_resnet")
    plan = checks.plan(subject, ["cpu"])
    dtypes = {dtype for check, _, dtype, _ in plan if check == "reference"}
    assert dtypes == {torch.float64, torch.float32, torch.float16, torch.bfloat16}
    assert {device for check, _, _, device in plan if check != "parity"} == {"cpu"}
    assert {dtype for check, _, dtype, _ in plan if check == "gradcheck"} == {torch.float64}
    with_cuda = checks.plan(subject, ["cpu", "cuda"])
    assert {d for c, _, d, dev in with_cuda if c == "autocast" and dev == "cuda"} == {torch.float16}


def test_the_realistic_case_overflows_a_float16_sum_but_not_the_mean():
    subject = checks.Subject.of("se_resnet")
    case = next(c for c in subject.kind.cases(subject.spec) if c.realistic)
    x = subject.kind.inputs(
        subject.spec, case, torch.float16, "cpu", torch.Generator().manual_seed(0)
    ).args[0]
    assert torch.isinf(x.sum((2, 3))).any() and torch.isinf(x.sum(1)).any()
    assert torch.isfinite(x.mean((2, 3))).all() and torch.isfinite(x.mean(1)).all()


def test_references_take_the_spec_models():
    hints = references.channel_attention.__annotations__
    assert hints["opts"] == "ChannelOptions"


def test_every_kind_is_swept_and_benched():
    """A kind without sweep variants or a bench row would be checked in few configurations and
    never timed."""
    import attnforge
    from attnforge import bench
    from attnforge.cli import _sweep_specs
    from attnforge.load import load_specs

    swept = {v.spec.kind for v in load_specs(_sweep_specs())}
    assert set(spec.MODELS) - swept == set(), "kinds without sweep variants"
    rows = [variant for variant, _ in bench.IMAGE_ROWS] + ["sdpa", "mha_torch"]
    benched = {attnforge.spec_dict(v)["kind"] for v in rows}
    assert set(spec.MODELS) - benched == set(), "kinds without a bench row"
