"""The benchmarks' CPU sizes of the fast path, read from configs/lego_fast_cpu.yaml.

One source for them: `bench/train_bench.py lego --fast` and `bench/ab.py` take these keys from the
config instead of a list of their own (the two had drifted apart: the bench decayed the learning
rate over 6000 steps, the config over 3000). Imports only yaml, so bench/ab.py can use it
without importing torch or nerf_dist.
"""
from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "lego_fast_cpu.yaml"

# NOTE: the keys that size the run (model, batch, learning-rate schedule, image size); the run's
# folder, steps, resume, validation, checkpoints and logging stay each benchmark's own.
_KEYS = {
    "model": None,  # every model.* key of the file
    "train": ("rays_per_batch", "lr", "lr_final", "lr_decay_steps", "weight_decay"),
    "data": ("downscale", "white_background"),
}


def _fmt(v) -> str:
    """A value as a `key=value` override reads it back (the config parses values as YAML)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        s = repr(v)
        # NOTE: YAML 1.1 (PyYAML) reads "1e-05" as a string; "1.0e-05" is a float.
        if "e" in s and "." not in s.split("e")[0]:
            s = s.replace("e", ".0e", 1)
        return s
    return str(v)


def lego_fast_cpu(config: Path = CONFIG) -> dict[str, object]:
    """{dotted key: value} of the sizing keys in `config` (default configs/lego_fast_cpu.yaml)."""
    data = yaml.safe_load(Path(config).read_text()) or {}
    out: dict[str, object] = {}
    for section, keys in _KEYS.items():
        for k, v in (data.get(section) or {}).items():
            if keys is None or k in keys:
                out[f"{section}.{k}"] = v
    return out


def overrides(sizes: dict[str, object]) -> list[str]:
    """["section.key=value", ...] for load_config / the command line."""
    return [f"{k}={_fmt(v)}" for k, v in sizes.items()]


if __name__ == "__main__":
    print("\n".join(overrides(lego_fast_cpu())))
