"""``biper recipes [NAME] [--json]``: list the packaged training recipes, or print one.

Without a name: one line per recipe (name, model, weight method, epochs per stage, description).
With a name: the recipe's YAML with its ``base:`` chain resolved, ready to copy and edit.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("recipes", help="list training recipes or show one")
    p.add_argument("name", nargs="?", help="show this recipe, fully resolved")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args) -> int:
    import json

    from ..recipes import describe_recipes, load_recipe

    if args.name:
        data = load_recipe(args.name)
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            import yaml

            print(yaml.safe_dump(data, sort_keys=False), end="")
        return 0
    rows = describe_recipes()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        epochs = "+".join(str(e) for e in r["epochs"])
        print(f"{r['name']:<{width}}  {r['model'] or '?':<18} {r['method']:<15} {epochs:>8} ep  {r['description']}")
    return 0
