"""The partitioned kind (model.kind=partitioned): the scene cut into P boxes (kd-tree), each box a
field of its own (hash grid + density network), the colour network shared; rays rendered per box
segment and composited exactly in ray order, so P boxes on P ranks equal P boxes in one process.

    config.py     model.partitions, model.box_samples, model.distortion_weight
    kdtree.py     median splits of points [n, 3] -> box bounds [P, 2, 3]
    segments.py   pure math: ray/box segments, per-segment reduction, compositing in ray order
    layout.py     which rank holds which box; the differentiable all-gather of segment results
    field.py      a box's field and the shared colour head
    model.py      PartitionedNeRF (the NeRFModel)
"""
