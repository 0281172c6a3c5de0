"""``chainrule recipes`` (named training recipes, their settings and results) and
``chainrule pretrained`` (the weights shipped in the package)."""

from __future__ import annotations

import argparse
import json

from .common import add_command, add_common


def cmd_recipes(args: argparse.Namespace) -> int:
    """named training recipes: settings, recorded test NLL, shipped weights

    Named training recipes (chainrule.recipes): for each, a one-line description, the full
    `chainrule train` command it stands for, the test NLL it reached where one was recorded,
    and whether its weights are shipped (pretrained:NAME). Run one with `chainrule train
    --recipe NAME`.
    """
    from chainrule import pretrained, recipes

    shipped = {e.get("recipe"): key for key, e in pretrained.index().items()}
    if args.name in recipes.MIXTURES:
        return _print_mixtures([args.name], args.json)
    if args.name:
        recipes.recipe(args.name)  # an unknown name: one line listing the recipes
    chosen = [args.name] if args.name else recipes.names()
    if args.json:
        doc = {
            n: {
                **recipes.recipe(n),
                "command": recipes.recipe_command(n),
                "recorded_result": recipes.recorded_result(n),
                "pretrained": f"pretrained:{shipped[n]}" if n in shipped else None,
            }
            for n in chosen
        }
        if not args.name:
            doc.update(_mixture_docs(list(recipes.MIXTURES)))
        print(json.dumps(doc, indent=2))
        return 0
    for n in chosen:
        r = recipes.recipe(n)
        res = recipes.recorded_result(n)
        nll = (
            f"test NLL {res['test_nll_nats']:.3f} nats ({res.get('source', '')})"
            if res and res.get("test_nll_nats") is not None
            else "test NLL not recorded"
        )
        weights = f"weights: pretrained:{shipped[n]}" if n in shipped else "weights: none shipped"
        print(f"{n}\n  {r['description']}\n  {recipes.recipe_command(n)}\n  {nll}; {weights}")
    if not args.name:
        _print_mixtures(list(recipes.MIXTURES), False)
    print("run one with: chainrule train --recipe NAME [--data-dir DIR] [flags that override it]")
    return 0


def _mixture_docs(names: list[str]) -> dict:
    from chainrule import recipes

    return {
        n: {"kind": "mixture", **recipes.mixture(n), "commands": recipes.mixture_commands(n)}
        for n in names
    }


def _print_mixtures(names: list[str], as_json: bool) -> int:
    """Mixture recipes: description, the commands (members' trainings, then the mix), result."""
    from chainrule import recipes

    if as_json:
        print(json.dumps(_mixture_docs(names), indent=2))
        return 0
    for n in names:
        m = recipes.mixture(n)
        res = m.get("result")
        nll = (
            f"test NLL {res['test_nll_nats']:.3f} nats ({res.get('source', '')})"
            if res
            else "test NLL not recorded"
        )
        steps = "\n".join(f"    {c}" for c in recipes.mixture_commands(n))
        print(
            f"{n} (a mixture: run these commands in turn)\n  {m['description']}\n{steps}\n  {nll}"
        )
    return 0


def cmd_pretrained(args: argparse.Namespace) -> int:
    """the pretrained weights shipped in the package (--checkpoint pretrained:NAME)

    The weights shipped in the package, each made by a recipe: name, model, data, test NLL,
    size. Any command takes --checkpoint pretrained:NAME.
    """
    from chainrule import pretrained

    print(pretrained.describe())
    print(
        "use with: --checkpoint pretrained:NAME (any command) or chainrule.load('pretrained:NAME')"
    )
    return 0


def add_parsers(sub) -> None:
    r = add_command(sub, "recipes", cmd_recipes)
    r.add_argument("name", nargs="?", default=None, help="show only this recipe")
    r.add_argument("--json", action="store_true", help="print the recipes as JSON")
    add_common(r)

    p = add_command(sub, "pretrained", cmd_pretrained)
    add_common(p)
