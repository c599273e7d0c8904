"""What a network costs, measured exactly: FLOPs and parameters (FlopCounterMode) and latency.

Plain torch: it imports nothing else of dais_search, so everything may use it. The differentiable
cost of channel widths that the search optimises is :class:`dais_search.channels.FlopsModel`.
"""

from .counting import LayerCost, count_flops, count_params, example_input, flops_breakdown
from .latency import interleaved_latency, median_ratio

__all__ = [
    "LayerCost",
    "count_flops",
    "count_params",
    "example_input",
    "flops_breakdown",
    "interleaved_latency",
    "median_ratio",
]
