"""Named, ordered observation layout and its schema hash.

The layout is the contract between training, the exported ONNX file and the deployment
runner: a policy is refused where the hashes differ.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ObsLayout:
    """Ordered (name, size) pairs of the concatenated observation vector."""

    fields: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        names = [name for name, _ in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate observation field names in {names}")
        if any(size < 1 for _, size in self.fields):
            raise ValueError(f"observation field sizes must be >= 1: {self.fields}")

    @property
    def size(self) -> int:
        return sum(size for _, size in self.fields)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, size in self.fields:
            out[name] = slice(start, start + size)
            start += size
        return out

    def schema_hash(self) -> str:
        """sha256 (first 16 hex digits) of the canonical JSON of the layout."""
        text = json.dumps([[name, size] for name, size in self.fields], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps([[name, size] for name, size in self.fields])

    @classmethod
    def from_json(cls, text: str) -> ObsLayout:
        return cls(tuple((str(name), int(size)) for name, size in json.loads(text)))

    def concat(self, parts: dict, xp):
        """Concatenate per-field arrays (n, size) in layout order; checks every size."""
        arrays = []
        for name, size in self.fields:
            if name not in parts:
                raise KeyError(f"observation field '{name}' was not computed")
            value = parts[name]
            if value.ndim == 1:
                value = value[:, None]
            if value.shape[-1] != size:
                raise ValueError(f"observation field '{name}' has size {value.shape[-1]}, layout says {size}")
            arrays.append(value)
        return xp.concat(arrays, axis=-1)
