"""The web app (``zero123 app``) as a user sees it: server start, page ready, click to N views, click to a GLB,
idle RSS; beside the same jobs in-process (``to3d()``) and as cold CLI runs (``--cold-cli``).

The app runs as a subprocess (``python -m zero123.cli app``) on a free localhost port. "Clicks" go through the
browser (system chromium + Playwright: the page's Orbit / Make 3D buttons until the gallery shows N images / the
status reads done) or, with ``--client gradio`` (or when no chromium is found), through ``gradio_client`` calls to
the same queued events. Times are wall-clock, warm (a first click of each kind is made and not counted when
``--warmup 1``).

    python bench/bench_app.py --out bench/results/app_cpu.json                                   # CPU, bundled model
    python bench/bench_app.py --checkpoint /tmp/sz123 --device cuda --preset fast --client gradio \\
        --cold-cli --in-process --out $OUT/app_h200.json                                         # see bench/device/app.sh
"""

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the zero123 CLI; where imageio-ffmpeg is missing (the lent GPU machines) turntable MP4s become raw frames
ZERO123_CLI = [sys.executable, str(REPO / "bench" / "cli_no_ffmpeg.py")]


def _pythonpath() -> str:
    """The repo's src/ first, then whatever PYTHONPATH already holds (the device scripts' carried wheels)."""
    return os.pathsep.join([str(REPO / "src")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def log(msg):
    print(f"[bench_app] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(args, work: Path):
    port = free_port()
    cmd = [*ZERO123_CLI, "app", "--port", str(port), "--work-dir", str(work)]
    for opt in ("checkpoint", "device", "dtype"):
        if getattr(args, opt):
            cmd += [f"--{opt}", getattr(args, opt)]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=_pythonpath())
    logf = open(work.parent / "server.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.perf_counter() - t0 > args.start_timeout:
                proc.kill()
                sys.exit("server did not start:\n" + (work.parent / "server.log").read_text()[-3000:])
            time.sleep(0.2)
    return proc, url, time.perf_counter() - t0


def browser_clicks(args, url, shots: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    out = {"views": [], "glb": []}
    profile = tempfile.mkdtemp(prefix="zero123-bench-chromium-")
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=BROWSER_ARGS,
                                                    headless=True, viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        t = time.perf_counter()
        page.goto(url)
        page.locator("#orbit_btn").wait_for(timeout=60_000)
        out["page_ready_s"] = time.perf_counter() - t
        log(f"browser: page ready {out['page_ready_s']:.2f} s")
        page.locator("#upload input[type=file]").set_input_files(str(args.image))
        page.locator("#prepared img").wait_for(timeout=120_000)
        for elem, value in (("#n_orbit", str(args.views)), ("#view_steps", str(args.steps))):
            box = page.locator(f"{elem} input[type=number]")
            box.fill(value)
            box.press("Enter")
        seed = page.locator("#seed input")
        for i in range(args.warmup + args.reps):
            seed.fill(str(i))  # a new seed: new images, so the gallery's first image changes when the job is done
            seed.press("Enter")
            before = page.evaluate("(document.querySelector('#gallery img') || {}).src || ''")
            t = time.perf_counter()
            page.locator("#orbit_btn").click()
            page.wait_for_function("([n, old]) => { const im = document.querySelectorAll('#gallery img');"
                                   " return im.length >= n && im[0].src !== old; }", arg=[args.views, before],
                                   timeout=args.job_timeout * 1000)
            log(f"browser: click to {args.views} views {time.perf_counter() - t:.2f} s")
            if i >= args.warmup:
                out["views"].append(time.perf_counter() - t)
        page.wait_for_timeout(500)
        if shots:
            page.screenshot(path=str(shots / "app_views.png"))
        if args.preset:
            page.get_by_role("tab", name="Image-to-3D").click()
            page.locator("#preset input").click()
            page.get_by_role("option", name=args.preset).click()
            for i in range(args.warmup + args.glb_reps):
                t = time.perf_counter()
                page.locator("#run3d").click()
                try:
                    page.wait_for_function("(document.querySelector('#status3d textarea') || {}).value"
                                           "?.startsWith('done')", timeout=args.job_timeout * 1000)
                except Exception:
                    page.screenshot(path=str(Path(tempfile.gettempdir()) / "bench_app_glb_timeout.png"))
                    raise
                page.locator("#model3d canvas").wait_for(timeout=60_000)
                log(f"browser: click to GLB {time.perf_counter() - t:.2f} s")
                if i >= args.warmup:
                    out["glb"].append(time.perf_counter() - t)
                page.locator("#status3d textarea").evaluate("e => e.value = ''")
            page.locator("#model3d").scroll_into_view_if_needed()
            page.wait_for_timeout(2000)
            if shots:
                page.screenshot(path=str(shots / "app_3d.png"))
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)
    return out


def client_clicks(args, url) -> dict:
    from gradio_client import Client, handle_file

    out = {"views": [], "glb": []}
    c = Client(url, verbose=False)
    c.predict(handle_file(str(args.image)), api_name="/prepare")
    for i in range(args.warmup + args.reps):
        t = time.perf_counter()
        gallery, _ = c.predict(args.views, 0, 0, args.steps, 3.0, 0, 0.5, 5, api_name="/orbit")
        assert len(gallery) == args.views
        if i >= args.warmup:
            out["views"].append(time.perf_counter() - t)
    if args.preset:
        for i in range(args.warmup + args.glb_reps):
            t = time.perf_counter()
            status = c.predict(args.preset, None, 0, 5, api_name="/to3d")
            assert str(status).startswith("done"), status
            out["glb_status"] = str(status)
            if i >= args.warmup:
                out["glb"].append(time.perf_counter() - t)
    return out


def in_process_to3d(args) -> float:
    """``to3d()`` for the same preset with the model already loaded (what the app's click does, without it)."""
    from _no_ffmpeg import skip_mp4_if_no_ffmpeg

    skip_mp4_if_no_ffmpeg()
    import torch

    from zero123.commands._common import load_pipeline, resolve_device_dtype
    from zero123.pipelines.image_to_3d import to3d

    device, dtype = resolve_device_dtype(argparse.Namespace(device=args.device, dtype=args.dtype))
    pipe = load_pipeline(args.checkpoint, None, dtype, device)
    if pipe.device.type == "cuda":
        from zero123.models.optimizations import optimize_for_inference

        optimize_for_inference(pipe.model)
    times = []
    for i in range(args.warmup + args.glb_reps):
        with tempfile.TemporaryDirectory() as d:
            if pipe.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            to3d(str(args.image), out_dir=d, preset=args.preset, model=pipe.model, progress=False,
                 input_elevation=5)
            if pipe.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
    return min(times)


def cold_cli(args) -> dict:
    base = list(ZERO123_CLI)
    model = []
    for opt in ("checkpoint", "device", "dtype"):
        if getattr(args, opt):
            model += [f"--{opt}", getattr(args, opt)]
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    out = {}
    with tempfile.TemporaryDirectory() as d:
        azims = [str(360 * (i + 1) / (args.views + 1)) for i in range(args.views)]
        t = time.perf_counter()
        subprocess.run(base + ["views", str(args.image), "--azimuth", *azims, "--steps", str(args.steps),
                               "--out", f"{d}/views"] + model, check=True, env=env, stdout=subprocess.DEVNULL)
        out["views_s"] = time.perf_counter() - t
        if args.preset and "to3d" in args.cold_cli:
            t = time.perf_counter()
            subprocess.run(base + ["to3d", str(args.image), "--preset", args.preset, "--no-progress",
                                   "--out", f"{d}/to3d"] + [m for m in model if m != "--variant"],
                           check=True, env=env, stdout=subprocess.DEVNULL)
            out["glb_s"] = time.perf_counter() - t
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="default: the bundled model")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--image", type=Path, default=REPO / "examples" / "mug.png")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--preset", default=None, help="also click to a GLB with this to3d preset (fast, cpu, tiny)")
    ap.add_argument("--client", choices=["browser", "gradio"], default=None,
                    help="browser (default when chromium is installed) or gradio_client")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--glb-reps", type=int, default=None, help="repeats of the GLB click and of the in-process "
                    "to3d() (default --reps)")
    ap.add_argument("--in-process", action="store_true", help="also time to3d() in-process for --preset")
    ap.add_argument("--cold-cli", nargs="*", choices=["views", "to3d"], default=None,
                    help="also time cold `zero123 views` / `zero123 to3d` (no value: both)")
    ap.add_argument("--screenshots", type=Path, default=None, help="save app_views.png / app_3d.png here")
    ap.add_argument("--start-timeout", type=float, default=300)
    ap.add_argument("--job-timeout", type=float, default=900)
    ap.add_argument("--out", type=Path, default=Path("bench/results/app_cpu.json"))
    args = ap.parse_args(argv)
    args.glb_reps = args.reps if args.glb_reps is None else args.glb_reps
    if args.cold_cli == []:
        args.cold_cli = ["views", "to3d"]
    client = args.client or ("browser" if Path(CHROMIUM).exists() else "gradio")
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="zero123-bench-app-"))
    (tmp / "work").mkdir()
    proc, url, start_s = start_server(args, tmp / "work")
    log(f"server up in {start_s:.1f} s at {url}")
    try:
        time.sleep(2.0)
        idle = rss_mb(proc.pid)
        clicks = browser_clicks(args, url, args.screenshots) if client == "browser" else client_clicks(args, url)
        after = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    res = {"host": platform.node(), "cpu_count": os.cpu_count(), "client": client,
           "checkpoint": args.checkpoint or "bundled", "device": args.device or "auto", "views": args.views,
           "steps": args.steps, "preset": args.preset, "server_start_s": round(start_s, 2),
           "page_ready_s": round(clicks.get("page_ready_s", float("nan")), 3),
           "click_to_views_s": [round(x, 3) for x in clicks["views"]],
           "click_to_glb_s": [round(x, 3) for x in clicks["glb"]], "glb_status": clicks.get("glb_status"),
           "idle_rss_mb": round(idle, 1), "rss_after_jobs_mb": round(after, 1)}
    try:
        import torch

        if torch.cuda.is_available():
            res["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    save(args.out, res)  # partial results as it goes: a time limit further on keeps what was measured
    if args.in_process and args.preset:
        res["in_process_to3d_s"] = round(in_process_to3d(args), 3)
        save(args.out, res)
    if args.cold_cli:
        res["cold_cli"] = {k: round(v, 2) for k, v in cold_cli(args).items()}
    shutil.rmtree(tmp, ignore_errors=True)
    save(args.out, res)
    log(json.dumps(res))
    return 0


def save(path: Path, res: dict) -> None:
    """``res`` as JSON at ``path`` via a temporary name (a partial file is never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
