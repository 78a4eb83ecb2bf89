"""Build and run a C export with a host C compiler, and compare it with the PyTorch model.

`find_cc()` is the first of ``$CC``, ``cc``, ``gcc``, ``clang`` on PATH (or None);
`build_demo(out_dir)` compiles ``demo.c`` + ``model.c`` as its README says (``cc -O2 ... -lm``);
`run_demo(exe, x)` feeds a float32 batch through ``./demo IN OUT`` as little-endian bytes and
returns the logits; `verify_c(out_dir, model, input_size)` does all three on random inputs and
returns the agreement with ``model`` (argmax and max |logit difference|).
`build_mps2(out_dir, exe)` / `run_mps2(exe, x)`: the same demo for a Cortex-M4F, run on qemu's
emulated mps2-an386 board with semihosting for the files (``qemu-system-arm``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile

import numpy as np
import torch

from ..errors import BiperError

__all__ = ["find_cc", "build_demo", "run_demo", "verify_c", "build_mps2", "run_mps2", "M4_FLAGS"]

M4_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")


def find_cc() -> list[str] | None:
    """The host C compiler command, or None when there is none."""
    env = os.environ.get("CC")
    if env and shutil.which(shlex.split(env)[0]):
        return shlex.split(env)
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [name]
    return None


def build_demo(out_dir: str, exe: str | None = None, *, cc: list[str] | None = None,
               flags: tuple[str, ...] = ("-O2",), defines: tuple[str, ...] = ()) -> str:
    """Compile ``out_dir``'s demo; returns the executable's path."""
    cc = cc or find_cc()
    if cc is None:
        raise BiperError("no C compiler found (set CC or install cc)")
    exe = exe or os.path.join(out_dir, "demo")
    cmd = [*cc, *flags, *[f"-D{d}" for d in defines], os.path.join(out_dir, "model.c"),
           os.path.join(out_dir, "demo.c"), "-o", exe, "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BiperError(f"C build failed ({' '.join(cmd)}): {done.stderr.strip().splitlines()[-1:]}")
    return exe


def run_demo(exe: list[str] | str, x: torch.Tensor, dump: bool = False) -> np.ndarray | tuple:
    """Logits (N, classes) of the demo ``exe`` (a command list, e.g. with an emulator) on
    ``x`` (N, C, H, W); with ``dump`` also the BIPER_DUMP records {(tag, layer): array}."""
    cmd = [exe] if isinstance(exe, str) else list(exe)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst, dmp = (os.path.join(tmp, n) for n in ("in.f32", "out.f32", "dump.bin"))
        x.detach().to(torch.float32).contiguous().numpy().astype("<f4").tofile(src)
        done = subprocess.run(cmd + [src, dst] + ([dmp] if dump else []), capture_output=True, text=True)
        if done.returncode != 0:
            raise BiperError(f"C demo failed: {done.stderr.strip()}")
        logits = np.fromfile(dst, "<f4").reshape(x.shape[0], -1)
        if not dump:
            return logits
        return logits, read_dump(dmp)


def read_dump(path: str) -> dict:
    """BIPER_DUMP records: {(tag, layer): [arrays, one per image]} (tag 1 float, 2 int32)."""
    raw, out, pos = open(path, "rb").read(), {}, 0
    while pos < len(raw):
        tag, layer, count = np.frombuffer(raw, "=i4", 3, pos)
        pos += 12
        data = np.frombuffer(raw, "=f4" if tag == 1 else "=i4", int(count), pos).copy()
        pos += 4 * int(count)
        out.setdefault((int(tag), int(layer)), []).append(data)
    return out


@torch.no_grad()
def verify_c(out_dir: str, model: torch.nn.Module, input_size, samples: int = 8, seed: int = 0) -> dict:
    """Build the demo and compare its logits with ``model`` on ``samples`` random inputs."""
    exe = build_demo(out_dir, os.path.join(tempfile.mkdtemp(prefix="biper-c-"), "demo"))
    x = torch.randn(samples, *input_size, generator=torch.Generator().manual_seed(seed))
    got = torch.from_numpy(run_demo(exe, x))
    ref = model.eval()(x).float()
    shutil.rmtree(os.path.dirname(exe), ignore_errors=True)
    return {"samples": samples, "agree": int((got.argmax(1) == ref.argmax(1)).sum()),
            "max_abs_diff": float((got - ref).abs().max())}


def build_mps2(out_dir: str, exe: str) -> str:
    """Link the demo for qemu's mps2-an386 (Cortex-M4F, newlib semihosting); returns ``exe``."""
    startup = os.path.join(os.path.dirname(__file__), "csrc", "cexport_m4_startup.c")
    cmd = ["arm-none-eabi-gcc", *M4_FLAGS, "-Os", "-std=c99", "--specs=rdimon.specs",
           "-Wl,--section-start=.vectors=0x0", startup, os.path.join(out_dir, "model.c"),
           os.path.join(out_dir, "demo.c"), "-o", exe]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BiperError(f"Cortex-M4 link failed: {done.stderr.strip().splitlines()[-1:]}")
    return exe


def run_mps2(exe: str, x: torch.Tensor, timeout: float = 600) -> np.ndarray:
    """Logits of the mps2-an386 demo ``exe`` on ``x`` under ``qemu-system-arm``."""
    with tempfile.TemporaryDirectory() as tmp:
        x.detach().to(torch.float32).contiguous().numpy().astype("<f4").tofile(os.path.join(tmp, "in.f32"))
        cmd = ["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none", "-semihosting-config",
               "enable=on,target=native,arg=demo,arg=in.f32,arg=out.f32", "-kernel", os.path.abspath(exe)]
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
        out = os.path.join(tmp, "out.f32")
        if done.returncode != 0 or not os.path.exists(out):
            raise BiperError(f"qemu-system-arm run failed: {(done.stderr or done.stdout).strip()[-300:]}")
        return np.fromfile(out, "<f4").reshape(x.shape[0], -1)
