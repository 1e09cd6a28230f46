"""The document-encoder base: towers, tower features for mixed documents, and ``encode``.

A document is (image or None, text or None).  ``tower_features`` runs each tower on the items that
have that modality and scatters the results into full-batch tensors: rows without an image get an
all-False image mask (and zeros), rows without text an all-False text mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .config import ModelConfig
from .towers import Tower, TowerOutput, build_tower


@dataclass
class DocFeatures:
    """Tower outputs for a batch of B documents (see module docstring for missing modalities).

    image.tokens (B, P, d_v), image.mask (B, P) bool, image.pooled (B, d_gv);
    text.tokens (B, T, d_l), text.mask (B, T) bool, text.pooled (B, d_gl);
    has_image, has_text: (B,) bool.
    """
    image: TowerOutput
    text: TowerOutput
    has_image: torch.Tensor
    has_text: torch.Tensor

    def __len__(self) -> int:
        return self.has_image.shape[0]

    def to(self, device, dtype=torch.float32) -> "DocFeatures":
        def mv(o: TowerOutput) -> TowerOutput:
            return TowerOutput(o.tokens.to(device, dtype), o.mask.to(device),
                               o.pooled.to(device, dtype))
        return DocFeatures(mv(self.image), mv(self.text), self.has_image.to(device),
                           self.has_text.to(device))

    @property
    def image_weights(self) -> torch.Tensor:
        """(B, P) bool: real patches of documents that have an image."""
        return self.image.mask & self.has_image[:, None]

    @property
    def text_weights(self) -> torch.Tensor:
        return self.text.mask & self.has_text[:, None]

    def trim_text(self, max_tokens: Optional[int] = None) -> "DocFeatures":
        """Drop text positions no document uses, and any beyond ``max_tokens``."""
        used = self.text.mask.any(dim=0).nonzero()
        T = int(used.max()) + 1 if used.numel() else 1
        if max_tokens is not None:
            T = min(T, max_tokens)
        t = self.text
        return DocFeatures(self.image, TowerOutput(t.tokens[:, :T], t.mask[:, :T], t.pooled),
                           self.has_image, self.has_text)


def _check_docs(images, texts) -> int:
    if images is None and texts is None:
        raise ValueError("give images=, texts= or both")
    for name, seq in (("images", images), ("texts", texts)):
        if seq is not None and not isinstance(seq, (list, tuple)):
            raise TypeError(f"{name} must be a list (items may be None), got {type(seq).__name__}")
    if images is not None and texts is not None and len(images) != len(texts):
        raise ValueError(f"images has {len(images)} items but texts has {len(texts)}")
    n = len(images) if images is not None else len(texts)
    for i in range(n):
        if (images is None or images[i] is None) and (texts is None or texts[i] is None):
            raise ValueError(f"document {i} has neither an image nor a text")
    return n


@dataclass
class PreparedDocs:
    """Tower inputs of B documents, made on the CPU by a ``DocumentPreparer``: each tower's
    prepared tensors for the rows that have its modality (None if no row has it)."""
    size: int
    image: Optional[dict]
    text: Optional[dict]
    has_image: list
    has_text: list


@dataclass(frozen=True)
class DocumentPreparer:
    """(images, texts) -> ``PreparedDocs`` with the towers' preprocessing (see
    ``DocumentEncoder.preparer``); items may be None as in ``tower_features``."""
    image: Callable
    text: Callable

    def __call__(self, images: Optional[Sequence] = None,
                 texts: Optional[Sequence] = None) -> PreparedDocs:
        B = _check_docs(images, texts)
        images = list(images) if images is not None else [None] * B
        texts = list(texts) if texts is not None else [None] * B
        has_i = [i for i in range(B) if images[i] is not None]
        has_t = [i for i in range(B) if texts[i] is not None]
        return PreparedDocs(B, self.image([images[i] for i in has_i]) if has_i else None,
                            self.text([texts[i] for i in has_t]) if has_t else None, has_i, has_t)


class DocumentEncoder(nn.Module):
    """Towers plus ``embed(DocFeatures) -> (B, D)``; subclasses add the trained parts."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.image_tower: Tower = build_tower(cfg.image_tower, "image")
        self.text_tower: Tower = build_tower(cfg.text_tower, "text")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ towers
    def preparer(self, text_context: Optional[str] = None) -> "DocumentPreparer":
        """The CPU-side half of ``tower_features`` (resize, tokenize) as a picklable callable
        that holds none of the weights, for DataLoader worker processes."""
        return DocumentPreparer(self.image_tower.preprocessor(),
                                self.text_tower.preprocessor(text_context))

    def prepared_features(self, prepared: "PreparedDocs") -> DocFeatures:
        """Run both towers on prepared documents -> DocFeatures on the model device."""
        dev = self.device
        B = prepared.size
        img = self._run(self.image_tower, prepared.image, B, prepared.has_image, dev)
        txt = self._run(self.text_tower, prepared.text, B, prepared.has_text, dev)
        flag = lambda idx: torch.zeros(B, dtype=torch.bool, device=dev).index_fill_(  # noqa: E731
            0, torch.tensor(idx, dtype=torch.long, device=dev), True)
        return DocFeatures(img, txt, flag(prepared.has_image),
                           flag(prepared.has_text)).trim_text(self.cfg.max_text_tokens)

    def _run(self, tower: Tower, inputs: Optional[dict], B: int, present: list[int],
             device) -> TowerOutput:
        if present:
            prepared = {k: v.to(device) for k, v in inputs.items()}
            with torch.set_grad_enabled(torch.is_grad_enabled() and not tower.frozen):
                out = tower(**prepared)
            L = out.tokens.shape[1]
        else:
            out, L = None, 1
        tokens = torch.zeros(B, L, tower.token_dim, device=device)
        mask = torch.zeros(B, L, dtype=torch.bool, device=device)
        pooled = torch.zeros(B, tower.pooled_dim, device=device)
        if out is not None:
            idx = torch.tensor(present, device=device)
            tokens = tokens.to(out.tokens.dtype).index_copy(0, idx, out.tokens)
            mask = mask.index_copy(0, idx, out.mask)
            pooled = pooled.to(out.pooled.dtype).index_copy(0, idx, out.pooled)
        return TowerOutput(tokens, mask, pooled)

    def tower_features(self, images: Optional[Sequence] = None,
                       texts: Optional[Sequence] = None,
                       text_context: Optional[str] = None) -> DocFeatures:
        """Run both towers on B documents (items may be None) -> DocFeatures on the model device.
        ``text_context``: another text context than the text tower's own (``TowerConfig``)."""
        return self.prepared_features(self.preparer(text_context)(images, texts))

    # ------------------------------------------------------------------ public API
    def embed(self, feats: DocFeatures) -> torch.Tensor:
        """DocFeatures -> (B, D) L2-normalized joint embeddings."""
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, images: Optional[Sequence] = None, texts: Optional[Sequence] = None,
               batch_size: int = 32) -> torch.Tensor:
        """Embed documents: lists of PIL images and/or strings (an item of either may be None).

        Returns a (N, D) float32, L2-normalized CPU tensor; row i embeds (images[i], texts[i]).
        """
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        N = _check_docs(images, texts)
        was_training = self.training
        self.eval()
        try:
            out = []
            for s in range(0, N, batch_size):
                sl = slice(s, s + batch_size)
                feats = self.tower_features(None if images is None else images[sl],
                                            None if texts is None else texts[sl])
                out.append(self.embed(feats).float().cpu())
        finally:
            self.train(was_training)
        if not out:
            return torch.empty(0, self.cfg.dim)
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def save(self, path) -> None:
        """Write ``model.safetensors`` + ``config.json`` into the folder ``path``."""
        from .io import save_model
        save_model(self, path)
