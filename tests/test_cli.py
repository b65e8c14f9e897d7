"""The `deepsqueeze` command: inspect, run, errors without tracebacks."""
import subprocess
import sys

import numpy as np
import pytest

from deepsqueeze import format as fmt
from deepsqueeze.builder import GraphBuilder
from deepsqueeze.cli import main


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "deepsqueeze", *args], capture_output=True, text=True)


@pytest.fixture
def mlp_file(tmp_path):
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.add_input("x", (-1, 64))
    w1 = b.add_weight("fc1.weight", rng.standard_normal((32, 64)).astype(np.float32), values="int8_channel")
    w2 = b.add_weight("fc2.weight", rng.standard_normal((10, 32)).astype(np.float32), values="int4_group",
                      group_size=16)
    h = b.add_node("linear", [x], weights=[w1, None], attrs={"activation": [1]}, name="fc1")
    y = b.add_node("linear", [h], weights=[w2, None], name="fc2")
    b.mark_output(y, "logits")
    path = tmp_path / "mlp.dsq"
    fmt.write(b.build({"dsq.source_model": "TinyMLP"}), str(path))
    return path


def test_inspect_table(mlp_file, capsys):
    assert main(["inspect", str(mlp_file)]) == 0
    out = capsys.readouterr().out
    assert "TinyMLP" in out and "fc1" in out and "fc2" in out
    assert "int8_channel" in out and "int4_group" in out
    assert "gemm_qu8" in out and "gemm_q4" in out
    assert "total" in out
    header = next(line for line in out.splitlines() if line.startswith("layer"))
    for col in ("density", "bits/nz", "payload", "x f32", "kernel"):
        assert col in header


@pytest.fixture
def sparse_file(tmp_path):
    """fc1: 10% dense, 8 distinct values, csr_relative + codebook + Huffman; fc2: dense f32."""
    rng = np.random.default_rng(2)
    w1 = rng.choice(np.linspace(-1, 1, 8).astype(np.float32), size=(64, 256))
    w1[rng.random(w1.shape) >= 0.1] = 0
    w2 = rng.standard_normal((10, 64)).astype(np.float32)
    b = GraphBuilder()
    x = b.add_input("x", (-1, 256))
    t1 = b.add_weight("fc1.weight", w1, values="codebook", layout="csr_relative", index_bits=5,
                      huffman=True)
    t2 = b.add_weight("fc2.weight", w2)
    h = b.add_node("linear", [x], weights=[t1, None], attrs={"activation": [1]}, name="fc1")
    y = b.add_node("linear", [h], weights=[t2, None], name="fc2")
    b.mark_output(y, "logits")
    path = tmp_path / "sparse.dsq"
    fmt.write(b.build({"dsq.source_model": "Sparse"}), str(path))
    return path, w1, w2


def test_inspect_density_and_bits(sparse_file):
    import deepsqueeze
    from deepsqueeze.encode import bits_per_nonzero
    from deepsqueeze.inspect import layer_rows, layer_table

    path, w1, w2 = sparse_file
    model = deepsqueeze.load(str(path))
    f = fmt.read(str(path))
    for source in (str(path), path.read_bytes(), f, f.tensors, {t.name: t for t in f.tensors}):
        rows = {r["name"]: r for r in layer_rows(model.layers(), tensors=source)}
        assert rows["fc1"]["density"] == np.count_nonzero(w1) / w1.size
        assert rows["fc2"]["density"] == 1.0
    bits = bits_per_nonzero(f.tensors[0])
    assert bits["huffman"] and bits["total"] < bits["total_before_huffman"]
    assert rows["fc1"]["bits_per_nz_raw"] == bits["total_before_huffman"]
    assert rows["fc1"]["bits_per_nz"] == bits["total"]
    assert rows["fc1"]["kernel"].startswith("spmv")
    table = layer_table(model.layers(), tensors=str(path))
    line = next(ln for ln in table.splitlines() if ln.startswith("fc1 "))
    assert f"{rows['fc1']['density']:.3f}" in line
    assert f"{bits['total_before_huffman']:.1f}->{bits['total']:.1f}" in line
    assert "csr_relative:codebook+huffman" in line
    line = next(ln for ln in table.splitlines() if ln.startswith("fc2 "))
    assert "1.000" in line and " 32.0 " in line  # dense f32: 32 bits per nonzero, no Huffman
    # without the tensors the two columns are "-" (the engine's layers() has no nonzero counts)
    rows = layer_rows(model.layers())
    assert rows[0]["density"] is None and "density" in layer_table(model.layers())


def test_inspect_sparse_file(sparse_file, capsys):
    path, _, _ = sparse_file
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "csr_relative:codebook+huffman" in out and "spmv" in out and "density" in out


def test_run_writes_output(mlp_file, tmp_path):
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = _cli("run", str(mlp_file), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"),
             "--threads", "2")
    assert r.returncode == 0, r.stderr
    import deepsqueeze

    assert np.array_equal(np.load(tmp_path / "y.npy"), deepsqueeze.load(str(mlp_file)).run(x))


@pytest.mark.parametrize("case", ["missing", "corrupt", "wrong_shape", "wrong_count"])
def test_user_errors_are_one_line(mlp_file, tmp_path, case):
    np.save(tmp_path / "x.npy", np.zeros((2, 64), np.float32))
    np.save(tmp_path / "bad.npy", np.zeros((2, 65), np.float32))
    if case == "missing":
        args = ["inspect", str(tmp_path / "nope.dsq")]
        expect = "no such file"
    elif case == "corrupt":
        data = bytearray(mlp_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        (tmp_path / "c.dsq").write_bytes(bytes(data))
        args = ["inspect", str(tmp_path / "c.dsq")]
        expect = "not a valid .dsq file"
    elif case == "wrong_shape":
        args = ["run", str(mlp_file), "--input", str(tmp_path / "bad.npy")]
        expect = "expected shape"
    else:
        args = ["run", str(mlp_file), "--input", str(tmp_path / "x.npy"), "--input", str(tmp_path / "x.npy")]
        expect = "takes 1 input"
    r = _cli(*args)
    assert r.returncode == 2
    assert expect in r.stderr
    assert "Traceback" not in r.stderr


def test_help_everywhere():
    for args in ([], ["inspect"], ["run"], ["demo"]):
        r = _cli(*args, "--help")
        assert r.returncode == 0 and "usage" in r.stdout
