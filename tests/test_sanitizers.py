"""Sanitizer and fuzzing jobs (docs/HARDENING.md), run by the normal test suite:

* clang with AddressSanitizer + UndefinedBehaviorSanitizer (+ libFuzzer's coverage
  instrumentation, so one build serves both jobs below):
  - the C++ tests (ctest: kernels, C API, concurrency stress, and the replay of the fuzz
    seed corpus and crash regressions), then the replay driver over corrupted copies of
    every seed. The Python suite is not run under ASan (that needs libasan preloaded
    into the interpreter); the C++ side covers the same load and run paths.
  - the libFuzzer target over the whole load path, 60 s (DSQ_FUZZ_SECONDS) from the seed
    corpus.
* gcc with ThreadSanitizer: the C API concurrency stress test, 3 s.

They need cmake, g++, and clang with libclang-rt (Debian: clang libclang-rt-14-dev).
Without a tool they skip with the install hint; in CI (CI set) they fail instead.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
REGRESSIONS = ROOT / "tests" / "fuzz" / "regressions"
APT = "apt-get install -y --no-install-recommends clang libclang-rt-14-dev g++ cmake"
FUZZ_SECONDS = int(os.environ.get("DSQ_FUZZ_SECONDS", "60"))


def need(*tools):
    if not (ROOT / "CMakeLists.txt").exists():
        pytest.skip("source tree not available (installed package only)")
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        if os.environ.get("CI"):  # .ci/run installs them: a missing tool there is a failure
            pytest.fail(f"{', '.join(missing)} not found in CI; .ci/run should have run: {APT}")
        pytest.skip(f"{', '.join(missing)} not found; install with: {APT}")


def build(build_dir: Path, flags: str, targets=(), extra=()):
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    # -O1: sanitizer builds compile and run in reasonable time; no -g (stacks still name
    # functions and lines come from the symbolizer's best effort).
    cfg = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *gen, "-DCMAKE_BUILD_TYPE=Release",
                          "-DCMAKE_CXX_FLAGS_RELEASE=-O1", "-DCMAKE_C_FLAGS_RELEASE=-O1", "-DDSQ_BUILD_TOOLS=OFF",
                          f"-DCMAKE_CXX_FLAGS={flags}", f"-DCMAKE_C_FLAGS={flags}", *extra],
                         capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    tgt = [a for t in targets for a in ("--target", t)]
    r = subprocess.run(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2), *tgt],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


@pytest.fixture(scope="module")
def clang_asan(tmp_path_factory):
    """One clang build: ASan + UBSan everywhere, libFuzzer instrumentation, the C++ tests
    and the fuzz target."""
    need("clang", "clang++", "cmake")
    b = tmp_path_factory.mktemp("asan")
    build(b, "-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer",
          extra=["-DCMAKE_C_COMPILER=clang", "-DCMAKE_CXX_COMPILER=clang++", "-DDSQ_FUZZ=ON",
                 "-DDSQ_BUILD_TESTS=ON"])
    return b


SAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    "TSAN_OPTIONS": "halt_on_error=1:second_deadlock_stack=1",
}


def corrupted_copies(out: Path, per_seed: int = 6) -> int:
    """Truncations and byte flips of every seed (the replay also fixes their CRCs)."""
    rng = random.Random(5)
    out.mkdir()
    n = 0
    for seed in sorted(CORPUS.glob("*.dsq")):
        data = seed.read_bytes()
        for k in range(per_seed):
            b = bytearray(data)
            if k == 0:
                b = b[: rng.randrange(len(b))]
            else:
                for _ in range(k):
                    b[rng.randrange(64, len(b))] ^= rng.randrange(1, 256)
            (out / f"{seed.stem}-{k}").write_bytes(bytes(b))
            n += 1
    return n


def test_asan_ubsan_ctest_and_replay(clang_asan, tmp_path):
    env = dict(os.environ, **SAN_ENV)
    r = subprocess.run(["ctest", "--output-on-failure", "-j", "2", "--test-dir", str(clang_asan)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "100% tests passed" in r.stdout, r.stdout[-8000:] + r.stderr[-2000:]
    n = corrupted_copies(tmp_path / "bad")
    r = subprocess.run([str(clang_asan / "dsq-fuzz-replay"), str(CORPUS), str(tmp_path / "bad")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-8000:]
    counts = dict(zip(*[iter(r.stdout.split())] * 2))
    assert sum(int(v) for v in counts.values()) == n + len(list(CORPUS.glob("*"))), r.stdout
    assert int(counts["ran"]) >= len(list(CORPUS.glob("*.dsq"))), r.stdout  # every seed runs


def test_libfuzzer_load_path(clang_asan, tmp_path):
    work = tmp_path / "corpus"  # new units go here, never into the repository
    work.mkdir()
    art = tmp_path / "artifacts"
    art.mkdir()
    env = dict(os.environ, **SAN_ENV)
    r = subprocess.run([str(clang_asan / "dsq-fuzz-load"), f"-max_total_time={FUZZ_SECONDS}",
                        "-print_final_stats=1", "-rss_limit_mb=2048", "-timeout=20", "-max_len=16384",
                        f"-artifact_prefix={art}/", str(work), str(CORPUS), str(REGRESSIONS)],
                       capture_output=True, text=True, env=env, timeout=FUZZ_SECONDS + 240)
    found = sorted(p.name for p in art.iterdir())
    assert r.returncode == 0 and not found, f"fuzzer found {found}:\n" + r.stderr[-8000:]
    execs = re.search(r"stat::number_of_executed_units:\s*(\d+)", r.stderr)
    assert execs and int(execs.group(1)) > 1000, r.stderr[-3000:]


def test_tsan_c_api_stress(tmp_path):
    need("g++", "cmake")
    build(tmp_path / "b", "-fsanitize=thread", targets=["test_c_api_stress"])
    env = dict(os.environ, DSQ_STRESS_SECONDS="3", **SAN_ENV)
    r = subprocess.run([str(tmp_path / "b" / "tests" / "cpp" / "test_c_api_stress")], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0 and "WARNING: ThreadSanitizer" not in r.stderr, r.stdout[-3000:] + r.stderr[-8000:]
    assert re.search(r"8 threads, \d+ runs", r.stdout), r.stdout
