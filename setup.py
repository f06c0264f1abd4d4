"""museum-typology: installable job suite. Pinned dependencies live in requirements/ (see README)."""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


class BuildWithDefaultConf(build_py):
    """Ship conf/default.toml inside the package, so wheels and --py-files zips find it."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "museum_typology" / "conf"
        target.mkdir(parents=True, exist_ok=True)
        (target / "default.toml").write_bytes((ROOT / "conf" / "default.toml").read_bytes())


setup(
    name="museum-typology",
    version="0.1.0",
    description="Sort Goskatalog museum items into their 15 typologies with Spark jobs",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    python_requires=">=3.11,<3.12",
    # The exact versions are in requirements/constraints.txt; these are the direct needs.
    install_requires=[
        "pyspark>=3.5,<3.6",
        "petastorm==0.13.1",
        "pyarrow>=10,<13",
        "numpy<2",
        "pillow",
        "opencv-python-headless",
        "pandas",
        "boto3",
        "fsspec",
        "tqdm",
    ],
    entry_points={"console_scripts": ["museum-typology=museum_typology.cli:main"]},
    cmdclass={"build_py": BuildWithDefaultConf},
)
