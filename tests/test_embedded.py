"""Cross-builds the C++ core for embedded Linux targets (aarch64, armv7-a + NEON), runs
its C++ tests under qemu-user, and checks that the cross-built dsq-run (static) gives the
host engine's results: integer paths bit-exact, f32 within 1e-5 relative.

Needs Debian/Ubuntu's cross compilers and qemu-user; skipped (with the install command)
when they are missing."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APT = ("apt-get install -y --no-install-recommends "
       "g++-aarch64-linux-gnu g++-arm-linux-gnueabihf qemu-user")

TARGETS = {
    # name: (toolchain file, compiler, qemu, library dir, qemu cpus)
    "aarch64": ("aarch64-linux-gnu.cmake", "aarch64-linux-gnu-g++", "qemu-aarch64",
                "/usr/aarch64-linux-gnu", ["cortex-a53", "max"]),
    "armv7": ("arm-linux-gnueabihf.cmake", "arm-linux-gnueabihf-g++", "qemu-arm",
              "/usr/arm-linux-gnueabihf", ["cortex-a7", "max"]),
}


@pytest.fixture(scope="module", params=sorted(TARGETS))
def cross_build(request, tmp_path_factory):
    name = request.param
    toolchain, cxx, qemu, libdir, cpus = TARGETS[name]
    if not (ROOT / "CMakeLists.txt").exists():
        pytest.skip("source tree not available (installed package only)")
    missing = [t for t in (cxx, qemu) if not shutil.which(t)]
    if missing:
        if os.environ.get("CI"):  # .ci/run installs them: a missing tool there is a failure
            pytest.fail(f"{', '.join(missing)} not found in CI; .ci/run should have run: {APT}")
        pytest.skip(f"{', '.join(missing)} not found; install with: {APT}")
    cmake = shutil.which("cmake")
    assert cmake, "cmake is needed to build the C++ core"
    build = tmp_path_factory.mktemp(f"cross_{name}")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    r = subprocess.run([cmake, "-S", str(ROOT), "-B", str(build), *gen,
                        f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'cmake' / 'toolchains' / toolchain}",
                        "-DCMAKE_BUILD_TYPE=Release", "-DDSQ_STATIC_TOOLS=ON",
                        "-DDSQ_BUILD_PYTHON=OFF"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    r = subprocess.run([cmake, "--build", str(build), "-j", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return {"name": name, "build": build, "qemu": qemu, "libdir": libdir, "cpus": cpus}


def test_cross_ctest_under_qemu(cross_build):
    build = cross_build["build"]
    cache = (build / "CMakeCache.txt").read_text()
    assert f"CMAKE_CROSSCOMPILING_EMULATOR:STRING={cross_build['qemu']}" in cache
    r = subprocess.run(["ctest", "--output-on-failure", "--test-dir", str(build), "-j", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "100% tests passed" in r.stdout
    assert "test_c_api" in r.stdout


def _models(tmp_path):
    np = pytest.importorskip("numpy")
    from deepsqueeze import format as fmt
    from deepsqueeze.builder import GraphBuilder

    rng = np.random.default_rng(7)
    paths = {}
    for kind in ("f32", "int8_channel"):
        b = GraphBuilder()
        x = b.add_input("x", (-1, 3, 8, 8))
        w = b.add_weight("conv.w", rng.standard_normal((6, 3, 3, 3)).astype(np.float32), values=kind)
        cb = b.add_weight("conv.b", rng.standard_normal(6).astype(np.float32))
        y = b.add_node("conv2d", [x], weights=[w, cb], attrs={"padding": [1, 1], "activation": [1]})
        y = b.add_node("max_pool2d", [y], attrs={"kernel": [2, 2]})
        y = b.add_node("flatten", [y])
        w2 = b.add_weight("fc.w", (rng.standard_normal((10, 6 * 4 * 4)) * 0.1).astype(np.float32),
                          values=kind)
        y = b.add_node("linear", [y], weights=[w2, None])
        b.mark_output(y, "y")
        paths[kind] = tmp_path / f"{kind}.dsq"
        fmt.write(b.build({"dsq.producer": "test_embedded"}), str(paths[kind]))
    xin = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", xin)
    return np, paths, xin


def test_cross_dsq_run_matches_host(cross_build, tmp_path):
    np, paths, xin = _models(tmp_path)
    import deepsqueeze

    dsq_run = cross_build["build"] / "dsq-run"
    file_out = subprocess.run(["file", str(dsq_run)], capture_output=True, text=True).stdout \
        if shutil.which("file") else ""
    if file_out:
        assert "statically linked" in file_out or "static-pie" in file_out, file_out
    for kind, path in paths.items():
        expected = deepsqueeze.load(str(path)).run(xin)
        for cpu in cross_build["cpus"]:
            out = tmp_path / f"y_{kind}_{cpu}.npy"
            r = subprocess.run([cross_build["qemu"], "-cpu", cpu, "-L", cross_build["libdir"], str(dsq_run),
                                str(path), "--input", str(tmp_path / "x.npy"), "--output", str(out),
                                "--threads", "2", "--repeat", "2"],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"{kind} on {cpu}: {r.stderr}"
            got = np.load(out)
            assert got.shape == expected.shape
            if kind == "f32":
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()),
                                           err_msg=f"f32 on {cross_build['name']} {cpu}")
            else:  # int8 weights, dynamic activation quantization: integer path, bit-exact
                assert np.array_equal(got, expected), f"int8 on {cross_build['name']} {cpu}: " \
                    f"max diff {np.abs(got - expected).max()}"


def test_cross_c_example(cross_build, tmp_path):
    _, paths, _ = _models(tmp_path)
    exe = cross_build["build"] / "dsq-c-example"
    r = subprocess.run([cross_build["qemu"], "-L", cross_build["libdir"], str(exe), str(paths["int8_channel"])],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "output 0 'y': (1, 10)" in r.stdout and "runs 1" in r.stdout, r.stdout
    r = subprocess.run([cross_build["qemu"], "-L", cross_build["libdir"], str(exe), str(tmp_path / "none.dsq")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "DSQ_ERR_IO" in r.stderr, r.stderr
