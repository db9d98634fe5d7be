"""Bulk prediction throughput: in this process vs a local Ray cluster with 1 and 2 workers (prints numbers).

    python tools/bench_bulk.py [--images 64,256] [--artifact DIR]

What it does: exports ViT-Ti/16 @ 224 with the real weights in ../shared/realdata (random
ViT-S/16 when that folder is absent), then predicts the first N photos of
../shared/realdata/imagenet-dev-500 (the digits in assets/ otherwise) into Parquet with
``vit_deploy.bulk.run_bulk`` for two values of N in each configuration:

- in process, the runtime on 1 thread and on all threads;
- on a Ray cluster started here (one head node on 127.0.0.1 with 2 CPUs; its start is timed
  apart), 1 worker and 2 workers of 1 thread each.

A line through the two (N, seconds) points gives each configuration's fixed cost (starting the
runners; for Ray the actors and the dataset) and its cost per image; Ray's per-image overhead is
its per-image cost minus the in-process one at the same thread count. Each configuration runs once
per round (``--repeat``, default 3; the fastest run counts), the configurations interleaved so that
load from other programs falls on all of them alike. About 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"


def _artifact(tmp: Path) -> Path:
    from vit_deploy.steps.export import ExportOptions, export_artifact

    weights = REALDATA / "vit-ti16-augreg" / "model.safetensors"
    out = tmp / "artifact"
    if weights.is_file():
        export_artifact(ExportOptions("ti16", 224, weights=str(weights), out_dir=out))
    else:
        export_artifact(ExportOptions("s16", 224, out_dir=out))
    return out


def _images(tmp: Path, n: int) -> Path:
    folder = REALDATA / "imagenet-dev-500"
    photos = sorted(folder.glob("*.JPEG")) if folder.is_dir() else sorted((ROOT / "assets" / "digits").rglob("*.png"))
    if len(photos) < n:
        sys.exit(f"only {len(photos)} images available; pass smaller --images")
    listing = tmp / f"images-{n}.txt"
    listing.write_text("\n".join(str(p) for p in photos[:n]) + "\n")
    return listing


def _run(artifact: Path, listing: Path, out: Path, **kw) -> float:
    """Seconds for one run into a new output folder (nothing skipped)."""
    from vit_deploy.bulk import BulkOptions, run_bulk

    start = time.perf_counter()
    summary = run_bulk(BulkOptions(artifact, str(listing), out, batch_size=8, **kw))
    assert summary["done"] == summary["images"], summary
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="64,256", help="two image counts, e.g. 64,256")
    parser.add_argument("--artifact", type=Path, default=None, help="an artifact folder (default: export one)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all configurations; the fastest counts")
    args = parser.parse_args()
    small, large = (int(x) for x in args.images.split(","))
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the cluster on 127.0.0.1, before ray is imported
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp_name:
        tmp = Path(tmp_name)
        artifact = args.artifact or _artifact(tmp)
        lists = {n: _images(tmp, n) for n in (small, large)}
        from ray.cluster_utils import Cluster

        start = time.perf_counter()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False,
                                                                "object_store_memory": 200 << 20})
        cluster.wait_for_nodes()
        cluster_start = time.perf_counter() - start
        configs = {"in process, 1 thread": {"threads": 1}, "in process, all threads": {},
                   "Ray, 1 worker x 1 thread": {"ray_address": cluster.address, "workers": 1, "threads": 1},
                   "Ray, 2 workers x 1 thread": {"ray_address": cluster.address, "workers": 2, "threads": 1}}
        results: dict[str, dict[int, float]] = {label: {} for label in configs}
        try:
            # rounds over every configuration, so that a busy spell on a shared machine hits them all alike
            for round_ in range(args.repeat):
                for label, kw in configs.items():
                    for n, listing in lists.items():
                        wall = _run(artifact, listing, tmp / f"{label}-{n}-{round_}", **kw)
                        results[label][n] = min(results[label].get(n, wall), wall)
        finally:
            cluster.shutdown()
    model = args.artifact.name if args.artifact else "ti16-224" if REALDATA.is_dir() else "s16-224 (random)"
    print(f"\nartifact {model}, batch 8, images {small} and {large}; Ray cluster start {cluster_start:.1f} s "
          f"(not in the rows); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end")
    print(f"{'configuration':<30}{'img/s @' + str(large):>12}{'fixed s':>10}{'ms/image':>10}")
    per_image = {}
    for label, times in results.items():
        per = (times[large] - times[small]) / (large - small)
        fixed = times[small] - per * small
        per_image[label] = per
        print(f"{label:<30}{large / times[large]:>12.1f}{fixed:>10.1f}{1000 * per:>10.1f}")
    base = per_image["in process, 1 thread"]
    ray1 = per_image["Ray, 1 worker x 1 thread"]
    print(f"Ray's per-image overhead (1 worker vs in process, 1 thread): {1000 * (ray1 - base):+.2f} ms/image")


if __name__ == "__main__":
    main()
