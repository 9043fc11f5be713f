"""In-training validation: eval.n_images views of eval.split rendered by all ranks together
through the tiled renderer (as `nerf-dist eval` renders them, so the numbers agree)."""
from __future__ import annotations

import torch

from .. import memory
from ..config import Config
from ..dist import DistInfo, all_gather_object
from ..evaluation import psnr_fg, render_views
from ..lifecycle import StallWatchdog, StopSignals
from ..metrics import psnr
from ..renderer.core import RenderSetup
from ..renderer.images import side_by_side
from ..scenes import open_scene
from .guards import stop_anywhere


class Validator:
    """Renders and scores the validation views at a step; every rank calls :meth:`run`.

    The split is opened lazily (cameras only) on every rank; rank 0 decodes each view's ground
    truth as it scores it. Between views the ranks agree on stop signals: a stop ends validation
    early, so the time before a SIGKILL goes to the checkpoint.
    """

    def __init__(self, cfg: Config, dist: DistInfo, log, watchdog: StallWatchdog,
                 stop: StopSignals | None):
        self.cfg, self.dist, self.log = cfg, dist, log
        self.watchdog, self.stop = watchdog, stop
        self.scene = None          # None: not opened yet; False: validation disabled

    def _open(self):
        """The eval split as a LazyScene on every rank, or False when any rank cannot open it
        or render it within memory (said once; training goes on without validation)."""
        err, scene = None, False
        try:
            scene = open_scene(self.cfg.data, self.cfg.eval.split)
            memory.check_render(scene.W, scene.H, self.cfg.render.tile, self.cfg.model.chunk,
                                self.cfg.model, self.dist.world_size, self.dist.device)
        except Exception as e:  # noqa: BLE001 - validation is optional during training
            err = f"rank {self.dist.rank}: {e}"
        with self.watchdog.waiting("the other ranks to open the validation views"):
            errs = [e for e in all_gather_object(err, self.dist.rank, self.dist.world_size) if e]
        if errs:
            self.log.info(f"validation disabled: {errs[0]}")
            return False
        return scene

    def run(self, model: torch.nn.Module, step: int) -> float | None:
        """Collective: `model` at `step`. Mean PSNR over the views scored (rank 0), logged with foreground PSNR and
        an image; None elsewhere, when validation is disabled, or when a stop came first."""
        if self.scene is None:
            self.scene = self._open()
        if self.scene is False:
            return None
        scene, rank, world = self.scene, self.dist.rank, self.dist.world_size
        setup = RenderSetup.from_scene(model, scene, self.cfg.model.chunk, self.dist.device)
        background = setup.background
        psnrs, fgs = [], []
        for v in range(min(self.cfg.eval.n_images, scene.n)):
            if v > 0 and stop_anywhere(self.dist, self.watchdog, self.stop,
                                       "the other ranks between validation views"):
                self.log.info(f"step {step}: validation cut short by a stop signal after {v} "
                              f"view(s)")
                break
            for i, out in render_views(setup, scene, [v], rank, world, tile=self.cfg.render.tile,
                                       watch=self.watchdog.waiting):
                gt = torch.from_numpy(scene.image(i))
                psnrs.append(psnr(out["rgb"], gt))
                fg = psnr_fg(out["rgb"], gt, background)
                if fg is not None:
                    fgs.append(fg)
                if i == 0:
                    self.log.image(step, "eval/gt_rgb_depth", side_by_side(
                        gt, out["rgb"], out["depth"], scene.near, scene.far))
        model.train()
        if not psnrs:
            return None
        val = sum(psnrs) / len(psnrs)
        values = {"eval/psnr": val}
        fg_txt = ""
        if fgs:
            values["eval/psnr_fg"] = sum(fgs) / len(fgs)
            fg_txt = f", foreground {values['eval/psnr_fg']:.2f} dB"
        self.log.scalars(step, values)
        self.log.info(f"step {step}: {self.cfg.eval.split} PSNR {val:.2f} dB{fg_txt} "
                      f"({len(psnrs)} view(s))")
        return val
