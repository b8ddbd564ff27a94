"""espeak-ng through ctypes (the library and data shipped by the PyPI package ``espeakng-loader``).

One :class:`Espeak` per process (the library keeps global state). ``synth(text, voice)`` returns the
waveform (int16 -> float32, 22050 Hz) and the phoneme events (espeak mnemonics with start times), the
time-aligned labels the content encoder learns from.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_DONT_EXIT = 0x8000
CHARS_UTF8 = 1
POS_CHARACTER = 1
EVENT_PHONEME = 7
EVENT_LIST_TERMINATED = 0
# espeak_PARAMETER
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE, PARAM_WORDGAP = 1, 2, 3, 4, 7


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class VoiceSpec:
    """An espeak voice: ``name`` for espeak_SetVoiceByName (``en-us+m3``), prosody parameters."""

    key: str
    name: str
    pitch: int = 50      # 0..99 base pitch
    range: int = 50      # 0..99 pitch range
    rate: int = 165      # words per minute


@dataclass
class Utterance:
    """Audio ``[N]`` float32 at ``sample_rate`` and phoneme events ``(start seconds, mnemonic)``."""

    audio: np.ndarray
    sample_rate: int
    phonemes: list[tuple[float, str]]


class Espeak:
    """The espeak-ng library, initialised for synchronous synthesis with phoneme events."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        data = espeakng_loader.get_data_path().encode()
        rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data,
                                          INITIALIZE_PHONEME_EVENTS | INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate}); data folder {data.decode()}")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[float, str]] = []
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: the library calls it later
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).astype(np.float32) / 32768.0)
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == EVENT_PHONEME:
                name = bytes(event.id.string).split(b"\0", 1)[0].decode("utf-8", "replace")
                self._events.append((event.audio_position / 1000.0, name))
            i += 1
        return 0

    def set_voice(self, voice: VoiceSpec) -> None:
        if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise RuntimeError(f"espeak voice {voice.name!r} not found")
        for param, value in ((PARAM_PITCH, voice.pitch), (PARAM_RANGE, voice.range), (PARAM_RATE, voice.rate)):
            self.lib.espeak_SetParameter(param, int(value), 0)

    def synth(self, text: str, voice: VoiceSpec) -> Utterance:
        """Speak ``text`` with ``voice``: the waveform and its phoneme events."""
        self.set_voice(voice)
        self._chunks, self._events = [], []
        raw = text.encode("utf-8") + b"\0"
        err = self.lib.espeak_Synth(raw, len(raw), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err}) for {text[:40]!r}")
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        return Utterance(audio, self.sample_rate, list(self._events))
