"""streamscribe's engine room: source -> media -> segment -> fanout -> pipeline.

Nothing in this package imports FastAPI, Modal or anything under ``app/``.
"""

import signal

SAMPLE_RATE = 16_000
"""Whisper's input rate; every PCM array in the pipeline is 16 kHz mono float32."""

DEFAULT_BATCH_SIZE = 2
"""Segments one engine call may decode together unless told otherwise (``--batch_size``,
``STREAMSCRIBE_BATCH_SIZE``, a request's ``batch_size``); tuned on the bench (bench/NOTES.md).
Here, not in ``engine``, so the settings read it without loading numpy (Modal's deploy step)."""



def clock(seconds: float | None) -> str:
    """``seconds`` for people: ``m:ss``, or ``h:mm:ss`` from an hour on (None reads as 0)."""
    minutes, secs = divmod(round(seconds or 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def exit_cause(returncode: int | None) -> str:
    """Why a child process ended, for people: ``killed by SIGKILL`` for a signal (a negative
    ``returncode``, as subprocess and multiprocessing report it), else ``exit code N``."""
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


__all__ = ["DEFAULT_BATCH_SIZE", "SAMPLE_RATE", "clock", "exit_cause"]
