"""streamscribe on Modal: ``modal deploy -m app.modal_app`` (``make deploy``).

The same product as ``app.local``, split over two kinds of container:

* ``web`` (CPU): the FastAPI app from :func:`app.api.create_app`. It resolves the source with
  yt-dlp, decodes it with ffmpeg, cuts segments and runs the job manager, exactly as locally;
  only the mapper differs: :class:`app.modal_mapper.ModalMapper` fans the segments out to...
* ``Transcriber`` (GPU): a class whose ``@modal.enter`` loads the Whisper model once per
  container (weights cached on a ``modal.Volume``) and whose ``transcribe`` method runs
  :func:`transcriber.fanout.run_job_retrying` — the very function the local workers run — on one
  segment's audio, returning its pieces with absolute timestamps. Its generator method
  ``transcribe_sequential`` serves the sequential mode: segments in order on one container,
  each prompted with the text before it, each result streamed back as it is done.

Jobs and their events live in a ``modal.Dict`` (:class:`app.modal_store.ModalDictStore`), so
they outlive the web container; uploads live on a second Volume.

Deploy-time configuration (read when this module is imported, i.e. by ``modal deploy``):

=====================================  ===========================================================
``STREAMSCRIBE_MODAL_GPU``             GPU type of ``Transcriber`` (default ``L4``; see below)
``STREAMSCRIBE_MODAL_MAX_GPUS``        most GPU containers at once (default 10)
``STREAMSCRIBE_MODAL_PROXY_AUTH``      1 = every request needs ``Modal-Key``/``Modal-Secret``
                                       headers (a proxy auth token of the workspace); default 0
``STREAMSCRIBE_MODAL_COOKIES_SECRET``  name of a ``modal.Secret`` whose
                                       ``STREAMSCRIBE_YOUTUBE_COOKIES`` holds a cookies.txt
``STREAMSCRIBE_MODAL_MIN_CONTAINERS``  web containers kept warm (default 0)
``STREAMSCRIBE_*`` (the others)        :class:`app.settings.Settings`, passed to the web container
                                       (``STREAMSCRIBE_MODEL`` defaults to ``large-v3-turbo`` here)
=====================================  ===========================================================

Run-time switches of the web container (set them with the others before deploying):
``STREAMSCRIBE_MODAL_WORKERS=inline`` transcribes in the web container itself instead of on GPUs
(a CPU-only deployment for small models), ``STREAMSCRIBE_MODAL_STORE=sqlite`` keeps jobs in a
SQLite file under ``STREAMSCRIBE_DATA_DIR`` instead of the Dict.

Long jobs and Modal's 150 s request limit: Modal's web proxy gives a request 150 s (past that
it answers 303 with a result URL), so a long stream must not rely on one connection. Jobs do
not depend on the request that started them: ``POST /jobs`` starts
one and returns its id, and ``GET /jobs/{id}/events`` streams its events as SSE; when the
connection is cut, a client reconnects with ``Last-Event-ID`` (a browser's ``EventSource`` does
so by itself, ``curl`` in a loop with the header) and gets exactly the events it missed, then the
live ones. A 2-hour video therefore streams to the end over a chain of connections, while the
job itself runs as an asyncio task in the (single) web container.
"""

# No ``from __future__ import annotations``: Modal reads the class parameters' annotations as
# real types (``str``), not strings.
import dataclasses
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import modal

from app.modal_mapper import ModalMapper, decode_job, encode_result, transcribe_in_order
from app.settings import ENV_PREFIX, Settings, _Env
from app.store import Store
from transcriber.fanout import Mapper

