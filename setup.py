"""Install tfadv: `pip install -e .[cpu,test]` (tools/setup.sh does all set-up).

TensorFlow comes from an extra, so that a GPU machine does not get the CPU
wheel next to its own: `.[cpu]` installs tensorflow-cpu, `.[gpu]`
tensorflow with CUDA, and a plain `pip install -e .` uses the TensorFlow the
environment already has.
"""

import setuptools

with open("README.md") as f:
    README = f.read()

setuptools.setup(
    name="tfadv",
    version="0.1.0",
    description="Efficient adversarial training for Keras 3 / TensorFlow 2.",
    author="The tfadv authors",
    license="Apache-2.0",
    license_files=["LICENSE"],
    long_description=README,
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["tfadv", "tfadv.*"]),
    # The gin configs ship with the package: `python -m tfadv.train
    # --gin_file=yopo.gin` works from a wheel install too.
    package_data={
        "tfadv": [
            "gin_configs/*.gin",
            "gin_configs/*/*.gin",
            "gin_configs/*/*/*.gin",
        ]
    },
    python_requires=">=3.10",
    install_requires=[
        # TensorFlow itself: the cpu or gpu extra, or the environment's own.
        "keras>=3.8",
        "tensorflow-datasets>=4.9",
        "tensorboard",
        "absl-py",
        "gin-config>=0.5",
        "numpy",
        # Keras's weights format; checkpoints store their epoch in it.
        "h5py",
        # tensorflow-datasets needs it to download or prepare data.
        "importlib_resources",
        # tfadv.evaluate --epsilons draws the robustness curve.
        "matplotlib",
    ],
    extras_require={
        "cpu": ["tensorflow-cpu>=2.16,<2.22"],
        "gpu": ["tensorflow[and-cuda]>=2.16,<2.22"],
        "test": ["pytest>=7", "pytest-xdist", "ruff"],
    },
)
