"""End to end on the demo scene: a short CPU training run (fast path, as in configs/demo.yaml)
(300 steps: a fixed amount of work, so the outcome does not depend on the machine's speed)
reaches a held-out PSNR far above the untrained model's, and depth close to the ground truth."""
import json

import pytest

from conftest import REPO, run_cli


@pytest.mark.slow
def test_demo_training_beats_untrained_and_recovers_depth(demo_scene, tmp_path):
    run = tmp_path / "q"
    base = ["--config", str(REPO / "configs" / "demo.yaml"), f"data.root={demo_scene}",
            f"run.dir={run}", "log.progress=false", "eval.every=0", "train.threads=2"]
    # untrained: 1 step at a tiny learning rate is, to the eye, the initial model
    res = run_cli(["train", *base, "train.steps=1", "train.lr=1e-9", "train.lr_final=1e-9",
                   f"run.dir={tmp_path / 'u'}"], env={"OMP_NUM_THREADS": "2"})
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_cli(["eval", "--run", str(tmp_path / "u")], env={"OMP_NUM_THREADS": "2"})
    assert res.returncode == 0, res.stderr[-3000:]
    untrained = json.loads((tmp_path / "u" / "eval_test" / "report.json").read_text())

    res = run_cli(["train", *base, "train.steps=300", "train.max_seconds=0"],
                  env={"OMP_NUM_THREADS": "2"}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_cli(["eval", "--run", str(run)], env={"OMP_NUM_THREADS": "2"})
    assert res.returncode == 0, res.stderr[-3000:]
    trained = json.loads((run / "eval_test" / "report.json").read_text())
    print(f"held-out PSNR untrained {untrained['psnr']:.2f} dB -> trained {trained['psnr']:.2f} dB "
          f"after {trained['step']} steps; depth error {trained['depth_abs_err']:.3f} "
          f"(camera distance 4, scene radius ~1.2)")
    assert trained["psnr"] > untrained["psnr"] + 10.0
    assert trained["psnr"] > 22.0          # measured here: 24.8 dB
    # mean |depth - true depth| over pixels that hit a surface, in scene units (object ~4 away)
    assert trained["depth_abs_err"] < 0.25  # measured here: 0.19
