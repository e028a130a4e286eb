"""Load and faults: 8 concurrent gradio_client clients (localhost) against the app served in this process with the
tiny fixture checkpoint. Prints completed / failed / max wait / peak RAM (the figures quoted in bench/RESULTS.md)."""

import resource
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from zero123.app import AppConfig, Zero123App, build_app

N_CLIENTS = 8
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def served(fixtures_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("app_load")
    app = Zero123App(AppConfig(checkpoint=str(fixtures_dir / "tiny_zero123_ldm.ckpt"), device="cpu",
                               work_dir=work / "sessions"))
    demo = build_app(app=app)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(app.root)])
    yield app, f"http://127.0.0.1:{port}/", work
    demo.close()


def test_eight_clients_faults_and_one_job_at_a_time(served, tmp_path):
    from gradio_client import Client, handle_file

    app, url, work = served
    yy, xx = np.mgrid[:64, :64]
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[(yy - 32) ** 2 + (xx - 32) ** 2 < 18 ** 2] = [200, 60, 40, 255]
    photo = tmp_path / "obj.png"
    Image.fromarray(rgba).save(photo)
    # references: the same views computed in-process, one per client seed
    app.prepare("reference", photo)
    refs = {}
    for seed in range(N_CLIENTS):
        res = app.views("reference", *app.orbit(2), steps=STEPS, seed=seed)
        refs[seed] = [np.asarray(Image.open(p)) for p in res.images]
    rss0 = _rss_mb()

    def client_job(seed):
        c = Client(url, verbose=False)
        c.predict(handle_file(str(photo)), api_name="/prepare")
        t = time.perf_counter()
        if seed == 3:  # a job that raises (target elevation out of range): the client gets the message
            with pytest.raises(Exception, match="elevation"):
                c.predict(2, 79, 0, STEPS, 3.0, seed, 1.0, 20, api_name="/orbit")  # 20 + 79 > 90
            return "failed", time.perf_counter() - t
        gallery, grid = c.predict(2, 0, 0, STEPS, 3.0, seed, 1.0, 0, api_name="/orbit")
        wait = time.perf_counter() - t
        got = [np.asarray(Image.open(item["image"])) for item in gallery]
        assert len(got) == 2 and all(np.array_equal(g, r) for g, r in zip(got, refs[seed])), seed
        return "ok", wait

    def disconnecting_client():
        # starts an image-to-3D job and goes away mid-run: the run stops (checkpoint kept), the queue serves on
        c = Client(url, verbose=False)
        c.predict(handle_file(str(photo)), api_name="/prepare")
        job = c.submit("tiny", 200, 0, 0, api_name="/to3d")
        deadline = time.time() + 60
        while time.time() < deadline and not any(str(o).startswith("step") for o in job.outputs()):
            time.sleep(0.1)
        job.cancel()
        c.close()
        return "disconnected", 0.0

    app.max_active_jobs = 0
    app.ABANDON_S = 1.0  # the disconnected run stops after 1 s unread (5 s in the app)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(N_CLIENTS + 1) as pool:
        futures = [pool.submit(disconnecting_client)] + [pool.submit(client_job, s) for s in range(N_CLIENTS)]
        results = [f.result(timeout=240) for f in futures]
    wall = time.perf_counter() - t0
    # the cut run has stopped and left its checkpoint
    deadline = time.time() + 60
    while app.active_jobs and time.time() < deadline:
        time.sleep(0.2)
    assert app.active_jobs == 0
    states = list((work / "sessions").glob("s-*/to3d/checkpoints/state.pt"))
    assert len(states) == 1
    from zero123.pipelines.image_to_3d import load_checkpoint

    assert 1 <= load_checkpoint(states[0])["step"] < 200
    completed = sum(r == "ok" for r, _ in results)
    failed = sum(r == "failed" for r, _ in results)
    max_wait = max(w for r, w in results if r == "ok")
    peak = _rss_mb()
    print(f"\napp load test: {N_CLIENTS} clients + 1 disconnecting: completed {completed}, failed {failed} (as "
          f"intended), max wait {max_wait:.1f} s, wall {wall:.1f} s, max concurrent model jobs "
          f"{app.max_active_jobs}, peak RSS {peak:.0f} MB (+{peak - rss0:.0f} MB during the test)")
    assert completed == N_CLIENTS - 1 and failed == 1
    assert app.max_active_jobs == 1
    assert peak - rss0 < 1500
    # and the queue still serves
    c = Client(url, verbose=False)
    c.predict(handle_file(str(photo)), api_name="/prepare")
    gallery, _ = c.predict(1, 0, 0, STEPS, 3.0, 0, 1.0, 0, api_name="/orbit")
    assert len(gallery) == 1
