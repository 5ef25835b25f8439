"""jaxad: unsupervised anomaly detection in medical images, in JAX/Flax."""

import setuptools

setuptools.setup(
    name="jaxad",
    version="0.1.0",
    description="Unsupervised anomaly detection in medical images with JAX and Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    # configs/ is a package too: `python -m jaxad.main --config=configs/x.py` works from any
    # directory by reading the installed copy.
    packages=setuptools.find_packages(
        include=["jaxad", "jaxad.*", "data_builders", "data_builders.*", "configs"]
    ),
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8,<0.13",
        "tensorflow-datasets>=4.9.10",
        "grain>=0.2.18",
        "array-record>=0.8",
        "numpy>=1.26",
        "scikit-learn>=1.4",
        "scikit-image>=0.24",
        "ml-collections>=1.0",
        "clu>=0.0.12",
        "absl-py>=2.0",
        "pillow>=10.0",
        "pydicom>=2.4",  # DICOM (RSNA, Duke DBT)
        "nibabel>=5.0",  # NIfTI (MOOD)
        "safetensors>=0.4",  # ImageNet VGG19 weights read without pickle (MorphAEus)
        "matplotlib>=3.7",
        "scipy>=1.11",
        "tensorboardX>=2.6",
        # tfds needs these at run time without TensorFlow (builder code path, jax process splits).
        "importlib-resources>=6.0",
        "etils[epath]>=1.5",
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.5",
            "ruff>=0.6",
            "dill>=0.3",
            # tests/test_gcs_paths.py: gs:// runs against a local fake GCS server.
            "gcsfs>=2024.2",
            "gcp-storage-emulator>=2024.8",
            # Real anatomy in tests: nilearn's bundled MNI152 template (no download).
            "nilearn>=0.10",
        ],
        # Workdirs, data and weights on Cloud Storage (gs://): gcsfs is etils.epath's backend.
        "gcs": ["gcsfs>=2024.2"],
        # To view a run's `tensorboard/` folder: tensorboard --logdir=WORKDIR/tensorboard
        "tensorboard": ["tensorboard>=2.14"],
    },
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
