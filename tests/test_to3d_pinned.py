"""to3d's behaviour pinned on the tiny fixture checkpoint (issue 17 item 6): every step's losses, a digest of the
final field state and the exported mesh, as computed by the code before the Representation/Guidance refactor
(commit 016885c). A refactor that changes any number here changed behaviour.

The values are float32 results of one CPU run (seed 3, preset ``tiny``); rtol 1e-6 leaves room for nothing but
summation-order noise. If a deliberate change of the recipe moves them, recompute them and say why in the commit.
"""

import numpy as np
import pytest
import trimesh
from test_to3d import object_image  # noqa: E402  (tests/ is on sys.path under pytest)

from zero123.pipelines.image_to_3d import load_checkpoint, to3d

# losses of steps 1..4 (trainer.last_losses after each step)
PINNED_LOSSES = [
    {"z/sds": 119.2685317993164, "z/orient": 0.021248837932944298, "z/normal_smooth": 0.014196980744600296, "z/normal_smooth_3d": 0.015592853538691998, "z/sparsity": 0.38840606808662415, "z/opaque": 0.2627694606781006, "ref/rgb": 0.06760797649621964, "ref/mask": 0.07202032208442688, "ref/orient": 0.02186935767531395, "ref/normal_smooth": 0.017013005912303925, "ref/normal_smooth_3d": 0.015574883669614792, "ref/opaque": 0.25822460651397705, "loss": 50.26632308959961, "samples": 2382},
    {"z/sds": 82.17516326904297, "z/orient": 0.022131633013486862, "z/normal_smooth": 0.014949980191886425, "z/normal_smooth_3d": 0.015785114839673042, "z/sparsity": 0.3892892599105835, "z/opaque": 0.25962913036346436, "ref/rgb": 0.06766622513532639, "ref/mask": 0.07236572355031967, "ref/orient": 0.021957367658615112, "ref/normal_smooth": 0.01693638414144516, "ref/normal_smooth_3d": 0.01572149060666561, "ref/opaque": 0.2589056193828583, "loss": 52.12272644042969, "samples": 2380},
    {"z/sds": 87.55326843261719, "z/orient": 0.02183835208415985, "z/normal_smooth": 0.016047891229391098, "z/normal_smooth_3d": 0.015169493854045868, "z/sparsity": 0.39220795035362244, "z/opaque": 0.2675913870334625, "ref/rgb": 0.06654880940914154, "ref/mask": 0.06952352821826935, "ref/orient": 0.02192106284201145, "ref/normal_smooth": 0.01631852239370346, "ref/normal_smooth_3d": 0.01570495404303074, "ref/opaque": 0.2663780152797699, "loss": 68.8281021118164, "samples": 2501},
    {"z/sds": 112.8092041015625, "z/orient": 0.021259024739265442, "z/normal_smooth": 0.013899167999625206, "z/normal_smooth_3d": 0.015242503955960274, "z/sparsity": 0.39194899797439575, "z/opaque": 0.2669481635093689, "ref/rgb": 0.06631806492805481, "ref/mask": 0.069304458796978, "ref/orient": 0.021922023966908455, "ref/normal_smooth": 0.016336865723133087, "ref/normal_smooth_3d": 0.01564951054751873, "ref/opaque": 0.2655026912689209, "loss": 82.18086242675781, "samples": 2516},
]
# final field parameters: (sum, sum of |x|) in float64
PINNED_FIELD = {
    "encoding.table": (2.9745102916187163, 53.59109282127933),
    "density_net.0.weight": (-1.411450774408877, 24.249472328461707),
    "density_net.1.weight": (0.7572850119322538, 2.0457681622356176),
    "feature_net.0.weight": (1.9739386439323425, 22.33281514234841),
    "feature_net.1.weight": (-0.9389878371730447, 5.569461884908378),
}
PINNED_MESH = {"vertices": 1002, "faces": 2000,
               "bounds": [[-0.45690760016441345, -0.45667707920074463, -0.456258088350296], [0.45676541328430176, 0.4566570222377777, 0.45585504174232483]]}


def _field_state(state: dict) -> dict:
    """The field's tensors by their own names, from a version-1 (``field``) or version-2 (``model``) checkpoint."""
    if "field" in state:
        return state["field"]
    return {k[len("field."):]: v for k, v in state["model"].items() if k.startswith("field.")}


@pytest.fixture(scope="module")
def run(fixtures_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pinned")
    losses = []
    result = to3d(object_image(64), fixtures_dir / "tiny_zero123_ldm.ckpt", out, preset="tiny", seed=3, device="cpu",
                  progress=False, callback=lambda step, total, values: losses.append(dict(values)))
    return result, losses, load_checkpoint(out)


def test_every_step_loss_is_pinned(run):
    _, losses, _ = run
    assert len(losses) == len(PINNED_LOSSES)
    for step, (got, want) in enumerate(zip(losses, PINNED_LOSSES), 1):
        assert set(got) == set(want), f"step {step}: loss terms {sorted(got)}"
        assert got["samples"] == want["samples"], f"step {step}"
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=f"step {step} {k}")


def test_final_state_is_pinned(run):
    _, _, state = run
    assert state["step"] == 4
    field = _field_state(state)
    assert set(PINNED_FIELD) <= set(field)
    for name, (total, total_abs) in PINNED_FIELD.items():
        t = field[name].double()
        np.testing.assert_allclose([float(t.sum()), float(t.abs().sum())], [total, total_abs], rtol=1e-6,
                                   atol=1e-9, err_msg=name)


def test_exported_mesh_is_pinned(run):
    result, _, _ = run
    assert (result.num_vertices, result.num_faces) == (PINNED_MESH["vertices"], PINNED_MESH["faces"])
    mesh = trimesh.load(result.ply, process=False)
    assert len(mesh.vertices) == PINNED_MESH["vertices"]
    np.testing.assert_allclose(mesh.bounds, PINNED_MESH["bounds"], rtol=1e-6, atol=1e-7)
    assert result.obj.is_file() and result.glb.is_file() and result.mp4.is_file()
