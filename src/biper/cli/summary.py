"""``biper summary MODEL_OR_RECIPE``: Larq-style per-layer table of a binary model.

The argument may be a packed model file, a training checkpoint, a recipe (packaged name or
YAML path; its last stage's model) or a registered model name (binarized with the default
config unless ``--float``). Shows parameters by precision, memory in bits and KiB, binary vs
float MACs and the totals ``OPs = BOPs/64 + FLOPs`` with the compression ratio.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("summary", help="per-layer parameters, memory and MACs of a model")
    p.add_argument("target", metavar="MODEL_OR_RECIPE",
                   help="packed model file, checkpoint, recipe name/path or model name")
    p.add_argument("--input-size", type=lambda s: tuple(int(v) for v in s.split(",")), default=None,
                   help="C,H,W of one input (default: the model's)")
    p.add_argument("--float", action="store_true", help="for a model name: do not binarize it")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args) -> int:
    import dataclasses
    import json

    from ..deploy.summary import resolve_target, summarize

    model, name, input_size = resolve_target(args.target, binarize=not args.float)
    summary = summarize(model, args.input_size or input_size, name=name)
    if args.json:
        print(json.dumps({
            "name": summary.name, "input_size": list(summary.input_size),
            "layers": [dataclasses.asdict(layer) for layer in summary.layers],
            "binary_params": summary.binary_params, "float_params": summary.float_params,
            "memory_bits": summary.memory_bits, "float32_bits": summary.float32_bits,
            "compression": summary.compression, "bops": summary.bops, "flops": summary.flops,
            "ops": summary.ops,
        }, indent=2))
        return 0
    print(summary.table())
    return 0
