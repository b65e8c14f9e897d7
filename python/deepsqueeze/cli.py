"""The `deepsqueeze` command: inspect, run, compress and demo."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

import numpy as np


class UserError(Exception):
    """A mistake of the user's: printed as one line on stderr, exit status 2."""


DECODE_HELP = ("when sparse / codebook weights are decoded: once at load (default), or per tile in every run "
               "(stream: resident weights stay near the file size)")


def _load(path: str, threads: Optional[int] = None, decode: str = "load"):
    import deepsqueeze

    if not os.path.exists(path):
        raise UserError(f"no such file: {path}")
    try:
        return deepsqueeze.load(path, threads=threads, decode=decode)
    except deepsqueeze.FormatError as e:
        raise UserError(f"{path} is not a valid .dsq file: {e}") from None
    except deepsqueeze.UnsupportedModelError as e:
        raise UserError(f"{path} cannot run in this engine: {e}") from None
    except OSError as e:
        raise UserError(str(e)) from None


def cmd_inspect(args) -> int:
    from .inspect import layer_table

    if args.input and not args.energy:
        raise UserError("--input is only used with --energy")
    model = _load(args.file, threads=1, decode=args.decode)
    print(f"{args.file}")
    meta = model.metadata
    for key in ("dsq.source_model", "dsq.producer", "dsq.export_config", "dsq.notes"):
        if key in meta:
            print(f"  {key}: {meta[key]}")
    for i in model.inputs:
        print(f"  input  {i['name']}: {tuple('N' if d is None else d for d in i['shape'])} {i['dtype']}")
    for o in model.outputs:
        print(f"  output {o['name']}: {tuple('N' if d is None else d for d in o['shape'])} {o['dtype']}")
    print()
    print(layer_table(model.layers(), file_bytes=os.path.getsize(args.file), tensors=args.file))
    print(f"weights held in memory after load (decode={model.decode}): {model.weight_memory:,} bytes")
    if args.energy:
        print()
        _print_energy(model, args)
    return 0


def _print_energy(model, args) -> None:
    """One inference (zeros of the declared shape, dynamic dims 1, or --input), then the
    modeled energy per layer and in total; RAPL-measured joules where readable."""
    from . import energy

    if args.input:
        if len(args.input) != len(model.inputs):
            raise UserError(f"the model takes {len(model.inputs)} input(s); got {len(args.input)} --input")
        try:
            arrays = [np.load(p, allow_pickle=False) for p in args.input]
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read --input: {e}") from None
        source = ", ".join(args.input)
    else:
        arrays = [np.zeros([1 if d is None else d for d in i["shape"]], np.float32) for i in model.inputs]
        source = "zeros of shape " + ", ".join(str(tuple(a.shape)) for a in arrays)
    model.reset_counters()
    try:
        model.run(arrays)
    except ValueError as e:
        raise UserError(str(e)) from None
    e = model.energy(cache_bytes=args.cache_mib * 1024 * 1024)
    print(f"energy of one inference on {source}:")
    print(energy.format_report(e))
    measured = energy.rapl_joules(lambda: model.run(arrays))
    if measured is None:
        print("measured (RAPL): not available on this machine")
    else:
        print(f"measured (RAPL, whole package): {measured['joules_per_call'] * 1e6:.3f} uJ per inference "
              f"over {measured['calls']} calls")


def cmd_run(args) -> int:
    model = _load(args.file, threads=args.threads, decode=args.decode)
    if len(args.input) != len(model.inputs):
        raise UserError(f"the model takes {len(model.inputs)} input(s) "
                        f"({', '.join(i['name'] for i in model.inputs)}); got {len(args.input)} --input")
    arrays = []
    for path in args.input:
        try:
            arrays.append(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path}: {e}") from None
    try:
        t0 = time.perf_counter()
        result = model.run(arrays)
        elapsed = time.perf_counter() - t0
    except ValueError as e:
        raise UserError(str(e)) from None
    outputs = list(result.values())
    if args.output and len(args.output) != len(outputs):
        raise UserError(f"the model has {len(outputs)} output(s); got {len(args.output)} --output")
    for i, y in enumerate(outputs):
        name = model.outputs[i]["name"]
        if args.output:
            np.save(args.output[i], y)
            print(f"{name}: {y.shape} -> {args.output[i]}")
        else:
            print(f"{name}: shape {y.shape}")
            print(np.array2string(y, threshold=64, precision=5))
    print(f"ran in {elapsed * 1e3:.3f} ms", file=sys.stderr)
    return 0


def _need_convert():
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("this command needs PyTorch: pip install 'deepsqueeze[convert]' "
                        "(or pip install torch==2.13.0)") from None
    from .datasets import DatasetNotFoundError, mnist_path
    try:
        mnist_path()
    except DatasetNotFoundError as e:
        raise UserError(str(e)) from None


