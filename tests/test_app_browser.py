"""End to end in a real browser: ``zero123 app`` (bundled model) in a subprocess, driven by the system chromium
through Playwright (no browser download). Screenshots of each stage go to the test's tmp dir (and to
``$ZERO123_SCREENSHOTS`` when set, e.g. docs/images)."""

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("ZERO123_CHROMIUM", "/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("app_browser")
    port = _free_port()
    log = open(work / "server.log", "w")
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", NO_PROXY="127.0.0.1,localhost")
    proc = subprocess.Popen([sys.executable, "-m", "zero123.cli", "app", "--device", "cpu", "--port", str(port),
                             "--work-dir", str(work / "sessions")], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("zero123 app did not start:\n" + (work / "server.log").read_text()[-3000:])
            time.sleep(0.5)
    yield url, work
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing: .ci/run installs Debian's chromium (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    import tempfile

    profile = tempfile.mkdtemp(prefix="zero123-chromium-")
    with sync_playwright() as pw:
        # a fresh profile folder (Playwright passes it as --user-data-dir)
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=BROWSER_ARGS,
                                                    headless=True, viewport={"width": 1280, "height": 900})
        yield ctx
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


def test_browser_views_3d_and_bad_upload(server, browser, tmp_path):
    import trimesh

    url, work = server
    shots = [tmp_path]
    if os.environ.get("ZERO123_SCREENSHOTS"):
        shots.append(Path(os.environ["ZERO123_SCREENSHOTS"]))

    page = browser.new_page()
    js_errors = []
    page.on("pageerror", lambda exc: js_errors.append(str(exc)))

    def shot(name):
        for d in shots:
            d.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(d / f"app_{name}.png"))

    page.goto(url)
    page.get_by_text("One photo of an object").wait_for(timeout=30_000)
    for elem in ("#upload", "#prepared", "#gallery", "#orbit_btn", "#input_elevation"):
        page.locator(elem).wait_for(state="attached", timeout=30_000)  # fails when a component is missing
        assert page.locator(elem).count() == 1, elem
    shot("1_page")

    # upload -> prepared input shown
    page.locator("#upload input[type=file]").set_input_files(str(REPO / "examples" / "mug.png"))
    page.locator("#prepared img").wait_for(timeout=60_000)
    shot("2_input")

    # 2 views -> the gallery shows 2 images
    for elem, value in (("#n_orbit", "2"), ("#view_steps", "4")):
        box = page.locator(f"{elem} input[type=number]")
        box.fill(value)
        box.press("Enter")
    page.locator("#orbit_btn").click()
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 2", timeout=90_000)
    page.wait_for_timeout(500)
    assert page.locator("#gallery .thumbnail-item img, #gallery img").count() >= 2
    thumbs = page.locator("#gallery button.thumbnail-item")
    assert thumbs.count() == 2, page.locator("#gallery").inner_html()[:2000]
    shot("3_views")

    # image-to-3D with the tiny preset -> a model in the 3D viewer, a GLB download that trimesh loads
    page.get_by_role("tab", name="Image-to-3D").click()
    page.locator("#preset input").click()
    page.get_by_role("option", name="tiny").click()
    steps = page.locator("#t_steps input")
    steps.fill("2")
    steps.press("Enter")
    page.locator("#run3d").click()
    page.wait_for_function("(document.querySelector('#status3d textarea') || {}).value?.startsWith('done')",
                           timeout=180_000)
    page.locator("#model3d").scroll_into_view_if_needed()
    page.locator("#model3d canvas").wait_for(timeout=30_000)  # the viewer has a model loaded
    links = page.locator("#downloads a")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    glb = [h for h in hrefs if h and "model.glb" in h]
    assert glb and any("model_obj.zip" in h for h in hrefs) and any("model.ply" in h for h in hrefs), hrefs
    data = page.request.get(glb[0] if glb[0].startswith("http") else url.rstrip("/") + glb[0]).body()
    mesh = trimesh.load(io.BytesIO(data), file_type="glb", force="mesh")
    assert len(mesh.faces) > 0
    page.wait_for_timeout(1500)  # let the viewer draw
    shot("4_model3d")

    # nothing outside the app's files can be fetched
    assert page.request.get(url + "gradio_api/file=/etc/passwd").status in (403, 404)
    assert page.request.get(url + f"gradio_api/file={REPO / 'pyproject.toml'}").status in (403, 404)

    # a text file named .png -> the CLI's one-line message in the page
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image\n")
    page.get_by_role("tab", name="Novel views").click()
    page.locator("#upload button[aria-label='Clear']").click()
    page.locator("#upload input[type=file]").set_input_files(str(fake))
    page.get_by_text("is not a readable image").first.wait_for(timeout=30_000)
    shot("5_error")
    assert not js_errors, js_errors
