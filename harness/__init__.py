"""attnforge: YAML specs -> readable PyTorch attention blocks, and a harness that proves them correct.

    import attnforge
    attnforge.names("cbam")                  # the committed catalogue's variants of a kind
    block = attnforge.build("cbam_paper", 256)
    attnforge.spec_of("cbam_paper")          # the validated spec (needs attnforge[generate])

Importing attnforge imports neither torch nor pydantic: building a block needs torch alone; the
generator (``attnforge generate``) needs the ``generate`` extra, the checks the ``check`` extra.
"""

from .registry import Catalogue, build, names, spec_dict, spec_of

__version__ = "0.2.0"

__all__ = ["Catalogue", "__version__", "build", "names", "spec_dict", "spec_of"]
