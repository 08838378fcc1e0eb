"""A tiny BERT written to disk with save_pretrained: a real Hugging Face encoder folder for
tests, built locally in a fraction of a second and never downloaded."""

from __future__ import annotations

import string
from pathlib import Path

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tiny_bert(folder: Path, seed: int = 0, hidden: int = 16) -> Path:
    """Write config, weights (safetensors) and a character-level WordPiece vocab to ``folder``."""
    from napari_dkan._torchvision_compat import ensure_torchvision

    ensure_torchvision()
    import torch
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    # every character as a word start and as a continuation: any text tokenizes without [UNK]
    vocab = _SPECIAL + list(chars) + [f"##{c}" for c in chars] + ["gene", "symbol", "name"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # vocab.txt plus a tokenizer_config is what AutoTokenizer reads for BERT in transformers
    # 4.x and 5.x alike (the tokenizer constructors' signatures differ between them)
    (folder / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "BertTokenizer", "do_lower_case": true, "model_max_length": 512}')
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=512)
    BertModel(config).eval().save_pretrained(folder)
    return folder
