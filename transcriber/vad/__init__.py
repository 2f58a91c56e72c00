"""The speech gate: no text where nobody speaks (music, noise, hum).

Whisper, given a window of music or noise, likes to invent "Thank you.", "♪" or a repeated
phrase. Its own no-speech test passes such windows often enough (a 25 s music block came back as
"Thank you."), so a voice-activity detector looks at the audio first:

0. A :class:`SpeechTracker`, owned by the pipeline's decode thread, runs Silero VAD (the ONNX
   model faster-whisper ships in its package; no download) once over the stream as audio
   arrives, carrying the model's state on and keeping probabilities only for the audio the
   segmenter still buffers. The segmenter reads it to cut in music or noise rather than in a
   pause of a sentence (a cut there costs words), and to pack speech into full windows (its
   limit is what the engine will decode, see :mod:`transcriber.segment`).
1. Each segment leaves the segmenter with its :class:`SpeechMap` (speech probabilities every
   32 ms and the padded speech regions), taken from those probabilities, not from a second run
   (:func:`detect` still maps a lone clip for a direct caller). The map travels with the job to
   whatever worker decodes it: a local process, a Modal container.
2. A segment with no speech region is marked ``silent``: no engine sees it, as with digital
   silence.
3. :func:`transcribe_gated`, in the shared per-job step (:func:`transcriber.fanout.run_job`),
   decodes only the speech regions of a segment, laid end to end (long music or noise is never
   decoded), and maps every time back exactly. Then the last guard: a piece with little speech
   probability under it whose text is one of Whisper's known non-speech phrases
   (:data:`NON_SPEECH_PHRASES`, the one list of them) is dropped.

Tuned for recall: the threshold is below Silero's customary 0.5, regions are padded by half a
second and gaps under two seconds are left alone, so the gate never takes a word of the speech
fixtures (faster-whisper's batched mode, whose VAD cuts tight, lost 17 words on the same input).

The modules, in the order a stream meets them:

- :mod:`~transcriber.vad.options`: :class:`VadOptions`, the gate's knobs;
- :mod:`~transcriber.vad.silero`: the Silero model, a speech probability per 32 ms frame;
- :mod:`~transcriber.vad.regions`: probabilities -> padded, merged speech regions;
- :mod:`~transcriber.vad.speech_map`: :class:`SpeechMap`, and the time map of its regions laid
  end to end;
- :mod:`~transcriber.vad.detection`: :func:`detect` (one clip) and :class:`SpeechTracker` (a
  stream, in the decode thread);
- :mod:`~transcriber.vad.phrases`: :data:`NON_SPEECH_PHRASES`;
- :mod:`~transcriber.vad.gate`: the per-job step (:func:`plan_gate`, :func:`finish_gate`,
  :func:`transcribe_gated`, :func:`with_skipped` for speech a decoder left without text) and
  the pipeline's (:func:`gate_segment`).
"""

from transcriber.vad.detection import SpeechTracker, detect, speech_tracker
from transcriber.vad.gate import (
    PHRASE_MAX_PROB,
    Gated,
    GatePlan,
    drop_reason,
    finish_gate,
    gate_segment,
    plan_gate,
    skipped_at,
    transcribe_gated,
    with_skipped,
)
from transcriber.vad.options import VadOptions
from transcriber.vad.phrases import NON_SPEECH_PHRASES, is_non_speech_phrase
from transcriber.vad.regions import decoded_prefix, speech_regions
from transcriber.vad.silero import FRAME, FRAME_SECONDS, SILERO_ASSET, speech_probs
from transcriber.vad.speech_map import JOINT_SECONDS, SNAP_SECONDS, SpeechMap

__all__ = [
    "FRAME",
    "FRAME_SECONDS",
    "JOINT_SECONDS",
    "NON_SPEECH_PHRASES",
    "PHRASE_MAX_PROB",
    "SILERO_ASSET",
    "SNAP_SECONDS",
    "Gated",
    "GatePlan",
    "SpeechMap",
    "SpeechTracker",
    "VadOptions",
    "decoded_prefix",
    "detect",
    "drop_reason",
    "finish_gate",
    "gate_segment",
    "is_non_speech_phrase",
    "plan_gate",
    "speech_probs",
    "speech_regions",
    "speech_tracker",
    "skipped_at",
    "transcribe_gated",
    "with_skipped",
]
