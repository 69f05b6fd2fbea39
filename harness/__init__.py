"""attnforge: YAML specs -> readable PyTorch attention modules, and a harness that proves them correct.

Importing this package imports neither torch nor pydantic; the submodules do what their names say:
``spec`` (models), ``load`` (YAML with positions), ``generate`` (templates), ``registry``,
``references``, ``checks``, ``cli``.
"""

__version__ = "0.1.0"
