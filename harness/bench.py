"""``attnforge bench``: generated modules against their anchors, and the generator's speed.

Blocks: generated variants against the plain reference (``reference``, ``attnforge.references``);
for the gating kinds the kind's plain formulation (``formulation``: timm's, written out in
``attnforge.anchors``) and, where timm is installed and has the block, timm's own module (``timm``,
built by ``create_attn`` and loaded into the generated variant with ``from_timm``); for attention
``F.scaled_dot_product_attention`` / ``nn.MultiheadAttention(need_weights=False)``. All with the
same weights and inputs, in eval mode. Forward (no grad) and forward+backward are timed in one
process, interleaved (each repeat runs every candidate once, in rotating order), and reported as
min / median / max and ratios of medians: generated / other, below 1.0 is faster.

Generator: 1,000 variants generated from scratch (validate, render, write), a no-op
regeneration, and what ``import attnforge`` plus ``names()`` adds to ``import torch``.

Harness (``--scaling``): the committed catalogue's checks with 1 and with 2 xdist workers.

Writes ``bench.md``, ``bench.json`` and, with matplotlib installed (``pip install .[bench]``),
``bench.png`` under ``--out`` (default ``bench-results/``).
"""

from __future__ import annotations

import fnmatch
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kinds, references, registry
from .generate import generate
from .spec import MhaSpec


@dataclass
class Timing:
    """Milliseconds of one candidate over the repeats: min, median, max."""

    min: float
    median: float
    max: float

    @property
    def unstable(self) -> bool:
        """The slowest run took over twice the median: the machine was busy; rerun before trusting."""
        return self.max > 2 * self.median


@dataclass
class Row:
    kind: str
    variant: str
    mode: str  # forward, forward+backward
    shape: str
    timings: dict[str, Timing] = field(default_factory=dict)  # candidate -> timing

    @property
    def ms(self) -> dict[str, float]:
        return {k: t.median for k, t in self.timings.items()}

    def ratio(self, anchor: str) -> float:
        return self.ms["generated"] / self.ms[anchor]

    @property
    def best_anchor(self) -> str:
        return min((k for k in self.ms if k != "generated"), key=self.ms.__getitem__)

    @property
    def unstable(self) -> list[str]:
        return [k for k, t in self.timings.items() if t.unstable]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(
    candidates: dict[str, Callable[[], object]], device: str, repeats: int, warmup: int = 3
) -> dict[str, Timing]:
    """Per candidate, min / median / max milliseconds; every repeat runs each candidate once, in
    rotating order, so a busy moment hits all candidates alike."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _sync(device)
            start = time.perf_counter()
            candidates[name]()
            _sync(device)
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: Timing(min(v), statistics.median(v), max(v)) for name, v in samples.items()}


Candidate = Callable[..., Tensor]


@dataclass
class BenchCase:
    """One kind's row: a generated variant and its anchors, all computing the same function."""

    kind: str
    variant: str
    shape: str
    candidates: dict[str, Candidate]  # "generated" first
    make_inputs: Callable[[bool], tuple[Tensor, ...]]  # requires_grad -> positional inputs


