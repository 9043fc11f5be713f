"""model.kind=fast: hash-grid field + occupancy-grid ray marching (instant-ngp style).

    config.py     HashGridConfig: its model.* keys (torch-free)
    encoding.py   HashGridEncoding: multiresolution hash encoding (pure PyTorch)
    field.py      HashField: encoding + density and colour MLPs -> (rgb, sigma)
    occupancy.py  OccupancyGrid: which cells are worth sampling, refreshed from the density
    model.py      FastNeRF: marching, early termination, volume rendering; its estimate
"""
