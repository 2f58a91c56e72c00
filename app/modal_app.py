"""streamscribe on Modal: ``modal deploy -m app.modal_app`` (``make deploy``).

The same product as ``app.local``, split over two kinds of container:

* ``web`` (CPU): the FastAPI app from :func:`app.api.create_app`. It resolves the source with
  yt-dlp, decodes it with ffmpeg, cuts segments and runs the job manager, exactly as locally;
  only the mapper differs: :class:`app.modal_mapper.ModalMapper` fans the segments out to...
* ``Transcriber`` (GPU): a class whose ``@modal.enter`` loads the Whisper model once per
  container (weights read from a ``modal.Volume`` that :func:`download_weights` filled once)
  and whose ``transcribe`` method runs :func:`transcriber.fanout.run_job_retrying` — the very
  function the local workers run — on one segment's audio, returning its pieces with absolute
  timestamps; ``transcribe_batch`` runs :func:`transcriber.fanout.run_batch` (the local pool's
  batched path) on a group of ready segments. Its generator method ``transcribe_sequential`` serves the sequential mode:
  segments in order on one container, each prompted with the text before it, each result
  streamed back as it is done.

Jobs and their events live in a ``modal.Dict`` (:class:`app.modal_store.ModalDictStore`), so
they outlive the web container; uploads live on a second Volume.

Deploy-time configuration (read when this module is imported, i.e. by ``modal deploy``):

=====================================  ===========================================================
``STREAMSCRIBE_MODAL_ENV``             the mode, in every Dict and Volume name (default ``prod``;
                                       ``make modal-serve`` sets ``dev``), so a ``modal serve``
                                       copy never touches production's jobs or uploads
``STREAMSCRIBE_MODAL_GPU``             GPU type of ``Transcriber`` (default ``L4``; see below)
``STREAMSCRIBE_MODAL_MAX_GPUS``        most GPU containers at once (default 10)
``STREAMSCRIBE_MODAL_PROXY_AUTH``      1 = every request needs ``Modal-Key``/``Modal-Secret``
                                       headers (a proxy auth token of the workspace); default 0
``STREAMSCRIBE_MODAL_COOKIES_SECRET``  name of a ``modal.Secret`` whose
                                       ``STREAMSCRIBE_YOUTUBE_COOKIES`` holds a cookies.txt
``STREAMSCRIBE_MODAL_MIN_CONTAINERS``  web containers kept warm (default 0, at most 1)
``STREAMSCRIBE_MODAL_MAX_UPLOAD_MB``   largest upload on Modal (default 100; see below)
``STREAMSCRIBE_*`` (:data:`SHIPPED`)   :class:`app.settings.Settings` passed to the containers
                                       (``STREAMSCRIBE_MODEL`` defaults to ``large-v3-turbo``,
                                       ``STREAMSCRIBE_BATCH_SIZE`` to 8)
=====================================  ===========================================================

One engine and model per deployment: ``STREAMSCRIBE_ENGINE``/``STREAMSCRIBE_MODEL`` at deploy
time pin the GPU class, so ``max_containers`` caps every GPU the deployment can hold (Modal
applies it per parameter set); a request for another model gets a 400, and an impossible pair
(openai-whisper with a CTranslate2-only model) fails the import, before any container starts.

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
job itself runs as an asyncio task in the web container. An upload holds its request open while
it arrives, so uploads get their own, smaller cap on Modal (``STREAMSCRIBE_MODAL_MAX_UPLOAD_MB``:
100 MB take about 80 s at 10 Mbit/s), answered with a 413.

Deploying needs only ``modal`` and the few light packages this module imports at deploy time
(see ``make deploy``): the engines, numpy and FastAPI are imported inside the functions.
"""

# No ``from __future__ import annotations``: Modal reads the class parameters' annotations as
# real types (``str``), not strings.
import dataclasses
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import modal

from app.settings import ENV_PREFIX, Settings, SettingsError, _Env
from app.store import Store
from transcriber.ytdlp_check import YTDLP_REQUIREMENT

APP_NAME = "streamscribe"
#: ``STREAMSCRIBE_MODAL_ENV``: which copy of the app (``prod``; ``dev`` for ``make modal-serve``).
DEFAULT_MODE = "prod"


