"""`Backbone`: a frozen model behind a numpy API (texts, images), `ConvBackbone` (a native
convolutional image network: EfficientNet-Lite0) and `AudioBackbone` (Whisper)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..modality import adapter, modality_of
from .errors import BackboneError
from .pooling import pool_states


class Backbone:
    """A frozen model behind a numpy API. Build one with `load_backbone`.

    `embed(inputs)` embeds inputs of the backbone's `modality`; `embed_texts`, `embed_images`
    and `embed_audio` are the per-modality methods it dispatches to (the other two refuse).
    `dim` and `num_layers` default to the HF model config's.
    """

    def __init__(self, *, name: str, kind: str, revision: str, model: Any, tokenizer: Any = None,
                 image_processor: Any = None, layer: int = -1, pooling: str = "mean", max_length: int = 512,
                 location: str = "", device: str = "cpu", dim: int | None = None, num_layers: int | None = None):
        self.name = name
        self.kind = kind
        self.revision = revision
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.layer = layer
        self.pooling = pooling
        self.max_length = max_length
        self.location = location
        self.device = device
        self.forward_count = 0  # backbone forward passes run
        self.examples_count = 0  # examples embedded through those passes
        cfg = getattr(model, "config", None)
        if dim is None:
            dim = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "hidden_sizes", [0])[-1])
        self.dim = dim
        self.num_layers = int(getattr(cfg, "num_hidden_layers", 0) or 0) if num_layers is None else num_layers

    def __deepcopy__(self, memo: dict) -> "Backbone":
        return self  # a frozen model: copies (sklearn's clone of a classifier holding it) share it

    def __repr__(self) -> str:
        return (f"Backbone(name={self.name!r}, kind={self.kind!r}, dim={self.dim}, layer={self.layer}, "
                f"pooling={self.pooling!r}, revision={self.revision!r})")

    @property
    def fingerprint(self) -> dict:
        """What an embedding cache must record to know its vectors came from this backbone."""
        return {"backbone": self.name, "revision": self.revision, "layer": self.layer, "pooling": self.pooling,
                "max_length": self.max_length, "dtype": str(next(self.model.parameters()).dtype)}

    @property
    def modality(self) -> str:
        """The inputs this backbone embeds: text | image | audio."""
        return modality_of(self.kind)

    def embed(self, inputs: Any, batch_size: int = 16) -> np.ndarray:
        """(n, dim) float32 embeddings of inputs of this backbone's modality."""
        return adapter(self.modality).embed(self, inputs, batch_size)

    def _refuse(self, what: str) -> BackboneError:
        return BackboneError(f"backbone {self.name!r} ({self.kind}) has no {what}; "
                             f"use {adapter(self.modality).embed_method}")

    def reset_counters(self) -> None:
        self.forward_count = 0
        self.examples_count = 0

    def _forward_hidden(self, **inputs: Any) -> Any:
        import torch

        with torch.inference_mode():
            want_all = self.layer != -1
            out = self.model(**inputs, output_hidden_states=want_all, return_dict=True)
        self.forward_count += 1
        if not want_all:
            return out.last_hidden_state
        hs = out.hidden_states  # (embeddings, layer 1, ..., layer L)
        return hs[self.layer]

    def embed_texts(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """(n, dim) float32: each text alone, pooled over its own tokens at the chosen layer.

        Batches are formed from texts sorted by token length (less padding); rows come back
        in the input order. Texts longer than `max_length` tokens are cut at the right.
        """
        import torch

        if self.tokenizer is None:
            raise self._refuse("tokenizer")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise BackboneError(f"text {i} is {'empty' if isinstance(t, str) else type(t).__name__}: {t!r}")
        if batch_size < 1:
            raise BackboneError(f"batch_size={batch_size}: expected >= 1")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        enc = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length)
        ids = enc["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        pad_id = self.tokenizer.pad_token_id
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):  # right padding: real tokens keep positions 0..n-1
                input_ids[r, : len(ids[i])] = torch.tensor(ids[i])
                mask[r, : len(ids[i])] = 1
            inputs = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
            if "token_type_ids" in enc:
                inputs["token_type_ids"] = torch.zeros_like(input_ids).to(self.device)
            h = self._forward_hidden(**inputs).float()
            out[idx] = pool_states(h, inputs["attention_mask"], self.pooling).cpu().numpy()
            self.examples_count += len(idx)
        return out

    def embed_images(self, images: Sequence[Any] | np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(n, dim) float32: mean of the last hidden state over tokens/patches for each image.

        Images: PIL images or uint8 arrays (H, W) grayscale or (H, W, C); grayscale is
        repeated to the model's channel count.
        """
        import torch

        if self.image_processor is None:
            raise self._refuse("image processor")
        if batch_size < 1:
            raise BackboneError(f"batch_size={batch_size}: expected >= 1")
        channels = int(getattr(self.model.config, "num_channels", 3))
        prepared = [self._prepare_image(im, channels, i) for i, im in enumerate(images)]
        out = np.zeros((len(prepared), self.dim), dtype=np.float32)
        for s in range(0, len(prepared), batch_size):
            batch = prepared[s : s + batch_size]
            pix = self.image_processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            pix = pix.to(next(self.model.parameters()).dtype)
            h = self._forward_hidden(pixel_values=pix).float()
            if h.ndim == 4:  # convolutional models: (B, C, H, W) feature maps
                pooled = h.mean(dim=(2, 3))
            elif self.pooling == "mean":  # as before pool_states: the same bits as earlier cache entries
                pooled = h.mean(1)
            elif self.pooling == "last":
                pooled = h[:, -1]
            else:  # the other poolings, over every patch (all real)
                pooled = pool_states(h, torch.ones(h.shape[:2], device=h.device), self.pooling)
            out[s : s + len(batch)] = pooled.cpu().numpy()
            self.examples_count += len(batch)
        return out

    @staticmethod
    def _prepare_image(im: Any, channels: int, i: int) -> np.ndarray:
        a = np.asarray(im)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3:
            raise BackboneError(f"image {i} has shape {a.shape}; expected (H, W) or (H, W, C)")
        if a.shape[2] == 1 and channels != 1:
            a = np.repeat(a, channels, axis=2)
        if a.dtype != np.uint8:
            if a.max(initial=0) <= 1.0 and np.issubdtype(a.dtype, np.floating):
                a = a * 255.0
            a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return a

    def embed_audio(self, waveforms: Sequence[Any], sampling_rate: int = 16000, batch_size: int = 8) -> np.ndarray:
        raise self._refuse("audio encoder")


class ConvBackbone(Backbone):
    """A native (non-HF) convolutional image network: `embed_images` gives the global average pool
    of its last feature map (`model.features(pixels)`, (B, C, h, w)).

    Every image is cropped to its central square and resized (bilinear, antialiased) to
    `image_size` x `image_size`; grayscale (H, W) or (H, W, 1) is repeated to 3 channels, RGBA
    loses its alpha; `scale` maps the 0..255 RGB floats to the network's input range. Images
    of one shape in a batch are resized together, others one by one (same result either way).
    """

    def __init__(self, *, name: str, revision: str, model: Any, image_size: int, scale: Any, dim: int,
                 location: str = "", device: str = "cpu"):
        super().__init__(name=name, kind="vision", revision=revision, model=model, layer=-1, pooling="mean",
                         max_length=0, location=location, device=device, dim=dim, num_layers=0)
        self.image_size = int(image_size)
        self.scale = scale

    @property
    def fingerprint(self) -> dict:
        return {**super().fingerprint, "image_size": self.image_size, "pooling": "global-average"}

    def __repr__(self) -> str:
        return (f"ConvBackbone(name={self.name!r}, dim={self.dim}, image_size={self.image_size}, "
                f"revision={self.revision!r})")

    @staticmethod
    def _rgb(im: Any, i: int) -> np.ndarray:
        """Image `i` as (H, W, 3) float32 on 0..255; BackboneError says why one cannot be."""
        a = np.asarray(im)
        if not np.issubdtype(a.dtype, np.number) or a.dtype == bool:
            raise BackboneError(f"image {i} is not numeric (dtype {a.dtype})")
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
            raise BackboneError(f"image {i} has shape {a.shape}; expected (H, W) grayscale or (H, W, 1 | 3 | 4)")
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise BackboneError(f"image {i} is empty (shape {a.shape})")
        a = a[:, :, :3] if a.shape[2] == 4 else np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise BackboneError(f"image {i} has NaN or infinite pixels")
        if np.issubdtype(np.asarray(im).dtype, np.floating) and a.max(initial=0) <= 1.0:
            a = a * 255.0  # floats on 0..1
        return np.clip(a, 0.0, 255.0)

    def pixels(self, images: Sequence[Any]) -> Any:
        """(n, 3, S, S) network inputs of `images` (S = image_size), scaled."""
        import torch
        from torch.nn import functional as F

        def square(x: Any) -> Any:  # (m, 3, H, W) -> central square, resized to S x S
            H, W = x.shape[-2:]
            s = min(H, W)
            x = x[..., (H - s) // 2 : (H - s) // 2 + s, (W - s) // 2 : (W - s) // 2 + s]
            if s == self.image_size:
                return x
            return F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                                 align_corners=False)

        rgb = [self._rgb(im, i) for i, im in enumerate(images)]
        if len({a.shape for a in rgb}) == 1:
            x = square(torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2))
        else:
            x = torch.cat([square(torch.from_numpy(a).permute(2, 0, 1)[None]) for a in rgb])
        return self.scale(x)

    def embed_images(self, images: Sequence[Any] | np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(n, dim) float32: global average pool of the network's last feature map for each image."""
        import torch

        if batch_size < 1:
            raise BackboneError(f"batch_size={batch_size}: expected >= 1")
        if isinstance(images, (str, bytes)) or (isinstance(images, np.ndarray) and images.ndim < 3):
            raise BackboneError(f"images: expected a sequence of images or an (n, H, W[, C]) array; got "
                                f"{type(images).__name__}{' of shape ' + str(images.shape) if isinstance(images, np.ndarray) else ''}")
        n = len(images)
        out = np.zeros((n, self.dim), dtype=np.float32)
        dtype = next(self.model.parameters()).dtype
        for s in range(0, n, batch_size):
            x = self.pixels(images[s : s + batch_size]).to(self.device, dtype)
            with torch.inference_mode():
                h = self.model.features(x)
            self.forward_count += 1
            out[s : s + len(x)] = h.float().mean(dim=(2, 3)).cpu().numpy()
            self.examples_count += len(x)
        return out

    def embed_texts(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        raise self._refuse("tokenizer")


class AudioBackbone(Backbone):
    """Whisper encoder through CTranslate2: `embed_audio` gives the mean encoder state per clip.

    Clips are 16 kHz mono float waveforms of up to 30 s (longer ones are cut). Whisper pads
    every clip to a 30 s window, which costs the same for a half-second word as for 30 s of
    speech (1.4 s per clip on 2 CPU cores). Here each clip gets the shortest window of
    1, 2, 4, 8, 16 or 30 s that holds it (`window="auto"`, ~20x faster for spoken words;
    clips are grouped by window so a clip's vector never depends on its batch), or the
    standard 30 s (`window="30s"`). "mean" pooling averages only the encoder frames that
    cover the clip itself (50 per second), so padding does not dilute short clips.
    """

    SAMPLING_RATE = 16000
    FRAMES_PER_SECOND = 50  # 1500 encoder frames per 30 s window
    MEL_PER_SECOND = 100
    WINDOWS_S = (1, 2, 4, 8, 16, 30)

    def __init__(self, *, name: str, revision: str, model: Any, feature_extractor: Any, pooling: str,
                 location: str, device: str, window: str = "auto"):
        if window not in ("auto", "30s"):
            raise BackboneError(f"window={window!r}: expected 'auto' (shortest window that holds the clip) or '30s'")
        super().__init__(name=name, kind="audio", revision=revision, model=model, layer=-1, pooling=pooling,
                         max_length=30 * self.SAMPLING_RATE, location=location, device=device, dim=0, num_layers=0)
        self.window = window
        self.feature_extractor = feature_extractor
        self.dim = int(self._encode([np.zeros(self.SAMPLING_RATE // 10, np.float32)]).shape[-1])  # probe once

    @property
    def fingerprint(self) -> dict:
        return {"backbone": self.name, "revision": self.revision, "layer": -1, "pooling": self.pooling,
                "max_length": self.max_length, "dtype": "float32", "window": self.window}

    def window_seconds(self, n_samples: int) -> int:
        if self.window == "30s":
            return 30
        return next((w for w in self.WINDOWS_S if n_samples <= w * self.SAMPLING_RATE), 30)  # longer: cut to 30 s

    def _encode(self, waves: list[np.ndarray], seconds: int = 30) -> np.ndarray:
        import ctranslate2

        feats = self.feature_extractor(waves, sampling_rate=self.SAMPLING_RATE, return_tensors="np").input_features
        feats = feats[:, :, : seconds * self.MEL_PER_SECOND]  # the extractor pads to 30 s; keep the window
        out = self.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats, dtype=np.float32)))
        return np.array(out, dtype=np.float32)  # (B, 50 * seconds, dim)

    def embed_audio(self, waveforms: Sequence[Any], sampling_rate: int = 16000, batch_size: int = 8) -> np.ndarray:
        if sampling_rate != self.SAMPLING_RATE:
            raise BackboneError(f"sampling_rate={sampling_rate}: Whisper needs {self.SAMPLING_RATE} Hz audio; resample first")
        if batch_size < 1:
            raise BackboneError(f"batch_size={batch_size}: expected >= 1")
        waves = []
        for i, w in enumerate(waveforms):
            a = np.asarray(w, dtype=np.float32)
            if a.ndim != 1 or a.size == 0:
                raise BackboneError(f"clip {i} has shape {a.shape}; expected a non-empty 1-D mono waveform")
            waves.append(a[: self.max_length])
        out = np.zeros((len(waves), self.dim), dtype=np.float32)
        secs = np.array([self.window_seconds(len(w)) for w in waves])
        for window in np.unique(secs):
            group = np.flatnonzero(secs == window)
            for s in range(0, len(group), batch_size):
                rows = group[s : s + batch_size]
                batch = [waves[i] for i in rows]
                h = self._encode(batch, int(window))
                self.forward_count += 1
                for j, (r, w) in enumerate(zip(rows, batch)):
                    n = int(np.clip(np.ceil(len(w) / self.SAMPLING_RATE * self.FRAMES_PER_SECOND), 1, h.shape[1]))
                    out[r] = h[j, :n].mean(0) if self.pooling == "mean" else h[j, n - 1]
                self.examples_count += len(batch)
        return out


class HFWhisperBackbone(AudioBackbone):
    """Whisper's encoder through transformers: any Whisper checkpoint by HF id or local folder, with
    the windows and pooling of `AudioBackbone` (the CTranslate2 path the shipped tiny.en takes).

    transformers' `WhisperEncoder.forward` accepts only the full 30 s of mel frames. A shorter
    window runs the encoder's own modules on the first 50 x seconds positions, which is what
    CTranslate2 does (tests/test_whisper_hf.py checks this path against `forward` at 30 s and
    against CTranslate2 on one model converted both ways).
    """

    @property
    def fingerprint(self) -> dict:
        return {**super().fingerprint, "dtype": str(next(self.model.parameters()).dtype), "encoder": "transformers"}

    def _encode(self, waves: list[np.ndarray], seconds: int = 30) -> np.ndarray:
        import torch

        feats = self.feature_extractor(waves, sampling_rate=self.SAMPLING_RATE, return_tensors="np").input_features
        feats = feats[:, :, : seconds * self.MEL_PER_SECOND]
        x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
        x = x.to(self.device, dtype=next(self.model.parameters()).dtype)
        with torch.inference_mode():
            h = self._encoder_states(x)
        return h.float().cpu().numpy()  # (B, 50 * seconds, dim)

    def _encoder_states(self, x: Any, full_forward: bool | None = None) -> Any:
        """(B, frames, dim) last encoder states of mel features `x` (B, n_mels, 100 x seconds)."""
        import torch.nn.functional as F

        enc = self.model
        positions = enc.embed_positions.weight
        if full_forward is None:
            full_forward = x.shape[-1] == 2 * positions.shape[0]
        if full_forward:
            return enc(input_features=x).last_hidden_state
        h = F.gelu(enc.conv1(x))
        h = F.gelu(enc.conv2(h)).permute(0, 2, 1)
        h = h + positions[: h.shape[1]]
        for layer in enc.layers:
            h = layer(h, None)
        return enc.layer_norm(h)