# The gating rows: (variant, timm's create_attn type and kwargs for the same block, or None where
# timm has no such block). Every row also runs the kind's plain formulation (timm's, as written in
# ``attnforge.anchors``); with timm installed, the real timm module too, carrying the same weights.
IMAGE_ROWS: list[tuple[str, tuple[str, dict[str, Any]] | None]] = [
    ("se_resnet", None),
    ("se_timm", ("se", {})),
    ("se_bn", ("se", {"norm_layer": "batchnorm2d"})),
    ("ese_timm", ("ese", {})),
    ("eca", None),
    ("eca_timm", ("eca", {})),
    ("ecam_timm", ("ecam", {})),
    ("ceca_timm", ("ceca", {})),
    ("cbam_spatial_paper", None),
    ("cbam_paper", None),
    ("cbam_timm", ("cbam", {})),
    ("lcbam_timm", ("lcbam", {})),
    ("ge_timm", ("ge", {})),
    ("gc_timm", ("gc", {})),
    ("gca_timm", ("gca", {})),
    ("coord_timm", ("coord", {})),
    ("scoord_timm", ("scoord", {})),
    ("simam", None),
    ("sge", None),
    ("ela_timm", ("ela", {})),
    ("strip_timm", ("strip", {})),
    ("triplet", None),
    ("bam", None),
    ("nl_timm", ("nl", {})),
    ("bat_timm", ("bat", {})),
    ("sk_timm", ("sk", {})),
    ("splat_timm", ("splat", {})),
    ("lambda_timm", ("lambda", {})),
    ("bottleneck_timm", ("bottleneck", {"feat_size": (14, 14)})),
    ("halo_regnetz", ("halo", {"block_size": 7, "halo_size": 2, "qk_ratio": 0.33})),
]
# Constructor options a row's variant needs at the bench's size (the map a position embedding
# covers), for the generated module and its reference.
IMAGE_OPTIONS: dict[str, dict[str, Any]] = {"bottleneck_timm": {"feat_size": (14, 14)}}
IMAGE = (32, 256, 28, 28)
# The self-attention layers at a stage where timm's models run them (14 x 14, BoTNet's last), and
# a batch of 8: their references hold every (query, key) pair's relative-position logits, which at
# 32 x 784 x 784 positions per head would take ~20 GB.
IMAGE_SHAPES: dict[str, tuple[int, ...]] = {
    "bottleneck_timm": (8, 256, 14, 14),
    "halo_regnetz": (8, 256, 14, 14),
}


def _timm_module(timm: tuple[str, dict[str, Any]] | None, channels: int) -> nn.Module | None:
    """timm's module for a row, or None where timm has none or is not installed."""
    if timm is None:
        return None
    try:
        from timm.layers import get_norm_layer
    except ImportError:
        return None
    from .interop import timm_create_attn  # create_attn, around timm's GatherExcite bug

    attn, kwargs = timm
    kwargs = {k: get_norm_layer(v) if k == "norm_layer" else v for k, v in kwargs.items()}
    return timm_create_attn(attn, channels, **kwargs)


def image_case(
    variant: str, timm: tuple[str, dict[str, Any]] | None, device: str, *, with_timm: bool = True
) -> BenchCase:
    """A gating row: the generated module, its reference, its kind's plain formulation and (with
    timm installed) timm's module, all with the same weights and running statistics."""
    shape = IMAGE_SHAPES.get(variant, IMAGE)
    channels = shape[1]
    spec = registry.spec_of(variant)
    kind = kinds.record(spec)
    options = IMAGE_OPTIONS.get(variant, {})
    theirs = _timm_module(timm, channels) if with_timm else None
    if theirs is not None:
        from .interop import from_timm

        module = from_timm(variant, theirs, channels=channels).to(device)
        theirs.to(device)
    else:
        module = registry.build(variant, channels, **options, device=device)
    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    candidates: dict[str, Candidate] = {
        "generated": module,
        "reference": lambda x: kind.reference(spec, dict(state), kinds.Inputs([x], {}, options)),
        "formulation": lambda x: kind.plain(spec, state, kinds.Inputs([x])),
    }
    if theirs is not None:
        candidates["timm"] = theirs

    def inputs(grad: bool) -> tuple[Tensor, ...]:
        return (torch.randn(shape, device=device, requires_grad=grad),)

    return BenchCase(spec.kind, variant, str(shape), candidates, inputs)