def modal_mode(environ: Mapping[str, str] = os.environ) -> str:
    mode = _Env(environ).text("MODAL_ENV", DEFAULT_MODE)
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,20}", mode):
        raise SettingsError(f"{ENV_PREFIX}MODAL_ENV={mode!r}: expected a short lower-case name (prod, dev)")
    return mode


def resource_name(kind: str, mode: str) -> str:
    """A Dict's or Volume's name: per app and per mode, so serve and deploy never share state."""
    return f"{APP_NAME}-{mode}-{kind}"


MODE = modal_mode()
#: Where the GPU containers read Whisper weights (faster-whisper's / openai-whisper's
#: ``download_root``); :func:`download_weights` writes them there once per deployment.
MODELS_DIR = "/models"
MODELS_VOLUME = resource_name("models", MODE)
#: The web container's data directory (uploads), on a Volume so an interrupted upload job can
#: still be resumed by the next container.
DATA_DIR = "/data"
DATA_VOLUME = resource_name("data", MODE)
#: The job log (:class:`app.modal_store.ModalDictStore`).
JOBS_DICT = resource_name("jobs", MODE)
#: The key, inside the cookies Secret, that holds the cookies.txt text.
COOKIES_KEY = "STREAMSCRIBE_YOUTUBE_COOKIES"
#: Where the web container writes them for yt-dlp (container-local, never on a Volume).
COOKIES_DIR = Path("/tmp/streamscribe")
#: A GPU deployment's default model: large-v3 quality at a fraction of its decoder cost.
MODAL_DEFAULT_MODEL = "large-v3-turbo"
#: A GPU deployment's default ``STREAMSCRIBE_BATCH_SIZE`` (segments per engine call, so per
#: grouped call): a GPU decodes 8 windows for little more than the cost of one, while the CPU
#: default (2) is tuned for a CPU. A group also stops at 1.5 MiB of audio (see ModalMapper).
MODAL_DEFAULT_BATCH_SIZE = 8
#: The Python the images run; the same minor version as the local venv.
PYTHON_VERSION = "3.11"
#: debian_slim is the official python image: packages land in this site-packages.
SITE_PACKAGES = f"/usr/local/lib/python{PYTHON_VERSION}/site-packages"
ROOT = Path(__file__).resolve().parent.parent

#: Modal's limits on what the functions below ask for (a Function's ``timeout`` and
#: ``startup_timeout`` at most 24 h, ``scaledown_window`` 2..3600 s).
MODAL_MAX_TIMEOUT_S = 24 * 3600
MODAL_SCALEDOWN_S = (2, 3600)
#: The web function runs one container (see ``web``); min_containers may not exceed it.
WEB_MAX_CONTAINERS = 1

#: The ``STREAMSCRIBE_*`` settings that travel from the deployer's shell to the containers.
#: Only these: a variable meant for a local server (``ALLOW_PRIVATE_NETWORKS=1``,
#: ``ALLOWED_NETWORKS``, ``COOKIES_FILE``, ``DATA_DIR``...) is never shipped by accident.
SHIPPED = (
    "MODEL", "ENGINE", "BEAM_SIZE", "ALLOWED_HOSTS", "ALLOWED_PORTS", "ALLOW_GENERIC_EXTRACTOR",
    "EXTRA_EXTRACTORS", "TOKEN", "MAX_DURATION_S", "MAX_DOWNLOAD_MB", "MAX_BODY_KB",
    "MAX_CONCURRENT_JOBS", "JOB_GRACE_S", "MAX_JOB_WALL_S", "HEARTBEAT_S", "YTDLP_EXTRACTOR_ARGS",
    "BATCH_SIZE", "VAD", "MAX_PLAYLIST_ITEMS", "PLAYLIST_CONCURRENCY",
    # this module's own, so the containers import it with the deployer's config
    "MODAL_ENV", "MODAL_GPU", "MODAL_MAX_GPUS", "MODAL_PROXY_AUTH", "MODAL_COOKIES_SECRET",
    "MODAL_MIN_CONTAINERS", "MODAL_MAX_UPLOAD_MB", "MODAL_WORKERS", "MODAL_STORE",
)  # fmt: skip

