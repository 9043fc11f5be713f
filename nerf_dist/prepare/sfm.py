"""Structure from motion with pycolmap (4.x): SIFT features, matching, incremental mapping.

The one module that imports pycolmap, lazily (an optional extra: ``pip install -e .[sfm]``);
training and rendering never reach it. API facts: /work/shared/recipes/pycolmap-sfm.md.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from .inputs import PrepareError

CAMERA_MODELS = ("OPENCV", "SIMPLE_RADIAL", "PINHOLE", "SIMPLE_PINHOLE", "RADIAL", "OPENCV_FISHEYE")
INSTALL = "pip install 'nerf_dist[sfm]'  (or: pip install pycolmap)"


def load_pycolmap():
    """The pycolmap module, or PrepareError saying which command installs it."""
    try:
        # NOTE: lazy: pycolmap is an optional extra that only `prepare` needs.
        import pycolmap
    except ImportError as e:
        raise PrepareError(f"nerf-dist prepare needs pycolmap, which is not installed: {INSTALL}") from e
    return pycolmap


@dataclass
class SfmOptions:
    """camera_model: one of CAMERA_MODELS, one camera shared by every image when single_camera;
    matching: 'exhaustive' | 'sequential'; max_size: longest side SIFT sees (keypoints and
    intrinsics stay in full-size pixels); threads: 0 = every core; verbose: COLMAP's own log."""

    camera_model: str = "OPENCV"
    single_camera: bool = True
    matching: str = "exhaustive"
    max_size: int = 1600
    threads: int = 0
    verbose: bool = False
    seed: int = 0


@dataclass
class SfmResult:
    """rec: the kept pycolmap Reconstruction (None when the mapper found none); n_models: how
    many the mapper returned; sizes: registered images of each; timings: seconds per stage."""

    rec: object
    n_models: int
    sizes: list[int]
    timings: dict = field(default_factory=dict)


def run_sfm(image_dir: str, names: list[str], work: str, opts: SfmOptions, stage=None) -> SfmResult:
    """Solve the images names of image_dir; the database goes to work/database.db.

    stage(name, total) -> advance(k): opens a progress bar per stage (see cli); may be None.
    """
    pc = load_pycolmap()
    if not opts.verbose:
        # NOTE: COLMAP logs every step through glog to stderr, and its errors ("Failed to create
        # any sparse model") are said again, with what to try, by our PrepareError.
        pc.logging.minloglevel = 3
        pc.logging.stderrthreshold = 3
    threads = opts.threads if opts.threads > 0 else -1
    db = os.path.join(work, "database.db")
    if os.path.exists(db):
        os.remove(db)
    stage = stage or (lambda name, total: (lambda k=1: None))
    timings = {}

    t = time.perf_counter()
    adv = stage("extract", 1)
    reader = pc.ImageReaderOptions()
    reader.camera_model = opts.camera_model
    ext = pc.FeatureExtractionOptions()
    ext.num_threads = threads
    ext.max_image_size = opts.max_size
    pc.extract_features(db, image_dir, image_names=list(names),
                        camera_mode=pc.CameraMode.SINGLE if opts.single_camera else pc.CameraMode.AUTO,
                        reader_options=reader, extraction_options=ext, device=pc.Device.cpu)
    adv(1)
    timings["extract"] = time.perf_counter() - t

    t = time.perf_counter()
    adv = stage("match", 1)
    mopt = pc.FeatureMatchingOptions()
    mopt.num_threads = threads
    if opts.matching == "sequential":
        pc.match_sequential(db, matching_options=mopt, device=pc.Device.cpu)
    else:
        pc.match_exhaustive(db, matching_options=mopt, device=pc.Device.cpu)
    adv(1)
    timings["match"] = time.perf_counter() - t

    t = time.perf_counter()
    adv = stage("map", len(names))
    placed = [0]

    def next_image() -> None:
        placed[0] += 1
        adv(1)

    mapper = pc.IncrementalPipelineOptions()
    mapper.num_threads = threads
    mapper.random_seed = opts.seed
    out = os.path.join(work, "sparse_all")
    os.makedirs(out, exist_ok=True)
    recs = pc.incremental_mapping(db, image_dir, out, options=mapper,
                                  next_image_callback=next_image)
    timings["map"] = time.perf_counter() - t
    sizes = [r.num_reg_images() for r in recs.values()]
    best = max(recs.values(), key=lambda r: r.num_reg_images()) if recs else None
    if best is not None and best.num_reg_images() > placed[0]:
        adv(best.num_reg_images() - placed[0])  # NOTE: the initial pair arrives as one call
    return SfmResult(rec=best, n_models=len(recs), sizes=sorted(sizes, reverse=True),
                     timings=timings)


def registered_names(rec) -> list[str]:
    """Names of the images rec registered, sorted."""
    return sorted(rec.images[i].name for i in rec.reg_image_ids())
