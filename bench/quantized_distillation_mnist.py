"""Quantized distillation on MNIST (Polino et al. 2018), measured on .dsq files.

Trains a wide teacher (MLP 784-1200-1200-10 with dropout) and a LeNet-300-100 student,
then compares, at 4 bits (and 2 bits) per weight:
  - plain post-training quantization (quantize.quantize) of the normally trained student;
  - quantized distillation (distill.quantized_distillation) of the same student
    architecture from the same initialization, for the same number of epochs;
  - differentiable quantization (distill.differentiable_quantization) of the normally
    trained student (points only, a short run);
with the full-precision student, the distilled full-precision student and the teacher as
references. Every model is exported with weights="auto" (4-bit weights become per-row
codebooks, Huffman-coded where it saves bytes) and evaluated in the engine on the 10k
test images; sizes are the real .dsq file bytes, errors are fractions.

    nice python bench/quantized_distillation_mnist.py            # full run (< 45 min, 2 cores)
    python bench/quantized_distillation_mnist.py --quick         # smoke run on 5k images

Writes bench/results/quantized_distillation_mnist.{json,md} (--out to change).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any, Dict, List

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import deepsqueeze
from deepsqueeze.convert import export, models
from deepsqueeze.convert.core import TrainConfig, evaluate, fit
from deepsqueeze.convert.data import mnist_loaders
from deepsqueeze.convert.distill import (DifferentiableQuantConfig, DistillConfig,
                                         QuantizedDistillConfig, differentiable_quantization,
                                         distill, kl_to_teacher, quantized_distillation)
from deepsqueeze.convert.quantize import QuantizeConfig, quantize

HERE = os.path.dirname(os.path.abspath(__file__))


class WideMLP(nn.Module):
    """The teacher: 784-1200-1200-10 with ReLU and dropout (Hinton et al. 2015's MNIST
    teacher shape)."""

    def __init__(self, hidden: int = 1200, dropout: float = 0.3):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 10)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = self.drop(F.relu(self.fc1(x)))
        x = self.drop(F.relu(self.fc2(x)))
        return self.fc3(x)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def engine_eval(model: nn.Module, name: str, tmp: str, x: np.ndarray, y: np.ndarray) -> Dict[str, Any]:
    """Export with weights="auto", run the file in the engine on (x, y); sizes and errors."""
    model.eval()
    path = os.path.join(tmp, f"{name}.dsq")
    export(model, torch.from_numpy(x[:1]), path, weights="auto")
    engine = deepsqueeze.load(path, threads=2)
    t0 = time.perf_counter()
    logits = np.concatenate([engine.run(x[i:i + 1000]) for i in range(0, len(x), 1000)])
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        ref = torch.cat([model(torch.from_numpy(x[i:i + 1000])) for i in range(0, len(x), 1000)]).numpy()
    layers = json.loads(engine.metadata["dsq.export_config"])["layers"]

    def describe(enc: Dict[str, Any]) -> str:
        v = enc.get("values")
        if v == "codebook":
            v = f"cb{enc.get('codebook_bits')}{'/row' if enc.get('codebook_per_row') else ''}"
        lay = enc.get("layout", "dense")
        huff = "+huff" if enc.get("huffman") else ""
        return f"{v}{'' if lay == 'dense' else ' ' + lay}{huff}"

    return {
        "dsq_bytes": os.path.getsize(path),
        "error": float(np.mean(logits.argmax(1) != y)),
        "torch_error": float(np.mean(ref.argmax(1) != y)),
        "max_abs_diff_vs_torch": float(np.abs(logits - ref).max()),
        "engine_seconds_10k": round(seconds, 3),
        "weights": {k: describe(v) for k, v in layers.items()},
        "weight_params": int(sum(m.weight.numel() for m in model.modules()
                                 if isinstance(m, (nn.Linear, nn.Conv2d)))),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher-epochs", type=float, default=8)
    ap.add_argument("--student-epochs", type=float, default=10)
    ap.add_argument("--dq-epochs", type=float, default=2)
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 2])
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (on a shared machine more than 1 can be far slower)")
    ap.add_argument("--quick", action="store_true", help="5k training images, 1 epoch each")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "quantized_distillation_mnist"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.teacher_epochs = args.student_epochs = args.dq_epochs = 1
    t_start = time.perf_counter()

    data = mnist_loaders(batch_size=128, limit_train=5000 if args.quick else None)
    x_test, y_test = data.test_arrays
    log(f"MNIST: {len(data.train.dataset)} training, {len(x_test)} test images")
    train = lambda epochs, lr=1e-3: TrainConfig(epochs=epochs, lr=lr, lr_schedule="cosine",  # noqa: E731
                                                progress=sys.stderr.isatty())
    dcfg = DistillConfig(temperature=args.temperature, alpha=args.alpha)
    rows: List[Dict[str, Any]] = []
    tmp = tempfile.mkdtemp(prefix="dsq_qd_")

    def add(name: str, model: nn.Module, method: str, bits, seconds: float, teacher=None):
        r = {"model": name, "method": method, "bits": bits, "train_seconds": round(seconds, 1)}
        r.update(engine_eval(model, name, tmp, x_test, y_test))
        if teacher is not None:
            r["kl_to_teacher"] = kl_to_teacher(model, teacher, data.test)
        rows.append(r)
        log(f"{name:28s} error {100 * r['error']:.2f}% (torch {100 * r['torch_error']:.2f}%)  "
            f"{r['dsq_bytes'] / 1024:.1f} KB  {r['weights']}")

    # teacher
    torch.manual_seed(0)
    teacher = WideMLP()
    log("training the teacher (784-1200-1200-10)")
    h = fit(teacher, data.train, train(args.teacher_epochs), desc="teacher")
    teacher.eval()
    add("teacher 784-1200-1200-10", teacher, "full precision", 32, h["seconds"])

    # the student trained normally (reference, and the base of PTQ and DQ)
    student_init = models.lenet_300_100(seed=1).train()
    student = copy.deepcopy(student_init)
    log("training the student (LeNet-300-100) on the labels")
    h = fit(student, data.train, train(args.student_epochs), desc="student")
    add("student fp32", student, "full precision, labels", 32, h["seconds"], teacher)

    plain_kd = copy.deepcopy(student_init)
    log("distilling the full-precision student")
    h = distill(plain_kd, teacher, data.train, dcfg, train(args.student_epochs))
    add("student fp32 distilled", plain_kd, "full precision, distillation", 32, h["seconds"], teacher)

    for bits in args.bits:
        qcfg = QuantizeConfig(bits=bits, scheme="asymmetric", granularity="channel")
        ptq = copy.deepcopy(student)
        with torch.no_grad():
            quantize(ptq, qcfg)
        add(f"student {bits}-bit PTQ", ptq, "post-training quantization (per channel, min-max)",
            bits, 0.0, teacher)

        qd = copy.deepcopy(student_init)
        log(f"quantized distillation at {bits} bits")
        h = quantized_distillation(qd, teacher, data.train,
                                   QuantizedDistillConfig(distill=dcfg, quantize=qcfg),
                                   train(args.student_epochs))
        add(f"student {bits}-bit QD", qd, "quantized distillation (per channel)", bits,
            h["seconds"], teacher)

        dq = copy.deepcopy(student)
        log(f"differentiable quantization at {bits} bits (points only)")
        h = differentiable_quantization(dq, teacher, data.train,
                                        DifferentiableQuantConfig(bits=bits, init="uniform",
                                                                  per_layer=False, distill=dcfg),
                                        train(args.dq_epochs, lr=1e-4))
        add(f"student {bits}-bit DQ", dq, "differentiable quantization (per channel points, uniform init)",
            bits, h["seconds"], teacher)

    result = {
        "benchmark": "quantized_distillation_mnist",
        "machine": {"cpu_threads": args.threads, "python": platform.python_version(),
                    "torch": torch.__version__, "platform": platform.platform()},
        "settings": {"teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs,
                     "dq_epochs": args.dq_epochs, "temperature": args.temperature,
                     "alpha": args.alpha, "optimizer": "adam, lr 1e-3 (DQ: 1e-4), cosine, batch 128",
                     "train_images": len(data.train.dataset), "test_images": int(len(x_test)),
                     "quick": args.quick},
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "records": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(result))
    log(f"done in {result['total_seconds']:.0f} s; wrote {args.out}.json and .md")
    print(markdown(result))
    return 0


def markdown(result: Dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# Quantized distillation on MNIST",
        "",
        f"Teacher MLP 784-1200-1200-10 (dropout 0.3, {s['teacher_epochs']:g} epochs); student "
        f"LeNet-300-100 ({s['student_epochs']:g} epochs); distillation T = {s['temperature']:g}, "
        f"alpha = {s['alpha']:g}; {s['train_images']} training images. Every model exported "
        "with `weights=\"auto\"` and run in the engine on the "
        f"{s['test_images']} test images; size = the .dsq file's bytes (weights, biases, graph, "
        "metadata). Quantization is asymmetric per output channel; PTQ and DQ start from the "
        "student trained on labels, QD from the same initialization with the same epochs. DQ "
        "starts with 2^bits points evenly spread over each row's min..max (the min-max grid "
        "without PTQ's snapping of one level to 0) and trains only the points.",
        "",
        "| model | method | bits | .dsq bytes | vs fp32 student | test error (engine) | "
        "KL to teacher | weight encodings |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    base = next((r["dsq_bytes"] for r in result["records"] if r["model"] == "student fp32"), None)
    for r in result["records"]:
        ratio = f"{base / r['dsq_bytes']:.1f}x" if base and r["model"].startswith("student") else ""
        kl = f"{r['kl_to_teacher']:.4f}" if "kl_to_teacher" in r else ""
        enc = ", ".join(sorted(set(r["weights"].values())))
        lines.append(f"| {r['model']} | {r['method']} | {r['bits']} | {r['dsq_bytes']:,} | {ratio} | "
                     f"{100 * r['error']:.2f}% | {kl} | {enc} |")
    lines += ["", f"Total run time {result['total_seconds']:.0f} s on {result['machine']['cpu_threads']} "
              "threads (shared machine).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