def _cases(device: str) -> list[BenchCase]:
    out = [image_case(variant, timm, device) for variant, timm in IMAGE_ROWS]

    heads = (16, 8, 196, 32)

    def qkv_inputs(grad: bool) -> tuple[Tensor, ...]:
        return tuple(torch.randn(heads, device=device, requires_grad=grad) for _ in range(3))

    sd = registry.build("sdpa").to(device)
    sdpa_candidates: dict[str, Candidate] = {
        "generated": sd,
        "reference": lambda q, k, v: kinds.output(references.attention(q, k, v)),
        "F.sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
    }
    out.append(BenchCase("sdpa", "sdpa", str(heads), sdpa_candidates, qkv_inputs))

    tokens = (16, 196, 256)
    torch_mha = nn.MultiheadAttention(256, 8, batch_first=True, device=device)
    mha: Any = registry.default.cls("mha_torch")
    mha = mha.from_torch(torch_mha)
    mha_spec = registry.spec_of("mha_torch")
    assert isinstance(mha_spec, MhaSpec)
    p_mha = dict(mha.named_parameters())

    def self_attention(grad: bool) -> tuple[Tensor, ...]:
        x = torch.randn(tokens, device=device, requires_grad=grad)
        return (x, x, x)

    mha_candidates: dict[str, Candidate] = {
        "generated": mha,
        "reference": lambda q, k, v: kinds.output(
            references.multi_head_attention(q, k, v, p_mha, mha_spec)
        ),
        "nn.MultiheadAttention": lambda q, k, v: torch_mha(q, k, v, need_weights=False)[0],
    }
    out.append(BenchCase("mha", "mha_torch", f"{tokens}, 8 heads", mha_candidates, self_attention))
    out += _modern_cases(device, heads, qkv_inputs, tokens, self_attention)
    return out


def _modern_cases(
    device: str,
    heads: tuple[int, ...],
    qkv_inputs: Callable[[bool], tuple[Tensor, ...]],
    tokens: tuple[int, ...],
    self_attention: Callable[[bool], tuple[Tensor, ...]],
) -> list[BenchCase]:
    """The modern options: the explicit softmax path (soft-capping) against SDPA given the same
    window as a mask (what the cap costs), SDPA with a window mask against the explicit route, and
    RoPE's rotation inside a causal grouped-query block."""
    lq = heads[-2]
    local = references.window_allowed(lq, lq, 4, True, device=device)
    capped = registry.build("sdpa_gemma2").to(device)
    out = [
        BenchCase(
            "sdpa",
            "sdpa_gemma2",
            f"{heads}, window 4",
            {
                "generated": capped,
                "reference": lambda q, k, v: kinds.output(
                    references.attention(q, k, v, causal=True, window=4, softcap=50.0)
                ),
                "F.sdpa, window mask, no cap": lambda q, k, v: F.scaled_dot_product_attention(
                    q, k, v, attn_mask=local
                ),
            },
            qkv_inputs,
        )
    ]
    windowed = registry.build("sdpa_local").to(device)
    out.append(
        BenchCase(
            "sdpa",
            "sdpa_local",
            f"{heads}, window 3",
            {
                "generated": windowed,
                "explicit softmax": lambda q, k, v: kinds.output(
                    references.attention(q, k, v, window=3)
                ),
            },
            qkv_inputs,
        )
    )
    llama: Any = registry.build("mha_llama", tokens[-1], device=device)
    llama_spec = registry.spec_of("mha_llama")
    assert isinstance(llama_spec, MhaSpec)
    candidates: dict[str, Candidate] = {"generated": llama}
    theirs = _transformers_llama(llama_spec, tokens, device)
    if theirs is not None:
        llama, candidates["transformers"] = theirs
        candidates["generated"] = llama
    p_llama = dict(llama.named_parameters())
    candidates["reference"] = lambda q, k, v: kinds.output(
        references.multi_head_attention(q, k, v, p_llama, llama_spec)
    )
    out.append(BenchCase("mha", "mha_llama", f"{tokens}, 8 heads", candidates, self_attention))
    return out


def _transformers_llama(
    spec: MhaSpec, tokens: tuple[int, ...], device: str
) -> tuple[nn.Module, Candidate] | None:
    """Where transformers is installed: its LlamaAttention (SDPA path) configured as ``spec``, run
    as its model runs it (rotary angles and mask made once per forward, shared by every layer, so
    outside the timing), and ``mha_llama`` holding its weights. None without transformers."""
    try:
        from transformers import LlamaConfig, masking_utils
        from transformers.models.llama import modeling_llama
    except ImportError:
        return None
    from .transformers_interop import from_transformers

    b, length, embed = tokens
    config = LlamaConfig(
        hidden_size=embed,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads or spec.heads,
        rope_theta=spec.rope_base,
        attn_implementation="sdpa",
    )
    attn = modeling_llama.LlamaAttention(config, layer_idx=0).to(device).eval()
    x = torch.zeros(b, length, embed, device=device)
    positions = torch.arange(length, device=device)
    rotary = modeling_llama.LlamaRotaryEmbedding(config, device=device)
    cos_sin = rotary(x, positions[None].expand(b, length))
    mask = masking_utils.create_causal_mask(config, x, None, positions, None)
    ours = from_transformers("mha_llama", attn).to(device)
    return ours, lambda q, k, v: attn(q, cos_sin, mask)[0]


