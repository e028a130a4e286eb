"""``zero123 app``: a local gradio web UI (novel views, image-to-3D, text-to-3D) on the library's pipelines.

Two layers:

* :class:`Zero123App` holds the model (loaded once per process, kept warm) and the per-session folders, and has
  one plain-Python handler per button (``prepare``, ``views``, ``image_to_3d``, ``text_candidates``). Handlers
  raise :class:`~zero123.errors.Zero123Error` with the CLI's one-line messages; tests call them directly.
* :func:`build_app` (in :mod:`zero123.app_ui`, importable from here) wires them into a ``gradio.Blocks`` (gradio is the ``web`` extra, imported here only):
  model jobs share one queue slot (``concurrency_id="model"``, limit 1; waiting users see their position),
  ``Zero123Error`` becomes ``gr.Error`` (the message shown in the page), and each browser session writes to its
  own folder ``<work_dir>/s-<hash>/``, removed ``session_max_age_s`` after its last use.

Camera values in the page are those of ``zero123 views`` (degrees / world units relative to the input photo, see
:mod:`zero123.camera`); the input elevation's default is the pipeline's (5 degrees for Stable Zero123).
"""


import hashlib
import os
import queue
import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator, Optional

from .errors import Zero123Error

MODEL_QUEUE = "model"  # gradio concurrency id shared by every job that uses the diffusion model
INPUT_NAME = "input_rgba.png"


def to3d_presets() -> tuple[str, ...]:
    """``auto`` and the packaged to3d presets (``image_to_3d_config.PRESETS``), for the page's preset choice."""
    from .pipelines.image_to_3d_config import PRESETS

    return ("auto",) + tuple(PRESETS)


def import_gradio():
    """``gradio``, or a one-line error naming the extra to install."""
    try:
        import gradio
    except ImportError:
        raise Zero123Error('the web app needs gradio: pip install "zero123[web]"') from None
    return gradio


@dataclass
class AppConfig:
    """Settings of one app process. Sizes in bytes / pixels, ages in seconds."""

    checkpoint: Optional[str] = None          # None: the bundled model
    variant: Optional[str] = None
    t2i_model: Optional[str] = None           # text-to-image model; the Text-to-3D tab only appears with one
    matting_model: Optional[str] = None       # ONNX matting model (default: alpha / plain rule / built-in)
    device: Optional[str] = None
    dtype: Optional[str] = None
    fast: bool = False                        # GPU: compile the UNet/VAE once at start (see Zero123Pipeline)
    work_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "zero123-app")
    max_upload_bytes: int = 20 * 2 ** 20
    max_pixels: int = 36_000_000
    session_max_age_s: float = 6 * 3600.0
    max_views: int = 16
    scheduler: Optional[str] = None           # views sampler; None: BUNDLED_SAMPLING for the bundled model, else ddim
    steps: Optional[int] = None               # views steps; None: as scheduler

    def sampling(self) -> tuple[str, int]:
        """The views click's default ``(scheduler, steps)``: the bundled model's cheaper ``BUNDLED_SAMPLING``
        (its DDIM-50 quality in fewer UNet calls: ``bench/RESULTS.md``, sampler table), DDIM 50 for a checkpoint
        (not measured there); ``scheduler`` / ``steps`` override (another scheduler than the default: 50 steps)."""
        from .schedulers import check_sampler

        sched, steps = BUNDLED_SAMPLING if self.checkpoint is None else ("ddim", 50)
        if self.scheduler is not None and self.scheduler != sched:
            sched, steps = check_sampler(self.scheduler), 50
        return sched, int(self.steps or steps)


#: the bundled model's default views sampling in the app: ``zero123 eval`` on its standard pairs matches DDIM 50
#: within standard error at this scheduler and step count (``bench/bench_samplers.py``, ``bench/RESULTS.md``)
BUNDLED_SAMPLING = ("dpmpp", 10)


@dataclass
class ViewsResult:
    images: list[Path]
    grid: Path


@dataclass
class To3DOutput:
    """Files of a finished image-to-3D run (``glb``...) or, when cancelled, only ``checkpoint``."""

    status: str
    cancelled: bool
    steps: int
    checkpoint: Optional[Path] = None
    glb: Optional[Path] = None
    obj_zip: Optional[Path] = None
    ply: Optional[Path] = None
    video: Optional[Path] = None
    preview: Optional[Path] = None


def zip_files(paths, out: Path) -> Path:
    """Zip ``paths`` (flat) into ``out`` via a temporary name."""
    from .export.writers import atomic_write_with

    def write(tmp):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in paths:
                zf.write(p, Path(p).name)

    return atomic_write_with(out, write)


