"""attnforge: YAML specs -> readable PyTorch attention blocks, and a harness that proves them correct.

    import attnforge
    attnforge.names("cbam")                  # the committed catalogue's variants of a kind
    block = attnforge.build("cbam_paper", 256)
    attnforge.spec_of("cbam_paper")          # the validated spec (needs attnforge[generate])
    cache = attnforge.KVCache()              # incremental decoding: block(x, x, x, cache=cache)

Importing attnforge imports neither torch nor pydantic: building a block needs torch alone; the
generator (``attnforge generate``) needs the ``generate`` extra, the checks the ``check`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .registry import Catalogue, build, names, spec_dict, spec_of

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn

    from .cache import KVCache
    from .convert import Conversion

__version__ = "0.2.0"

__all__ = [
    "Catalogue",
    "KVCache",
    "__version__",
    "build",
    "convert_timm_model",
    "from_timm",
    "from_transformers",
    "names",
    "spec_dict",
    "spec_from_timm",
    "spec_from_transformers",
    "spec_of",
]


def spec_from_timm(module: nn.Module, name: str, **kwargs: Any) -> dict[str, Any]:
    """The spec describing a timm attention module (``attnforge.interop.spec_from_timm``)."""
    from .interop import spec_from_timm as convert

    return convert(module, name, **kwargs)


def convert_timm_model(model: nn.Module, out: Path | str, **kwargs: Any) -> Conversion:
    """``model`` with its timm attention modules replaced by generated ones
    (``attnforge.convert.convert_timm_model``; needs ``attnforge[generate]``)."""
    from .convert import convert_timm_model as convert

    return convert(model, out, **kwargs)


def from_timm(name: str, module: nn.Module, **kwargs: Any) -> nn.Module:
    """Variant ``name`` holding a timm module's weights (``attnforge.interop.from_timm``)."""
    from .interop import from_timm as convert

    return convert(name, module, **kwargs)


def spec_from_transformers(module: nn.Module, name: str) -> dict[str, Any]:
    """The spec describing a transformers attention module
    (``attnforge.transformers_interop.spec_from_transformers``)."""
    from .transformers_interop import spec_from_transformers as convert

    return convert(module, name)


def from_transformers(name: str, module: nn.Module, **kwargs: Any) -> nn.Module:
    """Variant ``name`` holding a transformers attention module's weights
    (``attnforge.transformers_interop.from_transformers``)."""
    from .transformers_interop import from_transformers as convert

    return convert(name, module, **kwargs)


def __getattr__(name: str) -> Any:
    # KVCache imports torch: loaded on first use, so that ``import attnforge`` stays torch-free.
    if name == "KVCache":
        from .cache import KVCache

        return KVCache
    raise AttributeError(f"module 'attnforge' has no attribute {name!r}")
