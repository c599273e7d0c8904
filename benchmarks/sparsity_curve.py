"""The weight grain on a finished bundle: test accuracy and parameter compression at several levels
of unstructured magnitude sparsity, before and after fine-tuning with the zeros held.

    python benchmarks/sparsity_curve.py runs/suite/depth-resnet56/keep30/seed0/finetune/ours-blocks_e5 \\
        --data npz:../shared/data/cifar10.npz --sparsity 0.5 0.7 0.8 0.9 --epochs 1 \\
        --json benchmarks/results/sparsity_resnet56_keep30.json

Each level starts again from the bundle's (structured, folded) weights: the smallest-magnitude conv and
linear weights are zeroed (``--scope global``: one threshold over all layers), the test top-1 is taken
at once, then after ``--epochs`` epochs of :func:`~dais_search.finetune.sparsity.sparse_finetune`
(cross-entropy on every training image, BENCH.md's SGD and cosine schedule, the zeros re-applied
after every step). Compression is the dense model's parameters over the non-zero ones, as MGP reports
it. The tensors keep their shapes: none of this is a dense speed-up (FLOPs and latency stay the
structured network's).
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path

import torch

from dais_search.checkpoint import load_checkpoint
from dais_search.cost import count_params
from dais_search.data import load_dataset, make_loader
from dais_search.files import write_json
from dais_search.finetune.sparsity import SCOPES, apply_masks, magnitude_masks, sparse_finetune, sparsity_report
from dais_search.models import create_model
from dais_search.pipeline.common import model_of_checkpoint
from dais_search.report import format_table
from dais_search.train import evaluate


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="a fine-tune bundle folder (holding model.pt) or a pruned checkpoint file")
    p.add_argument("--data", required=True, help="data set spec, e.g. npz:../shared/data/cifar10.npz")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9],
                   help="fractions of the conv/linear weights to zero (default: 0.5 0.7 0.8 0.9)")  # fmt: skip
    p.add_argument("--scope", choices=SCOPES, default="global", help="one threshold, or per layer (default: global)")
    p.add_argument("--epochs", type=int, default=1, help="fine-tune epochs with the zeros held (default: 1)")
    p.add_argument("--lr", type=float, default=0.01, help="peak SGD learning rate (default: 0.01, BENCH.md)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=0, help="cap the steps per epoch (tests)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    for s in args.sparsity:
        if not 0 < s < 1:
            p.error(f"--sparsity {s}: give fractions in (0, 1), e.g. 0.5 for half of the weights")
    path = Path(args.bundle)
    path = path / "model.pt" if path.is_dir() else path
    ckpt = load_checkpoint(path)  # a clear error for a missing or broken file, before the data load
    structured, name, _ = model_of_checkpoint(ckpt, source=f"bundle {str(path)!r}")
    normalize = ckpt.get("normalize") or "imagenet"
    splits = load_dataset(args.data)
    dense_params = count_params(create_model(name, num_classes=splits.num_classes))
    image = splits.input_size[-1]
    train = make_loader(splits.train, args.batch_size, True, normalize, args.seed, 2, image, True)
    test = make_loader(splits.test, 256, False, normalize, image_size=image)

    base = evaluate(structured, test, progress=False)["top1"]
    rows = [{"sparsity": 0.0, "test_top1_masked": base, "test_top1": base, "seconds": 0.0,
             **sparsity_report(structured, dense_params)}]  # fmt: skip
    for level in args.sparsity:
        model = copy.deepcopy(structured)
        masks = magnitude_masks(model, level, args.scope)
        apply_masks(model, masks)
        masked = evaluate(model, test, progress=False)["top1"]
        start = time.perf_counter()
        torch.manual_seed(args.seed)
        sparse_finetune(model, masks, train, args.epochs, args.lr, args.max_steps, progress=False)
        after = evaluate(model, test, progress=False)["top1"]
        row = {"sparsity": level, "test_top1_masked": masked, "test_top1": after,
               "seconds": time.perf_counter() - start, **sparsity_report(model, dense_params)}  # fmt: skip
        rows.append(row)
        print(f"sparsity {level:.2f}: top-1 {masked:.2f}% masked, {row['test_top1']:.2f}% after {args.epochs} "
              f"epoch(s); compression {row['compression_vs_dense']:.1f}x", flush=True)  # fmt: skip
    print(format_table(
        [[f"{r['sparsity']:.2f}", f"{r['nonzero_params']:,}", f"{r['compression_vs_dense']:.1f}x",
          f"{r['test_top1_masked']:.2f}", f"{r['test_top1']:.2f}"] for r in rows],
        ["weight sparsity", "non-zero params", "compression vs dense", "top-1 masked",
         f"top-1 after {args.epochs} ep"]))  # fmt: skip
    result = {"command": shlex.join(["python", "benchmarks/sparsity_curve.py", *(argv or sys.argv[1:])]),
              "bundle": str(path), "model": name, "dense_params": dense_params, "scope": args.scope,
              "epochs": args.epochs, "lr": args.lr, "rows": rows}  # fmt: skip
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
