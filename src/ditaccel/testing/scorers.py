"""Replica-sized learned scorers: a tiny random CLIP saved as a transformers folder.

Why: the learned metrics' real weights are gigabytes and cannot be downloaded on CPU-only test
machines. A tiny CLIP with the same classes runs the exact scoring code path (tokenizer, image
processor, batched forward) in milliseconds, for tests and for timing the generate/score split.
"""

from __future__ import annotations

import os
from pathlib import Path


def save_tiny_clip(folder: str | os.PathLike, image_size: int = 32, hidden: int = 32, seed: int = 0) -> Path:
    """Write a random ``CLIPModel`` (2 text + 2 vision layers, ``hidden`` wide) with tokenizer and processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from ditaccel.testing.replicas import _tokenizer, _vocab_size

    folder = Path(folder)
    torch.manual_seed(seed)
    text = dict(vocab_size=_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden)).eval()
    model.save_pretrained(folder)
    _tokenizer("clip", 77).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
                       ).save_pretrained(folder)
    return folder
