"""Kind-independent NeRF math, plain functions of tensors (no parameters, no model kind).

    rays.py      pixels + intrinsics + camera-to-world -> rays_o, rays_d, viewdirs (the ONE ray
                 function, :func:`rays.make_rays`); NDC
    sampling.py  stratified and importance samples along rays; per-row training noise (RowNoise)
    volrend.py   densities and intervals -> weights -> rgb, depth, acc
    contraction.py  unbounded space -> a bounded ball/cube; near-linear, far-disparity spacing
    proposal.py  resampling from coarse weights, the interlevel and distortion losses
"""
