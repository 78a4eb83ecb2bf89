"""``biper qe``: BiPer's quantization error for Laplace latent weights (closed form, Monte Carlo).

    biper qe --omega 20 --b 0.05 [--gamma G | --gamma-opt] [--mc N] [--json]
    biper qe --b 0.05 --target-qe 0.05 [--relative] [--target-gamma opt|one]
    biper qe --plot docs/img/qe_vs_omega_b.png [--mc N]
    biper qe --surrogate tanh:5 --omega 20 --b 0.05 [--mc N] [--json]
    biper qe --surrogate all --plot docs/img/qe_surrogates.png [--mc N]

JSON keys: ``omega0``, ``b``, ``x``, ``gamma``, ``e_sin2``, ``gamma_opt``, ``qe`` (at the
requested gamma), ``qe_opt``, ``qe_relative``, ``qe_mc`` (null without ``--mc``),
``qe_mc_stderr``, ``mc_n``; with ``--surrogate NAME[:param]`` (sine, tanh:beta, fourier:K,
triangle, square; `biper.theory.surrogates`) the same keys for F = that surrogate, plus
``surrogate`` and ``e_f2`` = E[F^2] (``e_sin2`` stays E[sin^2]); with ``--target-qe``: ``omega0_for_target``; with ``--plot``: ``plot``.
"""

from __future__ import annotations

import math


