"""streamscribe's engine room: source -> media -> segment -> fanout -> pipeline.

Nothing in this package imports FastAPI, Modal or anything under ``app/``.
"""

SAMPLE_RATE = 16_000
"""Whisper's input rate; every PCM array in the pipeline is 16 kHz mono float32."""



def clock(seconds: float | None) -> str:
    """``seconds`` for people: ``m:ss``, or ``h:mm:ss`` from an hour on (None reads as 0)."""
    minutes, secs = divmod(round(seconds or 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


__all__ = ["SAMPLE_RATE", "clock"]
