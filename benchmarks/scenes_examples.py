"""Draw a few generated scenes next to their masks and boxes (the picture in docs/data.md).

    PYTHONPATH=src python benchmarks/scenes_examples.py --data-dir ../shared/data \
        --out docs/img/scenes_examples.png
"""

from __future__ import annotations

import argparse

import numpy as np

from biper.data import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--zoom", type=int, default=3)
    args = ap.parse_args()
    from PIL import Image, ImageDraw

    ds = load_dataset("scenes", args.data_dir, "test", target="boxes", progress=False)
    palette = np.random.default_rng(3).integers(40, 256, (256, 3)).astype(np.uint8)
    palette[0] = 0
    rows = []
    for i in range(args.count):
        img = ds.images[i].permute(1, 2, 0).numpy()
        mask = palette[ds.masks[i].numpy()]
        pair = np.concatenate([img, np.full((img.shape[0], 2, 3), 255, np.uint8), mask], 1)
        big = Image.fromarray(pair).resize((pair.shape[1] * args.zoom, pair.shape[0] * args.zoom),
                                           Image.NEAREST)
        draw = ImageDraw.Draw(big)
        for cls, x0, y0, x1, y1 in ds.boxes[i].tolist():
            if cls >= 0:
                z = args.zoom
                draw.rectangle([x0 * z, y0 * z, x1 * z - 1, y1 * z - 1], outline=(255, 255, 255))
                draw.text((x0 * z + 2, y0 * z + 1), ds.classes[int(cls)], fill=(255, 255, 255))
        rows.append(np.asarray(big))
    sheet = np.concatenate([np.pad(r, ((0, 4), (0, 0), (0, 0)), constant_values=255)
                            for r in rows], 0)
    Image.fromarray(sheet).save(args.out)
    print(f"wrote {args.out} ({args.count} test scenes: image with boxes | mask)")


if __name__ == "__main__":
    main()
