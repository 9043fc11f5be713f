import math

import torch

from nerf_dist.models.vanilla.encoding import FrequencyEncoding


def test_frequency_encoding_values():
    enc = FrequencyEncoding(2)
    x = torch.tensor([[0.5, -1.0, 2.0]])
    out = enc(x)
    assert out.shape == (1, 3 * (1 + 2 * 2)) == (1, enc.out_dim(3))
    exp = [0.5, -1.0, 2.0]
    for f in (1.0, 2.0):
        exp += [math.sin(f * v) for v in (0.5, -1.0, 2.0)] + [math.cos(f * v) for v in (0.5, -1.0, 2.0)]
    assert torch.allclose(out[0], torch.tensor(exp), atol=1e-6)


def test_paper_dimensions():
    assert FrequencyEncoding(10).out_dim(3) == 63
    assert FrequencyEncoding(4).out_dim(3) == 27
    assert FrequencyEncoding(0).out_dim(3) == 3
