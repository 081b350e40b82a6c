"""The in-memory container: a layer table, concepts, a fingerprint, metadata.

Building a :class:`Container` validates everything the format requires
(spec § 3-§ 6), so a container that exists can always be written, and
``Container.from_bytes(c.to_bytes()) == c``.

>>> c = Container(layers={"mid.attn2.to_k.weight": (1280, 768)},
...               concepts={"cat": {"mid.attn2.to_k.weight": [5, 17, 99]}})
>>> c.indices("cat", "mid.attn2.to_k.weight").tolist()
[5, 17, 99]
>>> key = "mid.attn2.to_k.weight"
>>> v = Container({key: (1280, 768)},
...               {"cat": Concept({key: [99, 5]}, values={key: np.array([0.5, 0.25], np.float16)})})
>>> v.values("cat", key).tolist(), v.concepts["cat"].value_kind, v.version
([0.25, 0.5], 'fp16', (1, 1))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from .errors import FormatError
from .fingerprint import Fingerprint
from .limits import (
    DEFAULT_MAX_INDICES,
    MAX_CONCEPTS,
    MAX_DTYPE_BYTES,
    MAX_KEY_BYTES,
    MAX_LAYER_NUMEL,
    MAX_LAYERS,
    MAX_MAP_BYTES,
    MAX_MAP_ENTRIES,
    MAX_MAP_KEY_BYTES,
    MAX_NAME_BYTES,
    MAX_NDIM,
)
from .values import (
    StoredValues,
    check_stored,
    expand,
    reorder,
    stored_equal,
    stored_nbytes,
    stored_values,
)

#: The newest version this library reads and writes (spec § 2.4). It writes minor 1
#: only for a container with values (spec § 6.4); without, the file is a 1.0 file,
#: byte for byte what version 1.0 wrote (spec § 10).
FORMAT_VERSION = (1, 1)
#: The minor version that introduced values (spec § 6.4).
VALUES_MINOR = 1
#: The revision of spec/cones-format-v1.md this library implements (its change log).
SPEC_REVISION = "1.1.0"

_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.flags.writeable = False


class Layer(NamedTuple):
    """One row of the layer table: the weight's shape and the dtype seen at training.

    ``dtype`` uses safetensors names (``F32``, ``F16``, ``BF16``, ...); ``""`` is unknown.
    """

    shape: tuple[int, ...]
    dtype: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Concept:
    """One concept: the entries it shuts per layer, their values if any, and its metadata.

    ``indices`` maps a layer key to flat row-major indices (any integer
    array-like, in any order) or to a boolean mask of the layer's shape.
    ``values`` (format 1.1, spec § 6.4), if given, maps each of those layers
    to one multiplier ξ of the base weight per index, in the order of the
    indices as given (for a mask: its true entries in row-major order): a
    :class:`~conesfmt.values.Q4` (codebook and 2-bit codes), a float16 array
    (kind ``fp16``) or a float32 array (kind ``fp32``). ``value_kind``
    (``binary``, ``q4``, ``fp16``, ``fp32``) converts other numbers: ``fp16`` and
    ``fp32`` round them, ``q4`` quantises them (:func:`conesfmt.quantize_q4`).
    Without values the concept is ``binary``: ξ = 0, the entries are shut.
    ``trigger`` and ``class_word`` are stored as the well-known metadata keys
    of the same names (spec § 6.2). Raises :class:`FormatError` on values of
    mixed kinds or of a kind that cannot be inferred.

    >>> Concept({"mid.attn2.to_v.weight": [3, 1]}, trigger="sks", class_word="cat").trigger
    'sks'
    >>> Concept({"w": [3, 1]}, values={"w": [0.5, 0.2]}, value_kind="fp16").value_kind
    'fp16'
    """

    def __init__(
        self,
        indices: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        *,
        values: Mapping[str, Any] | None = None,
        value_kind: str | None = None,
        trigger: str | None = None,
        class_word: str | None = None,
    ):
        merged = dict(metadata or {})
        if trigger is not None:
            merged["trigger"] = trigger
        if class_word is not None:
            merged["class_word"] = class_word
        self._metadata = MappingProxyType(merged)
        self._indices: Mapping[str, Any] | None = dict(indices or {})
        self._loader: Callable[[], dict[str, np.ndarray]] | None = None
        self._counts: dict[str, int] | None = None
        self._value_kind, stored = stored_values(values, value_kind)
        self._values: Mapping[str, StoredValues] | None = MappingProxyType(stored)
        self._values_loader: Callable[[], dict[str, StoredValues]] | None = None
        # Bytes of this concept's sections in the file it was read from (CNPT, vals), if read.
        self._encoded_bytes: tuple[int, int] | None = None

    @classmethod
    def _lazy(
        cls,
        metadata: dict[str, str],
        counts: dict[str, int],
        loader: Callable[[], dict[str, np.ndarray]],
        value_kind: str = "binary",
        values_loader: Callable[[], dict[str, StoredValues]] | None = None,
        encoded_bytes: tuple[int, int] | None = None,
    ) -> Concept:
        """A validated concept read from bytes; its indices and values are decoded on first use."""
        concept = cls(metadata=metadata)
        concept._indices = None
        concept._loader = loader
        concept._counts = counts
        concept._value_kind = value_kind
        if values_loader is not None:
            concept._values = None
            concept._values_loader = values_loader
        concept._encoded_bytes = encoded_bytes
        return concept

    @classmethod
    def _trusted(
        cls,
        indices: dict[str, np.ndarray],
        metadata: dict[str, str],
        value_kind: str,
        values: dict[str, StoredValues],
    ) -> Concept:
        """A concept from validated parts (sorted read-only indices, aligned stored values)."""
        concept = cls(indices, metadata)
        concept._value_kind = value_kind
        concept._values = MappingProxyType(values)
        return concept

    @property
    def metadata(self) -> Mapping[str, str]:
        return self._metadata

    @property
    def trigger(self) -> str:
        return self._metadata.get("trigger", "")

    @property
    def class_word(self) -> str:
        return self._metadata.get("class_word", "")

    @property
    def indices(self) -> Mapping[str, np.ndarray]:
        """Sorted int64 indices per layer that has any (read-only arrays)."""
        if self._indices is None:
            assert self._loader is not None
            self._indices = MappingProxyType(self._loader())
            self._loader = None
        return self._indices

    @property
    def value_kind(self) -> str:
        """``binary`` (no values: the entries are shut), ``q4``, ``fp16`` or ``fp32`` (spec § 6.4)."""
        return self._value_kind

    @property
    def values(self) -> Mapping[str, StoredValues]:
        """Stored values per layer, aligned with :attr:`indices`: a :class:`~conesfmt.values.Q4`,
        or a read-only float16 / float32 array; empty for a binary concept.
        :meth:`Container.values` gives them as float32."""
        if self._values is None:
            assert self._values_loader is not None
            self._values = MappingProxyType(self._values_loader())
            self._values_loader = None
        return self._values

    @property
    def values_nbytes(self) -> int:
        """Bytes the stored values take in memory (q4: 2 bits per index and 16 bytes per layer)."""
        return sum(stored_nbytes(self._value_kind, stored) for stored in self.values.values())

    @property
    def counts(self) -> Mapping[str, int]:
        """Entries shut per layer that has any, without decoding a lazily read concept."""
        if self._counts is None:
            self._counts = {layer: len(values) for layer, values in self.indices.items()}
        return MappingProxyType(self._counts)

    @property
    def total(self) -> int:
        """Entries shut in all layers together."""
        return sum(self.counts.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Concept):
            return NotImplemented
        if (
            dict(self.metadata) != dict(other.metadata)
            or dict(self.counts) != dict(other.counts)
            or self.value_kind != other.value_kind
        ):
            return False
        if not all(np.array_equal(self.indices[k], other.indices[k]) for k in self.counts):
            return False
        mine, theirs = self.values, other.values
        return mine.keys() == theirs.keys() and all(
            stored_equal(self.value_kind, mine[k], theirs[k]) for k in mine
        )

    def __repr__(self) -> str:
        shape = f"{self.total} entries in {len(self.counts)} layers"
        kind = "" if self.value_kind == "binary" else f", values={self.value_kind}"
        return f"Concept({shape}{kind}, metadata={dict(self.metadata)})"


class Container:
    """A ``.cones`` container (spec § 2): layers, concepts, fingerprint and metadata.

    ``layers`` maps a state-dict key to its shape, or to a :class:`Layer`;
    ``concepts`` maps a name to a mapping ``layer -> indices`` or a :class:`Concept`.
    A layer given by its shape alone takes its dtype from ``fingerprint``, when
    that knows it (``conesrt.fingerprint`` records the dtype it read), so that
    the container can be checked against the model (spec § 4.3).
    Layers are kept sorted by key (the canonical order); concepts keep their order.
    Raises :class:`FormatError` naming the field at fault if anything is invalid.

    >>> c = Container({"w": (4, 4)}, {"cat": {"w": [0, 5]}}, metadata={"base_model": "tiny"})
    >>> conesfmt.Container.from_bytes(c.to_bytes()) == c
    True
    """

    def __init__(
        self,
        layers: Mapping[str, Iterable[int] | Layer],
        concepts: Mapping[str, Mapping[str, Any] | Concept] | None = None,
        fingerprint: Fingerprint | None = None,
        metadata: Mapping[str, str] | None = None,
    ):
        table = _validate_layers(layers)
        if fingerprint is not None:
            _validate_fingerprint(fingerprint, table)
            table = _layers_with_fingerprint_dtypes(table, fingerprint)
        self._layers = MappingProxyType(table)
        self._metadata = MappingProxyType(validate_map(metadata or {}, "container metadata"))
        self._fingerprint = fingerprint
        concepts = dict(concepts or {})
        if len(concepts) > MAX_CONCEPTS:
            raise FormatError(f"{len(concepts)} concepts, at most {MAX_CONCEPTS} allowed")
        validated = {}
        for name, concept in concepts.items():
            _validate_text(name, "concept name", min_bytes=1, max_bytes=MAX_NAME_BYTES)
            validated[name] = self._validate_concept(name, concept)
        self._concepts = MappingProxyType(validated)
        #: The version of this container's canonical encoding: 1.1 with values, else 1.0 (spec § 10).
        self.version = (FORMAT_VERSION[0], minimal_minor(validated.values()))

    @classmethod
    def _trusted(
        cls,
        layers: dict[str, Layer],
        concepts: dict[str, Concept],
        fingerprint: Fingerprint | None,
        metadata: dict[str, str],
        version: tuple[int, int],
    ) -> Container:
        """Assemble a container from parts the decoder has already validated."""
        container = cls.__new__(cls)
        container._layers = MappingProxyType(layers)
        container._concepts = MappingProxyType(concepts)
        container._fingerprint = fingerprint
        container._metadata = MappingProxyType(metadata)
        container.version = version
        return container

    @property
    def layers(self) -> Mapping[str, Layer]:
        return self._layers

    @property
    def concepts(self) -> Mapping[str, Concept]:
        return self._concepts

    @property
    def metadata(self) -> Mapping[str, str]:
        return self._metadata

    @property
    def fingerprint(self) -> Fingerprint | None:
        return self._fingerprint

    def indices(self, concept: str, layer: str) -> np.ndarray:
        """Sorted int64 flat indices that ``concept`` shuts in ``layer`` (empty if none).

        >>> c.indices("cat", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight")
        array([  12, 4097, ...])
        """
        if concept not in self._concepts:
            raise KeyError(f"no concept {concept!r} in this container (has {list(self._concepts)})")
        if layer not in self._layers:
            raise KeyError(f"no layer {layer!r} in this container's layer table")
        return self._concepts[concept].indices.get(layer, _EMPTY)

    def values(self, concept: str, layer: str) -> np.ndarray:
        """float32 ξ per index of ``indices(concept, layer)``: zeros for a binary concept (spec § 6.4).

        A value is the multiplier of the base weight at that index (binary:
        0, the entry is shut). Raises ``KeyError`` like :meth:`indices`.

        >>> c.values("cat", key)
        array([0.25, 0.5 ], dtype=float32)
        """
        indices = self.indices(concept, layer)
        record = self._concepts[concept]
        if record.value_kind == "binary" or indices.size == 0:
            values = np.zeros(indices.size, dtype=np.float32)
        else:
            values = expand(record.value_kind, record.values[layer])
        values.flags.writeable = False
        return values

    @property
    def numel(self) -> int:
        """Entries of all layers of the table together."""
        return sum(layer.numel for layer in self._layers.values())

    def to_bytes(self) -> bytes:
        """The canonical encoding (spec § 10)."""
        from .sections import encode

        return encode(self)

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        max_indices: int = DEFAULT_MAX_INDICES,
        check_layers: Callable[[Mapping[str, Layer]], None] | None = None,
    ) -> Container:
        """Decode and fully validate; raises :class:`FormatError` on any invalid input.

        Index data is validated now but materialised only when first used, so a
        small file cannot make this allocate much memory. Decoding time grows
        with the number of indices the file declares, so a file that declares
        more than ``max_indices`` (all concepts together; default
        :data:`~conesfmt.limits.DEFAULT_MAX_INDICES`, 2**27) is refused with a
        :class:`FormatError` naming the limit, before any index is decoded
        (spec § 8.2). ``check_layers``, if given, is called with the layer table
        as soon as it is read, before any index is decoded; what it raises
        propagates (a runtime refuses a container made for another model there).

        >>> Container.from_bytes(data, max_indices=1 << 30)  # a file of up to 2**30 indices
        Container(140 layers, concepts=['cat'], fingerprint=yes)
        """
        from .sections import decode

        return decode(data, max_indices=max_indices, check_layers=check_layers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Container):
            return NotImplemented
        return (
            dict(self._layers) == dict(other._layers)
            and dict(self._metadata) == dict(other._metadata)
            and self._fingerprint == other._fingerprint
            and list(self._concepts) == list(other._concepts)
            and all(self._concepts[n] == other._concepts[n] for n in self._concepts)
        )

    def __repr__(self) -> str:
        return (
            f"Container({len(self._layers)} layers, concepts={list(self._concepts)}, "
            f"fingerprint={'yes' if self._fingerprint else 'no'})"
        )

    def _validate_concept(self, name: str, concept: Mapping[str, Any] | Concept) -> Concept:
        if isinstance(concept, Concept):
            # A concept read from another file is checked again against this table.
            metadata, raw = dict(concept.metadata), concept.indices
            kind, raw_values = concept.value_kind, concept.values
        elif isinstance(concept, Mapping):
            metadata, raw, kind, raw_values = {}, concept, "binary", {}
        else:
            raise FormatError(
                f"concept {name!r}: expected a mapping of layer -> indices or a Concept, "
                f"got {type(concept).__name__}"
            )
        validate_map(metadata, f"concept {name!r} metadata")
        unmatched = [key for key in raw_values if key not in raw]
        if unmatched:
            raise FormatError(f"concept {name!r}: values for layer {unmatched[0]!r}, which has no indices")
        indices, values = {}, {}
        for layer_key in sorted(raw, key=_sort_key):
            where = f"concept {name!r}, layer {layer_key!r}"
            if layer_key not in self._layers:
                raise FormatError(f"concept {name!r}: layer {layer_key!r} is not in the layer table")
            sorted_indices, order = _validate_indices(raw[layer_key], self._layers[layer_key], where)
            if kind != "binary":
                if layer_key not in raw_values:
                    raise FormatError(
                        f"{where}: a concept of kind {kind} needs values for every layer it touches"
                    )
                stored = raw_values[layer_key]
                check_stored(kind, stored, sorted_indices.size, where)
                if sorted_indices.size:
                    values[layer_key] = stored if order is None else reorder(kind, stored, order)
            if sorted_indices.size:
                indices[layer_key] = sorted_indices
        return Concept._trusted(indices, metadata, kind, values)


def minimal_minor(concepts: Iterable[Concept]) -> int:
    """The minor version a canonical writer gives these concepts: 1 if any has values (spec § 10)."""
    return VALUES_MINOR if any(c.value_kind != "binary" for c in concepts) else 0


def _sort_key(key: str) -> bytes:
    """Layers sort by the bytes of their UTF-8 key (spec § 3)."""
    return key.encode("utf-8")


def _validate_text(text: Any, field: str, *, min_bytes: int, max_bytes: int) -> None:
    if not isinstance(text, str):
        raise FormatError(f"{field} must be a str, got {type(text).__name__}")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise FormatError(f"{field} {text!r} cannot be encoded as UTF-8") from None
    if not min_bytes <= size <= max_bytes:
        raise FormatError(f"{field} {text[:40]!r} is {size} bytes, allowed {min_bytes}..{max_bytes}")


def validate_map(entries: Mapping[str, str], field: str) -> dict[str, str]:
    """Check a metadata map against spec § 1.3 and return it as a plain dict."""
    if not isinstance(entries, Mapping):
        raise FormatError(f"{field} must be a mapping of str to str")
    if len(entries) > MAX_MAP_ENTRIES:
        raise FormatError(f"{field} has {len(entries)} entries, at most {MAX_MAP_ENTRIES} allowed")
    size = 2
    for key, value in entries.items():
        _validate_text(key, f"{field} key", min_bytes=1, max_bytes=MAX_MAP_KEY_BYTES)
        _validate_text(value, f"{field} value of {key!r}", min_bytes=0, max_bytes=0xFFFF)
        size += 4 + len(key.encode("utf-8")) + len(value.encode("utf-8"))
    if size > MAX_MAP_BYTES:
        raise FormatError(f"{field} is {size} bytes encoded, at most {MAX_MAP_BYTES} allowed")
    return dict(entries)


def _validate_layers(layers: Mapping[str, Iterable[int] | Layer]) -> dict[str, Layer]:
    if len(layers) > MAX_LAYERS:
        raise FormatError(f"{len(layers)} layers, at most {MAX_LAYERS} allowed")
    table = {}
    for key in sorted(layers, key=_sort_key):
        _validate_text(key, "layer key", min_bytes=1, max_bytes=MAX_KEY_BYTES)
        value = layers[key]
        shape, dtype = (value.shape, value.dtype) if isinstance(value, Layer) else (value, "")
        try:
            shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise FormatError(f"layer {key!r}: shape must be a sequence of ints, got {shape!r}") from None
        check_layer(key, shape, dtype)
        table[key] = Layer(shape, dtype)
    return table


def check_layer(key: str, shape: tuple[int, ...], dtype: str) -> None:
    """Rules for one row of the layer table (spec § 3)."""
    if not 1 <= len(shape) <= MAX_NDIM:
        raise FormatError(f"layer {key!r}: {len(shape)} dimensions, allowed 1..{MAX_NDIM}")
    if any(d < 1 or d > 0xFFFFFFFF for d in shape):
        raise FormatError(f"layer {key!r}: dimensions must be 1..2**32-1, got {shape}")
    if math.prod(shape) > MAX_LAYER_NUMEL:
        raise FormatError(f"layer {key!r}: {math.prod(shape)} entries, at most {MAX_LAYER_NUMEL} allowed")
    if (
        not isinstance(dtype, str)
        or len(dtype) > MAX_DTYPE_BYTES
        or not all(ch.isascii() and (ch.isalnum() or ch == "_") for ch in dtype)
    ):
        raise FormatError(f"layer {key!r}: dtype {dtype!r} must be 0..16 ASCII letters, digits or '_'")


def _validate_fingerprint(fingerprint: Fingerprint, layers: Mapping[str, Layer]) -> None:
    if not isinstance(fingerprint, Fingerprint):
        raise FormatError(f"fingerprint must be a conesfmt.Fingerprint, got {type(fingerprint).__name__}")
    if set(fingerprint.samples) != set(layers):
        missing = sorted(set(layers) - set(fingerprint.samples))
        extra = sorted(set(fingerprint.samples) - set(layers))
        raise FormatError(
            f"fingerprint layers differ from the layer table (missing {missing}, extra {extra})"
        )
    if layers and fingerprint.samples_per_layer == 0:
        raise FormatError("fingerprint has no samples")


def _layers_with_fingerprint_dtypes(table: dict[str, Layer], fingerprint: Fingerprint) -> dict[str, Layer]:
    """The table with each empty dtype taken from the fingerprint's (spec § 4.3 needs one to compare).

    A layer whose dtype is given must agree with the dtype its samples were read
    in: fp16 samples under an ``F32`` row would be compared with fp32's tolerance
    and never fit the model they came from.
    """
    if not fingerprint.dtypes:
        return table
    filled = {}
    for key, layer in table.items():
        seen = fingerprint.dtypes.get(key, "")
        if layer.dtype and seen and layer.dtype != seen:
            raise FormatError(
                f"layer {key!r}: the layer table says dtype {layer.dtype}, but the fingerprint was read "
                f"from {seen} weights; pass layers=conesrt.layer_table(model, keys) from the same model, "
                "or shapes alone"
            )
        filled[key] = Layer(layer.shape, layer.dtype or seen)
    return filled


def _validate_indices(values: Any, layer: Layer, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Sorted read-only int64 indices, and the permutation that sorted them (None if none was needed)."""
    array = np.asarray(values)
    if array.dtype == np.bool_:
        if array.shape != layer.shape:
            raise FormatError(f"{where}: boolean mask of shape {array.shape}, layer is {layer.shape}")
        return _readonly(np.flatnonzero(array.reshape(-1)).astype(np.int64)), None
    if array.size == 0:
        return _EMPTY, None
    if array.dtype.kind not in "iu":
        raise FormatError(f"{where}: indices must be integers, got dtype {array.dtype}")
    array = array.reshape(-1)
    # Strictly increasing (what a trainer gives) is one pass: then the ends are the extremes
    # and there are no duplicates. Compared in the input's own dtype: a uint64 above 2**63
    # must not wrap before the range check.
    increasing = array.size == 1 or bool((array[1:] > array[:-1]).all())
    smallest, largest = (
        (int(array[0]), int(array[-1])) if increasing else (int(array.min()), int(array.max()))
    )
    if smallest < 0:
        raise FormatError(f"{where}: negative index {smallest}")
    if largest >= layer.numel:
        raise FormatError(f"{where}: index {largest} >= numel {layer.numel}")
    array = array.astype(np.int64)  # a copy: the container's own, made read-only below
    order = None
    if not increasing:
        order = np.argsort(array, kind="stable")
        array = array[order]
        duplicates = np.flatnonzero(np.diff(array) == 0)
        if duplicates.size:
            raise FormatError(f"{where}: index {int(array[duplicates[0]])} appears twice")
    return _readonly(array), order


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array