#: The models each engine can load by name (openai-whisper's ``whisper.available_models()``;
#: faster-whisper's also include the CTranslate2-only distil ones, and any Hub repo id
#: ``org/name``). Listed here so that deploying needs neither package.
OPENAI_WHISPER_MODELS = (
    "tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
    "large-v1", "large-v2", "large-v3", "large", "large-v3-turbo", "turbo",
)  # fmt: skip
FASTER_WHISPER_MODELS = OPENAI_WHISPER_MODELS + (
    "distil-large-v2", "distil-medium.en", "distil-small.en", "distil-large-v3",
    "distil-large-v3.5",
)  # fmt: skip


#: A Hugging Face Hub repo id (``Systran/faster-whisper-small``), which faster-whisper downloads.
HUB_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_model(engine: str, model: str) -> None:
    """Refuse a pair no GPU container could load, before any container starts."""
    if engine == "openai-whisper" and model not in OPENAI_WHISPER_MODELS:
        why = ("is a CTranslate2 model only faster-whisper loads" if model in FASTER_WHISPER_MODELS
               else "is not one of its model names")  # fmt: skip
        raise SettingsError(
            f"{ENV_PREFIX}MODEL={model!r} with {ENV_PREFIX}ENGINE=openai-whisper: it {why} "
            f"({', '.join(OPENAI_WHISPER_MODELS)})"
        )
    if engine == "faster-whisper" and model not in FASTER_WHISPER_MODELS and not HUB_REPO.fullmatch(model):
        raise SettingsError(
            f"{ENV_PREFIX}MODEL={model!r}: not a faster-whisper model name or a Hugging Face "
            "repo id (org/name); a local path means nothing on Modal"
        )


@dataclass(frozen=True)
class DeployConfig:
    """What ``modal deploy`` bakes into the App; see the module docstring for the variables."""

    mode: str = DEFAULT_MODE
    gpu: str = "L4"
    max_gpus: int = 10
    proxy_auth: bool = False
    cookies_secret: str | None = None
    min_containers: int = 0
    max_upload_mb: float = 100
    #: ``STREAMSCRIBE_*`` settings handed to the containers' environment (only :data:`SHIPPED`).
    web_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "DeployConfig":
        env, d = _Env(environ), cls()
        shipped = {ENV_PREFIX + name for name in SHIPPED}
        passed = {k: v for k, v in environ.items() if k in shipped and v.strip()}
        passed.setdefault(ENV_PREFIX + "MODEL", MODAL_DEFAULT_MODEL)
        passed.setdefault(ENV_PREFIX + "BATCH_SIZE", str(MODAL_DEFAULT_BATCH_SIZE))
        config = cls(
            mode=modal_mode(environ),
            gpu=env.text("MODAL_GPU", d.gpu),
            max_gpus=env.integer("MODAL_MAX_GPUS", d.max_gpus, minimum=1),
            proxy_auth=env.flag("MODAL_PROXY_AUTH", d.proxy_auth),
            cookies_secret=env.text("MODAL_COOKIES_SECRET", None),
            min_containers=env.integer("MODAL_MIN_CONTAINERS", d.min_containers, minimum=0),
            max_upload_mb=env.number("MODAL_MAX_UPLOAD_MB", d.max_upload_mb),
        )
        # The data directory is the Volume; uploads are capped by Modal's own limit (an
        # upload holds its request open, and Modal answers a request for at most 150 s).
        upload = min(env.number("MAX_UPLOAD_MB", config.max_upload_mb), config.max_upload_mb)
        passed |= {ENV_PREFIX + "DATA_DIR": DATA_DIR, ENV_PREFIX + "MAX_UPLOAD_MB": f"{upload:g}"}
        config = dataclasses.replace(config, web_env=passed)
        config.check()
        return config

    def check(self) -> None:
        """Fail the import (so ``modal deploy``) on what Modal or the GPUs would refuse later."""
        if self.min_containers > WEB_MAX_CONTAINERS:
            raise SettingsError(
                f"{ENV_PREFIX}MODAL_MIN_CONTAINERS={self.min_containers}: the web function runs "
                f"at most {WEB_MAX_CONTAINERS} container (max_containers), so at most "
                f"{WEB_MAX_CONTAINERS} can be kept warm"
            )
        settings = self.settings()
        check_model(settings.engine, settings.model)

    def settings(self) -> Settings:
        """The Settings the web container will see (for limits that shape the functions)."""
        return Settings.from_env(self.web_env)

    @property
    def pinned(self) -> tuple[str, str]:
        """The one (engine, model) this deployment's GPU class serves."""
        settings = self.settings()
        return settings.engine, settings.model

    def web_timeout(self) -> int:
        """A request may stream a whole job (``POST /transcribe``): as long as a job may run,
        plus ten minutes, within Modal's 24 h."""
        wall = self.settings().max_job_wall_s or MODAL_MAX_TIMEOUT_S
        return int(min(wall + 600, MODAL_MAX_TIMEOUT_S))

    def web_scaledown(self) -> int:
        """Idle = no open request. A job goes on for job_grace_s after its last listener
        leaves; this covers that and a reconnecting EventSource, within Modal's 2..3600 s."""
        low, high = MODAL_SCALEDOWN_S
        return int(min(high, max(300, self.settings().job_grace_s + 60, low)))