def cmd_compress(args) -> int:
    _need_convert()
    from .compress_report import print_summary
    from deepsqueeze.convert.pipeline import BUILTIN_MODELS, compress, load_model

    sparsity = args.sparsity
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise UserError(f"--sparsity must be in [0, 1), got {sparsity}")
    if args.block < 1:
        raise UserError(f"--block must be >= 1, got {args.block}")
    if args.epochs_scale <= 0:
        raise UserError(f"--epochs-scale must be > 0, got {args.epochs_scale}")
    try:
        model = load_model(args.model)
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from None
    try:
        summary = compress(model, args.output, recipe=args.recipe, data=args.data,
                           sparsity=sparsity, fc_bits=args.fc_bits, conv_bits=args.conv_bits,
                           epochs_scale=args.epochs_scale, threads=args.threads,
                           preset=args.model if args.model in BUILTIN_MODELS else None, values=args.values,
                           block=args.block)
    except ValueError as e:
        raise UserError(str(e)) from None
    print_summary(summary, model_name=args.model)
    return 0


def cmd_demo(args) -> int:
    _need_convert()
    from .demo import run_demo

    return run_demo(out_dir=args.out_dir, threads=args.threads, epochs_scale=args.epochs_scale)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deepsqueeze",
                                description="Run compressed PyTorch models from one packed .dsq file.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"deepsqueeze {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sp = sub.add_parser("inspect", help="per-layer table of a .dsq file: ops, encodings, bytes, kernels")
    sp.add_argument("file", help="the .dsq file")
    sp.add_argument("--decode", choices=("load", "stream"), default="load", help=DECODE_HELP)
    sp.add_argument("--energy", action="store_true",
                    help="run one inference and print the modeled energy per layer and in total")
    sp.add_argument("--input", action="append", metavar="X.npy",
                    help="with --energy: the input (.npy) instead of zeros; repeat per model input")
    sp.add_argument("--cache-mib", type=int, default=32,
                    help="with --energy: cache size the weights must fit to count as SRAM (default 32)")
    sp.set_defaults(func=cmd_inspect)
    sp = sub.add_parser("run", help="run a .dsq file on .npy input(s)")
    sp.add_argument("file", help="the .dsq file")
    sp.add_argument("--input", action="append", required=True, metavar="X.npy",
                    help="a float32 .npy input; repeat once per model input, in order")
    sp.add_argument("--output", action="append", metavar="Y.npy",
                    help="where to save each output (.npy); default: print them")
    sp.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    sp.add_argument("--decode", choices=("load", "stream"), default="load", help=DECODE_HELP)
    sp.set_defaults(func=cmd_run)
    sp = sub.add_parser("compress", help="compress a PyTorch model with a recipe on a built-in data set "
                        "and export it to .dsq")
    sp.add_argument("model", help="a whole nn.Module saved with torch.save (.pt; only trusted files: "
                    "loading a pickle runs code), or a built-in pretrained model: lenet_300_100")
    sp.add_argument("--recipe", default="deep_compression", choices=("deep_compression", "lowrank_int8"))
    sp.add_argument("--data", default="mnist", choices=("mnist",), help="built-in training/test data")
    sp.add_argument("-o", "--output", required=True, help="the .dsq file to write")
    sp.add_argument("--sparsity", type=float, default=None,
                    help="deep_compression: final fraction of zero weights per layer (default: the built-in "
                    "model's preset, else 0.9)")
    sp.add_argument("--fc-bits", type=int, default=5, help="deep_compression: codebook bits of FC layers")
    sp.add_argument("--conv-bits", type=int, default=8, help="deep_compression: codebook bits of convs")
    sp.add_argument("--values", default="codebook", choices=("codebook", "int8", "int8_shared"),
                    help="deep_compression: k-means codebooks (the paper); int8 per channel with calibrated "
                    "u8 activations (sparse int8 kernels: less energy, docs/ENERGY.md); or int8_shared: the "
                    "k-means shared values as int8 codes, one scale per layer (same kernels, about "
                    "--conv-bits / --fc-bits bits per nonzero after Huffman)")
    sp.add_argument("--block", type=int, default=1,
                    help="deep_compression: prune in blocks of this many input channels (4: the sparse int8 "
                    "kernels run whole quads, faster at the same density)")
    sp.add_argument("--epochs-scale", type=float, default=1.0,
                    help="multiply every fine-tuning stage's epochs (e.g. 0.25 for a quick run)")
    sp.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    sp.set_defaults(func=cmd_compress)
    sp = sub.add_parser("demo", help="compress the shipped LeNet-300-100 with Deep Compression on MNIST, "
                        "inspect the .dsq file and evaluate it in the engine")
    sp.add_argument("--out-dir", default="deepsqueeze-demo", help="where to write the .dsq files")
    sp.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    sp.add_argument("--epochs-scale", type=float, default=1.0,
                    help="multiply the fine-tuning epochs (e.g. 0.2 for a quicker demo)")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "cache_mib", 1) is not None and getattr(args, "cache_mib", 1) <= 0:
        print("deepsqueeze: error: --cache-mib must be > 0", file=sys.stderr)
        return 2
    if getattr(args, "threads", None) is not None and args.threads < 0:
        print("deepsqueeze: error: --threads must be >= 0", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except UserError as e:
        print(f"deepsqueeze {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