def add_parser(sub) -> None:
    p = sub.add_parser("qe", help="BiPer quantization error: closed form, Monte Carlo, omega0 for a target, plot",
                       description="Quantization error of BiPer for w ~ Laplace(0, b): "
                                   "QE = E[(sin(omega0 w) - gamma sign(sin(omega0 w)))^2].")
    p.add_argument("--omega", type=float, metavar="W", help="frequency omega0 (rad per weight unit)")
    p.add_argument("--b", type=float, metavar="B", help="Laplace scale b of the latent weights")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gamma", type=float, metavar="G", default=None, help="scale gamma (default 1)")
    g.add_argument("--gamma-opt", action="store_true", help="use the optimal scale gamma* = E|sin(omega0 w)|")
    p.add_argument("--mc", type=int, metavar="N", default=0,
                   help="also estimate QE by Monte Carlo with N samples (with --plot: samples per point)")
    p.add_argument("--seed", type=int, default=0, help="Monte Carlo seed (default 0)")
    p.add_argument("--target-qe", type=float, metavar="T", help="print the omega0 reaching QE = T for this b")
    p.add_argument("--relative", action="store_true", help="--target-qe is QE / E[sin^2], not absolute")
    p.add_argument("--target-gamma", choices=("opt", "one"), default="opt",
                   help="scale assumed by --target-qe: gamma* (default) or 1")
    p.add_argument("--plot", metavar="FILE", help="draw QE against omega0*b (theory + Monte Carlo) to FILE.png")
    p.add_argument("--surrogate", metavar="NAME[:P]",
                   help="QE of a periodic surrogate F instead of the sine: sine, tanh[:beta], fourier[:K], "
                        "triangle, square (with --plot: 'all' draws every surrogate)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def _check(args) -> None:
    from ..errors import BiperError

    for name in ("omega", "b", "gamma", "target_qe"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise BiperError(f"--{name.replace('_', '-')} must be finite, got {value}")
    for name in ("omega", "b", "target_qe"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise BiperError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    if args.mc < 0:
        raise BiperError(f"--mc must be >= 0, got {args.mc}")
    if args.target_qe is not None:
        if args.b is None:
            raise BiperError("--target-qe needs --b (the layer's Laplace scale)")
        if args.omega is not None:
            raise BiperError("--target-qe chooses omega0; do not give --omega with it")
    elif args.relative:
        raise BiperError("--relative only applies to --target-qe")
    elif (args.omega is None) != (args.b is None):
        raise BiperError("give both --omega and --b (QE depends on omega0 * b)")
    elif args.omega is None and not args.plot:
        raise BiperError("give --omega W --b B, --b B --target-qe T, or --plot FILE")
    if args.surrogate is not None:
        if args.target_qe is not None:
            raise BiperError("--target-qe applies to the sine only; do not give --surrogate with it")
        if args.surrogate != "all" or args.omega is not None:
            _parse_surrogate(args.surrogate)


def _parse_surrogate(spec: str) -> tuple[str, dict]:
    """('tanh', {'beta': 5.0}) from 'tanh:5'; BiperError on a bad name or parameter."""
    from ..errors import BiperError
    from ..theory.surrogates import SURROGATES

    name, _, param = spec.partition(":")
    key = {"tanh": "beta", "fourier": "K"}.get(name)
    if name not in SURROGATES:
        raise BiperError(f"--surrogate: unknown surrogate {name!r}; valid: {', '.join(SURROGATES)}")
    if param and key is None:
        raise BiperError(f"--surrogate: {name!r} takes no parameter, got {spec!r}")
    if not param:
        return name, {}
    try:
        value = float(param)
    except ValueError:
        raise BiperError(f"--surrogate: the {name} parameter must be a number, got {param!r}") from None
    if not math.isfinite(value) or value <= 0 or (name == "fourier" and not 1 <= value <= 4096):
        raise BiperError(f"--surrogate: {key} must be {'in [1, 4096]' if key == 'K' else '> 0 and finite'}, got {param}")
    return name, {key: value}


def run(args) -> int:
    import json

    _check(args)
    out: dict = {}
    if args.omega is not None:
        out.update(_point(args) if args.surrogate is None else _surrogate_point(args))
    if args.target_qe is not None:
        from ..analysis.flexible_init import omega0_for_target

        omega0 = omega0_for_target(args.b, args.target_qe, args.relative, args.target_gamma)
        out.update({"b": args.b, "target_qe": args.target_qe, "relative": args.relative,
                    "target_gamma": args.target_gamma, "omega0_for_target": omega0,
                    "x_for_target": omega0 * args.b})
    if args.plot and args.surrogate is not None:
        from ..analysis.surrogate_plots import plot_surrogate_qe

        out["plot"] = plot_surrogate_qe(args.plot, mc_n=args.mc or 20_000, seed=args.seed)
    elif args.plot:
        from ..analysis.plots import plot_qe_curve

        mark = args.omega * args.b if args.omega is not None else None
        out["plot"] = plot_qe_curve(args.plot, mc_n=args.mc or 20_000, seed=args.seed, mark_x=mark)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print(out)
    return 0


def _point(args) -> dict:
    from .. import theory

    x = args.omega * args.b
    gamma = float(theory.gamma_opt(x)) if args.gamma_opt else (1.0 if args.gamma is None else args.gamma)
    out = {
        "omega0": args.omega,
        "b": args.b,
        "x": x,
        "gamma": gamma,
        "e_sin2": float(theory.e_sin2(x)),
        "gamma_opt": float(theory.gamma_opt(x)),
        "qe": float(theory.qe(x, gamma)),
        "qe_opt": float(theory.qe_opt(x)),
        "qe_relative": float(theory.qe_relative(x, gamma)),
        "frac_beyond_first_lobe": float(theory.frac_beyond_first_lobe(x)),
        "frac_sign_flip": float(theory.frac_sign_flip(x)),
        "qe_mc": None,
        "qe_mc_stderr": None,
        "mc_n": 0,
    }
    if args.mc:
        from ..analysis.measure import qe_monte_carlo
        from ..quantizers import get_quantizer

        mc = qe_monte_carlo(get_quantizer("biper", omega0=args.omega), "laplace", scale=args.b,
                            n=args.mc, gamma=gamma, seed=args.seed)
        out.update({"qe_mc": mc.qe, "qe_mc_stderr": mc.stderr, "mc_n": mc.n})
    return out


def _surrogate_point(args) -> dict:
    from ..analysis import theory
    from ..theory import surrogates

    name, param = _parse_surrogate(args.surrogate)
    x = args.omega * args.b
    m = surrogates.moments(name, x, **param)
    gamma = m["e_fs"] if args.gamma_opt else (1.0 if args.gamma is None else args.gamma)
    q = m["e_f2"] - 2.0 * gamma * m["e_fs"] + gamma * gamma
    out = {
        "surrogate": args.surrogate, "omega0": args.omega, "b": args.b, "x": x, "gamma": gamma,
        "e_sin2": float(theory.e_sin2(x)), "e_f2": m["e_f2"], "gamma_opt": m["e_fs"], "qe": q,
        "qe_opt": m["e_f2"] - m["e_fs"] ** 2, "qe_relative": q / m["e_f2"],
        "frac_beyond_first_lobe": float(theory.frac_beyond_first_lobe(x)),
        "frac_sign_flip": float(theory.frac_sign_flip(x)),
        "qe_mc": None, "qe_mc_stderr": None, "mc_n": 0,
    }
    if args.mc:
        from ..analysis.measure import qe_monte_carlo
        from ..quantizers.periodic import surrogate_quantizer

        quantizer = surrogate_quantizer(args.surrogate, args.omega)
        mc = qe_monte_carlo(quantizer, "laplace", scale=args.b, n=args.mc, gamma=gamma, seed=args.seed,
                            target="forward")
        out.update({"qe_mc": mc.qe, "qe_mc_stderr": mc.stderr, "mc_n": mc.n})
    return out


def _print(out: dict) -> None:
    if "x" in out:
        print(f"omega0 * b          = {out['x']:.6g}   (omega0 = {out['omega0']:g}, b = {out['b']:g})")
        print(f"E[sin^2]            = {out['e_sin2']:.6f}")
        if "surrogate" in out:
            print(f"surrogate           = {out['surrogate']}   E[F^2] = {out['e_f2']:.6f}")
        print(f"gamma*              = {out['gamma_opt']:.6f}")
        label = f"QE(gamma={out['gamma']:.4g})"
        print(f"{label:<20}= {out['qe']:.6f}   ({out['qe_relative']:.4f} of {'E[F^2]' if 'surrogate' in out else 'E[sin^2]'})")
        print(f"QE*                 = {out['qe_opt']:.6f}")
        print(f"beyond first lobe   = {100 * out['frac_beyond_first_lobe']:.3f}%   "
              f"sign flipped = {100 * out['frac_sign_flip']:.3f}%")
        if out["qe_mc"] is not None:
            z = (out["qe_mc"] - out["qe"]) / out["qe_mc_stderr"] if out["qe_mc_stderr"] else 0.0
            print(f"QE Monte Carlo      = {out['qe_mc']:.6f} +- {out['qe_mc_stderr']:.6f}"
                  f"   (n = {out['mc_n']}, Laplace; {z:+.2f} s.e. from theory)")
    if "omega0_for_target" in out:
        kind = "QE/E[sin^2]" if out["relative"] else "QE"
        gname = "gamma*" if out["target_gamma"] == "opt" else "gamma=1"
        print(f"omega0 for {kind} = {out['target_qe']:g} at {gname}, b = {out['b']:g}: "
              f"{out['omega0_for_target']:.6g}   (omega0 * b = {out['x_for_target']:.6g})")
    if "plot" in out:
        print(f"wrote {out['plot']}")
