"""Config files and the ``zero123 train`` command, in-process and under ``accelerate launch`` (2 CPU processes)."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from zero123.cli import main
from zero123.errors import Zero123Error
from zero123.training.config import TrainConfig, config_from_dict, load_config
from zero123.training.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and far faster than 2 threads on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_config_files_overrides_and_errors(tmp_path):
    data = {"max_steps": 7, "data": {"root": "r"}, "optim": {"lr": "3e-5", "betas": [0.8, 0.9]},
            "mixed_precision": False}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "c.json").write_text(json.dumps(data))
    for name in ("c.yaml", "c.json"):
        cfg = load_config(tmp_path / name, ["optim.warmup_steps=5", "model.freeze_vae=false", "sample.every=0"])
        assert isinstance(cfg, TrainConfig)
        assert (cfg.max_steps, cfg.optim.lr, cfg.optim.betas, cfg.optim.warmup_steps) == (7, 3e-5, (0.8, 0.9), 5)
        assert cfg.model.freeze_vae is False and cfg.sample.every == 0 and cfg.mixed_precision == "no"
    assert config_from_dict(cfg.to_dict()) == cfg  # the saved config.yaml reads back to the same config
    bad = [({"data": {"root": "r"}, "optim": {"lrr": 1}}, "unknown key optim.lrr"),
           ({"data": {"root": "r"}, "batch_size": 2.5}, "batch_size must be an integer"),
           ({"data": {"root": "r"}, "stage": "unet"}, "stage"),
           ({"data": {"root": "r"}, "mixed_precision": "fp8"}, "mixed_precision"),
           ({}, "data.root"),
           ({"data": {"root": "r"}, "model": {"init_from": "x.ckpt", "preset": "tiny"}}, "exclusive"),
           ({"data": {"root": "r"}, "objective": {"cfg_dropout": 0.5}}, "cfg_dropout"),
           ({"data": {"root": "r"}, "model": {"variant": "zero124"}}, "variant"),
           ({"data": {"root": "r"}, "optim": {"decay": "step"}}, "optim.decay must be one of constant"),
           ({"data": {"root": "r"}, "optim": {"final_lr_factor": 1.5}}, "final_lr_factor"),
           ({"data": "r"}, "data must be a mapping")]
    for d, msg in bad:
        with pytest.raises(Zero123Error, match=msg):
            config_from_dict(d)
    with pytest.raises(Zero123Error, match="key=value"):
        config_from_dict({"data": {"root": "r"}}, ["max_steps"])
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(Zero123Error, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("name", ["tiny_test", "small_default", "small_vae", "finetune_stable_zero123"])
def test_example_configs_are_valid(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml", ["data.root=somewhere"])
    assert cfg.data.root == "somewhere"
    if name == "small_default":
        from zero123.training.trainer import sizes_config

        sizes = sizes_config(cfg.model)
        assert sizes.unet["cross_attention_dim"] == sizes.clip["projection_dim"] == 256
        assert sizes.unet["sample_size"] * 4 == 128  # 128 px, VAE downsampling 4
        # the config is the one the bundled model was trained with
        import json

        from zero123.loading import bundled_model_path

        shipped = json.loads((bundled_model_path() / "unet" / "config.json").read_text())
        for key in ("block_out_channels", "down_block_types", "layers_per_block", "attention_head_dim",
                    "cross_attention_dim", "sample_size", "in_channels"):
            assert sizes.unet[key] == shipped[key], key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log(out):
    return [json.loads(x) for x in (Path(out) / "log.jsonl").read_text().splitlines()]


def _run_args(data, max_steps: int, checkpoint_every: int) -> list:
    """Overrides of a short tiny-config run that logs every step."""
    return [f"data.root={data}", "log_every=1", "sample.every=0", "val_every=0",
            f"checkpoint_every={checkpoint_every}", "optim.warmup_steps=0", f"max_steps={max_steps}"]


def _cpu_launch_env() -> dict:
    """Environment of `accelerate launch` on CPUs (gloo), one thread per process."""
    return {**os.environ, "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore"}


@pytest.mark.slow
def test_train_runs_under_accelerate_launch_with_two_cpu_processes(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", num_objects=3, views_per_object=3, image_size=32, seed=2)
    config = REPO / "configs" / "tiny_test.yaml"
    common = _run_args(data, max_steps=2, checkpoint_every=1)
    env = _cpu_launch_env()
    # `accelerate launch --cpu` starts ONE process in accelerate 1.x (multi-CPU needs MPI there); without GPUs
    # `--multi_gpu` starts N torch.distributed processes on the CPU with the gloo backend.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "zero123.cli", "train", str(config),
           "--output-dir", str(tmp_path / "two"), "batch_size=2", *common]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 process(es)" in proc.stdout
    two = tmp_path / "two"
    log = _log(two)
    assert [r["step"] for r in log] == [1, 2]
    assert all(r["num_processes"] == 2 and r["global_batch"] == 4 for r in log)
    ckpt = two / "checkpoints" / "step_00000002"
    for f in ("random_states_0.pkl", "random_states_1.pkl", "model_0.safetensors", "trainer_state.json"):
        assert (ckpt / f).is_file(), f  # each process wrote its own random state: both ran
    assert (two / "final" / "model_index.json").is_file()

    # the same global batch in ONE process (through the CLI, in-process) gives the same losses: the data and the
    # noise depend on the draw numbers only, and DDP averages the two half-batch gradients
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    rc = main(["train", str(config), "--output-dir", str(tmp_path / "one"), "batch_size=4", "export=false",
               *common])
    assert rc == 0
    one = _log(tmp_path / "one")
    assert all(r["num_processes"] == 1 and r["global_batch"] == 4 for r in one)
    for a, b in zip(one, log):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    assert one[0]["loss"] != one[1]["loss"]
    # resuming a finished run is a no-op that still exports
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    assert main(["train", str(config), "--output-dir", str(tmp_path / "one"), "--resume", "latest",
                 "batch_size=4", *common]) == 0
    assert (tmp_path / "one" / "final" / "model_index.json").is_file()
    assert len(_log(tmp_path / "one")) == 2
    # a 2-process run resumes from its checkpoint in 2 processes (each loads its weights onto its own device) and
    # continues as the 1-process run does
    proc = subprocess.run(cmd[:cmd.index("--main_process_port") + 1] + [str(_free_port())]
                          + cmd[cmd.index("--main_process_port") + 2:] + ["--resume", "latest", "max_steps=3"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    assert main(["train", str(config), "--output-dir", str(tmp_path / "one"), "--resume", "latest",
                 "batch_size=4", "export=false", *common, "max_steps=3"]) == 0
    two, one = _log(tmp_path / "two"), _log(tmp_path / "one")
    assert [r["step"] for r in two] == [1, 2, 3] and [r["step"] for r in one] == [1, 2, 3]
    assert two[2]["loss"] == pytest.approx(one[2]["loss"], rel=1e-5, abs=1e-6)


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "nodata")},
                                                     "model": {"preset": "tiny"}}))
    assert main(["train", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zero123: error:") and "manifest.json" in err and len(err.splitlines()) == 1
    assert main(["train", str(tmp_path / "c.yaml"), "--bogus"]) == 2
    data = write_synthetic_dataset(tmp_path / "d", num_objects=1, views_per_object=2, image_size=8, val_objects=0)
    assert main(["train", str(tmp_path / "c.yaml"), f"data.root={data}", "model.preset=huge",
                 "--output-dir", str(tmp_path / "o")]) == 2
    assert "preset" in capsys.readouterr().err


@pytest.mark.slow
def test_simulated_two_node_launch_equals_one_process(tmp_path):
    """The multi-node recipe of docs/training.md, as two "nodes" on this machine: two `accelerate launch
    --num_machines 2 --machine_rank R` processes of one process each (gloo, CPU) meeting at 127.0.0.1:P."""
    data = write_synthetic_dataset(tmp_path / "data", num_objects=3, views_per_object=3, image_size=32, seed=5)
    config = REPO / "configs" / "tiny_test.yaml"
    common = _run_args(data, max_steps=3, checkpoint_every=0)
    env = _cpu_launch_env()
    port = _free_port()
    nodes = []
    try:
        for rank in (0, 1):
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                   "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                   "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "-m", "zero123.cli", "train", str(config), "--output-dir", str(tmp_path / "two"),
                   "batch_size=2", *common]
            nodes.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          start_new_session=True))  # own process group: killed whole on failure
        deadline = time.monotonic() + 300  # one bound for both
        outs = [p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    assert [p.returncode for p in nodes] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    # machine rank 0 holds the main process (the summary line); rank 1's process ran too (its random state)
    assert "on 2 process(es)" in outs[0] and "on 2 process(es)" not in outs[1]
    ckpt = tmp_path / "two" / "checkpoints" / "step_00000003"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    two = _log(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3]
    assert all(r["num_processes"] == 2 and r["global_batch"] == 4 for r in two)

    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    assert main(["train", str(config), "--output-dir", str(tmp_path / "one"), "batch_size=4", "export=false",
                 *common]) == 0
    one = _log(tmp_path / "one")
    assert all(r["num_processes"] == 1 and r["global_batch"] == 4 for r in one)
    assert [a["loss"] for a in one] == pytest.approx([b["loss"] for b in two], rel=1e-5, abs=1e-6)
    assert len({r["loss"] for r in one}) == 3  # the steps differ: the comparison is not of constants
