"""Write the standalone C99 library of a lowered model: model.h, model.c, demo.c, README.md.

`export_c(model, out_dir)` lowers the model (`biper.deploy.cexport.lower`) and writes:

- ``model.h``: ``int biper_predict(const float *input, float *logits)`` and the sizes;
- ``model.c``: the runtime (``csrc/cexport_runtime.c``), the weights as ``const`` arrays
  (sign bits as 16-bit words, float32 values as exact hexadecimal literals), one static arena
  per element type sized at export time, and ``biper_predict`` as a straight list of calls;
- ``demo.c``: ``./demo IN OUT`` reads N images as little-endian float32 (N*C*H*W values) and
  writes N*classes little-endian float32 logits; byte order is handled explicitly;
- ``README.md``: the model, its sizes and the build commands.

Building with ``-DBIPER_DUMP`` makes ``biper_predict`` write, to ``biper_dump_file``, each W1A1
layer's input (tag 1, float32, CHW order) and its integer sums (tag 2, int32, HWC order), as
records ``int32 tag, int32 layer, int32 count, count values`` in the host's byte order;
``./demo IN OUT DUMP`` then writes them to DUMP.

Example::

    >>> import os, tempfile, biper
    >>> from biper.deploy.cemit import export_c
    >>> model = biper.create_model("mlp", binarize=biper.BinarizeConfig()).eval()
    >>> info = export_c(model, tempfile.mkdtemp())
    >>> sorted(os.listdir(info.out_dir)), info.arena_bytes
    (['README.md', 'demo.c', 'model.c', 'model.h'], 304)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import BiperError
from .cexport import Program, lower

__all__ = ["CExport", "export_c", "export_c_checkpoint", "model_input_size"]

_CSRC = Path(__file__).with_name("csrc")
_GEOMETRY = ("cin", "h", "w", "cout", "oh", "ow", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw")


@dataclass
class CExport:
    """What `export_c` wrote: the folder, the program and its static sizes in bytes."""

    out_dir: str
    program: Program
    const_bytes: int
    arena_bytes: int

    @property
    def files(self) -> list[str]:
        return [os.path.join(self.out_dir, f) for f in ("model.h", "model.c", "demo.c", "README.md")]


def _f(v: float) -> str:
    """An exact C99 float literal."""
    v = float(v)
    if math.isnan(v) or math.isinf(v):
        raise BiperError(f"C export: a weight or parameter is {v}; the model cannot be exported")
    return f"{v.hex()}f" if v != 0 else ("-0.0f" if math.copysign(1, v) < 0 else "0.0f")


def sign_words(w: torch.Tensor) -> torch.Tensor:
    """(..., Cin) values -> (..., ceil(Cin/16)) uint16 words as int32: bit j of word k set when
    element 16k+j is negative (``x < 0``); unused high bits 0."""
    cin = w.shape[-1]
    cw = (cin + 15) // 16
    bits = (w < 0).to(torch.int32)
    bits = F.pad(bits, (0, 16 * cw - cin)).reshape(*w.shape[:-1], cw, 16)
    return (bits << torch.arange(16, dtype=torch.int32)).sum(-1, dtype=torch.int32)



class _Writer:
    def __init__(self, prog: Program):
        self.prog, self.arrays, self.decls, self.calls = prog, [], [], []
        self.const_bytes, self._n = 0, 0

    def array(self, values, ctype: str) -> str:
        if values is None:
            return "NULL"
        flat = values.reshape(-1).tolist() if isinstance(values, torch.Tensor) else list(values)
        name = f"k{self._n}"
        self._n += 1
        if ctype == "float":
            items = [_f(v) for v in flat]
            self.const_bytes += 4 * len(flat)
        else:
            items = [f"0x{int(v) & 0xFFFF:04x}" for v in flat]
            self.const_bytes += 2 * len(flat)
        lines = [", ".join(items[i:i + 8]) for i in range(0, len(items), 8)]
        self.arrays.append(f"static const {ctype} {name}[{len(flat)}] = {{\n    " + ",\n    ".join(lines) + "\n};")
        return name

    def ptr(self, t: int) -> str:
        x = self.prog.tensors[t]
        if x.buf is None:
            return "input"
        arena = "arena_f" if x.kind == "f" else "arena_b"
        return f"{arena} + {self.prog.offsets[x.buf]}"

    def struct(self, ctype: str, fields: dict) -> str:
        name = f"L{self._n}"
        self._n += 1
        for k in _GEOMETRY + ("c", "id"):
            if k in fields and not -32768 <= int(fields[k]) <= 32767:
                raise BiperError(f"C export: {ctype[:-2]} {k}={fields[k]} does not fit the runtime's "
                                 "16-bit fields")
        body = ", ".join(f".{k} = {v}" for k, v in fields.items())
        self.decls.append(f"static const {ctype} {name} = {{{body}}};")
        return name

    def op(self, op) -> None:
        p, ins, out = op.params, [self.ptr(t) for t in op.ins], self.ptr(op.out)
        x = self.prog.tensors[op.ins[0]]
        n = self.prog.tensors[op.out].elems
        comment = f"  /* {op.name} */" if op.name else ""
        if op.kind == "fconv":
            fields = {k: p[k] for k in _GEOMETRY + ("isc", "ish", "isw")}
            fields.update(padv=_f(p["padv"]), wf=self.array(p["wf"], "float"),
                          wb=self.array(sign_words(p["wb"]) if p["wb"] is not None else None, "uint16_t"),
                          scale=self.array(p["scale"], "float"), shift=self.array(p["shift"], "float"))
            call = f"fconv(&{self.struct('fconv_t', fields)}, {ins[0]}, {out});"
        elif op.kind == "pack":
            fields = {k: p[k] for k in ("c", "h", "w", "sc", "sh", "sw")}
            fields.update(thr=self.array(p["thr"], "float"), id=p["id"])
            call = f"pack(&{self.struct('pack_t', fields)}, {ins[0]}, {out});"
        elif op.kind == "bconv":
            fields = {k: p[k] for k in _GEOMETRY}
            lo, hi = p["lo"], p["hi"]
            fields.update(pad=p["pad"], wb=self.array(sign_words(p["wb"]), "uint16_t"),
                          scale=self.array(p["scale"], "float"),
                          shift=self.array(p["shift"], "float"), has_lo=int(math.isfinite(lo)),
                          has_hi=int(math.isfinite(hi)), lo=_f(lo if math.isfinite(lo) else 0),
                          hi=_f(hi if math.isfinite(hi) else 0), id=p["id"])
            res = ins[1] if len(ins) > 1 else "NULL"
            call = f"bconv(&{self.struct('bconv_t', fields)}, {ins[0]}, {res}, {out});"
        elif op.kind == "affine":
            call = f"affine({ins[0]}, {out}, {n}, {x.shape[0]}, {self.array(p['a'], 'float')}, " \
                   f"{self.array(p['b'], 'float')});"
        elif op.kind == "clamp":
            lo, hi = p["lo"], p["hi"]
            call = (f"clamp({ins[0]}, {out}, {n}, {int(math.isfinite(lo))}, {_f(lo if math.isfinite(lo) else 0)}, "
                    f"{int(math.isfinite(hi))}, {_f(hi if math.isfinite(hi) else 0)});")
        elif op.kind == "add":
            call = f"add({ins[0]}, {ins[1]}, {out}, {n});"
        elif op.kind == "pool":
            c, h, w = x.shape
            _, oh, ow = self.prog.tensors[op.out].shape
            call = f"pool({ins[0]}, {out}, {c}, {w}, {oh}, {ow}, {p['k']}, {p['s']}, {p['mode']});"
        elif op.kind == "gap":
            call = f"gap({ins[0]}, {out}, {x.shape[0]}, {x.shape[1] * x.shape[2]});"
        elif op.kind == "shortcut":
            c, h, w = x.shape
            call = f"shortcut({ins[0]}, {out}, {c}, {h}, {w}, {p['s']}, {p['front']}, {p['back']});"
        elif op.kind == "relayout":
            c, h, w = x.shape
            sc, sh, sw = x.strides
            call = f"relayout({ins[0]}, {out}, {c}, {h}, {w}, {sc}, {sh}, {sw}, {p['to_hwc']});"
        else:  # pragma: no cover - lower() emits only the kinds above
            raise BiperError(f"C export: no C for op {op.kind!r}")
        self.calls.append(f"    {call}{comment}")


def model_input_size(model: torch.nn.Module) -> tuple[int, int, int]:
    """The registry's (C, H, W) input size of a zoo model."""
    cfg = getattr(model, "model_config", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
        from ..models import model_info

        return tuple(model_info(cfg["name"]).input_size)
    raise BiperError("C export: the model has no registry config; pass input_size=(C, H, W)")


def export_c(model: torch.nn.Module, out_dir: str | os.PathLike, input_size=None, *,
             title: str | None = None, meta: dict | None = None) -> CExport:
    """Lower ``model`` (unpacked binary model) and write the C library into ``out_dir``."""
    input_size = tuple(input_size) if input_size is not None else model_input_size(model)
    prog = lower(model, input_size)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise BiperError(f"C export: output {str(out_dir)!r} exists and is not a folder")
    os.makedirs(out_dir, exist_ok=True)
    w = _Writer(prog)
    for op in prog.ops:
        w.op(op)
    out = prog.tensors[prog.output]
    classes = out.shape[0]
    nf, nb = max(prog.arena.get("f", 0), 1), max(prog.arena.get("b", 0), 1)
    arena_bytes = 4 * prog.arena.get("f", 0) + 2 * prog.arena.get("b", 0)
    c, h, wd = input_size
    title = title or type(model).__name__
    guard = "BIPER_MODEL_H"
    header = f"""/* {title}: standalone C99 inference generated by biper (biper export --format c). */
#ifndef {guard}
#define {guard}

#define BIPER_INPUT_C {c}
#define BIPER_INPUT_H {h}
#define BIPER_INPUT_W {wd}
#define BIPER_INPUT_SIZE {c * h * wd}
#define BIPER_NUM_CLASSES {classes}
#define BIPER_ARENA_BYTES {arena_bytes}

#ifdef BIPER_DUMP
#include <stdio.h>
extern FILE *biper_dump_file;  /* debug records of the W1A1 layers, see model.c */
#endif

/* One preprocessed image, CHW float32 (BIPER_INPUT_SIZE values) -> BIPER_NUM_CLASSES logits.
 * Not reentrant: uses one static arena. Returns 0. */
int biper_predict(const float *input, float *logits);

#endif
"""
    runtime = (_CSRC / "cexport_runtime.c").read_text()
    output_ptr = w.ptr(prog.output)
    source = "\n".join([
        f"/* {title}: generated by biper; do not edit. C99, no dynamic allocation, only standard headers.",
        f" * {len(prog.binary_layers)} W1A1 layers (XNOR-popcount, int32 sums), static arena "
        f"{arena_bytes} bytes. */",
        "#if defined(__clang__)",
        "#pragma STDC FP_CONTRACT OFF",
        "#elif defined(__GNUC__)",
        '#pragma GCC optimize("fp-contract=off")  /* the same float rounding on every target */',
        "#endif",
        *sorted({f"#define BIPER_OP_{'BCONV' if op.kind == 'pack' else op.kind.upper()}" for op in prog.ops}),
        "#include <stddef.h>",
        "#include <stdint.h>",
        '#include "model.h"',
        "", runtime, "/* ---- weights ---- */", *w.arrays, "", *w.decls, "",
        f"static float arena_f[{nf}];",
        f"static uint16_t arena_b[{nb}];", "",
        "int biper_predict(const float *input, float *logits) {",
        "    int i;",
        *w.calls,
        f"    for (i = 0; i < {classes}; ++i) logits[i] = ({output_ptr})[i];",
        "    return 0;",
        "}", ""])
    (Path(out_dir) / "model.h").write_text(header)
    (Path(out_dir) / "model.c").write_text(source)
    (Path(out_dir) / "demo.c").write_text((_CSRC / "cexport_demo.c").read_text())
    info = CExport(str(out_dir), prog, w.const_bytes, arena_bytes)
    (Path(out_dir) / "README.md").write_text(_readme(info, title, meta or {}))
    return info


def _readme(info: CExport, title: str, meta: dict) -> str:
    prog = info.program
    c, h, w = prog.input_size
    norm = ""
    if meta.get("mean") and meta.get("std"):
        norm = (f"Preprocess as in training: scale pixels to [0, 1], subtract mean {meta['mean']} and divide by "
                f"std {meta['std']} per channel.\n")
    return f"""# {title}: standalone C inference

Generated by `biper export --format c`. C99, no dynamic allocation, only the C standard headers.

- input: one float32 image, {c} x {h} x {w} (channels, height, width); output: {prog.tensors[prog.output].shape[0]} logits
- {len(prog.binary_layers)} W1A1 layers run integer XNOR-popcount (int32 sums equal to the
  training-time integer convolution); the full-precision layers run plain float loops
- weights and parameters: {info.const_bytes:,} bytes of `const` data (flash)
- activations: one static arena of {info.arena_bytes:,} bytes (RAM), sized at export time

{norm}
## Build and run

    cc -O2 model.c demo.c -o demo -lm
    ./demo images.f32 logits.f32    # N*{c * h * w} little-endian float32 in, N*{prog.tensors[prog.output].shape[0]} out

In your own code: `#include "model.h"` and call `biper_predict(image, logits)`.

Cortex-M4 library build (sizes: `arm-none-eabi-size model.o`):

    arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 -Os -c model.c

Debug: `-DBIPER_DUMP` and `./demo IN OUT DUMP` write each W1A1 layer's input and integer sums.

## Reference figures

Measured for biper's CIFAR-10 ResNet-20 W1A1 export (18 W1A1 layers), `arm-none-eabi-gcc` 12.2,
`-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 -Os`, `arm-none-eabi-size model.o`:

| | bytes |
|---|---:|
| flash: code + `const` data (text incl. rodata + data) | 47,508 |
| RAM: static arena (bss) | 100,352 |
| RAM: stack (`-fstack-usage`, deepest call chain) | 168 |
| caller's input image (3 x 32 x 32 float32) | 12,288 |

The same code built for aarch64 and run under qemu-user, and linked for qemu's emulated
Cortex-M4F board (mps2-an386), gives logits identical bit for bit to an x86-64 build.
"""


def export_c_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike):
    """Rebuild the model of a training checkpoint and `export_c` it; returns (CExport, model)."""
    from .export import checkpoint_model, default_meta

    ckpt, spec, model = checkpoint_model(checkpoint)
    model.eval()
    meta = default_meta(spec, ckpt.get("config"))
    title = f"{spec.name} ({os.path.basename(str(checkpoint))})"
    return export_c(model, out_dir, model_input_size(model), title=title, meta=meta), model
