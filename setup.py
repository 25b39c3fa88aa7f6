"""dmlx: deep metric learning in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="dmlx",
    version="0.1.0",
    description="Deep metric learning in JAX/Flax: NNGK, Magnet, MIC, DML-DA, "
                "layer-wise embeddings and the standard baselines.",
    packages=find_packages(include=["dmlx", "dmlx.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.10",
        "optax>=0.2",
        "orbax-checkpoint>=0.6",
        "faiss-cpu>=1.8",
        "tensorflow-datasets>=4.9",
        "numpy>=1.26",
        "absl-py",
        "ml_collections",
        "scikit-learn>=1.3",
        "scipy",
        "pillow",
        "tqdm",
        "tensorboardX",
        "matplotlib",
    ],
    extras_require={
        # On a CUDA machine: pip install -e .[gpu]  (faiss-gpu replaces faiss-cpu's
        # index classes with GPU-capable ones; dmlx uses them when present).
        "gpu": ["jax[cuda12]", "faiss-gpu-cu12"],
        # On a Cloud TPU VM (every worker): pip install -e .[tpu]
        "tpu": ["jax[tpu]"],
        # torch (CPU, 2.13.0: the build this project's machines hold on disk;
        # a newer or unpinned one is a multi-GB CUDA build) and safetensors run
        # the pretrained-weight converter's equivalence tests.
        "test": ["pytest", "pytest-xdist", "hypothesis", "torch==2.13.0",
                 "safetensors"],
        # Side-by-side comparisons with pytorch-metric-learning (benchmarks/).
        "compare": ["torch", "pytorch-metric-learning"],
    },
)
