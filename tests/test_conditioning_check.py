"""``zero123.evaluation.conditioning``: the swapped-input losses tell a model that uses its inputs from one that
does not."""

import torch

from zero123.evaluation.conditioning import VARIANTS, conditioning_losses, format_table, main
from zero123.models.configs import tiny_config
from zero123.training.dataset import ViewPairDataset
from zero123.training.synthetic import write_synthetic_dataset


def _data(tmp_path):
    return write_synthetic_dataset(tmp_path / "views", num_objects=4, views_per_object=4, image_size=32,
                                   val_objects=1, seed=2)


def test_losses_separate_a_conditioned_model_from_a_blind_one(tmp_path):
    root = _data(tmp_path)
    model = tiny_config("zero123").build(seed=0)
    ds = ViewPairDataset(root, "train", image_size=model.image_size)
    used = conditioning_losses(model, ds, num_pairs=6, timesteps=(300, 700), batch_size=4)
    assert set(used) == set(VARIANTS) and all(set(v) == {300, 700} for v in used.values())
    assert all(v > 0 for row in used.values() for v in row.values())
    # a random model's output depends on its input image and camera: the swaps change the loss
    for name in ("shuffled_input", "shuffled_camera", "input_is_target"):
        assert all(abs(used[name][t] - used["true"][t]) > 1e-7 for t in (300, 700)), name
    # blind it: no concat channels, a zero token whatever the image and camera -> every variant is identical
    with torch.no_grad():
        model.unet.conv_in.weight[:, 4:] = 0
        for p in model.camera_projection.parameters():
            p.zero_()
    blind = conditioning_losses(model, ds, num_pairs=6, timesteps=(300, 700), batch_size=4)
    for name in VARIANTS:
        for t in (300, 700):
            assert abs(blind[name][t] - blind["true"][t]) < 1e-6 * blind["true"][t], (name, t)
    assert "(1.000x)" in format_table(blind)


def test_cli_writes_json_and_reports_bad_data(tmp_path, capsys):
    import json

    from zero123.loading import save_pretrained

    root = _data(tmp_path)
    save_pretrained(tiny_config("zero123").build(seed=0), tmp_path / "m")
    out = tmp_path / "c.json"
    assert main(["--data", str(root), "--split", "train", "-c", str(tmp_path / "m"), "--pairs", "3",
                 "--timesteps", "500", "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())["losses"]) == set(VARIANTS)
    assert main(["--data", str(root), "--split", "nope", "-c", str(tmp_path / "m")]) == 2
    assert "error: unknown split 'nope'" in capsys.readouterr().err