APP_NAME = "streamscribe"
#: Where the GPU containers cache Whisper weights (faster-whisper's / openai-whisper's
#: ``download_root``): the first container downloads, commits, and every later one loads.
MODELS_DIR = "/models"
MODELS_VOLUME = "streamscribe-models"
#: The web container's data directory (uploads), on a Volume so an interrupted upload job can
#: still be resumed by the next container.
DATA_DIR = "/data"
DATA_VOLUME = "streamscribe-data"
#: The job log (:class:`app.modal_store.ModalDictStore`).
JOBS_DICT = "streamscribe-jobs"
#: The key, inside the cookies Secret, that holds the cookies.txt text.
COOKIES_KEY = "STREAMSCRIBE_YOUTUBE_COOKIES"
#: Where the web container writes them for yt-dlp (container-local, never on a Volume).
COOKIES_DIR = Path("/tmp/streamscribe")
#: A GPU deployment's default model: large-v3 quality at a fraction of its decoder cost.
MODAL_DEFAULT_MODEL = "large-v3-turbo"
#: The Python the images run; the same minor version as the local venv.
PYTHON_VERSION = "3.11"
#: debian_slim is the official python image: packages land in this site-packages.
SITE_PACKAGES = f"/usr/local/lib/python{PYTHON_VERSION}/site-packages"
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DeployConfig:
    """What ``modal deploy`` bakes into the App; see the module docstring for the variables."""

    gpu: str = "L4"
    max_gpus: int = 10
    proxy_auth: bool = False
    cookies_secret: str | None = None
    min_containers: int = 0
    #: ``STREAMSCRIBE_*`` settings handed to the web container's environment.
    web_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "DeployConfig":
        env, d = _Env(environ), cls()
        # Every STREAMSCRIBE_* variable travels to the web container, so its Settings (and this
        # config, imported again there) match the deployer's. A local cookies path means nothing
        # in the cloud (the Secret brings cookies there), and the data directory is the Volume.
        passed = {k: v for k, v in environ.items() if k.startswith(ENV_PREFIX) and v.strip()}
        passed.pop(ENV_PREFIX + "COOKIES_FILE", None)
        passed[ENV_PREFIX + "DATA_DIR"] = DATA_DIR
        passed.setdefault(ENV_PREFIX + "MODEL", MODAL_DEFAULT_MODEL)
        return cls(
            gpu=env.text("MODAL_GPU", d.gpu),
            max_gpus=env.integer("MODAL_MAX_GPUS", d.max_gpus, minimum=1),
            proxy_auth=env.flag("MODAL_PROXY_AUTH", d.proxy_auth),
            cookies_secret=env.text("MODAL_COOKIES_SECRET", None),
            min_containers=env.integer("MODAL_MIN_CONTAINERS", d.min_containers, minimum=0),
            web_env=passed,
        )

    def settings(self) -> Settings:
        """The Settings the web container will see (for limits that shape the functions)."""
        return Settings.from_env(self.web_env)


# -- images --------------------------------------------------------------------------------------

# Exact versions: the image runs what the test suite ran. yt-dlp (with deno for YouTube's JS
# challenges) is the exception: YouTube changes weekly and an old yt-dlp stops working, so it
# takes the newest release whenever the image is rebuilt (``MODAL_FORCE_BUILD=1 make deploy``).
PIPELINE_PACKAGES = [
    "numpy==2.4.6",
    "ffmpeg-python==0.2.0",
    "imageio-ffmpeg==0.8.1",
    "fastapi==0.165.0",
    "python-multipart==0.0.34",
    "requests==2.34.2",
    "urllib3==2.8.0",
    "faster-whisper==1.2.1",
    "ctranslate2==4.8.5",
    "yt-dlp[default]",
    "deno",
]
# The GPU engines. CTranslate2 4.8 (faster-whisper) dlopens cuBLAS for CUDA 12
# (``libcublas.so.12``, named in its Linux wheel); older 4.x releases also want cuDNN 9. torch
# 2.8.0 is the newest release whose default Linux wheel is built for CUDA 12 (12.8), and it pins
# exactly those pip wheels (nvidia-cublas-cu12 12.8, nvidia-cudnn-cu12 9.10). So one set of CUDA
# libraries, installed by pip, serves both engines: torch finds its own, and LD_LIBRARY_PATH
# points CTranslate2 at the same directories (as faster-whisper's README says). A CUDA base
# image would add a second, multi-GB copy of the same libraries; the local torch 2.13.0 is a
# CPU build, and the newer CUDA wheels move to CUDA 13, which CTranslate2 4.8 cannot load.
GPU_PACKAGES = [
    "torch==2.8.0",
    "openai-whisper==20250625",
    "nvidia-cublas-cu12",
    "nvidia-cudnn-cu12",
]
CUDA_LIBRARY_PATH = f"{SITE_PACKAGES}/nvidia/cublas/lib:{SITE_PACKAGES}/nvidia/cudnn/lib"


def _base_image() -> modal.Image:
    return (
        modal.Image.debian_slim(python_version=PYTHON_VERSION)
        .apt_install("ffmpeg")
        .uv_pip_install(*PIPELINE_PACKAGES)
    )


def _with_project(image: modal.Image) -> modal.Image:
    """Our packages go last: mounted at container start, so a code change needs no rebuild."""
    return image.add_local_python_source("transcriber", "app").add_local_dir(
        ROOT / "web", "/root/web"
    )


