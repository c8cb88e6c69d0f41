"""Meta-Attack benchmark on CIFAR-10 / resnet18 (Du et al., ICLR 2020, Table 2; lazy paper).

Uses the CIFAR-10 subset of the data root (26,203 training images, the full
10,000-image test set); zoo vgg13/vgg16/vgg19, target resnet18, all trained
and cached first. The quick preset trains on a few thousand images for a
few epochs (a CPU run); the paper preset is for GPUs.

    python benchmarks/attack_cifar.py --n-images 100
    python benchmarks/attack_cifar.py --smoke             # seconds once its models are cached, minutes the first time
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _attack_common import parse, run  # noqa: E402
from _script import run_script  # noqa: E402

PAPER = [
    {"setting": "untargeted", "method": "meta", "success_rate": 0.94, "mean_l2": 0.34, "mean_queries": 1583},
    {"setting": "untargeted", "method": "lazy-meta", "success_rate": 0.98, "mean_l2": 0.45, "mean_queries": 1061},
    {"setting": "targeted", "method": "lazy-meta", "success_rate": 0.92, "mean_l2": 0.69, "mean_queries": 3092},
]


def main(argv=None) -> None:
    args = parse(argv, name="attack_cifar", default_images=100, default_methods="lazy-meta,meta,zoo,nes,bandits,hsja",
                 default_out="benchmarks/results/attack_cifar.json")
    run(args, dataset="CIFAR-10", paper_target="resnet18", paper_rows=PAPER)


if __name__ == "__main__":
    run_script(main)
