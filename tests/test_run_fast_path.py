"""Model.run's one-input/one-output fast path (the binding's run_one) gives the same
results and the same typed errors as the general path."""
from __future__ import annotations

import numpy as np
import pytest

import deepsqueeze
from deepsqueeze import format as F
from deepsqueeze.builder import GraphBuilder


def one_linear():
    rng = np.random.default_rng(0)
    g = GraphBuilder()
    x = g.add_input("x", (-1, 6))
    w = rng.standard_normal((3, 6)).astype(np.float32)
    g.mark_output(g.add_node("linear", [x], weights=[g.add_weight("w", w)], name="fc"), "y")
    return deepsqueeze.load(F.to_bytes(g.build()), threads=1), w


def test_fast_path_matches_general_path():
    m, w = one_linear()
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    fast = m.run(x)
    general = m.run([x])["y"]
    assert isinstance(fast, np.ndarray) and fast.shape == (2, 3)
    np.testing.assert_array_equal(fast, general)
    np.testing.assert_allclose(fast, x @ w.T, rtol=1e-5)
    # strided input: copied once, same result
    xs = np.ascontiguousarray(np.repeat(x, 2, axis=1))[:, ::2]
    np.testing.assert_array_equal(m.run(xs), fast)
    # the result is a fresh array each call
    assert m.run(x) is not fast


def test_fast_path_errors():
    m, _ = one_linear()
    with pytest.raises(ValueError, match="input 'x': expected dtype float32, got float64"):
        m.run(np.zeros((1, 6)))
    with pytest.raises(ValueError, match="input 'x'"):
        m.run(np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="numpy array"):
        m._core.run_one([1.0])
