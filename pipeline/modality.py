"""Input modalities (text, image, audio): the one place that knows how each is held and moved.

One adapter per modality answers every question the pipeline asks about inputs:

- how `datasets.Examples` hold them (`check`, `select`, `concat`) and how a file or HF
  dataset column becomes them (`from_column`; `spec_field` names the `DatasetSpec` option
  that says which column);
- how they enter a dataset digest (`digest_into`: these bytes are part of every embedding
  cache key, so an adapter's digest never changes);
- how they travel through Ray Data (`arrow_column` builds the column, `to_numpy` reads it
  back, `lengths` sorts rows longest first so that batches pad little);
- which `Backbone` method embeds them (`embed`) and which raw values it takes (`accepts`).

`modality_of(kind)` is the modality a backbone kind embeds and `adapter(name)` its adapter.
Adding a modality means adding one adapter to `ADAPTERS` and the backbone kind(s) that embed
it to `BACKBONE_KIND_MODALITY`. Adapters raise `InputError` (a ValueError); callers re-raise
it as their own error type where they have one (`datasets.DatasetError`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

BACKBONE_KIND_MODALITY = {"causal": "text", "encoder": "text", "vision": "image", "audio": "audio"}


class InputError(ValueError):
    """Inputs of a modality are malformed; the message names the row."""


class Modality:
    """How inputs of one modality are held, digested, moved through Ray Data and embedded."""

    name: str = ""
    column: str = ""  # the Ray Data / Arrow column that carries the inputs
    spec_field: str = ""  # the DatasetSpec option naming the source column of file / HF datasets
    embed_method: str = ""  # the Backbone method that embeds a list of these inputs

    def from_column(self, values: list, where: str) -> Any:
        """A source column (file or HF dataset) as held inputs."""
        return list(values)

    def check(self, inputs: Any, ids: Sequence[str], where: str) -> Any:
        """Inputs as `Examples` hold them (checked and normalised)."""
        return inputs

    def select(self, inputs: Any, index: Sequence[int]) -> Any:
        return [inputs[i] for i in index]

    def concat(self, parts: Sequence[Any]) -> Any:
        return [x for part in parts for x in part]

    def digest_into(self, h: Any, inputs: Any) -> None:
        raise NotImplementedError

    def lengths(self, inputs: Any) -> list[int] | None:
        """Sort key for Ray Data rows (longest first); None: keep the dataset's order."""
        return None

    def arrow_column(self, inputs: Any) -> Any:
        raise NotImplementedError

    def to_numpy(self, column: Any) -> Any:
        """An Arrow column of `arrow_column` as a numpy batch column (what Ray Data's numpy format gives)."""
        return column.to_numpy(zero_copy_only=False)

    def accepts(self, value: Any) -> bool:
        """Whether one raw value (as a caller passes it to `TartClassifier`) is of this modality."""
        return not isinstance(value, str)

    def embed(self, backbone: Any, inputs: Any, batch_size: int) -> np.ndarray:
        """(n, dim) float32 embeddings of `inputs` (a list, or an array for images) by `backbone`."""
        return getattr(backbone, self.embed_method)(inputs, batch_size=batch_size)


class Text(Modality):
    name, column, spec_field, embed_method = "text", "text", "text_field", "embed_texts"

    def check(self, inputs: Any, ids: Sequence[str], where: str) -> list[str]:
        for i, t in enumerate(inputs):
            if not isinstance(t, str):
                raise InputError(f"{where}: row {i} (id {ids[i]}): text is {type(t).__name__} {t!r}, not a string")
            if not t.strip():
                raise InputError(f"{where}: row {i} (id {ids[i]}): text is empty")
        return list(inputs)

    def digest_into(self, h: Any, inputs: list[str]) -> None:
        for t in inputs:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\x01")

    def lengths(self, inputs: list[str]) -> list[int]:
        return [len(t) for t in inputs]

    def arrow_column(self, inputs: list[str]) -> Any:
        import pyarrow as pa

        return pa.array(list(inputs), pa.string())

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str)

    def embed(self, backbone: Any, inputs: Any, batch_size: int) -> np.ndarray:
        return backbone.embed_texts([str(t) for t in inputs], batch_size=batch_size)


