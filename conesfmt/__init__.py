"""conesfmt: reader and writer of the ``.cones`` container format (numpy + zstandard only).

The format is specified in ``spec/cones-format-v1.md``; section numbers in
docstrings (§ 4.2) point there.

>>> import conesfmt
>>> c = conesfmt.Container({"mid.attn2.to_k.weight": (1280, 768)},
...                        {"cat": {"mid.attn2.to_k.weight": [5, 17, 99]}})
>>> conesfmt.save(c, "cat.cones"); conesfmt.load("cat.cones") == c
True
"""

from .container import FORMAT_VERSION, Concept, Container, Layer
from .errors import FormatError
from .files import load, save
from .fingerprint import Fingerprint
from .merge import merge

__all__ = [
    "FORMAT_VERSION",
    "Concept",
    "Container",
    "FormatError",
    "Fingerprint",
    "Layer",
    "load",
    "merge",
    "save",
]
__version__ = "0.1.0"
