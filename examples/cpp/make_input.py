"""Write images as raw float32 [N, 3, H, W], preprocessed as an artifact's manifest says, for main.cpp.

    python examples/cpp/make_input.py artifacts/b16-384-fp16-trt cat.jpg dog.jpg -o images.f32
"""

from __future__ import annotations

import argparse

from vit_deploy import artifact
from vit_deploy.images.decode import load_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("images", nargs="+")
    ap.add_argument("-o", "--out", default="images.f32")
    args = ap.parse_args()
    prep = artifact.open(args.artifact, verify=False).preprocessing
    batch = load_batch(args.images, prep)
    batch.tofile(args.out)  # C order, little-endian float32: what main.cpp reads
    print(f"wrote {args.out}: float32 {list(batch.shape)}")


if __name__ == "__main__":
    main()
