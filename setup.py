"""
Installs srpy: C{pip install .} (engines and clients), C{pip install .[notebook]} (IPython's magics,
tqdm's progress bars), C{pip install .[test]} (the test suite).
"""

import re

from setuptools import find_packages, setup

with open("srpy/_version.py", encoding="utf-8") as handle:
    VERSION = re.search(r'__version__ = "([^"]+)"', handle.read()).group(1)
with open("README.md", encoding="utf-8") as handle:
    README = handle.read()

setup(
    name="srpy",
    version=VERSION,
    description="Simple Remote Python: persistent Python engines on every core, over Pyro5",
    long_description=README,
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    license_files=["LICENSES/BSD-3-Clause.txt"],
    packages=find_packages(include=["srpy", "srpy.*"]),
    # the dashboard's page: its own HTML, script and style, and uPlot (MIT, its licence beside it)
    package_data={"srpy": ["dashboard_static/*"]},
    py_modules=["srpyapp"],
    # 3.9: ast.unparse ships functions by source (functions.py); 3.10's packages_distributions and
    # sys.stdlib_module_names are used where present (shipping.py), with fallbacks. 3.8 cannot run it.
    python_requires=">=3.9",
    # packaging: requirement strings of EngBox.require(install=True), parsed on the client
    install_requires=["Pyro5>=5.15,<6", "serpent>=1.41", "psutil>=5.8", "packaging>=22"],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2.1", "pytest-xdist>=3.5", "trustme>=1.0", "pydoctor>=23.9", "hypothesis>=6",
                 "mypy>=1.10", "numpy>=1.21", "pandas>=2.1", "uv>=0.5", "ipython>=7.3", "tqdm>=4.60",
                 "ipykernel>=6", "cryptography>=3.1",  # cryptography: SSHCluster(tls=True)'s tests
                 "pyyaml>=6",  # pyyaml: analyze maps `import yaml` to its distribution, PyYAML
                 # the dashboard's browser test drives Debian's chromium through its chromedriver
                 "selenium>=4.10"],
        # environments (EngBox.require(install=True)) build with uv where it is found, else with pip
        "envs": ["uv>=0.5"],
        # SSHCluster(tls=True) makes the cluster's CA and certificates with it (srpy/clustertls.py)
        "tls": ["cryptography>=3.1"],
        "doc": ["pydoctor>=23.9"],
        # %load_ext srpy (srpy/magics.py) and tqdm's bars for map(progress=True) (srpy/progress.py)
        "notebook": ["ipython>=7.3", "tqdm>=4.60"],
        "bench": ["ipyparallel", "dask[distributed]", "ray", "rpyc"],
    },
    entry_points={"console_scripts": ["srpyapp = srpy.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "License :: OSI Approved :: BSD License",
        "Topic :: System :: Distributed Computing",
    ],
)
