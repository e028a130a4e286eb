"""The page of ``zero123 app``: :func:`build_app` wires :class:`~zero123.app.Zero123App`'s handlers into a
``gradio.Blocks``, and :func:`launch` serves it (see :mod:`zero123.app` for the two layers). Both are importable
from ``zero123.app``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import Zero123Error

if TYPE_CHECKING:  # zero123.app imports this module at its end; the functions import it when called
    from .app import AppConfig, Zero123App


# ----- gradio --------------------------------------------------------------------------------------------------
def _session_id(request) -> str:
    return getattr(request, "session_hash", None) or "default"


def build_app(config: AppConfig | None = None, app: Zero123App | None = None):
    """The gradio ``Blocks`` of the app (not launched: ``.queue()`` is set; call ``.launch()`` or mount it)."""
    from .app import MODEL_QUEUE, Zero123App, import_gradio, to3d_presets

    gr = import_gradio()
    app = app or Zero123App(config)
    cfg = app.config

    def page_error(exc):
        """The ``gr.Error`` shown in the page for a user error or a CUDA out-of-memory error; None: re-raise."""
        from .utils.memory import is_out_of_memory, out_of_memory_message

        if isinstance(exc, Zero123Error):
            return gr.Error(str(exc), print_exception=False)
        if is_out_of_memory(exc):
            import torch

            torch.cuda.empty_cache()  # the next click starts from a clean cache
            return gr.Error(out_of_memory_message(exc, "app"), print_exception=False)
        return None

    def user_errors(fn):
        import functools
        import inspect

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen(*a, **k):
                try:
                    yield from fn(*a, **k)
                except Exception as exc:
                    err = page_error(exc)
                    if err is None:
                        raise
                    raise err from None
            return gen

        @functools.wraps(fn)
        def wrapper(*a, **k):
            try:
                return fn(*a, **k)
            except Exception as exc:
                err = page_error(exc)
                if err is None:
                    raise
                raise err from None
        return wrapper

    def opt_float(v):
        return None if v is None or v == "" else float(v)

    with gr.Blocks(title="zero123") as demo:
        gr.Markdown("# zero123\nOne photo of an object → novel views and a 3D model.")
        with gr.Row():
            upload = gr.File(label="Photo (RGBA, or any photo: its background is removed)", file_types=["image"],
                             type="filepath", elem_id="upload")
            prepared = gr.Image(label="Prepared input", type="filepath", interactive=False, elem_id="prepared")
        default_elev = 5.0 if app._pipe is None or app._pipe.model.variant.value == "stable_zero123" else 0.0
        input_elev = gr.Number(label="Input elevation (degrees; the photo's viewpoint above the horizon)",
                               value=default_elev, elem_id="input_elevation")

        @user_errors
        def on_upload(path, request: gr.Request):
            return str(app.prepare(_session_id(request), path)) if path else None

        upload.upload(on_upload, upload, prepared, concurrency_id="prepare", concurrency_limit=2,
                      api_name="prepare")

        with gr.Tab("Novel views"):
            with gr.Row():
                d_elev = gr.Slider(-80, 80, value=0, step=1, label="Elevation change (deg)")
                d_azim = gr.Slider(-180, 180, value=90, step=1, label="Azimuth change (deg)")
                d_rad = gr.Slider(-0.5, 0.5, value=0, step=0.05, label="Radius change")
            with gr.Row():
                n_orbit = gr.Slider(1, cfg.max_views, value=4, step=1, label="Orbit views", elem_id="n_orbit")
                v_sched = gr.Dropdown(["ddim", "dpmpp", "unipc"], value=cfg.sampling()[0], label="Sampler",
                                      elem_id="view_sampler")
                v_steps = gr.Slider(2, 200, value=cfg.sampling()[1], step=1, label="Steps", elem_id="view_steps")
                v_cfg = gr.Slider(0, 10, value=3.0, step=0.1, label="Guidance")
                v_seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                v_tau = gr.Slider(0, 1, value=app._pipe.noise_scale if app._pipe else 1.0, step=0.05,
                                  label="Noise scale")
            with gr.Row():
                one_btn = gr.Button("One view")
                orbit_btn = gr.Button("Orbit", variant="primary", elem_id="orbit_btn")
            gallery = gr.Gallery(label="Views", columns=4, elem_id="gallery")
            grid_file = gr.File(label="Grid", elem_id="grid_file")

            def _views(session, elevs, azims, r, steps, g, seed, tau, ie, sched):
                res = app.views(session, elevs, azims, r, steps=steps, guidance_scale=g, seed=int(seed or 0),
                                noise_scale=tau, input_elevation=opt_float(ie), scheduler=sched)
                return [str(p) for p in res.images], str(res.grid)

            @user_errors
            def on_one(e, a, r, steps, g, seed, tau, ie, sched, request: gr.Request):
                return _views(_session_id(request), [e], [a], r, steps, g, seed, tau, ie, sched)

            @user_errors
            def on_orbit(n, e, r, steps, g, seed, tau, ie, sched, request: gr.Request):
                elevs, azims = app.orbit(n, e)
                return _views(_session_id(request), elevs, azims, r, steps, g, seed, tau, ie, sched)

            common = [v_steps, v_cfg, v_seed, v_tau, input_elev, v_sched]
            one_btn.click(on_one, [d_elev, d_azim, d_rad] + common, [gallery, grid_file],
                          concurrency_id=MODEL_QUEUE, concurrency_limit=1, api_name="views")
            orbit_btn.click(on_orbit, [n_orbit, d_elev, d_rad] + common, [gallery, grid_file],
                            concurrency_id=MODEL_QUEUE, concurrency_limit=1, api_name="orbit")

        with gr.Tab("Image-to-3D"):
            with gr.Row():
                preset = gr.Dropdown(list(to3d_presets()), value="auto", label="Preset", elem_id="preset")
                t_steps = gr.Number(value=0, precision=0, label="Steps (0: the preset's)", elem_id="t_steps")
                t_seed = gr.Number(value=0, precision=0, label="Seed")
                rep = gr.Dropdown(["nerf", "gaussians"], value="nerf", label="Representation",
                                  info="nerf: the hash-grid NeRF recipe; gaussians: 3D Gaussians (DreamGaussian)",
                                  elem_id="representation")
            with gr.Row():
                run_btn = gr.Button("Make 3D", variant="primary", elem_id="run3d")
                cancel_btn = gr.Button("Cancel", elem_id="cancel3d")
                resume_btn = gr.Button("Resume", elem_id="resume3d")
            status = gr.Textbox(label="Progress", interactive=False, elem_id="status3d")
            with gr.Row():
                viewer = gr.Model3D(label="3D model", elem_id="model3d")
                video = gr.Video(label="Turntable", elem_id="turntable")
            downloads = gr.File(label="Downloads (GLB, OBJ zip, PLY)", file_count="multiple", elem_id="downloads")

            # the run streams only its status line; its files are shown by a second step (a Model3D updated
            # from a generator that first skipped it stays without its canvas in gradio 6)
            def run_live(resume, p, steps, seed, ie, representation, request: gr.Request):
                session = _session_id(request)
                app.last_3d.pop(session, None)
                steps = None if steps in (None, "", 0) else int(steps)  # the page's 0 / empty: the preset's
                for line, out in app.image_to_3d_live(session, preset=p, steps=steps, seed=int(seed or 0),
                                                      input_elevation=opt_float(ie), resume=resume,
                                                      representation=representation or "nerf"):
                    if out is not None:
                        app.last_3d[session] = out
                    yield line

            @user_errors
            def on_run(p, steps, seed, ie, representation="nerf", request: gr.Request = None):
                yield from run_live(False, p, steps, seed, ie, representation, request)

            @user_errors
            def on_resume(p, steps, seed, ie, representation="nerf", request: gr.Request = None):
                yield from run_live(True, p, steps, seed, ie, representation, request)

            def on_show(request: gr.Request):
                out = app.last_3d.get(_session_id(request))
                if out is None or out.cancelled:
                    return None, None, None
                return str(out.glb), str(out.video), [str(out.glb), str(out.obj_zip), str(out.ply)]

            def on_cancel(request: gr.Request):
                app.cancel(_session_id(request))
                return "cancelling: saving the checkpoint ..."

            ins, files = [preset, t_steps, t_seed, input_elev, rep], [viewer, video, downloads]
            run_btn.click(on_run, ins, status, concurrency_id=MODEL_QUEUE, concurrency_limit=1,
                          api_name="to3d").then(on_show, None, files, queue=False)
            resume_btn.click(on_resume, ins, status, concurrency_id=MODEL_QUEUE, concurrency_limit=1,
                             api_name="resume").then(on_show, None, files, queue=False)
            cancel_btn.click(on_cancel, None, status, queue=False, api_name="cancel")

        if cfg.t2i_model is not None:
            with gr.Tab("Text-to-3D"):
                prompt = gr.Textbox(label="Prompt", placeholder="a ceramic teapot")
                with gr.Row():
                    n_cand = gr.Slider(1, 8, value=2, step=1, label="Candidates")
                    pick = gr.Number(value=None, precision=0, label="Pick (0-based; empty: best mask)")
                    c_seed = gr.Number(value=0, precision=0, label="Seed")
                cand_btn = gr.Button("Generate candidates", variant="primary")
                cands = gr.Gallery(label="Candidates", columns=4)
                gr.Markdown("The chosen candidate becomes the input: continue in *Novel views* or *Image-to-3D*.")

                @user_errors
                def on_text(pr, n, pk, s, request: gr.Request):
                    paths, inp = app.text_candidates(_session_id(request), pr, n,
                                                     None if pk in (None, "") else int(pk), int(s or 0))
                    return [str(p) for p in paths], str(inp)

                cand_btn.click(on_text, [prompt, n_cand, pick, c_seed], [cands, prepared],
                               concurrency_id=MODEL_QUEUE, concurrency_limit=1)

    demo.queue(default_concurrency_limit=1, max_size=64)
    demo.zero123 = app  # the handlers' state, for tests and embedding servers
    return demo


def launch(config: AppConfig, host: str = "127.0.0.1", port: int = 7860, warm: bool = True) -> None:
    """Build and serve the app (blocks). ``warm``: load the model before serving."""
    from .app import Zero123App

    app = Zero123App(config)
    if warm:
        app.pipeline
    demo = build_app(app=app)
    print(f"zero123 app: http://{host}:{port}/  (work dir {app.root})", flush=True)
    demo.launch(server_name=host, server_port=port, share=False, max_file_size=config.max_upload_bytes,
                allowed_paths=[str(app.root)], show_error=True, quiet=True)


__all__ = ["build_app", "launch"]
