"""`nerf-dist prepare INPUT OUT_DIR`: photos or a video -> a COLMAP scene nerf_dist trains on.

Stages: frames (copy the photos with EXIF orientation applied, or pick video frames), extract
(SIFT), match, map (incremental SfM; the model with the most registered images is kept), write.

Everything is built in a staging folder next to OUT_DIR (``.OUT_DIR.prepare-PID``) and renamed to
OUT_DIR only when the solve succeeded, so a failed or interrupted prepare never leaves a folder a
later ``train`` could mistake for a scene. The staging folder is removed on failure; the report of
a failed run is kept next to OUT_DIR as ``OUT_DIR.failed_report.json``.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

from .inputs import PrepareError, collect_images, extract_frames, is_video
from .report import REPORT, build_report, failure_message, summary, write_report
from .sfm import CAMERA_MODELS, SfmOptions, load_pycolmap, registered_names, run_sfm

EXHAUSTIVE_MAX = 300


@dataclass
class PrepareOptions:
    """frames: video frames to keep; matching: auto | exhaustive | sequential (auto: sequential
    for a video or more than EXHAUSTIVE_MAX photos); camera_model, single_camera, sfm_max_size,
    threads, verbose: see :class:`SfmOptions`; min_registered: the fraction of images that must
    register; overwrite: replace an existing OUT_DIR."""

    frames: int = 120
    matching: str = "auto"
    camera_model: str = "OPENCV"
    single_camera: bool = True
    sfm_max_size: int = 1600
    threads: int = 0
    min_registered: float = 0.5
    overwrite: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise PrepareError(f"--frames must be >= 2, got {self.frames}")
        if self.matching not in ("auto", "exhaustive", "sequential"):
            raise PrepareError(f"--matching must be auto|exhaustive|sequential, got {self.matching!r}")
        if self.camera_model not in CAMERA_MODELS:
            raise PrepareError(f"--camera-model must be one of {', '.join(CAMERA_MODELS)}, got "
                               f"{self.camera_model!r}")
        if not 0.0 < self.min_registered <= 1.0:
            raise PrepareError(f"--min-registered must be in (0, 1], got {self.min_registered}")
        if self.sfm_max_size < 64:
            raise PrepareError(f"--sfm-max-size must be >= 64, got {self.sfm_max_size}")


def _no_bar(name: str, total: int):
    return lambda k=1: None


def prepare(input_path: str, out_dir: str, opts: PrepareOptions, stage=None,
            log=print) -> dict:
    """Run the stages; returns the report (also written to OUT_DIR/prepare_report.json).

    stage(name, total) -> advance(k) opens a progress bar per stage (None: no bars); log prints
    the summary. PrepareError (nothing written to OUT_DIR) for bad input, a missing pycolmap or
    too few registered images.
    """
    stage = stage or _no_bar
    out_dir = os.path.normpath(out_dir)
    pc = load_pycolmap()  # NOTE: first, so a missing extra costs no work
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        if not opts.overwrite:
            raise PrepareError(f"output folder {out_dir} exists and is not empty (pass "
                               f"--overwrite to replace it)")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    work = os.path.join(parent, f".{os.path.basename(out_dir)}.prepare-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    try:
        return _prepare_in(input_path, out_dir, work, opts, stage, log, pc)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prepare_in(input_path, out_dir, work, opts, stage, log, pc) -> dict:
    t0 = time.perf_counter()
    images = os.path.join(work, "images")
    video = is_video(input_path)
    t = time.perf_counter()
    if video:
        col = extract_frames(input_path, images, opts.frames, stage("frames", opts.frames))
    else:
        n = len(os.listdir(input_path)) if os.path.isdir(input_path) else 0
        col = collect_images(input_path, images, stage("frames", n))
    timings = {"frames": time.perf_counter() - t}
    matching = opts.matching
    if matching == "auto":
        matching = "sequential" if video or len(col.names) > EXHAUSTIVE_MAX else "exhaustive"
    sopts = SfmOptions(camera_model=opts.camera_model, single_camera=opts.single_camera,
                       matching=matching, max_size=opts.sfm_max_size, threads=opts.threads,
                       verbose=opts.verbose)
    res = run_sfm(images, col.names, work, sopts, stage)
    timings.update(res.timings)
    reg = registered_names(res.rec) if res.rec is not None else []
    versions = {"pycolmap": getattr(pc, "__version__", "?")}
    t = time.perf_counter()
    report = build_report(input_path, col, sopts, res, reg, timings, versions)
    if len(reg) < opts.min_registered * len(col.names) or not reg:
        failed = f"{out_dir}.failed_report.json"
        write_report(failed, report)
        raise PrepareError(failure_message(report, opts.min_registered, failed))
    sparse = os.path.join(work, "sparse", "0")
    os.makedirs(sparse)
    res.rec.write(sparse)
    shutil.rmtree(os.path.join(work, "sparse_all"), ignore_errors=True)
    report["timings_s"]["write"] = round(time.perf_counter() - t, 3)
    report["timings_s"]["total"] = round(time.perf_counter() - t0, 3)
    write_report(os.path.join(work, REPORT), report)
    # NOTE: the rename is the commit: OUT_DIR appears complete or not at all.
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(work, out_dir)
    stale = f"{out_dir}.failed_report.json"
    if os.path.exists(stale):
        os.remove(stale)
    log(summary(report, out_dir))
    return report
