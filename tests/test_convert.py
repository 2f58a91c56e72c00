"""CTranslate2 tiny.en -> openai-whisper checkpoint: real weights, real speech, both libraries."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import whisper

from tests.helpers.models import SPEECH_CLIPS, ct2_tiny_en, speech
from transcriber.convert import (
    ConversionError,
    convert_ct2_to_openai,
    ensure_openai_checkpoint,
    read_ct2_model,
)

TINY_EN_DIMS = {
    "n_mels": 80,
    "n_audio_ctx": 1500,
    "n_audio_state": 384,
    "n_audio_head": 6,
    "n_audio_layer": 4,
    "n_vocab": 51864,
    "n_text_ctx": 448,
    "n_text_state": 384,
    "n_text_head": 6,
    "n_text_layer": 4,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return convert_ct2_to_openai(ct2_tiny_en(), tmp_path_factory.mktemp("ckpt") / "tiny.en.pt")


@pytest.fixture(scope="module")
def openai_model(checkpoint):
    return whisper.load_model(str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def ct2_model():
    from faster_whisper import WhisperModel

    # float32 so both libraries compute the same numbers, not just the same argmax.
    return WhisperModel(str(ct2_tiny_en()), device="cpu", compute_type="float32", cpu_threads=2)


def test_the_format_facts_the_converter_relies_on():
    model = read_ct2_model(ct2_tiny_en() / "model.bin")
    assert (model.spec, model.revision) == ("WhisperSpec", 3)
    assert model.aliases["decoder/projection/weight"] == "decoder/embeddings/weight"
    assert all(v.dtype == np.float16 for v in model.variables.values() if v.ndim >= 1)
    # Self-attention stacks q,k,v; k's bias slot is zero-filled (openai's key has no bias).
    qkv_bias = model.variables["encoder/layer_0/self_attention/linear_0/bias"]
    assert qkv_bias.shape == (3 * 384,)
    assert not qkv_bias[384:768].any() and qkv_bias[:384].any()


def test_load_model_accepts_the_checkpoint_with_tiny_en_dims(checkpoint, openai_model):
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["dims"] == TINY_EN_DIMS
    assert saved["alignment_heads"]  # from config.json, for word timestamps
    # load_model loads strictly: every parameter and buffer name matched, no tensor left over.
    assert set(saved["model_state_dict"]) == set(openai_model.state_dict())
    assert not openai_model.is_multilingual


@pytest.mark.slow
@pytest.mark.parametrize("name", SPEECH_CLIPS)
def test_same_greedy_decode_as_faster_whisper(name, openai_model, ct2_model):
    audio = speech(name)
    ours = openai_model.transcribe(
        audio, language="en", temperature=0.0, fp16=False, condition_on_previous_text=False
    )["segments"]
    theirs = list(
        ct2_model.transcribe(
            audio, language="en", beam_size=1, temperature=0.0,
            condition_on_previous_text=False, vad_filter=False,
        )[0]
    )
    assert [s["text"] for s in ours] == [s.text for s in theirs]
    assert [s["tokens"] for s in ours] == [s.tokens for s in theirs]
    # Same weights, same arithmetic: the scores agree to float32 rounding, not just the argmax.
    for a, b in zip(ours, theirs, strict=True):
        assert a["avg_logprob"] == pytest.approx(b.avg_logprob, abs=1e-3)
        assert a["no_speech_prob"] == pytest.approx(b.no_speech_prob, abs=1e-3)


def test_ensure_checkpoint_converts_once_and_reuses_the_file(tmp_path):
    first = ensure_openai_checkpoint(tmp_path)
    stamp = first.stat().st_mtime_ns
    again = ensure_openai_checkpoint(tmp_path)
    assert again == first and again.stat().st_mtime_ns == stamp
    # Keyed by model.bin's size so an upgraded package converts afresh.
    assert str((ct2_tiny_en() / "model.bin").stat().st_size) in first.name
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind


@pytest.mark.slow
def test_cli_converts_and_reports_bad_input_without_traceback(tmp_path):
    out = tmp_path / "cli.pt"
    run = subprocess.run(
        [sys.executable, "-m", "transcriber.convert", str(ct2_tiny_en()), str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out)
    assert torch.load(out, weights_only=True)["dims"] == TINY_EN_DIMS

    bad = subprocess.run(
        [sys.executable, "-m", "transcriber.convert", str(tmp_path), str(tmp_path / "x.pt")],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 1
    assert "no model.bin" in bad.stderr and "Traceback" not in bad.stderr


def test_a_file_that_is_not_ct2_is_a_typed_error(tmp_path):
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"RIFF....WAVEfmt " + bytes(64))
    with pytest.raises(ConversionError, match="binary format"):
        read_ct2_model(junk)
    junk.write_bytes((6).to_bytes(4, "little") + b"\x40\x00Whisper")  # truncated
    with pytest.raises(ConversionError, match="not a readable"):
        read_ct2_model(junk)
