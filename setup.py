"""lazyapps: the lazy teacher of long-horizon meta-learning, as three products."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "lazyapps" / "__init__.py").read_text()).group(1)

setup(
    name="lazyapps",
    version=VERSION,
    description="Lazy-teacher meta-learning: meta-attack, long-tail reweighting and few-shot learners",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["lazyapps*", "models_zoo*", "attacks*", "longtail*", "fewshot*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm>=0.9",
        "foolbox>=3.3",
        "scikit-learn>=1.2",
        "click>=8.1",
        "numpy>=1.23",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=7", "matplotlib>=3.6"],  # the tests exercise the --plot options too
        "plot": ["matplotlib>=3.6"],
    },
    entry_points={"console_scripts": ["lazyapps=lazyapps.cli:main"]},
)
