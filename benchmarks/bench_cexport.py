"""Figures of the standalone C export of a checkpoint: Cortex-M4 flash / RAM, aarch64 under
qemu-user against the host build, and agreement with the PyTorch model on test images.

    PYTHONPATH=src python benchmarks/bench_cexport.py CKPT --data-dir /work/shared/data [--images 500]

Needs a host C compiler; the Cortex-M4 and aarch64 parts run when ``arm-none-eabi-gcc`` /
``aarch64-linux-gnu-gcc`` and ``qemu-aarch64`` are installed (Debian: gcc-arm-none-eabi,
gcc-aarch64-linux-gnu, qemu-user); with ``qemu-system-arm`` also on qemu's emulated Cortex-M4 board
(mps2-an386, semihosting), a sanity check of the wall time, not a speed claim.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def m4_sizes(c_dir: Path, float_abi: str) -> dict:
    fpu = ["-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"] if float_abi == "hard" else ["-mfloat-abi=soft"]
    cmd = ["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", *fpu, "-Os", "-std=c99", "-fstack-usage",
           "-c", "model.c", "-o", f"model-{float_abi}.o"]
    subprocess.run(cmd, cwd=c_dir, check=True)
    size = subprocess.run(["arm-none-eabi-size", f"model-{float_abi}.o"], cwd=c_dir, capture_output=True,
                          text=True, check=True).stdout.splitlines()[1].split()
    text, data, bss = (int(v) for v in size[:3])
    frames = {line.split()[0].rsplit(":", 1)[-1]: int(line.split()[1])
              for line in (c_dir / f"model-{float_abi}.su").read_text().splitlines()}
    # biper_predict calls the layer functions, which are leaves (popcount32 is inlined)
    stack = frames.get("biper_predict", 0) + max(v for k, v in frames.items() if k != "biper_predict")
    undefined = subprocess.run(["arm-none-eabi-nm", "--undefined-only", f"model-{float_abi}.o"], cwd=c_dir,
                               capture_output=True, text=True).stdout.split()[1::2]
    return {"command": " ".join(cmd), "text_incl_rodata": text, "data": data, "bss": bss,
            "flash": text + data, "stack_estimate": stack, "ram": data + bss + stack,
            "undefined": undefined}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--out", default=None, help="folder for the C files (default: a temporary one)")
    args = ap.parse_args()

    from biper.deploy.bench import cpu_name
    from biper.deploy.cemit import export_c_checkpoint
    from biper.deploy.cverify import build_demo, run_demo

    c_dir = Path(args.out or tempfile.mkdtemp(prefix="biper-cexport-"))
    info, model = export_c_checkpoint(args.checkpoint, c_dir)
    report = {"cpu": cpu_name(), "checkpoint": args.checkpoint, "const_bytes": info.const_bytes,
              "arena_bytes": info.arena_bytes, "binary_layers": len(info.program.binary_layers)}
    if args.data_dir:
        from biper.data import load_dataset
        from biper.data.augment import normalize

        test = load_dataset("cifar10", args.data_dir, "test", subset=args.images, progress=False)
        x = normalize(test.images, test.mean, test.std)
        labels = test.labels.numpy()
    else:
        x = torch.randn(args.images, *info.program.input_size, generator=torch.Generator().manual_seed(0))
        labels = None
    host = build_demo(str(c_dir), str(c_dir / "demo-host"))
    t0 = time.perf_counter()
    logits = run_demo(host, x)
    host_s = time.perf_counter() - t0
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    report["host"] = {"images": int(x.shape[0]), "argmax_agree": int((logits.argmax(1) == ref.argmax(1)).sum()),
                      "max_abs_logit_diff": float(np.abs(logits - ref).max()),
                      "ms_per_image_incl_process_start": round(1000 * host_s / x.shape[0], 3)}
    if labels is not None:
        report["host"]["accuracy_c"] = float((logits.argmax(1) == labels).mean())
        report["host"]["accuracy_pytorch"] = float((ref.argmax(1) == labels).mean())
    if shutil.which("arm-none-eabi-gcc"):
        report["cortex_m4_hard_float"] = m4_sizes(c_dir, "hard")
        report["cortex_m4_soft_float"] = m4_sizes(c_dir, "soft")
    if shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64"):
        arm = build_demo(str(c_dir), str(c_dir / "demo-aarch64"), cc=["aarch64-linux-gnu-gcc"],
                         flags=("-O2", "-static"))
        n = min(int(x.shape[0]), 100)
        t0 = time.perf_counter()
        arm_logits = run_demo(["qemu-aarch64", arm], x[:n])
        report["aarch64_qemu"] = {"images": n, "identical_to_host": bool(np.array_equal(arm_logits, logits[:n])),
                                  "wall_s": round(time.perf_counter() - t0, 2)}
    if shutil.which("s390x-linux-gnu-gcc") and shutil.which("qemu-s390x"):
        be = build_demo(str(c_dir), str(c_dir / "demo-s390x"), cc=["s390x-linux-gnu-gcc"], flags=("-O2", "-static"))
        n = min(int(x.shape[0]), 100)
        report["s390x_big_endian_qemu"] = {"images": n, "identical_to_host": bool(
            np.array_equal(run_demo(["qemu-s390x", be], x[:n]), logits[:n]))}
    if shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm"):
        from biper.deploy.cverify import build_mps2, run_mps2

        exe = build_mps2(str(c_dir), str(c_dir / "demo-mps2.elf"))
        n = min(int(x.shape[0]), 20)
        t0 = time.perf_counter()
        m4_logits = run_mps2(exe, x[:n])
        report["cortex_m4_qemu_mps2_an386"] = {
            "images": n, "identical_to_host": bool(np.array_equal(m4_logits, logits[:n])),
            "wall_s_incl_boot": round(time.perf_counter() - t0, 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
