"""model.kind=vanilla: the NeRF paper's coarse + fine MLPs.

    config.py    VanillaConfig: its model.* keys (torch-free)
    encoding.py  FrequencyEncoding (positional encoding)
    field.py     NeRFMLP: (points, viewdirs) -> (rgb, raw sigma)
    model.py     VanillaNeRF: stratified + importance sampling, volume rendering; its estimate
"""
