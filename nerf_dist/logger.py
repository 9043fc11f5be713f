"""Logging on rank 0 only: TensorBoard scalars/images, a tqdm progress bar, console messages.

On every other rank :func:`make_logger` returns a :class:`NullLogger`, so the training loop never
checks its rank.
"""
from __future__ import annotations

import sys
import time

import numpy as np
from tqdm import tqdm


class NullLogger:
    """Does nothing (ranks other than 0)."""

    def info(self, msg: str) -> None: ...
    def scalars(self, step: int, values: dict) -> None: ...
    def image(self, step: int, tag: str, img) -> None: ...
    def progress(self, step: int, **postfix) -> None: ...
    def start_progress(self, total: int, initial: int = 0) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class Logger(NullLogger):
    """TensorBoard SummaryWriter + tqdm bar + console messages (stderr stays clean for errors)."""

    def __init__(self, tb_dir: str | None, progress: bool = True, stream=None):
        self.stream = stream or sys.stdout
        self.writer = None
        if tb_dir:
            # NOTE: lazy because TensorBoard's writer takes ~0.4 s to import and only rank 0, with
            # a log folder, ever builds one.
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(tb_dir)
        self.use_bar = progress
        self.bar = None
        self.t0 = time.time()

    def info(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=self.stream)
        else:
            print(msg, file=self.stream, flush=True)

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            self.writer.add_scalar(k, float(v), step)

    def image(self, step: int, tag: str, img) -> None:
        """img: [H, W, 3] float in [0, 1] (tensor or array)."""
        if self.writer is None:
            return
        arr = np.asarray(img.detach().cpu() if hasattr(img, "detach") else img, dtype=np.float32)
        self.writer.add_image(tag, np.clip(arr, 0, 1), step, dataformats="HWC")

    def start_progress(self, total: int, initial: int = 0) -> None:
        if not self.use_bar:
            return
        self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, file=self.stream,
                        desc="train", unit="step", mininterval=1.0)

    def progress(self, step: int, **postfix) -> None:
        if self.bar is None:
            return
        self.bar.n = step
        self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                              for k, v in postfix.items()}, refresh=False)
        self.bar.refresh()

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def make_logger(is_main: bool, tb_dir: str | None, progress: bool = True) -> NullLogger:
    return Logger(tb_dir, progress) if is_main else NullLogger()
