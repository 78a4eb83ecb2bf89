"""``biper export CHECKPOINT -o MODEL [--format biper|onnx]``: write a deployment file.

The checkpoint's model is rebuilt from its embedded config, packed (1 bit per binary weight,
scale and BatchNorm folded into one per-channel affine), written, then loaded back and compared
with the checkpoint's model on random inputs (``--no-verify`` skips that check).
``--format c`` writes a standalone C99 library into the folder ``-o`` instead
(`biper.deploy.cemit`), built and compared the same way when a host C compiler exists.
``--format onnx`` writes the same deployed network as standard ONNX
(`biper.deploy.onnx_export`, from a checkpoint or a packed file) and checks it with
onnxruntime when that is installed.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a trained checkpoint to a bit-packed model file")
    p.add_argument("checkpoint", help="training checkpoint (.pt) written by biper train "
                   "(with --format onnx also a packed .biper file)")
    p.add_argument("-o", "--output", required=True,
                   help="file to write (e.g. model.biper, model.onnx); with --format c, a folder")
    p.add_argument("--format", choices=("biper", "c", "onnx"), default="biper",
                   help="biper: the packed file (default); c: standalone C99 library "
                        "(model.h, model.c, demo.c, README.md); onnx: standard ONNX (needs biper[onnx])")
    p.add_argument("--no-verify", action="store_true",
                   help="skip reloading the file and comparing it with the checkpoint's model")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from ..deploy import export_checkpoint, load_packed
    from ..deploy.filetype import require_model_file
    from ..deploy.verify import compare_models
    from ._checks import writable_file

    if args.format == "c":
        require_model_file(args.checkpoint, ("torch",))
        return _run_c(args)
    writable_file(args.output)
    if args.format == "onnx":
        return _onnx(args)
    require_model_file(args.checkpoint, ("torch",))
    info = export_checkpoint(args.checkpoint, args.output)
    result = {
        "output": info.path,
        "file_bytes": info.file_bytes,
        "theoretical_bytes": info.theoretical_bytes,
        "size_ratio": round(info.size_ratio, 4),
        "binary_weights": info.binary_weights,
        "other_params": info.other_params,
        "packed_layers": len(info.report.packed),
        "folded_batchnorms": len(info.report.folded),
        "kept_layers": [list(k) for k in info.report.kept],
        "fold_method": info.report.fold_method,
    }
    if not args.no_verify:
        from ..deploy.export import checkpoint_model

        reference = checkpoint_model(args.checkpoint)[2].eval()
        packed = load_packed(args.output)
        with torch.no_grad():
            result["verify"] = compare_models(reference, packed, packed.packed_meta["meta"].get("input_size"))
    if _print_json(args, result):
        return 0
    print(f"wrote {info.path}: {info.file_bytes / 1024:,.1f} KiB "
          f"({info.size_ratio:.3f}x the theoretical {info.theoretical_bytes / 1024:,.1f} KiB: "
          f"{info.binary_weights:,} 1-bit weights + {info.other_params:,} 32-bit parameters)")
    print(f"packed {len(info.report.packed)} binary layers, folded {len(info.report.folded)} "
          f"BatchNorms ({info.report.fold_method})"
          + (f", kept {len(info.report.kept)} as they were" if info.report.kept else ""))
    return _report_verify(result.get("verify"), "")


def _print_json(args, result: dict) -> bool:
    """With ``--json``, print ``result`` as JSON and return True."""
    if args.json:
        import json

        print(json.dumps(result, indent=2))
    return bool(args.json)


def _report_verify(v: dict | None, how: str) -> int:
    """Print one line about a `compare_models`-style check; 1 when a prediction disagrees."""
    if not isinstance(v, dict):
        return 0
    print(f"verified{how} on {v['samples']} random inputs: predictions agree {v['agree']}/{v['samples']}, "
          f"max |logit difference| {v['max_abs_diff']:.2e}"
          + (" (against the deployed signs: this model trains with soft weights)" if v.get("soft_weights") else ""))
    return 1 if v["agree"] != v["samples"] else 0


def _run_c(args) -> int:
    from ..deploy.cemit import export_c_checkpoint
    from ..deploy.cverify import find_cc, verify_c

    info, model = export_c_checkpoint(args.checkpoint, args.output)
    prog = info.program
    result = {"output": info.out_dir, "files": info.files, "binary_layers": len(prog.binary_layers),
              "ops": len(prog.ops), "const_bytes": info.const_bytes, "arena_bytes": info.arena_bytes}
    if not args.no_verify:
        result["verify"] = (verify_c(info.out_dir, model, prog.input_size) if find_cc()
                            else "skipped: no C compiler found")
    if not _print_json(args, result):
        print(f"wrote {info.out_dir}/{{model.h,model.c,demo.c,README.md}}: {len(prog.ops)} layer calls, "
              f"{len(prog.binary_layers)} W1A1 layers, {info.const_bytes:,} bytes of weights, "
              f"{info.arena_bytes:,}-byte static arena")
        if isinstance(result.get("verify"), str):
            print(f"verification {result['verify']}")
        return _report_verify(result.get("verify"), " with the host C compiler")
    v = result.get("verify")
    return 1 if isinstance(v, dict) and v["agree"] != v["samples"] else 0


def _onnx(args) -> int:
    from ..deploy.onnx_export import export_file_onnx

    r = export_file_onnx(args.checkpoint, args.output, verify=not args.no_verify)
    if _print_json(args, r):
        return 0
    print(f"wrote {r['path']}: ONNX opset {r['opset']}, {r['file_bytes'] / 1024:,.1f} KiB, "
          f"{r['size_ratio']:.3f}x the packed file ({r['biper_bytes'] / 1024:,.1f} KiB); "
          f"input (batch, {', '.join(map(str, r['input_size']))}) float32, {r['num_outputs']} logits")
    v = r.get("verify")
    if v is None and not args.no_verify:
        print("not verified: onnxruntime is not installed (pip install 'biper[onnx]')")
    return _report_verify(v, " with onnxruntime")
