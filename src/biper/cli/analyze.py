"""``biper analyze CHECKPOINT``: per-layer quantization-error table of a checkpoint or state dict.

    biper analyze runs/x/last.pt [--json] [--plot FILE.png] [--quantizer NAME] [--max-plots N]

The checkpoint's model is rebuilt from its config when possible; otherwise (or for a plain state
dict) binary layers are found by their ``<layer>.weight_quantizer._extra_state`` entries. JSON:
``{"source", "layers": [LayerReport.to_dict(), ...]}`` plus ``plot`` when one was written.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("analyze", help="per-layer quantization error of a checkpoint (table, JSON, histograms)",
                       description="Per-layer Laplace fit, BiPer theory (gamma*, QE) and measured QE of "
                                   "every binary layer of a checkpoint or state dict.")
    p.add_argument("checkpoint", help="checkpoint file (torch.save dict with 'model') or a plain state dict")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", metavar="FILE", help="write weight histograms with the square wave to FILE.png")
    p.add_argument("--quantizer", metavar="NAME", help="weight quantizer of a plain state dict when it "
                   "cannot be inferred (pc, bnn++ and rpc all store only mu)")
    p.add_argument("--max-plots", type=int, default=12, metavar="N", help="at most N layer panels (default 12)")
    p.set_defaults(run=run)


def run(args) -> int:
    import json

    from ..analysis.report import format_table, layer_report, load_layers

    specs, info = load_layers(args.checkpoint, args.quantizer)
    reports = [layer_report(s) for s in specs]
    out = {"source": info, "layers": [r.to_dict() for r in reports]}
    if args.plot:
        from ..analysis.plots import plot_weight_histograms

        out["plot"] = plot_weight_histograms(args.plot, specs, max_layers=args.max_plots)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    where = f"model {info['model']!r} rebuilt from the checkpoint config" if info["source"] == "model" \
        else "binary layers read from the state dict"
    print(f"{args.checkpoint}: {where}")
    if "rebuild_error" in info:
        print(f"(model not rebuilt: {info['rebuild_error']})")
    print(format_table(reports))
    if "plot" in out:
        print(f"wrote {out['plot']}")
    return 0