class Image(Modality):
    """(n, H, W) or (n, H, W, C) uint8 arrays of one shape; through Ray Data as a tensor column."""

    name, column, spec_field, embed_method = "image", "image", "image_field", "embed_images"

    def from_column(self, values: list, where: str) -> np.ndarray:
        arrays = []
        for i, v in enumerate(values):
            if isinstance(v, dict) and "bytes" in v:  # HF Image feature stored as bytes
                import io

                from PIL import Image as PILImage

                v = PILImage.open(io.BytesIO(v["bytes"]))
            a = np.asarray(v)
            if a.ndim not in (2, 3):
                raise InputError(f"{where}: row {i}: image has shape {a.shape}; expected (H, W) or (H, W, C)")
            arrays.append(a)
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise InputError(f"{where}: images have different shapes {sorted(shapes)[:4]}; resize them first")
        return np.stack(arrays).astype(np.uint8) if arrays else np.zeros((0, 1, 1), np.uint8)

    def check(self, inputs: Any, ids: Sequence[str], where: str) -> np.ndarray:
        return np.asarray(inputs)

    def select(self, inputs: Any, index: Sequence[int]) -> np.ndarray:
        return np.asarray(inputs)[np.asarray(index, dtype=np.int64)]

    def concat(self, parts: Sequence[Any]) -> np.ndarray:
        return np.concatenate([np.asarray(p) for p in parts])

    def digest_into(self, h: Any, inputs: Any) -> None:
        h.update(np.ascontiguousarray(inputs).tobytes())

    def arrow_column(self, inputs: Any) -> Any:
        from ray.data.extensions import ArrowTensorArray

        return ArrowTensorArray.from_numpy(np.asarray(inputs))

    def to_numpy(self, column: Any) -> np.ndarray:
        return column.combine_chunks().to_numpy()  # (n, H, W[, C]); a plain to_numpy would flatten each image

    def embed(self, backbone: Any, inputs: Any, batch_size: int) -> np.ndarray:
        return backbone.embed_images(inputs if isinstance(inputs, list) else np.asarray(inputs), batch_size=batch_size)


class Audio(Modality):
    """16 kHz mono float32 clips of any length; through Ray Data as list<float32> rows."""

    name, column, spec_field, embed_method = "audio", "audio", "audio_field", "embed_audio"

    def from_column(self, values: list, where: str) -> list[np.ndarray]:
        clips = []
        for i, v in enumerate(values):
            if isinstance(v, dict) and "array" in v:  # a decoded HF Audio feature
                if v.get("sampling_rate") not in (None, 16000):
                    raise InputError(f"{where}: row {i}: audio at {v['sampling_rate']} Hz; "
                                     f"expected 16 kHz (resample first)")
                v = v["array"]
            clips.append(np.asarray(v, dtype=np.float32))
        return clips

    def check(self, inputs: Any, ids: Sequence[str], where: str) -> list[np.ndarray]:
        clips = [np.asarray(a, dtype=np.float32) for a in inputs]
        for i, a in enumerate(clips):
            if a.ndim != 1 or a.size == 0:
                raise InputError(f"{where}: row {i} (id {ids[i]}): clip has shape {a.shape}; "
                                 f"expected a non-empty 1-D waveform")
        return clips

    def digest_into(self, h: Any, inputs: list[np.ndarray]) -> None:
        for a in inputs:
            h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
            h.update(f"\x01{len(a)}".encode())

    def lengths(self, inputs: list[np.ndarray]) -> list[int]:
        return [len(a) for a in inputs]

    def arrow_column(self, inputs: list[np.ndarray]) -> Any:
        import pyarrow as pa

        return pa.array([np.asarray(a, np.float32) for a in inputs], pa.list_(pa.float32()))

    def embed(self, backbone: Any, inputs: Any, batch_size: int) -> np.ndarray:
        return backbone.embed_audio([np.asarray(a, dtype=np.float32) for a in inputs], batch_size=batch_size)


ADAPTERS: dict[str, Modality] = {m.name: m for m in (Text(), Image(), Audio())}
MODALITIES = tuple(ADAPTERS)


def adapter(name: str) -> Modality:
    """The adapter of modality `name` (text | image | audio)."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise InputError(f"modality {name!r}: expected one of {', '.join(MODALITIES)}") from None


def modality_of(kind: str) -> str:
    """The input modality a backbone kind embeds."""
    return BACKBONE_KIND_MODALITY[kind]
