"""`python -m nerf_dist` == `nerf-dist` (torchrun -m nerf_dist train ... works too)."""
import sys

from .cli import main

sys.exit(main())
