"""Which channels of a network go together, and how to cut them. Knows nothing of search or training.

    atoms.py        union-find of channel atoms, TensorInfo, Tracker
    trace.py        the fx trace (opaque-leaf fallback) with recorded shapes
    rules.py        op rules for functions and Tensor methods, a registry (register_function)
    layers.py       module handlers: trace / slice / flops / params per module type (register_layer)
    walk.py         the walk over the trace that applies handlers and rules
    groups.py       ChannelGroup / ChannelGraph assembly, warnings naming the ops that block pruning
    flops_model.py  FlopsModel: FLOPs and params as a differentiable polynomial of the group widths
    latency_model.py LatencyModel: measured latency tables per layer, interpolated in the group widths
    index_ops.py    channel pads, slices and splits followed through, rewritten with pruned constants
    blocks.py       residual blocks removable whole (skip + branch(skip)), found in the trace, removed
    plan.py         ChannelPlan: create, apply (slice, remove blocks), mask, JSON save/load, replay
    verify.py       check_plan: sliced == masked on a randomised copy
"""

from .flops_model import FlopsModel
from .groups import ChannelGraph, ChannelGroup, Member, find_channel_groups, trace_channels
from .latency_model import LatencyModel
from .layers import LayerHandler, Term, handler_for, register_layer
from .plan import ChannelPlan, fingerprint, keep_positions, random_plan
from .rules import OPAQUE, register_function
from .verify import PlanCheck, check_plan, randomize_norms

__all__ = [
    "OPAQUE",
    "ChannelGraph",
    "ChannelGroup",
    "ChannelPlan",
    "FlopsModel",
    "LatencyModel",
    "LayerHandler",
    "Member",
    "PlanCheck",
    "Term",
    "check_plan",
    "find_channel_groups",
    "fingerprint",
    "handler_for",
    "keep_positions",
    "random_plan",
    "randomize_norms",
    "register_function",
    "register_layer",
    "trace_channels",
]
