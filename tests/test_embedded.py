"""Cross-builds the C++ core for embedded Linux targets (aarch64, armv7-a + NEON), runs
its C++ tests under qemu-user, and checks that the cross-built dsq-run (static) gives the
host engine's results on every weight encoding (f32, int8, int4 groups, CSR / relative CSR
with a 5-bit Huffman-coded codebook, block CSR): integer paths bit-exact, float paths
within 1e-5 relative.

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


# Every weight encoding the engine has, on a small LeNet-5-like graph (conv -> maxpool ->
# conv -> maxpool -> flatten -> linear -> linear). Sparse variants are pruned to ~20%
# nonzeros (Deep Compression style); the codebook one is quantized to 31 levels + 0 so a
# 5-bit table holds it. (encode kwargs, integer path: compare bit for bit)
LENET_ENCODINGS = {
    "f32": (dict(values="f32"), False),
    "int8_channel": (dict(values="int8_channel"), True),
    "int4_group": (dict(values="int4_group", group_size=16), True),
    "csr_relative_cb5_huffman": (dict(values="codebook", layout="csr_relative", index_bits=4,
                                      codebook_bits=5, huffman=True), False),
    "csr_f32": (dict(values="f32", layout="csr"), False),
    "block_csr_f32": (dict(values="f32", layout="block_csr", block=(1, 4)), False),
}


def _lenet_models(tmp_path):
    np = pytest.importorskip("numpy")
    from deepsqueeze import format as fmt
    from deepsqueeze.builder import GraphBuilder

    rng = np.random.default_rng(11)

    def prune(a, block):
        r, c = block
        a2 = a.reshape(a.shape[0], -1)
        keep = rng.random((-(-a2.shape[0] // r), -(-a2.shape[1] // c))) < 0.2
        keep = np.repeat(np.repeat(keep, r, 0), c, 1)[:a2.shape[0], :a2.shape[1]]
        return (a2 * keep).reshape(a.shape).astype(np.float32)

    paths = {}
    for kind, (enc, _) in LENET_ENCODINGS.items():
        layout = enc.get("layout", "dense")

        def weight(shape, s):
            a = (rng.standard_normal(shape) * s).astype(np.float32)
            if layout != "dense":
                a = prune(a, enc.get("block", (1, 1)))
            if enc["values"] == "codebook":
                levels = np.linspace(-1, 1, 31).astype(np.float32) * np.abs(a).max()
                q = levels[np.abs(a[..., None] - levels).argmin(-1)]
                a = np.where(a != 0, q, 0).astype(np.float32)
            return a

        def bias(n):
            return (rng.standard_normal(n) * 0.1).astype(np.float32)

        b = GraphBuilder()
        x = b.add_input("x", (-1, 1, 16, 16))
        y = b.add_node("conv2d", [x], weights=[b.add_weight("c1.w", weight((6, 1, 5, 5), 0.4), **enc),
                                               b.add_weight("c1.b", bias(6))],
                       attrs={"padding": [2, 2], "activation": [1]})
        y = b.add_node("max_pool2d", [y], attrs={"kernel": [2, 2]})
        y = b.add_node("conv2d", [y], weights=[b.add_weight("c2.w", weight((16, 6, 3, 3), 0.3), **enc),
                                               b.add_weight("c2.b", bias(16))],
                       attrs={"padding": [1, 1], "activation": [1]})
        y = b.add_node("max_pool2d", [y], attrs={"kernel": [2, 2]})
        y = b.add_node("flatten", [y])
        y = b.add_node("linear", [y], weights=[b.add_weight("f1.w", weight((32, 256), 0.1), **enc),
                                               b.add_weight("f1.b", bias(32))],
                       attrs={"activation": [1]})
        y = b.add_node("linear", [y], weights=[b.add_weight("f2.w", weight((10, 32), 0.2), **enc), None])
        b.mark_output(y, "y")
        paths[kind] = tmp_path / f"lenet_{kind}.dsq"
        fmt.write(b.build({"dsq.producer": "test_embedded"}), str(paths[kind]))
    xin = rng.standard_normal((2, 1, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x_lenet.npy", xin)
    return paths, xin


def _check_dsq_run(np, cross_build, tmp_path, path, x_path, xin, exact, label):
    import deepsqueeze

    expected = deepsqueeze.load(str(path)).run(xin)
    for cpu in cross_build["cpus"]:
        out = tmp_path / f"y_{label}_{cpu}.npy"
        r = subprocess.run([cross_build["qemu"], "-cpu", cpu, "-L", cross_build["libdir"],
                            str(cross_build["build"] / "dsq-run"), str(path), "--input", str(x_path),
                            "--output", str(out), "--threads", "2", "--repeat", "2"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{label} on {cpu}: {r.stderr}"
        got = np.load(out)
        assert got.shape == expected.shape
        where = f"{label} on {cross_build['name']} {cpu}"
        if exact:  # integer weights, dynamic activation quantization: bit-exact
            assert np.array_equal(got, expected), f"{where}: max diff {np.abs(got - expected).max()}"
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()),
                                       err_msg=where)


def test_cross_dsq_run_matches_host(cross_build, tmp_path):
    np, paths, xin = _models(tmp_path)
    dsq_run = cross_build["build"] / "dsq-run"
    file_out = subprocess.run(["file", str(dsq_run)], capture_output=True, text=True).stdout \
        if shutil.which("file") else ""
    if file_out:
        assert "statically linked" in file_out or "static-pie" in file_out, file_out
    for kind, path in paths.items():
        _check_dsq_run(np, cross_build, tmp_path, path, tmp_path / "x.npy", xin, kind != "f32", kind)


@pytest.mark.parametrize("kind", sorted(LENET_ENCODINGS))
def test_cross_dsq_run_lenet_encodings(cross_build, tmp_path, kind):
    np = pytest.importorskip("numpy")
    paths, xin = _lenet_models(tmp_path)
    _check_dsq_run(np, cross_build, tmp_path, paths[kind], tmp_path / "x_lenet.npy", xin,
                   LENET_ENCODINGS[kind][1], f"lenet_{kind}")


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


@pytest.mark.parametrize("weights", ["fp32", "int8", "deep_compression"])
def test_cross_dsq_run_exported_lenet5(cross_build, tmp_path, weights):
    """Caffe's LeNet-5 through the real exporter; 'deep_compression' = pruned to 20% and
    shared to 32 values per layer, exported with weights='auto' (sparse + codebook + Huffman)."""
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    from deepsqueeze.convert import export, models

    net = models.lenet5(seed=11).eval()
    if weights == "deep_compression":
        with torch.no_grad():
            for p in net.parameters():
                if p.dim() < 2:
                    continue
                keep = p.abs() > p.abs().flatten().kthvalue(int(p.numel() * 0.8)).values
                p.mul_(keep)
                nz = p[keep]
                centroids = torch.linspace(float(nz.min()), float(nz.max()), 32)
                p[keep] = centroids[(nz.unsqueeze(1) - centroids).abs().argmin(1)]
    path = tmp_path / f"lenet5_{weights}.dsq"
    export(net, torch.randn(1, 1, 28, 28), str(path), weights="auto" if weights == "deep_compression" else weights)
    xin = np.random.default_rng(5).random((2, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x5.npy", xin)
    _check_dsq_run(np, cross_build, tmp_path, path, tmp_path / "x5.npy", xin, weights == "int8", f"lenet5_{weights}")
