"""Builds the C++ core alone (no Python, as on a board) and runs its kernel tests (ctest)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cpp_build(tmp_path_factory):
    if not (ROOT / "CMakeLists.txt").exists():
        pytest.skip("source tree not available (installed package only)")
    cmake = shutil.which("cmake")
    assert cmake, "cmake is needed to build the C++ core"
    build = tmp_path_factory.mktemp("cpp_build")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run([cmake, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *gen],
                   check=True, capture_output=True, text=True)
    r = subprocess.run([cmake, "--build", str(build), "-j", str(os.cpu_count() or 2)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return build


def test_core_builds_without_python(cpp_build):
    cache = (cpp_build / "CMakeCache.txt").read_text()
    assert "DSQ_BUILD_PYTHON:BOOL=OFF" in cache
    assert (cpp_build / "dsq-run").exists()


@pytest.mark.parametrize("max_isa", ["", "avx2", "scalar"])
def test_ctest_kernels(cpp_build, max_isa):
    env = dict(os.environ)
    if max_isa:
        env["DSQ_MAX_ISA"] = max_isa  # the dispatch must fall back and stay correct
    r = subprocess.run(["ctest", "--output-on-failure", "--test-dir", str(cpp_build)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "100% tests passed" in r.stdout


def test_portable_build_passes(tmp_path):
    """DSQ_PORTABLE=ON builds no SIMD file at all (the scalar references only) and must pass."""
    if not (ROOT / "CMakeLists.txt").exists():
        pytest.skip("source tree not available (installed package only)")
    build = tmp_path / "portable"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DDSQ_PORTABLE=ON",
                    "-DDSQ_BUILD_TOOLS=OFF", *gen], check=True, capture_output=True, text=True)
    r = subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    r = subprocess.run(["ctest", "--output-on-failure", "--test-dir", str(build)], capture_output=True, text=True)
    assert r.returncode == 0 and "100% tests passed" in r.stdout, r.stdout[-6000:]
    # no SIMD variant was built: the f32 family lists its scalar reference only
    out = subprocess.run([str(build / "tests" / "cpp" / "test_gemm_f32")], capture_output=True, text=True).stdout
    assert "best ukernel: gemm_f32_4x8__scalar" in out
    assert "avx" not in out and "neon" not in out


def test_dsq_run_matches_python(cpp_build, tmp_path):
    np = pytest.importorskip("numpy")
    import deepsqueeze
    from deepsqueeze import format as fmt
    from deepsqueeze.builder import GraphBuilder

    rng = np.random.default_rng(1)
    b = GraphBuilder()
    x = b.add_input("x", (-1, 3, 9, 9))
    w = b.add_weight("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32), values="int8_channel")
    y = b.add_node("conv2d", [x], weights=[w, None], attrs={"padding": [1, 1], "activation": [1]})
    y = b.add_node("flatten", [y])
    b.mark_output(y, "y")
    path = tmp_path / "m.dsq"
    fmt.write(b.build({"dsq.producer": "test"}), str(path))
    xin = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    np.save(tmp_path / "x.npy", xin)
    r = subprocess.run([str(cpp_build / "dsq-run"), str(path), "--input", str(tmp_path / "x.npy"),
                        "--output", str(tmp_path / "y.npy"), "--repeat", "3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "macs_int8 " in r.stdout
    expected = deepsqueeze.load(str(path)).run(xin)
    assert np.array_equal(np.load(tmp_path / "y.npy"), expected)  # integer path: bit-exact


def test_dsq_run_bad_file(cpp_build, tmp_path):
    bad = tmp_path / "bad.dsq"
    bad.write_bytes(b"not a dsq file at all" * 4)
    np = pytest.importorskip("numpy")
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    r = subprocess.run([str(cpp_build / "dsq-run"), str(bad), "--input", str(tmp_path / "x.npy")],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "format error" in r.stderr and "magic" in r.stderr
