"""conesfmt: reader and writer of the ``.cones`` container format (numpy + zstandard only).

The format is specified in ``spec/cones-format-v1.md``; section numbers in
docstrings (§ 4.2) point there.

>>> import conesfmt
>>> c = conesfmt.Container({"mid.attn2.to_k.weight": (1280, 768)},
...                        {"cat": {"mid.attn2.to_k.weight": [5, 17, 99]}})
>>> conesfmt.save(c, "cat.cones"); conesfmt.load("cat.cones") == c
True

Values on concept neurons (format 1.1, spec § 6.4): ``Concept(indices, values=...)``,
``container.values(concept, layer)``; kinds ``binary``, ``q4`` (:class:`Q4`,
:func:`quantize_q4`), ``fp16``, ``fp32``.
"""

from .container import FORMAT_VERSION, Concept, Container, Layer
from .errors import FormatError
from .files import load, save
from .fingerprint import Fingerprint
from .merge import merge
from .values import Q4, VALUE_KINDS, quantize_q4

__all__ = [
    "FORMAT_VERSION",
    "Concept",
    "Container",
    "FormatError",
    "Fingerprint",
    "Layer",
    "Q4",
    "VALUE_KINDS",
    "load",
    "merge",
    "quantize_q4",
    "save",
]
__version__ = "0.1.0"
