"""``biper quantizers [--json] [--kind weight|activation]``: list every registered pair."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("quantizers", help="list forward/backward quantizer pairs with their formulas")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--kind", choices=("weight", "activation"), help="only this kind")
    p.set_defaults(run=run)


def run(args) -> int:
    import json

    from ..quantizers import describe_quantizers

    rows = [r for r in describe_quantizers() if args.kind in (None, r["kind"])]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["parameters"].items()) or "-"
        print(f"{r['name']:<12} {r['kind']:<10} params: {params}")
        print(f"{'':<12} F  = {r['forward']}")
        print(f"{'':<12} B' = {r['backward']}")
    return 0
