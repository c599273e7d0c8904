"""Forward time of one conv + BN + ReLU against its width: which `round_to` this machine rewards.

    python benchmarks/conv_width_steps.py --json benchmarks/results/conv_width_steps_cpu.json

For each stage of a CIFAR ResNet (32x32 with 16 channels, 16x16 with 32, 8x8 with 64) a 3x3 conv
whose input and output widths are both ``w`` is timed at every multiple of 8 up to the stage width,
at ``--batch`` images, in eval mode without grad. All widths of a stage are timed in one interleaved
run (each round runs every width once) and reported as the median per-round time, with the time per
FLOP relative to the full width: 1.0 means the narrower layer saves exactly its FLOPs, more means it
saves less. On a CPU whose convolution kernels work on blocks of 16 channels (oneDNN with AVX-512
in fp32), widths between two multiples of 16 cost about as much as the next multiple: ``round_to =
8`` then buys FLOPs but not time, and a latency budget (which measures) finds faster plans.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys

import torch
from torch import nn

from dais_search.cost import interleaved_latency, median_ratio
from dais_search.files import write_json
from dais_search.report import format_table

STAGES = ((32, 16), (16, 32), (8, 64))  # (spatial size, full width) of the three CIFAR ResNet stages


def layer(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()).eval()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128, help="images per forward (default: 128)")
    p.add_argument("--step", type=int, default=8, help="widths timed: multiples of this (default: 8)")
    p.add_argument("--repeats", type=int, default=30, help="timed rounds (default: 30)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.batch < 1 or args.step < 1 or args.repeats < 1:
        p.error("--batch, --step and --repeats must be positive integers")
    torch.manual_seed(0)
    rows, table = [], []
    for size, full in STAGES:
        widths = list(range(args.step, full + 1, args.step))
        if full not in widths:
            widths.append(full)
        models = {w: layer(w) for w in widths}
        times = interleaved_latency_per_input(models, args.batch, size, args.repeats)
        for w in widths:
            ms, ratio = statistics.median(times[w]) * 1e3, median_ratio(times, w, full)
            per_flop = ratio / (w / full) ** 2
            rows.append({"spatial": size, "full_width": full, "width": w, "ms": ms, "time_ratio": ratio,
                         "flops_ratio": (w / full) ** 2, "time_per_flop_vs_full": per_flop})  # fmt: skip
            table.append([f"{size}x{size}", w, f"{ms:.2f}", f"{(w / full) ** 2:.3f}", f"{ratio:.3f}",
                          f"{per_flop:.2f}"])  # fmt: skip
    print(format_table(table, ["input", "width in = out", "ms (median)", "FLOPs / full", "time / full",
                               "time per FLOP / full"]))  # fmt: skip
    result = {"command": shlex.join(["python", "benchmarks/conv_width_steps.py", *(argv or sys.argv[1:])]),
              "batch": args.batch, "repeats": args.repeats, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
              "rows": rows}  # fmt: skip
    if args.json:
        write_json(args.json, result)
    return result


def interleaved_latency_per_input(models: dict[int, nn.Module], batch: int, size: int, repeats: int) -> dict:
    """Seconds per forward of each width's layer in every round, timed in one interleaved run, each on
    its own input."""
    wrapped = {w: _OwnInput(m, torch.randn(batch, w, size, size)) for w, m in models.items()}
    return interleaved_latency(wrapped, torch.zeros(1), repeats, 3)


class _OwnInput(nn.Module):
    """Runs ``layer`` on its own fixed input, whatever it is called with (interleaved_latency gives
    every model the same input; here each width needs its own)."""

    def __init__(self, layer: nn.Module, x: torch.Tensor) -> None:
        super().__init__()
        self.layer, self.x = layer, x

    def forward(self, _: torch.Tensor) -> torch.Tensor:
        return self.layer(self.x)


if __name__ == "__main__":
    main()
