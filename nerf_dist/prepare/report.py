"""prepare_report.json, the one-screen summary, and the message of a failed solve."""
from __future__ import annotations

import json
import os

REPORT = "prepare_report.json"


def build_report(input_path: str, collected, opts, res, registered: list[str],
                 timings: dict, versions: dict) -> dict:
    """The report's fields (see the README, "Your own photos"). res: sfm.SfmResult."""
    rec = res.rec
    unreg = sorted(set(collected.names) - set(registered))
    return {
        "input": os.path.abspath(input_path), "kind": collected.kind,
        "images_in": len(collected.names), "registered": len(registered),
        "registered_fraction": round(len(registered) / max(1, len(collected.names)), 4),
        "not_registered": unreg,
        "skipped_inputs": [{"file": f, "why": why} for f, why in collected.skipped],
        "image_size": list(collected.size),
        "mean_reprojection_error_px": (float(rec.compute_mean_reprojection_error())
                                       if rec is not None else None),
        "points3D": int(rec.num_points3D()) if rec is not None else 0,
        "models": res.n_models, "model_sizes": res.sizes,
        "camera_model": opts.camera_model, "single_camera": opts.single_camera,
        "matching": opts.matching, "sfm_max_size": opts.max_size, "threads": opts.threads,
        "timings_s": {k: round(v, 3) for k, v in timings.items()}, **versions,
    }


def write_report(path: str, report: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


def summary(report: dict, out_dir: str) -> str:
    """The screen the user sees at the end: counts, quality, time, the next command."""
    t = report["timings_s"]
    lines = [
        f"prepared {out_dir}: {report['registered']} of {report['images_in']} images registered "
        f"({100 * report['registered_fraction']:.0f}%), {report['points3D']} 3D points, mean "
        f"reprojection error {report['mean_reprojection_error_px']:.2f} px",
        "time: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()),
    ]
    if report["models"] > 1:
        lines.append(f"the mapper found {report['models']} separate models "
                     f"({', '.join(map(str, report['model_sizes']))} images); kept the largest")
    if report["not_registered"]:
        shown = ", ".join(report["not_registered"][:10])
        more = " ..." if len(report["not_registered"]) > 10 else ""
        lines.append(f"not registered (left out of training): {shown}{more}")
    if report["skipped_inputs"]:
        lines.append("skipped inputs: " + ", ".join(f"{s['file']} ({s['why']})"
                                                    for s in report["skipped_inputs"][:5]))
    if report["camera_model"] == "OPENCV_FISHEYE":
        lines.append("note: nerf-dist train cannot use OPENCV_FISHEYE cameras yet; undistort the "
                     "images first (colmap image_undistorter) or solve with --camera-model OPENCV")
    lines += [f"report: {os.path.join(out_dir, REPORT)}", "next:",
              f"  nerf-dist train --config configs/capture.yaml data.root={out_dir}"]
    return "\n".join(lines)


def failure_message(report: dict, min_fraction: float, report_path: str) -> str:
    """Why prepare refused to write a scene, and what to try."""
    n, k = report["images_in"], report["registered"]
    unreg = report["not_registered"]
    shown = ", ".join(unreg[:30]) + (f" ... ({len(unreg)} in all)" if len(unreg) > 30 else "")
    head = (f"only {k} of {n} images registered ({100 * k / max(1, n):.0f}%, below the "
            f"required {100 * min_fraction:.0f}%)" if k else
            f"structure from motion found no model: none of the {n} images could be placed "
            f"(too little in common between them?)")
    tips = ["more overlap between neighbouring photos (each part of the scene in 3+ photos)",
            "sharper photos (steady hands, more light, no motion blur)",
            "texture in view: blank walls, sky, glass and mirrors give SIFT nothing to match"]
    if report["kind"] == "video":
        tips += ["--matching sequential (video frames are in order; the default for a video)",
                 "a smaller --frames (frames too far apart overlap too little), or a slower pan"]
    else:
        tips += ["--camera-model SIMPLE_RADIAL (fewer unknowns for a few photos)"]
    tips.append("--min-registered 0.3 to accept a partial scene (only the registered images train)")
    return (f"{head}.\nnot registered: {shown or '(none)'}\nwhat to try:\n"
            + "\n".join(f"  - {t}" for t in tips)
            + f"\nnothing was written to the output folder; this run's report: {report_path}")
