"""Meta-Attack benchmark on MNIST / net4 (Du et al., ICLR 2020, Table 1; lazy paper, Table on Meta-Attack).

Attacks the first N (default 1,000) correctly classified MNIST test images
with lazy-meta, meta, ZOO, NES, Bandits and HopSkipJump — same images, same
query budget — and prints our rows beside the papers'. Everything missing
(zoo lenet5/net2/net3, target net4, gradient sets, meta-attackers) is
trained and cached first.

    python benchmarks/attack_mnist.py                     # quick preset, 1,000 images
    python benchmarks/attack_mnist.py --n-images 100 --methods lazy-meta,meta
    python benchmarks/attack_mnist.py --targeted
    python benchmarks/attack_mnist.py --smoke             # seconds once its models are cached; what the test runs
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _attack_common import parse, run  # noqa: E402
from _script import run_script  # noqa: E402

#: Reported numbers: success rate, mean L2, mean queries (untargeted: Du et al. Table 1 for meta;
#: the lazy paper for lazy-meta and the targeted row).
PAPER = [
    {"setting": "untargeted", "method": "meta", "success_rate": 1.00, "mean_l2": 1.77, "mean_queries": 749},
    {"setting": "untargeted", "method": "lazy-meta", "success_rate": 1.00, "mean_l2": 1.65, "mean_queries": 566},
    {"setting": "targeted", "method": "lazy-meta", "success_rate": 1.00, "mean_l2": 2.63, "mean_queries": 1108},
]


def main(argv=None) -> None:
    args = parse(argv, name="attack_mnist", default_images=1000, default_methods="lazy-meta,meta,zoo,nes,bandits,hsja",
                 default_out="benchmarks/results/attack_mnist.json")
    run(args, dataset="MNIST", paper_target="net4", paper_rows=PAPER)


if __name__ == "__main__":
    run_script(main)