# -- images --------------------------------------------------------------------------------------

# Exact versions: the image runs what the test suite ran. yt-dlp is the exception: YouTube
# changes weekly, so it is pinned to a tested *range* (YTDLP_REQUIREMENT, the same as in
# pyproject.toml) and installed in the last layer of each image, with deno for YouTube's JS
# challenges: ``STREAMSCRIBE_MODAL_REFRESH_YTDLP=1 make deploy`` rebuilds that layer alone,
# taking the newest release in the range, without rebuilding torch below it.
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
    "threadpoolctl==3.8.0",
]
YTDLP_PACKAGES = [YTDLP_REQUIREMENT, "deno"]
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


def image_layers(gpu: bool) -> list[list[str]]:
    """The pip layers of an image, oldest first; yt-dlp's is always the last."""
    return [PIPELINE_PACKAGES, *([GPU_PACKAGES] if gpu else []), YTDLP_PACKAGES]


def _image(gpu: bool) -> modal.Image:
    image = modal.Image.debian_slim(python_version=PYTHON_VERSION).apt_install("ffmpeg")
    refresh = _Env(os.environ).flag("MODAL_REFRESH_YTDLP", False)
    for layer in image_layers(gpu):
        image = image.uv_pip_install(*layer, force_build=refresh and layer is YTDLP_PACKAGES)
    if gpu:
        image = image.env({"LD_LIBRARY_PATH": CUDA_LIBRARY_PATH, "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    # Our packages go last: mounted at container start, so a code change needs no rebuild.
    return image.add_local_python_source("transcriber", "app").add_local_dir(ROOT / "web", "/root/web")


def gpu_image() -> modal.Image:
    return _image(gpu=True)


def web_image() -> modal.Image:
    # No torch here: the web container decodes and segments; Whisper runs on the GPUs (or,
    # with STREAMSCRIBE_MODAL_WORKERS=inline, faster-whisper runs here on the CPU).
    return _image(gpu=False)


# -- the App -------------------------------------------------------------------------------------

config = DeployConfig.from_env()
# include_source=False: the images add our packages explicitly (add_local_python_source), so
# Modal need not guess them from the entrypoint as well.
app = modal.App(APP_NAME, include_source=False)
models_volume = modal.Volume.from_name(MODELS_VOLUME, create_if_missing=True)
data_volume = modal.Volume.from_name(DATA_VOLUME, create_if_missing=True)


def gpu_options(config: DeployConfig) -> dict:
    """What ``Transcriber`` asks Modal for (``@app.cls`` keywords)."""
    return dict(
        # L4 by default: 24 GB holds any Whisper size in float16 (large-v3 needs about 4 GB with
        # faster-whisper, 10 GB with openai-whisper), Ada tensor cores run float16 and int8, and
        # it is the cheapest 24 GB GPU Modal offers. One 30 s segment at batch size 1 is bound by
        # decoder latency, not FLOPs, so an A100/H100 would mostly idle; more L4s fan out wider.
        gpu=config.gpu,
        # The containers only read the weights (download_weights wrote them): no hub lookups.
        env={**config.web_env, "HF_HUB_OFFLINE": "1"},
        # Read-only: the weights are written once, by download_weights (make deploy); a
        # container never writes them (concurrent Volume writes are last-write-wins).
        volumes={MODELS_DIR: models_volume.with_mount_options(read_only=True)},
        # run_job already turns engine errors into an error *result* (and retries the engine
        # once itself), so these retries only see infrastructure failures: a preempted or
        # crashed container, an input timeout. Two more tries with backoff ride those out; then
        # the segment becomes a segment_error event and the job goes on.
        retries=modal.Retries(max_retries=2, backoff_coefficient=2.0, initial_delay=1.0),
        # One segment takes seconds on a GPU even with whisper's temperature fallback (up to six
        # decodes); three minutes means something hangs, and the retry gets a fresh container.
        # A transcribe_sequential call gets the same 180 s for at most 4 segments
        # (ModalSequentialMapper.max_batch), which is still ample.
        timeout=180,
        # Start-up reads the weights from the Volume (large-v3-turbo: 1.6 GB) and loads them.
        startup_timeout=10 * 60,
        # The fan-out width, and a cap on cost: one engine and model per deployment (pinned),
        # so this caps every GPU the deployment holds. 10 L4s take a 2-hour video (240
        # segments) in about a minute. Raise it with STREAMSCRIBE_MODAL_MAX_GPUS (and your
        # workspace's GPU quota).
        max_containers=config.max_gpus,
        # Segments of one job arrive continuously while the source decodes; two idle minutes
        # bridge the gaps and a follow-up job, and a cold start (image + model load, ~20-40 s)
        # costs more than two minutes of an idle L4.
        scaledown_window=120,
    )


def web_options(config: DeployConfig) -> dict:
    """What the ``web`` function asks Modal for (``@app.function`` keywords)."""
    return dict(
        image=web_image(),
        volumes={DATA_DIR: data_volume},
        env=config.web_env,
        secrets=[modal.Secret.from_name(config.cookies_secret)] if config.cookies_secret else [],
        # Decoding (ffmpeg) and segmenting run here, a little CPU per running job.
        cpu=2.0,
        memory=2048,
        # Let a request live as long as a job may, so Modal never kills the container under a
        # running job. (The proxy still limits each HTTP request to 150 s; clients resume with
        # Last-Event-ID, see the module docstring.)
        timeout=config.web_timeout(),
        # ...but starting the container (no model to load here) takes seconds, not hours.
        startup_timeout=300,
        # ONE web container: the job manager (running jobs, their listeners, grace timers)
        # lives in its event loop, and a reconnect must reach the container that runs the job.
        # Concurrency comes from asyncio inside it (@modal.concurrent), not from more
        # containers. A rolling redeploy still runs an old and a new one side by side for a
        # while: the jobs' owner leases (app.modal_store) keep each job on one of them.
        max_containers=WEB_MAX_CONTAINERS,
        min_containers=config.min_containers,
        # After a scale-down an unfinished job is "interrupted" and resumes from its stored
        # segments when asked for again.
        scaledown_window=config.web_scaledown(),
    )


@app.cls(image=gpu_image(), **gpu_options(config))
class Transcriber:
    """One Whisper model per container; ``transcribe`` does one segment, ``transcribe_sequential``
    several in order.

    The parameters default to the deployment's pinned engine and model, and a container in the
    cloud refuses any other pair (the web side never asks for one: it answers 400), so the
    class's ``max_containers`` is the deployment's GPU cap. ``.local()`` (the tests) runs any.

    Batching: ``transcribe`` takes one segment (a job's first, or one that found no ready
    mates), decoded by ``run_job_retrying`` like every local worker; ``transcribe_batch`` takes a
    group of ready segments (:class:`app.modal_mapper.ModalMapper` forms them, at most
    ``STREAMSCRIBE_BATCH_SIZE``) and decodes them in one engine call through ``run_batch``, as a
    local pool worker does, with whisper's temperature fallback and hallucination guards per
    segment. Parallelism comes from fanning out over containers and from batching inside each;
    what that costs: see the README's "Cost and speed on Modal".
    """

    engine: str = modal.parameter(default=config.pinned[0])
    model: str = modal.parameter(default=config.pinned[1])

    @modal.enter()
    def load(self) -> None:
        from transcriber.engine import EngineConfig, EngineError, get_engine

        in_container = not modal.is_local()
        if in_container and (self.engine, self.model) != config.pinned:
            raise RuntimeError(
                f"this deployment serves {config.pinned[0]} {config.pinned[1]} only, not "
                f"{self.engine} {self.model}"
            )
        self.config = EngineConfig(
            engine=self.engine,
            model=self.model,
            download_root=MODELS_DIR if in_container else None,
        )
        started = time.perf_counter()
        try:
            get_engine(self.config)
        except EngineError as err:
            if not in_container:
                raise
            raise RuntimeError(
                f"{err}. The weights are written once per deployment by download_weights: run "
                "`make deploy` (or `modal run -m app.modal_app::download_weights`)."
            ) from err
        self.load_seconds = time.perf_counter() - started
        print(f"loaded {self.engine} {self.model} in {self.load_seconds:.1f} s", flush=True)

    @modal.method()
    def transcribe(self, payload: dict) -> dict:
        """One segment payload (see :mod:`app.modal_mapper`) -> its result payload."""
        from app.modal_mapper import decode_job, encode_result
        from transcriber.fanout import run_job_retrying

        return encode_result(run_job_retrying(decode_job(payload, self.config)))

    @modal.method()
    def transcribe_batch(self, payloads: list[dict]) -> list[dict]:
        """A group of segment payloads -> their result payloads, in order: one batched engine
        call through :func:`transcriber.fanout.run_batch`, the local pool's own batched path
        (:func:`app.modal_mapper.transcribe_group`)."""
        from app.modal_mapper import transcribe_group

        return transcribe_group(payloads, self.config)

    @modal.method()
    def transcribe_sequential(self, payloads: list[dict], carry: dict) -> Iterator[dict]:
        """Segment payloads in index order, each prompted with the text before it, starting from
        ``carry`` (a :class:`~transcriber.fanout.PromptCarry` as a dict); yields each result
        payload, with the prompt state after it, the moment it is done. A generator, so the CPU
        side iterates it with ``remote_gen.aio`` (:class:`app.modal_mapper.ModalSequentialMapper`).
        """
        from app.modal_mapper import transcribe_in_order

        yield from transcribe_in_order(payloads, carry, self.config)


@app.function(image=gpu_image(), env={**config.web_env}, volumes={MODELS_DIR: models_volume},
              cpu=2.0, memory=8192, timeout=3600)  # fmt: skip
def download_weights() -> str:
    """Write the pinned model's weights to the models Volume, once per deployment.

    ``make deploy`` runs it (``modal run``) before ``modal deploy``; the GPU containers then only
    read the Volume. It loads the model on the CPU through the same ``get_engine`` the GPU
    containers use, so exactly the files they will look for are written, then commits.
    """
    from transcriber.engine import EngineConfig, get_engine

    engine, model = config.pinned
    started = time.perf_counter()
    get_engine(EngineConfig(engine=engine, model=model, device="cpu", download_root=MODELS_DIR))
    models_volume.commit()
    return f"{engine} {model}: weights on {MODELS_VOLUME} in {time.perf_counter() - started:.0f} s"


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
    mapper=None,
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
            from app.modal_mapper import ModalMapper

            # Two segments queued per GPU keep every GPU busy while results flow back, and
            # bound what a cancel leaves behind (see ModalMapper).
            mapper = ModalMapper(Transcriber, max_in_flight=2 * config.max_gpus, pinned=config.pinned)
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


@app.function(**web_options(config))
@modal.concurrent(max_inputs=100)
@modal.asgi_app(requires_proxy_auth=config.proxy_auth)
def web():
    return build_web_app()
