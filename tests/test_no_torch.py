"""The engine needs only numpy: import, load and run with torch made unimportable."""
import subprocess
import sys
import textwrap


def test_engine_works_without_torch(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import deepsqueeze
        from deepsqueeze import format as fmt
        from deepsqueeze.builder import GraphBuilder
        b = GraphBuilder()
        x = b.add_input("x", (-1, 8))
        w = b.add_weight("w", np.eye(8, dtype=np.float32), values="int8_channel")
        b.mark_output(b.add_node("linear", [x], weights=[w, None]), "y")
        fmt.write(b.build(), {str(tmp_path / 'm.dsq')!r})
        m = deepsqueeze.load({str(tmp_path / 'm.dsq')!r})
        y = m.run(np.ones((2, 8), np.float32))
        assert y.shape == (2, 8) and abs(float(y.sum()) - 16.0) < 0.1, y
        assert "torch" not in [k for k, v in sys.modules.items() if v is not None]
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