def bench_blocks(device: str, repeats: int, variants: str = "*") -> list[Row]:
    rows = []
    patterns = [p.strip() for p in variants.split(",")]
    for case in _cases(device):
        if not any(fnmatch.fnmatchcase(case.variant, p) for p in patterns):
            continue
        candidates = case.candidates
        modules = [c for c in candidates.values() if isinstance(c, nn.Module)]
        # forward: eval mode, no autograd (nn.MultiheadAttention takes its fused fast path here)
        for m in modules:
            m.eval()
        x = case.make_inputs(False)

        def forward(c: Candidate, x: tuple[Tensor, ...] = x) -> Callable[[], object]:
            return lambda: c(*x)

        with torch.no_grad():
            fwd = _time({k: forward(c) for k, c in candidates.items()}, device, repeats)
        rows.append(Row(case.kind, case.variant, "forward", case.shape, fwd))
        # forward+backward: gradients for the inputs and every parameter, still in eval mode (the
        # running statistics, as when fine-tuning with frozen norms), so that every candidate,
        # the functional formulations too, computes the same function
        x = case.make_inputs(True)
        grad = torch.randn_like(candidates["generated"](*x))

        def step(
            c: Candidate, x: tuple[Tensor, ...] = x, grad: Tensor = grad
        ) -> Callable[[], object]:
            def run() -> None:
                torch.autograd.backward(c(*x), grad)
                for t in x:
                    t.grad = None

            return run

        both = _time({k: step(c) for k, c in candidates.items()}, device, repeats)
        rows.append(Row(case.kind, case.variant, "forward+backward", case.shape, both))
        print(
            f"bench: {case.kind:8s} forward {fwd['generated'].median:.2f} ms; "
            f"fwd+bwd {both['generated'].median:.2f} ms",
            file=sys.stderr,
        )
    return rows


def _median_of(fn: Callable[[], float], n: int) -> float:
    return statistics.median(fn() for _ in range(n))


def bench_generator() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        specs = Path(tmp, "specs")
        specs.mkdir()
        (specs / "many.yaml").write_text(  # 25 x 5 x 2 x 2 x 2 = 1,000 variants
            "variants:\n"
            "  - name: g_r{reduction}_m{min_channels}_{gate}_b{bias}_{pooling}\n"
            "    kind: channel\n"
            "    matrix:\n"
            f"      reduction: {list(range(1, 26))}\n"
            "      min_channels: [1, 2, 4, 8, 16]\n"
            "      gate: [sigmoid, hard_sigmoid]\n"
            "      bias: [true, false]\n"
            "      pooling: [[avg], [max]]\n"
        )
        out = Path(tmp, "gen_bench")
        start = time.perf_counter()
        first = generate(specs, out)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        again = generate(specs, out)
        noop = time.perf_counter() - start
    code = (
        "import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); "
        "import attnforge; attnforge.names(); t2 = time.perf_counter(); "
        "print(t1 - t0, t2 - t1)"
    )

    def run_import() -> float:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        return float(out[1])

    return {
        "variants": len(first.written) - 1,
        "cold_seconds": cold,
        "noop_seconds": noop,
        "noop_files_written": len(again.written),
        "import_generated_and_names_seconds": _median_of(run_import, 5),
    }


def bench_scaling() -> dict[str, Any]:
    """The committed catalogue's checks with 1 and 2 xdist workers (wall time of pytest)."""
    result = {}
    for workers in ("1", "2"):
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            f"--attnforge-catalogue={registry.default.directory}",
            "-o",
            "addopts=",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            workers,
            "--dist",
            "worksteal",
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        result[f"workers_{workers}_seconds"] = time.perf_counter() - start
        summary = proc.stdout.strip().splitlines()[-1]
    return {
        **result,
        "speedup": result["workers_1_seconds"] / result["workers_2_seconds"],
        "summary": summary,
    }


