"""Sanitizer and fuzzing jobs (docs/HARDENING.md), run by the normal test suite:

* AddressSanitizer + UndefinedBehaviorSanitizer (gcc): the C++ tests (ctest, which also
  replays the fuzz seed corpus and crash regressions) and the replay driver over
  corrupted copies of every seed. The Python suite is not run under ASan (that needs
  LD_PRELOAD of libasan into the interpreter); the C++ side covers the same load path.
* ThreadSanitizer (gcc): the C API concurrency stress test, 3 s.
* libFuzzer (clang): the load-path fuzz target for 60 s from the seed corpus.

They need g++/cmake, and clang with libclang-rt (Debian: clang libclang-rt-14-dev).
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
APT = "apt-get install -y --no-install-recommends clang libclang-rt-14-dev"
FUZZ_SECONDS = int(os.environ.get("DSQ_FUZZ_SECONDS", "60"))


def need(*tools):
    if not (ROOT / "CMakeLists.txt").exists():
        pytest.skip("source tree not available (installed package only)")
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        if os.environ.get("CI"):  # .ci/run installs them: a missing tool there is a failure
            pytest.fail(f"{', '.join(missing)} not found in CI; .ci/run should have run: {APT}")
        pytest.skip(f"{', '.join(missing)} not found; install with: {APT}")


def build(build_dir: Path, flags: str, targets=(), extra=(), env=None):
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cfg = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *gen, "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                          "-DDSQ_BUILD_TOOLS=OFF", f"-DCMAKE_CXX_FLAGS={flags}", f"-DCMAKE_C_FLAGS={flags}",
                          *extra], capture_output=True, text=True, env=env)
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    tgt = [a for t in targets for a in ("--target", t)]
    r = subprocess.run(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2), *tgt],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


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


def test_asan_ubsan_ctest_and_replay(tmp_path):
    need("g++", "cmake")
    flags = "-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
    build(tmp_path / "b", flags)
    env = dict(os.environ, **SAN_ENV)
    r = subprocess.run(["ctest", "--output-on-failure", "-j", "2", "--test-dir", str(tmp_path / "b")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "100% tests passed" in r.stdout, r.stdout[-8000:] + r.stderr[-2000:]
    n = corrupted_copies(tmp_path / "bad")
    r = subprocess.run([str(tmp_path / "b" / "dsq-fuzz-replay"), str(CORPUS), str(tmp_path / "bad")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-8000:]
    counts = dict(zip(*[iter(r.stdout.split())] * 2))
    assert sum(int(v) for v in counts.values()) == n + len(list(CORPUS.glob("*"))), r.stdout
    assert int(counts["ran"]) >= len(list(CORPUS.glob("*.dsq"))), r.stdout  # every seed runs


def test_tsan_c_api_stress(tmp_path):
    need("g++", "cmake")
    build(tmp_path / "b", "-fsanitize=thread", targets=["test_c_api_stress"])
    env = dict(os.environ, DSQ_STRESS_SECONDS="3", **SAN_ENV)
    r = subprocess.run([str(tmp_path / "b" / "tests" / "cpp" / "test_c_api_stress")], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0 and "WARNING: ThreadSanitizer" not in r.stderr, r.stdout[-3000:] + r.stderr[-8000:]
    assert re.search(r"8 threads, \d+ runs", r.stdout), r.stdout


def test_libfuzzer_load_path(tmp_path):
    need("clang", "clang++", "cmake")
    flags = "-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined"
    build(tmp_path / "b", flags, targets=["dsq-fuzz-load"],
          extra=["-DCMAKE_C_COMPILER=clang", "-DCMAKE_CXX_COMPILER=clang++", "-DDSQ_FUZZ=ON",
                 "-DDSQ_BUILD_TESTS=OFF"])
    work = tmp_path / "corpus"  # new units go here, never into the repository
    work.mkdir()
    art = tmp_path / "artifacts"
    art.mkdir()
    seeds = [str(CORPUS)] + ([str(REGRESSIONS)] if REGRESSIONS.exists() else [])
    env = dict(os.environ, **SAN_ENV)
    r = subprocess.run([str(tmp_path / "b" / "dsq-fuzz-load"), f"-max_total_time={FUZZ_SECONDS}",
                        "-print_final_stats=1", "-rss_limit_mb=2048", "-timeout=20", "-max_len=16384",
                        f"-artifact_prefix={art}/", str(work), *seeds],
                       capture_output=True, text=True, env=env, timeout=FUZZ_SECONDS + 240)
    crashes = sorted(p.name for p in art.iterdir())
    assert r.returncode == 0 and not crashes, f"fuzzer found {crashes}:\n" + r.stderr[-8000:]
    execs = re.search(r"stat::number_of_executed_units:\s*(\d+)", r.stderr)
    assert execs and int(execs.group(1)) > 100, r.stderr[-3000:]
