"""Silero VAD (the ONNX model faster-whisper ships): a speech probability per 32 ms frame."""

from __future__ import annotations

import functools

import numpy as np

from transcriber import SAMPLE_RATE

#: Silero's frame: 512 samples (32 ms) at 16 kHz.
FRAME = 512
FRAME_SECONDS = FRAME / SAMPLE_RATE
#: The ONNX file faster-whisper ships (its ``faster_whisper/assets``); no download.
SILERO_ASSET = "silero_vad_v6.onnx"
#: Samples of the previous frame Silero v5+ reads in front of each 512-sample frame.
_CONTEXT = 64
#: Frames per call to the model (4 s).
_BATCH_FRAMES = 128


@functools.cache
def _session():
    """Silero VAD from faster-whisper's package assets on onnxruntime, one thread, set up as
    ``faster_whisper.vad`` does. The file is found without importing faster_whisper, which
    would pull CTranslate2 into the process that cuts segments (+36 MB, +0.3 s at start)."""
    import importlib.util
    import os

    import onnxruntime

    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the speech gate needs faster-whisper, whose package ships Silero VAD")
    path = os.path.join(spec.submodule_search_locations[0], "assets", SILERO_ASSET)
    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = opts.intra_op_num_threads = 1
    opts.enable_cpu_mem_arena = False
    opts.log_severity_level = 4
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=opts)


def speech_probs(audio: np.ndarray) -> np.ndarray:
    """Silero's speech probability for every 32 ms frame of ``audio`` (16 kHz float32)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size == 0:
        return np.zeros(0, dtype=np.float32)
    probs, _ = run_silero(np.pad(audio, (0, -len(audio) % FRAME)), fresh_state())
    return probs


def fresh_state() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Silero's state before any audio: its LSTM's ``h`` and ``c``, and a silent context."""
    zeros = np.zeros((1, 1, 128), dtype=np.float32)
    return zeros, zeros, np.zeros(_CONTEXT, dtype=np.float32)


def run_silero(audio: np.ndarray, state: tuple) -> tuple[np.ndarray, tuple]:
    """Probabilities of whole frames of ``audio`` after ``state``, and the state after them.

    Each frame is given with the last 64 samples of the one before (of the previous call for
    the first), as faster_whisper.vad does; frames go in batches that carry the model's state
    on, as there, but of 4 s rather than 10000 frames: the same probabilities, and a call no
    longer holds 26 MB of intermediate tensors.
    """
    h, c, context = state
    frames = audio.reshape(-1, FRAME)
    before = np.empty((len(frames), _CONTEXT), dtype=np.float32)
    before[0] = context
    before[1:] = frames[:-1, -_CONTEXT:]
    batch = np.concatenate([before, frames], axis=1)
    probs = []
    for i in range(0, len(batch), _BATCH_FRAMES):
        out, h, c = _session().run(None, {"input": batch[i : i + _BATCH_FRAMES], "h": h, "c": c})
        probs.append(out)
    return np.concatenate(probs).astype(np.float32).reshape(-1), (h, c, frames[-1, -_CONTEXT:].copy())
