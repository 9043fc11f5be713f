"""model.kind=unbounded: real, unbounded scenes (nerfacto / mip-NeRF 360 style).

    config.py  UnboundedConfig: its model.* keys (torch-free)
    field.py   ContractedField (hash grid on contracted space + MLPs, per-image appearance) and
               ProposalDensity (a small density-only hash grid per proposal level)
    model.py   UnboundedNeRF: s-space sampling, proposal resampling, volume rendering, losses
               (colour, interlevel, distortion), random training background; its estimate
"""