class Zero123App:
    """The app's state and handlers (no gradio here). Thread-safe: the model is loaded under a lock and model jobs
    run one at a time."""

    ABANDON_S = 5.0  # an image-to-3D run whose progress nobody read for this long stops (see image_to_3d_live)

    def __init__(self, config: AppConfig | None = None, pipeline=None):
        self.config = config or AppConfig()
        self.root = Path(self.config.work_dir).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._pipe, self._t2i, self._matting = pipeline, None, None
        self._lock = threading.Lock()
        self._stops: dict[str, threading.Event] = {}
        self.last_3d: dict[str, To3DOutput] = {}  # the page's last image-to-3D result, by gradio session
        self.active_jobs = 0            # model jobs running now, and the most ever at once (tests, load test)
        self.max_active_jobs = 0
        self._jobs_lock = threading.Lock()
        self._model_lock = threading.Lock()
        if self.config.matting_model is not None and not Path(self.config.matting_model).is_file():
            raise Zero123Error(f"matting model not found: {self.config.matting_model}")
        if self.config.t2i_model is not None:
            from .pipelines.text2image import check_model_path

            check_model_path(self.config.t2i_model)

    # ----- model (loaded once) ---------------------------------------------------------------------------------
    @property
    def pipeline(self):
        with self._lock:
            if self._pipe is None:
                from .commands._common import load_pipeline, resolve_device_dtype

                c = self.config
                device, dtype = resolve_device_dtype(SimpleNamespace(device=c.device, dtype=c.dtype))
                pipe = load_pipeline(c.checkpoint, c.variant, dtype, device)
                if pipe.device.type == "cuda":
                    if c.fast:
                        pipe.enable_fast_path()
                    else:
                        from .models.optimizations import optimize_for_inference

                        optimize_for_inference(pipe.model)
                        pipe.enable_cuda_graph()
                self._pipe = pipe
            return self._pipe

    def _matting_model(self):
        with self._lock:
            if self._matting is None and self.config.matting_model is not None:
                from .matting import load_matting_model

                self._matting = load_matting_model(self.config.matting_model)
            return self._matting

    def _t2i_model(self):
        with self._lock:
            if self._t2i is None:
                from .pipelines.text2image import TextToImage

                c = self.config
                self._t2i = TextToImage.from_pretrained(c.t2i_model, device=c.device)
            return self._t2i

    class _Job:
        """One model job: holds the model lock (one job at a time, whatever the web layer does) and counts."""

        def __init__(self, app):
            self.app = app

        def __enter__(self):
            self.app._model_lock.acquire()
            with self.app._jobs_lock:
                self.app.active_jobs += 1
                self.app.max_active_jobs = max(self.app.max_active_jobs, self.app.active_jobs)

        def __exit__(self, *exc):
            with self.app._jobs_lock:
                self.app.active_jobs -= 1
            self.app._model_lock.release()

    # ----- sessions --------------------------------------------------------------------------------------------
    def session_dir(self, session: str) -> Path:
        """The session's own folder (created; its mtime marks the last use). ``session``: any id string."""
        name = "s-" + hashlib.sha256(str(session).encode()).hexdigest()[:24]
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        os.utime(d)
        return d

    def cleanup(self, now: float | None = None) -> list[Path]:
        """Remove session folders unused for more than ``session_max_age_s``; returns those removed."""
        now = time.time() if now is None else now
        removed = []
        for d in self.root.glob("s-*"):
            try:
                if now - d.stat().st_mtime > self.config.session_max_age_s:
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d)
            except FileNotFoundError:
                pass
        return removed

    def input_path(self, session: str) -> Path:
        p = self.session_dir(session) / INPUT_NAME
        if not p.is_file():
            raise Zero123Error("no input image yet: upload a photo first")
        return p

    # ----- handlers --------------------------------------------------------------------------------------------
    def check_upload(self, path):
        """Byte and pixel limits, checked from the file size and the image header before decoding; returns the
        image, read by ``preprocessing.load_image`` (the CLI's reader and messages)."""
        from PIL import Image, UnidentifiedImageError

        from .preprocessing import load_image

        if path is None:
            raise Zero123Error("no image given: upload a photo")
        path = Path(path)
        if path.is_file() and path.stat().st_size > self.config.max_upload_bytes:
            raise Zero123Error(f"{path.name} is {path.stat().st_size / 2 ** 20:.1f} MB, over the app's upload "
                               f"limit of {self.config.max_upload_bytes / 2 ** 20:.0f} MB")
        try:
            with Image.open(path) as im:
                w, h = im.size
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            w = h = 0  # load_image below gives the CLI's message
        if w * h > self.config.max_pixels:
            raise Zero123Error(f"{path.name} has {w}x{h} pixels, over the limit of {self.config.max_pixels:,} "
                               f"pixels (a decompression bomb or a very large photo: downscale it)")
        return load_image(path)  # its own MAX_PIXELS check turns PIL's decompression-bomb errors into one line

    def prepare(self, session: str, upload) -> Path:
        """Check and prepare an uploaded photo (mask, recentred at 0.8 on transparent): the session's
        ``input_rgba.png`` (written atomically), shown in the page on white."""
        from .commands._common import atomic_save_image
        from .preprocessing import prepare_input_image

        self.cleanup()
        image = self.check_upload(upload)
        size = max(256, self.pipeline.model.image_size)
        prep = prepare_input_image(image, size=size, matting=self._matting_model())
        out = self.session_dir(session) / INPUT_NAME
        atomic_save_image(prep.rgba, out)
        return out

    def orbit(self, n: int, elevation: float = 0.0) -> tuple[list[float], list[float]]:
        """``n`` azimuth changes evenly round the object (excluding the input's 0), one elevation change."""
        n = int(n)
        if not 1 <= n <= self.config.max_views:
            raise Zero123Error(f"number of views must be 1..{self.config.max_views}, got {n}")
        return [float(elevation)] * n, [360.0 * (i + 1) / (n + 1) for i in range(n)]

    def views(self, session: str, elevations, azimuths, radius: float = 0.0, *, steps: int | None = None,
              guidance_scale: float = 3.0, seed: int = 0, noise_scale: float | None = None,
              input_elevation: float | None = None, scheduler: str | None = None) -> ViewsResult:
        """Novel views of the session's input; a fresh ``views/`` folder each call (view_NN.png, grid.png).
        ``scheduler`` / ``steps``: ``None`` takes ``AppConfig.sampling()``'s."""
        import torch

        from .pipelines.zero123_pipeline import check_noise_scale
        from .schedulers import make_sampler
        from .utils.atomic import atomic_folder, atomic_save_image
        from .utils.images import save_image_grid

        src = self.input_path(session)
        if len(azimuths) > self.config.max_views:
            raise Zero123Error(f"at most {self.config.max_views} views at once, got {len(azimuths)}")
        tau = None if noise_scale is None else check_noise_scale(float(noise_scale))
        default_sched, default_steps = self.config.sampling()
        scheduler, steps = scheduler or default_sched, default_steps if steps is None else int(steps)
        make_sampler(scheduler, steps)  # one-line error for a bad scheduler / steps, before the model
        pipe = self.pipeline
        radii = [float(radius)] * len(azimuths)
        pipe.camera_batch(elevations, azimuths, radii, input_elevation)  # validate before sampling
        with self._Job(self):
            out = pipe(str(src), elevations, azimuths, radii, input_elevation=input_elevation,
                       num_inference_steps=int(steps), guidance_scale=float(guidance_scale),
                       generator=torch.Generator("cpu").manual_seed(int(seed)), noise_scale=tau, progress=False,
                       scheduler=scheduler)
        final = self.session_dir(session) / "views"
        with atomic_folder(final) as tmp:  # a fresh views/ each call, never mixed with the last one's
            for i, im in enumerate(out.images):
                atomic_save_image(im, tmp / f"view_{i:02d}.png")
            save_image_grid([out.input_image.rgb] + out.images, tmp / "grid.png")
        return ViewsResult(images=[final / f"view_{i:02d}.png" for i in range(len(out.images))],
                           grid=final / "grid.png")

    def stop_event(self, session: str) -> threading.Event:
        return self._stops.setdefault(self.session_dir(session).name, threading.Event())

    def cancel(self, session: str) -> None:
        """Ask the session's running image-to-3D job to stop (it saves its checkpoint)."""
        self.stop_event(session).set()

    def image_to_3d(self, session: str, *, preset: str = "auto", steps: int | None = None, seed: int = 0,
                    input_elevation: float | None = None, resume: bool = False,
                    callback: Callable[[int, int, dict], None] | None = None,
                    representation: str = "nerf") -> To3DOutput:
        """Run (or with ``resume`` continue) ``to3d`` on the session's input into its ``to3d/`` folder.
        ``callback(step, total, losses)`` after each step; :meth:`cancel` stops it with its checkpoint kept.
        ``representation``: ``nerf`` or ``gaussians`` (a resumed run keeps its own)."""
        from .pipelines.image_to_3d import checkpoint_path, to3d
        from .pipelines.image_to_3d_config import REPRESENTATION_PRESETS

        if preset not in to3d_presets():
            raise Zero123Error(f"unknown preset {preset!r}: use one of {', '.join(to3d_presets())}")
        if representation not in REPRESENTATION_PRESETS:
            raise Zero123Error(f"unknown representation {representation!r}: use one of "
                               f"{', '.join(REPRESENTATION_PRESETS)}")
        if steps is not None and int(steps) < 1:
            raise Zero123Error(f"steps must be >= 1, got {steps}")
        src = self.input_path(session)
        out = self.session_dir(session) / "to3d"
        state = checkpoint_path(out)
        if resume and not state.is_file():
            raise Zero123Error("nothing to resume: no cancelled image-to-3D run in this session")
        if not resume and out.exists():
            shutil.rmtree(out)
        stop = self.stop_event(session)
        stop.clear()
        model = self.pipeline.model
        with self._Job(self):
            res = to3d(str(src), out_dir=out, preset=preset, steps=None if steps is None else int(steps),
                       seed=int(seed), input_elevation=input_elevation, resume=out if resume else None,
                       model=model, progress=False, callback=callback, should_stop=stop.is_set,
                       representation=None if resume else representation)
        if res.cancelled:
            return To3DOutput(f"cancelled at step {res.steps}: checkpoint kept, press Resume to continue",
                              True, res.steps, checkpoint=res.checkpoint)
        obj_files = [p for p in (res.obj, res.mtl, res.texture) if p is not None]
        return To3DOutput(f"done: {res.steps} steps, {res.num_faces} faces, "
                          f"{res.timings.get('total_s', 0.0):.1f} s", False, res.steps, checkpoint=res.checkpoint,
                          glb=res.glb, obj_zip=zip_files(obj_files, out / "model_obj.zip"), ply=res.ply,
                          video=res.mp4, preview=res.preview)

    def image_to_3d_live(self, session: str, **kwargs) -> Iterator[tuple[str, Optional[To3DOutput]]]:
        """:meth:`image_to_3d` in a worker thread, yielding ``(status line, None)`` while it runs (step / total,
        loss, ETA) and ``(status, To3DOutput)`` at the end. Closing the iterator, or leaving it unread for
        ``ABANDON_S`` seconds with steps waiting (a browser gone: gradio stops reading), cancels the run; its
        checkpoint is kept for Resume."""
        updates: queue.Queue = queue.Queue()
        box: dict = {}
        t0 = time.perf_counter()
        first = {}
        last_read = [time.monotonic()]

        def cb(step, total, losses):
            first.setdefault("step", step - 1)
            updates.put((step, total, losses.get("loss", float("nan"))))
            if updates.qsize() >= 2 and time.monotonic() - last_read[0] > self.ABANDON_S:
                self.cancel(session)

        def work():
            try:
                box["out"] = self.image_to_3d(session, callback=cb, **kwargs)
            except BaseException as exc:  # re-raised in the caller's thread
                box["err"] = exc
            finally:
                updates.put(None)

        th = threading.Thread(target=work, name="zero123-to3d", daemon=True)
        th.start()
        try:
            yield "starting (loading the model on first use) ...", None
            while True:
                item = updates.get()
                last_read[0] = time.monotonic()
                if item is None:
                    break
                while not updates.empty():  # skip to the newest step
                    nxt = updates.get()
                    if nxt is None:
                        updates.put(None)
                        break
                    item = nxt
                step, total, loss = item
                done = step - first.get("step", 0)
                eta = (time.perf_counter() - t0) / max(done, 1) * (total - step)
                yield f"step {step} / {total} · loss {loss:.4g} · ETA {eta:.0f} s", None
            th.join()
            if "err" in box:
                raise box["err"]
            yield box["out"].status, box["out"]
        finally:
            if th.is_alive():
                self.cancel(session)
                th.join()

    def text_candidates(self, session: str, prompt: str, num_candidates: int = 2, pick: int | None = None,
                        seed: int = 0) -> tuple[list[Path], Path]:
        """Text-to-image candidates; the chosen one (``pick``, else the best mask) becomes the session's input."""
        from .pipelines.text_to_3d import text_to_3d

        if self.config.t2i_model is None:
            raise Zero123Error("no text-to-image model: start the app with --t2i-model PATH")
        out = self.session_dir(session) / "text"
        with self._Job(self):
            res = text_to_3d(prompt, self._t2i_model(), out_dir=out, num_candidates=int(num_candidates),
                             pick=None if pick is None else int(pick), matting_model=self._matting_model(),
                             seed=int(seed), skip_3d=True, progress=False)
        return list(res.candidates), self.prepare(session, res.input_rgba)


# the page and the server (zero123.app_ui), importable from here
from .app_ui import build_app, launch  # noqa: E402

__all__ = ["AppConfig", "Zero123App", "build_app", "launch", "import_gradio", "ViewsResult", "To3DOutput"]