def gpu_image() -> modal.Image:
    return _with_project(
        _base_image()
        .uv_pip_install(*GPU_PACKAGES)
        .env({"LD_LIBRARY_PATH": CUDA_LIBRARY_PATH, "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    )


def web_image() -> modal.Image:
    # No torch here: the web container decodes and segments; Whisper runs on the GPUs (or,
    # with STREAMSCRIBE_MODAL_WORKERS=inline, faster-whisper runs here on the CPU).
    return _with_project(_base_image())


# -- the App -------------------------------------------------------------------------------------

config = DeployConfig.from_env()
# include_source=False: the images add our packages explicitly (add_local_python_source), so
# Modal need not guess them from the entrypoint as well.
app = modal.App(APP_NAME, include_source=False)
models_volume = modal.Volume.from_name(MODELS_VOLUME, create_if_missing=True)
data_volume = modal.Volume.from_name(DATA_VOLUME, create_if_missing=True)


@app.cls(
    # L4 by default: 24 GB holds any Whisper size in float16 (large-v3 needs about 4 GB with
    # faster-whisper, 10 GB with openai-whisper), Ada tensor cores run float16 and int8, and it
    # is the cheapest 24 GB GPU Modal offers. One 30 s segment at batch size 1 is bound by
    # decoder latency, not FLOPs, so an A100/H100 would mostly idle; more L4s fan out wider.
    gpu=config.gpu,
    image=gpu_image(),
    volumes={MODELS_DIR: models_volume},
    # run_job already turns engine errors into an error *result* (and retries the engine once
    # itself), so these retries only see infrastructure failures: a preempted or crashed
    # container, an input timeout. Two more tries with backoff ride those out; then the
    # segment becomes a segment_error event and the job goes on.
    retries=modal.Retries(max_retries=2, backoff_coefficient=2.0, initial_delay=1.0),
    # One segment takes seconds on a GPU even with whisper's temperature fallback (up to six
    # decodes); three minutes means something hangs, and the retry gets a fresh container.
    # A transcribe_sequential call gets the same 180 s for at most 8 segments
    # (ModalSequentialMapper.max_batch), which is still ample.
    timeout=180,
    # Container start includes the first download of the weights (large-v3: 3 GB) to the Volume.
    startup_timeout=20 * 60,
    # The fan-out width, and a cap on cost: 10 L4s take a 2-hour video (240 segments) in
    # about a minute. Raise it with STREAMSCRIBE_MODAL_MAX_GPUS (and your workspace's GPU quota).
    max_containers=config.max_gpus,
    # Segments of one job arrive continuously while the source decodes; two idle minutes
    # bridge the gaps and a follow-up job, and a cold start (image + model load, ~20-40 s)
    # costs more than two minutes of an idle L4.
    scaledown_window=120,
)
class Transcriber:
    """One Whisper model per container; ``transcribe`` does one segment, ``transcribe_sequential``
    several in order.

    Batching: each input is one segment, decoded by ``run_job_retrying`` like every local
    worker, with whisper's temperature fallback and hallucination guards. We do not use
    ``@modal.batched`` + the engine's ``transcribe_batch`` (BatchedInferencePipeline): that path
    has no temperature fallback and no ``initial_prompt``, would fork the per-segment logic,
    and a class with a batched method may have no other method (the sequential mode's generator
    belongs here). Parallelism comes from fanning out over containers instead. Whether batching
    pays on a GPU is measured, not assumed: see the README's "Performance on GPU".
    """

    engine: str = modal.parameter(default="faster-whisper")
    model: str = modal.parameter(default=MODAL_DEFAULT_MODEL)

    @modal.enter()
    def load(self) -> None:
        from transcriber.engine import EngineConfig, get_engine

        in_container = not modal.is_local()
        self.config = EngineConfig(
            engine=self.engine,
            model=self.model,
            download_root=MODELS_DIR if in_container else None,
        )
        started = time.perf_counter()
        get_engine(self.config)
        self.load_seconds = time.perf_counter() - started
        if in_container:
            # Persist a first download so the next container loads from the Volume.
            models_volume.commit()
        print(f"loaded {self.engine} {self.model} in {self.load_seconds:.1f} s", flush=True)

    @modal.method()
    def transcribe(self, payload: dict) -> dict:
        """One segment payload (see :mod:`app.modal_mapper`) -> its result payload."""
        from transcriber.fanout import run_job_retrying

        return encode_result(run_job_retrying(decode_job(payload, self.config)))

    @modal.method()
    def transcribe_sequential(self, payloads: list[dict], carry: dict) -> Iterator[dict]:
        """Segment payloads in index order, each prompted with the text before it, starting from
        ``carry`` (a :class:`~transcriber.fanout.PromptCarry` as a dict); yields each result
        payload, with the prompt state after it, the moment it is done. A generator, so the CPU
        side iterates it with ``remote_gen.aio`` (:class:`app.modal_mapper.ModalSequentialMapper`).
        """
        yield from transcribe_in_order(payloads, carry, self.config)


# -- the web endpoint ----------------------------------------------------------------------------


def _cookies_file(environ: Mapping[str, str], directory: Path) -> str | None:
    """Write the cookies Secret's text to a private file for yt-dlp; None without a Secret."""
    text = environ.get(COOKIES_KEY, "")
    if not text.strip():
        return None
    path = directory / "youtube-cookies.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fp:
        fp.write(text if text.endswith("\n") else text + "\n")
    return str(path)


def web_settings(
    environ: Mapping[str, str] = os.environ, cookies_dir: Path = COOKIES_DIR
) -> Settings:
    """The web container's Settings: its environment, plus cookies from the Secret if any."""
    settings = Settings.from_env(environ)
    cookies = _cookies_file(environ, cookies_dir)
    if cookies is not None:
        settings = dataclasses.replace(settings, cookies_file=cookies)
    return settings


def build_web_app(
    settings: Settings | None = None,
    environ: Mapping[str, str] = os.environ,
    *,
    mapper: Mapper | None = None,
    store: Store | None = None,
):
    """The FastAPI app the ``web`` function serves; ``mapper``/``store`` override the choice.

    ``STREAMSCRIBE_MODAL_WORKERS``: ``gpu`` (default) fans segments out to ``Transcriber``;
    ``inline`` transcribes in this container (CPU, faster-whisper). ``STREAMSCRIBE_MODAL_STORE``:
    ``dict`` (default) keeps jobs in the ``modal.Dict``; ``sqlite`` in a file under the data
    directory.
    """
    from app.api import create_app

    settings = settings or web_settings(environ)
    env = _Env(environ)
    if mapper is None:
        if env.choice("MODAL_WORKERS", "gpu", ("gpu", "inline")) == "gpu":
            # Enough segments queued to keep every GPU busy while results flow back.
            mapper = ModalMapper(Transcriber, max_in_flight=4 * config.max_gpus)
        else:
            from transcriber.fanout import InlineMapper

            mapper = InlineMapper()
    if store is None:
        if env.choice("MODAL_STORE", "dict", ("dict", "sqlite")) == "dict":
            from app.modal_store import ModalDictStore

            store = ModalDictStore(modal.Dict.from_name(JOBS_DICT, create_if_missing=True))
        else:
            from app.store import SQLiteStore

            store = SQLiteStore(settings.db_path)
    return create_app(settings, mapper, store)


_web_settings = config.settings()


@app.function(
    image=web_image(),
    volumes={DATA_DIR: data_volume},
    env=config.web_env,
    secrets=[modal.Secret.from_name(config.cookies_secret)] if config.cookies_secret else [],
    # Decoding (ffmpeg) and segmenting run here, a little CPU per running job.
    cpu=2.0,
    memory=2048,
    # A request may stream a whole job (POST /transcribe): let it live as long as a job may,
    # so Modal never kills the container under a running job. (The proxy still limits each HTTP
    # request to 150 s; clients resume with Last-Event-ID, see the module docstring.)
    timeout=int(_web_settings.max_job_wall_s or 23 * 3600) + 600,
    # ...but starting the container (no model to load here) takes seconds, not hours.
    startup_timeout=300,
    # ONE web container: the job manager (running jobs, their listeners, grace timers) lives in
    # its event loop, and a reconnect must reach the container that runs the job. Concurrency
    # comes from asyncio inside it (@modal.concurrent), not from more containers.
    max_containers=1,
    min_containers=config.min_containers,
    # Idle = no open request. A job goes on for job_grace_s after its last listener leaves;
    # five minutes covers that and a reconnecting EventSource. After a scale-down an unfinished
    # job is "interrupted" and resumes from its stored segments when asked for again.
    scaledown_window=min(3600, max(300, int(_web_settings.job_grace_s) + 60)),
)
@modal.concurrent(max_inputs=100)
@modal.asgi_app(requires_proxy_auth=config.proxy_auth)
def web():
    return build_web_app()
