"""The one exception type of the format library."""

from __future__ import annotations


class FormatError(ValueError):
    """A container is malformed, or a value cannot be written as one.

    It is the only exception that decoding untrusted bytes raises (spec § 9).
    The message names the section, field, concept or layer at fault, e.g.
    ``concept 'cat', layer 'down.0.attn2.to_k.weight': index 245760 >= numel 245760``.

    >>> try: conesfmt.Container.from_bytes(b"not a container")
    ... except conesfmt.FormatError as error: print(error)
    """
