"""A timm model with every attention module attnforge reads replaced by its generated equivalent.

    import timm, torch, attnforge
    model = timm.create_model("ecaresnet26t")
    done = attnforge.convert_timm_model(model, "converted", example=torch.randn(1, 3, 224, 224))
    done.spec_file      # converted/specs/timm_attention/attention.yaml: one variant per distinct configuration
    done.replaced       # {'layer1.0.se': 'eca_1', ...}: where each generated block now sits

The spec file is the record of what the model needed: commit it, regenerate it with ``attnforge
generate``, read it. The model computes the same function as before, in eval and in train mode
(each replacement carries the module's parameters and buffers, see ``interop.from_timm``). Needs
``attnforge[generate]``: the variants are generated on the spot into ``out/<package>``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import interop, registry

SPEC_HEADER = (
    "# Written by attnforge.convert_timm_model: the attention configurations of one timm model.\n"
)


_EXAMPLE_HINT = (
    " (convert_timm_model reads channel counts from example=, an input the model accepts)"
)


@dataclass(frozen=True)
class Conversion:
    """What ``convert_timm_model`` did: the model (changed in place), its spec file and catalogue,
    and the variant now at each replaced module's path."""

    model: nn.Module
    spec_file: Path
    catalogue: registry.Catalogue
    replaced: dict[str, str]


def _input_channels(model: nn.Module, paths: Sequence[str], example: Any) -> dict[str, int]:
    """The channel count each module at ``paths`` receives when ``model`` runs ``example``."""
    seen: dict[str, int] = {}
    modules = dict(model.named_modules())

    def hook(path: str) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            seen.setdefault(path, int(args[0].shape[1]))

        return record

    handles = [modules[p].register_forward_pre_hook(hook(p)) for p in paths]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()
            model(example)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    missing = [p for p in paths if p not in seen]
    if missing:
        raise ValueError(f"the example input never reached {', '.join(missing)}")
    return seen


def convert_timm_model(
    model: nn.Module,
    out: Path | str,
    *,
    package: str = "timm_attention",
    example: Any = None,
) -> Conversion:
    """Replace every attention module of ``model`` that ``attnforge.interop`` reads.

    Writes ``out/specs/<package>/attention.yaml`` and generates ``out/<package>`` from it (both refused, with
    nothing written, if ``out`` holds files attnforge did not write). ECA modules do not record
    their channel count: give ``example``, an input the model accepts, and the counts are read from
    one forward pass (in eval mode, without gradients). ``ValueError`` when the model holds no
    module attnforge reads, or when a module's configuration is one it does not support.
    """
    import yaml

    from .generate import generate

    found: list[tuple[str, nn.Module]] = []
    for path, m in model.named_modules():
        if _is_timm_attention(m) and not any(path.startswith(p + ".") for p, _ in found):
            found.append((path, m))
    if any(path == "" for path, _ in found):
        raise ValueError(
            f"the model is itself a {type(model).__name__}: use attnforge.from_timm for one module"
        )
    if not found:
        supported = ", ".join(sorted(interop.CONVERTERS))
        raise ValueError(f"{type(model).__name__} holds no timm attention module ({supported})")
    channels = _input_channels(model, [p for p, _ in found], example) if example is not None else {}
    names: dict[str, str] = {}  # the spec's JSON -> its variant name
    variants: list[dict[str, Any]] = []
    per_path: dict[str, str] = {}
    for path, module in found:
        hint = "" if example is not None else _EXAMPLE_HINT
        try:
            spec = interop.spec_from_timm(module, "x", channels=channels.get(path))
            if interop.layout(module, channels.get(path)).channels <= 0 and path not in channels:
                raise ValueError(f"{type(module).__name__} does not record its channel count")
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}{hint}") from None
        del spec["name"]
        key = json.dumps(spec, sort_keys=True)
        if key not in names:
            count = sum(v["kind"] == spec["kind"] for v in variants) + 1
            names[key] = f"{spec['kind']}_{count}"
            variants.append({"name": names[key], **spec})
        per_path[path] = names[key]

    out = Path(out)
    specs = out / "specs" / package  # its own directory: generate reads every spec file there
    specs.mkdir(parents=True, exist_ok=True)
    spec_file = specs / "attention.yaml"
    text = yaml.safe_dump({"variants": variants}, sort_keys=False, default_flow_style=None)
    spec_file.write_text(SPEC_HEADER + text)
    generate(specs, out / package)
    catalogue = registry.Catalogue.at(out / package)

    modules = dict(model.named_modules())
    for path, name in per_path.items():
        module = modules[path]
        block = interop.from_timm(name, module, catalogue, channels=channels.get(path))
        parent, _, attr = path.rpartition(".")
        setattr(modules[parent] if parent else model, attr, block)
    return Conversion(model, spec_file, catalogue, per_path)


def _is_timm_attention(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__module__.startswith("timm.") and cls.__name__ in interop.CONVERTERS
