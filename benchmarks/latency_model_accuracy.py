"""How well the LatencyModel (per-layer tables, calibrated on the dense and half-width networks)
predicts the measured latency of random plans on the allowed-width lattice.

    python benchmarks/latency_model_accuracy.py resnet20 8 128     # model, round_to, batch size

Builds the model's tables (cached under $DAIS_SEARCH_CACHE or ~/.cache/dais_search), then draws
``--plans`` plans, each group at a random keep fraction in [0.15, 0.95] rounded to an allowed width,
and prints predicted and measured (interleaved, median per-round ratio) latency / dense, and the
median relative error. Run it on a quiet machine: other jobs move the measurements, not the tables.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from dais_search.channels import FlopsModel, LatencyModel, trace_channels
from dais_search.cost.lut import LatencyCache
from dais_search.models import create_model
from dais_search.search import Granularity


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="registry name, e.g. resnet20")
    p.add_argument("round_to", type=int, help="allowed widths: multiples of this (1: any)")
    p.add_argument("batch", type=int, help="batch size the latency is for")
    p.add_argument("--plans", type=int, default=8, help="random plans to measure (default: 8)")
    p.add_argument("--cache", help="table cache folder (default: $DAIS_SEARCH_CACHE or ~/.cache/dais_search)")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    model = create_model(args.model, num_classes=10).eval()
    x = torch.zeros(1, 3, 32, 32)
    graph = trace_channels(model, x)
    started = time.perf_counter()
    lm = LatencyModel(graph, model, x, args.batch, LatencyCache(args.cache), grid_step=args.round_to)
    print(f"tables: {time.perf_counter() - started:.1f} s ({lm.cache.measured} measured now); dense "
          f"{1e3 * lm.dense_seconds:.2f} ms, half {1e3 * lm.half_seconds:.2f} ms; scale {lm.scale:.3f}, "
          f"offset {1e3 * lm.offset:.2f} ms")  # fmt: skip
    fm = FlopsModel(graph, model, x)
    lattice = Granularity(fm.groups, round_to=args.round_to)
    gen = torch.Generator().manual_seed(0)
    errors = []
    for i in range(args.plans):
        kept = {}
        for g in fm.groups:
            keep = float(torch.rand(1, generator=gen)) * 0.8 + 0.15
            kept[g.id] = list(range(lattice.nearest(g.id, keep * g.size)))
        predicted = float(lm.latency(fm.widths_of(kept))) / lm.dense_seconds
        measured = lm.measure_ratio(kept)
        errors.append(predicted / measured - 1)
        flops = float(fm.flops(fm.widths_of(kept))) / fm.dense_flops
        print(f"plan {i}: FLOPs {flops:.3f}, latency / dense predicted {predicted:.3f}, measured {measured:.3f}")
    median = statistics.median(abs(e) for e in errors)
    print(f"median |predicted / measured - 1| = {median:.3f}")
    return median


if __name__ == "__main__":
    main()