def markdown(
    rows: list[Row], generator: dict[str, Any] | None, scaling: dict[str, Any] | None, machine: str
) -> str:
    lines = [
        f"Machine: {machine}",
        "",
        "Milliseconds as min / median / max over the repeats; ratios of medians. A row marked "
        "`unstable` had a run over twice its median (a busy machine): rerun it before trusting it.",
        "",
        "| variant (kind) | mode | generated ms | others ms | generated / fastest other | generated / timm | note |",
        "|---|---|---|---|---:|---:|---|",
    ]

    def spread(t: Timing) -> str:
        return f"{t.min:.2f} / {t.median:.2f} / {t.max:.2f}"

    for r in rows:
        others = "; ".join(f"{k} {spread(t)}" for k, t in r.timings.items() if k != "generated")
        note = f"unstable: {', '.join(r.unstable)}" if r.unstable else ""
        timm = f"{r.ratio('timm'):.2f}x" if "timm" in r.timings else ""
        lines.append(
            f"| {r.variant} ({r.kind}) | {r.mode} | {spread(r.timings['generated'])} | {others} | "
            f"{r.ratio(r.best_anchor):.2f}x ({r.best_anchor}) | {timm} | {note} |"
        )
    if generator:
        lines += [
            "",
            f"Generator: {generator['variants']} variants in {generator['cold_seconds']:.2f} s from scratch "
            f"(validate, render, write); no-op regeneration {generator['noop_seconds']:.2f} s, "
            f"{generator['noop_files_written']} files written; `import attnforge` + `names()` adds "
            f"{generator['import_generated_and_names_seconds'] * 1e3:.1f} ms to `import torch`.",
        ]
    if scaling:
        lines += [
            "",
            f"Harness on the committed catalogue: {scaling['workers_1_seconds']:.1f} s with 1 worker, "
            f"{scaling['workers_2_seconds']:.1f} s with 2 ({scaling['speedup']:.2f}x); {scaling['summary']}.",
        ]
    return "\n".join(lines) + "\n"


def chart(rows: list[Row], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels, ratios, colors = [], [], []
    for r in rows:
        for anchor in (k for k in r.ms if k != "generated"):
            labels.append(
                f"{r.variant} {('fwd' if r.mode == 'forward' else 'fwd+bwd')} vs {anchor}"
            )
            ratios.append(r.ratio(anchor))
            colors.append("tab:green" if ratios[-1] <= 1.0 else "tab:red")
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(labels) + 1))
    ax.barh(labels[::-1], ratios[::-1], color=colors[::-1])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("generated time / anchor time (below 1.0: generated is faster)")
    ax.set_title("attnforge: generated modules vs anchors")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def run(
    out: Path,
    *,
    device: str,
    repeats: int,
    scaling: bool,
    generator: bool = True,
    variants: str = "*",
) -> int:
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    if device == "cuda" and not torch.cuda.is_available():
        print("bench: no CUDA device", file=sys.stderr)
        return 2
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if device == "cuda":
        machine = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    rows = bench_blocks(device, repeats, variants)
    if not rows:
        print(f"bench: no row matches --variants {variants!r}", file=sys.stderr)
        return 2
    gen = bench_generator() if generator else None
    scale = bench_scaling() if scaling else None
    text = markdown(rows, gen, scale, machine)
    (out / "bench.md").write_text(text)
    (out / "bench.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "device": device,
                "repeats": repeats,
                "rows": [asdict(r) for r in rows],
                "generator": gen,
                "scaling": scale,
            },
            indent=2,
        )
        + "\n"
    )
    drew = chart(rows, out / "bench.png")
    print(text)
    print(
        f"bench: wrote {out / 'bench.md'}, {out / 'bench.json'}"
        + (f", {out / 'bench.png'}" if drew else " (no matplotlib: no chart)")
    )
    return 0
