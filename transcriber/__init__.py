"""streamscribe's engine room: source -> media -> segment -> fanout -> pipeline.

Nothing in this package imports FastAPI, Modal or anything under ``app/``.
"""

SAMPLE_RATE = 16_000
"""Whisper's input rate; every PCM array in the pipeline is 16 kHz mono float32."""

__all__ = ["SAMPLE_RATE"]
