"""GPU memory budgets (zero123.utils.memory): the plan's part sizes and its one-line error, and CUDA
out-of-memory errors as one line in the CLI and in the app's page."""

import pytest
import torch

from zero123.errors import Zero123Error
from zero123.utils import memory
from zero123.utils.memory import GIB, MemoryPlan, resolve_budget


def test_plan_part_sizes_follow_the_budget_and_the_model():
    plan = MemoryPlan(budget=11 * GIB, model_size=256, itemsize=2)
    resident = 3 * GIB
    whole_ref, part_ref = plan.limits(resident)                  # reference view: no guidance graph
    whole, part = plan.limits(resident, guidance_images=4)       # random views: VAE graph of 4 renders + the UNet
    # a part fills the budget left after the resident memory and the render workspace
    free = 11 * GIB * memory.USABLE_FRACTION - resident - memory.RENDER_WORKSPACE
    assert part * plan.bytes_per_sample <= free < (part + 1) * plan.bytes_per_sample
    assert part == part_ref == whole_ref        # the guidance runs before the parts: it only bounds a whole render
    assert part - whole == pytest.approx(plan.guidance_bytes(4) / plan.bytes_per_sample, abs=1)
    assert plan.guidance_bytes(4) == 4 * 256 ** 2 * memory.GUIDANCE_BYTES_PER_PIXEL // 2 + memory.UNET_WORKSPACE
    assert MemoryPlan(budget=None).limits(resident, 12) == (None, None)
    assert MemoryPlan(budget=22 * GIB).limits(resident)[1] > 2 * part  # twice the budget, over twice the part
    # 12 views of guidance leave no room for a whole render beside it, but parts still fit
    assert plan.limits(resident, guidance_images=12)[0] == 0


def test_a_run_that_cannot_fit_names_max_memory():
    with pytest.raises(Zero123Error, match=r"needs at least .* GiB .*--max-memory 5.0 GiB"):
        MemoryPlan(budget=5 * GIB).limits(3 * GIB)               # no room for a part
    with pytest.raises(Zero123Error, match=r"needs at least 8.3 GiB .*--max-memory 7.0 GiB"):
        MemoryPlan(budget=7 * GIB).limits(2 * GIB, guidance_images=12)   # the guidance alone does not fit
    with pytest.raises(Zero123Error, match="--max-memory must be a positive"):
        resolve_budget(0, "cpu")
    assert resolve_budget(None, "cpu") is None and resolve_budget(1.5, "cpu") == int(1.5 * GIB)
    assert resolve_budget(float("inf"), "cuda") is None          # --max-memory inf: whole renders


def _oom():
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                  "11.00 GiB of which 1.2 GiB is free.\nlong advice line")


def test_cuda_out_of_memory_is_one_line_in_the_cli(monkeypatch, capsys):
    import zero123.commands.to3d as to3d_cmd
    from zero123.cli import main

    def boom(args):
        raise _oom()

    monkeypatch.setattr(to3d_cmd, "run", boom)
    assert main(["to3d", "x.png", "--out", "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zero123: error: out of GPU memory (CUDA out of memory. Tried to "
                                               "allocate 2.00 GiB)") and "--max-memory" in err[0]

    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(to3d_cmd, "run", bug)
    with pytest.raises(RuntimeError, match="a bug"):   # other errors are not disguised
        main(["to3d", "x.png", "--out", "o"])


def test_cuda_out_of_memory_is_shown_in_the_app_page(fixtures_dir, tmp_path):
    gr = pytest.importorskip("gradio")
    from zero123.app import AppConfig, Zero123App, build_app

    app = Zero123App(AppConfig(checkpoint=str(fixtures_dir / "tiny_zero123_ldm.ckpt"), device="cpu",
                               work_dir=tmp_path))

    def boom(*a, **k):
        raise _oom()

    app.prepare = boom
    demo = build_app(app=app)
    fn = next(d.fn for d in demo.fns.values() if d.api_name == "prepare")
    with pytest.raises(gr.Error, match="out of GPU memory"):
        fn("photo.png", None)


def test_max_memory_option_is_checked_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from test_to3d import object_image  # noqa: E402  (tests/ is on sys.path under pytest)

    import zero123.pipelines.image_to_3d as i3d
    from zero123.cli import main

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(i3d, "load_guidance_model", no_load)
    photo = tmp_path / "obj.png"
    object_image(32).save(photo)
    assert main(["to3d", str(photo), "--out", str(tmp_path / "o"), "--preset", "tiny", "--device", "cpu",
                 "--input-elevation", "5", "--max-memory", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["zero123: error: --max-memory must be a positive number of GiB, got -1.0"]
