"""Moved to :mod:`nerf_dist.models.vanilla.encoding` and
:mod:`nerf_dist.models.hashgrid.encoding`; this module stays until the lead removes the shims."""
# NOTE: moved (issue 16): a re-export, so code written against the old path keeps working.
from .models.hashgrid.encoding import HashGridEncoding
from .models.vanilla.encoding import FrequencyEncoding

__all__ = ["FrequencyEncoding", "HashGridEncoding"]
