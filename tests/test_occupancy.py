"""Occupancy grid: marks cells of a known density field, query agrees, deterministic updates."""
import torch

from nerf_dist.models.hashgrid.occupancy import OccupancyGrid

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def sphere_density(pts):
    return 100.0 * (pts.norm(dim=-1) < 0.5).float()


def _cell_centres(res):
    r = (torch.arange(res) + 0.5) / res * 2 - 1
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


def test_sphere_cells_marked():
    grid = OccupancyGrid(AABB, res=16, step_size=0.01, threshold=0.01, update_every=4)
    assert grid.occupied.all()                                # optimistic before the first update
    assert grid.update(0, sphere_density, torch.Generator().manual_seed(0))
    c = _cell_centres(16).norm(dim=-1)
    occ = grid.occupied
    # cells wholly inside (centre well within r=0.5) are occupied; cells far outside are empty
    assert occ[c < 0.5 - 0.11].all()
    assert not occ[c > 0.5 + 0.11].any()
    # query agrees with the grid: points inside/outside the sphere, and outside the aabb
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.2, -0.1, 0.1], [0.9, 0.9, 0.9], [-0.8, 0.0, 0.0],
                        [1.5, 0.0, 0.0]])
    assert grid.query(pts).tolist() == [True, True, False, False, False]


def test_update_only_on_update_steps_and_deterministic():
    a = OccupancyGrid(AABB, res=8, update_every=4, warmup_steps=0)
    b = OccupancyGrid(AABB, res=8, update_every=4, warmup_steps=0)
    assert not a.update(3, sphere_density, torch.Generator().manual_seed(0))
    assert a.occupied.all() and (a.density == 0).all()
    for step in (4, 8, 12):
        a.update(step, sphere_density, torch.Generator().manual_seed(100 + step))
        b.update(step, sphere_density, torch.Generator().manual_seed(100 + step))
    assert torch.equal(a.density, b.density) and torch.equal(a.occupied, b.occupied)


def test_ema_decays_and_state_dict_round_trip():
    grid = OccupancyGrid(AABB, res=8, step_size=0.01, update_every=1)
    grid.update(0, sphere_density, torch.Generator().manual_seed(0))
    d0 = grid.density.clone()
    zero = lambda p: torch.zeros(p.shape[0])  # noqa: E731
    for s in range(1, 11):
        grid.update(s, zero, torch.Generator().manual_seed(s))
    torch.testing.assert_close(grid.density, d0 * 0.95 ** 10)
    # NOTE: the threshold is relative (min(threshold, mean)), as in nerfacc: decay alone keeps the
    # same cells occupied, and a uniform dense field marks every cell.
    ones = lambda p: torch.full((p.shape[0],), 50.0)  # noqa: E731
    grid.update(11, ones, torch.Generator().manual_seed(11))
    assert grid.occupied.all()
    sd = grid.state_dict()
    assert set(sd) == {"aabb", "density", "occupied"}
    other = OccupancyGrid(AABB, res=8)
    other.load_state_dict(sd)
    assert torch.equal(other.occupied, grid.occupied)


def test_no_false_empties_through_and_after_warm_up():
    """A blocky hand-built density (constant per cell): after the warm-up (every cell evaluated)
    and the sparse updates after it (a random fraction + every occupied cell), every cell whose
    density is above the threshold is occupied, whatever point of it was drawn."""
    res, step = 8, 0.05
    g = torch.Generator().manual_seed(0)
    dense = torch.rand(res ** 3, generator=g) < 0.1
    sigma_thr = -torch.log1p(torch.tensor(-0.01)) / step          # alpha 0.01
    cell_sigma = torch.where(dense, sigma_thr * 1.05, torch.zeros(()))
    cell_sigma[torch.nonzero(dense)[::2, 0]] = 50.0

    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), res, step, threshold=0.01,
                         update_every=2, ema_decay=0.5, warmup_steps=8, sample_frac=0.1)

    def density(pts):
        return cell_sigma[grid.cell_index(pts)[0]]

    for s in range(0, 40):
        grid.update(s, density, torch.Generator().manual_seed(s))
        if s >= 8 and s % 2 == 0:
            assert bool(grid.occupied.bool()[dense].all()), f"a dense cell empty at step {s}"
    assert int(grid.occupied.sum()) == int(dense.sum())            # and the rest is empty


def test_resume_mid_warm_up_is_exact():
    """Buffers saved mid warm-up and loaded into a fresh grid continue exactly as one run."""
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])

    def run(grid, steps):
        for s in steps:
            grid.update(s, sphere_density, torch.Generator().manual_seed(s))

    kw = dict(res=8, update_every=2, warmup_steps=6, ema_decay=0.7)
    one = OccupancyGrid(aabb, **kw)
    run(one, range(0, 20))
    first = OccupancyGrid(aabb, **kw)
    run(first, range(0, 4))
    second = OccupancyGrid(aabb, **kw)
    second.load_state_dict(first.state_dict())
    run(second, range(4, 20))
    assert torch.equal(one.density, second.density) and torch.equal(one.occupied, second.occupied)
