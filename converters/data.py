"""torch DataLoaders over the built-in data sets (deepsqueeze.datasets, numpy only)."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from deepsqueeze import datasets

__all__ = ["mnist_loaders", "MnistLoaders"]


class MnistLoaders:
    """train / valid / test DataLoaders of MNIST (inputs (N,1,28,28) float32, labels int64).

    train is the 60k training set (or its first 50k with `hold_out_valid`, the last 10k
    then being `valid`); `limit_*` take the first n samples, for tests and quick runs.
    """

    def __init__(self, batch_size: int = 128, test_batch_size: int = 1000,
                 hold_out_valid: bool = False, limit_train: Optional[int] = None,
                 limit_test: Optional[int] = None, path: Optional[str] = None, seed: int = 0):
        data = datasets.mnist(path)
        tx, ty = data.split("train_only" if hold_out_valid else "train")
        sx, sy = data.split("test")
        if limit_train is not None:
            tx, ty = tx[:limit_train], ty[:limit_train]
        if limit_test is not None:
            sx, sy = sx[:limit_test], sy[:limit_test]
        gen = torch.Generator().manual_seed(seed)
        self.train = DataLoader(_dataset(tx, ty), batch_size=batch_size, shuffle=True,
                                generator=gen, drop_last=False)
        self.test = DataLoader(_dataset(sx, sy), batch_size=test_batch_size, shuffle=False)
        self.valid = None
        if hold_out_valid:
            vx, vy = data.split("valid")
            self.valid = DataLoader(_dataset(vx, vy), batch_size=test_batch_size, shuffle=False)
        self.test_arrays: Tuple[np.ndarray, np.ndarray] = (sx, sy)

    def calibration(self, batches: int = 4, batch_size: int = 256):
        """A few training batches (inputs only) for activation-range calibration."""
        x = self.train.dataset.tensors[0]
        return [x[i * batch_size:(i + 1) * batch_size] for i in range(batches)]


def _dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))


def mnist_loaders(**kwargs) -> MnistLoaders:
    return MnistLoaders(**kwargs)
