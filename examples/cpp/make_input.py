"""Write images as raw float32 [N, 3, H, W], preprocessed as an artifact's manifest says, for main.cpp.

    python examples/cpp/make_input.py artifacts/b16-384-fp16-trt cat.jpg dog.jpg -o images.f32
    python examples/cpp/make_input.py artifacts/b16-384-dyn224-512-fp16-trt cat.jpg --size 320x448 -o images.f32

``--size HxW`` (an engine of a --dynamic-res export): each image resized whole to H x W (no crop),
then main.cpp is run with ``BATCH HxW``.
"""

from __future__ import annotations

import argparse

import numpy as np

from vit_deploy import artifact
from vit_deploy.cli.options import parse_image_sizes
from vit_deploy.images.decode import load_batch, load_rgb, resize_to


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("images", nargs="+")
    ap.add_argument("-o", "--out", default="images.f32")
    ap.add_argument("--size", default=None, help="HxW for an engine of a --dynamic-res export (default: its native)")
    args = ap.parse_args()
    art = artifact.open(args.artifact, verify=False)
    prep = art.preprocessing
    if args.size is None:
        batch = load_batch(args.images, prep)
    else:
        (h, w), = parse_image_sizes(args.size, "--size")
        if art.resolution_range is not None and (problem := art.resolution_range.problem(h, w)):
            raise SystemExit(f"error: {problem}")
        batch = np.stack([resize_to(load_rgb(p), h, w, prep) for p in args.images])
    batch.tofile(args.out)  # C order, little-endian float32: what main.cpp reads
    print(f"wrote {args.out}: float32 {list(batch.shape)}")


if __name__ == "__main__":
    main()
