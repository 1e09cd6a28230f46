"""Unimodal towers: a registry, the common output type, and tiny random towers for tests.

Every tower turns a list of items (PIL images or strings) into a ``TowerOutput``: token features,
a padding mask and a global vector.  Towers that need pretrained weights (EfficientNet-Lite0,
MiniLM, Hugging Face folders) live in ``towers_pretrained`` and import their libraries only when
built.  The "tiny-*" towers here are random, need nothing but torch, and serve tests.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from solar import ops

from .config import TowerConfig
from .lora import apply_lora
from .preprocess import ImageTransform


@dataclass
class TowerOutput:
    """tokens: (B, L, d) float; mask: (B, L) bool (True = a real token); pooled: (B, d_g) float."""
    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


class Tower(nn.Module):
    """Base class.  Subclasses set ``modality``, ``token_dim``, ``num_tokens``, ``pooled_dim``.

    ``preprocess`` is the CPU-side work (resize, tokenize): a picklable callable, items -> dict of
    tensors, that holds none of the tower's weights, so DataLoader worker processes can run it
    (``preprocessor()``); ``prepare(items)`` calls it; ``forward(**prepared)`` returns a
    ``TowerOutput``.  A tower may override ``prepare`` instead of setting ``preprocess``; its
    preprocessing then runs where the tower is.
    """
    modality: str = ""
    token_dim: int = 0
    num_tokens: int = 0
    pooled_dim: int = 0
    preprocess = None
    segments = False          # whether the tower honours TowerConfig.context="segments"

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg

    def prepare(self, items: list) -> dict:
        if self.preprocess is None:
            raise NotImplementedError(f"{type(self).__name__} sets neither preprocess nor prepare")
        return self.preprocess(items)

    def preprocessor(self, context: Optional[str] = None):
        """The callable that turns items into ``forward``'s inputs, without the tower's weights
        when the tower sets ``preprocess``.  ``context`` ("full" or "segments", text towers
        that honour it) asks for that text context instead of the tower's own."""
        check_context(self, context)
        return self.preprocess if self.preprocess is not None else self.prepare

    @property
    def frozen(self) -> bool:
        return self.cfg.trainable == "frozen"

    def finalize(self, backbone: nn.Module) -> None:
        """Apply the trainable setting to ``backbone`` (freeze, LoRA, or leave trainable)."""
        if self.cfg.trainable == "frozen":
            for p in backbone.parameters():
                p.requires_grad_(False)
        elif self.cfg.trainable == "lora":
            apply_lora(backbone, self.cfg.lora_targets, self.cfg.lora_rank, self.cfg.lora_alpha)

    def train(self, mode: bool = True):
        # Frozen and LoRA towers keep their normalization statistics (eval mode) while training.
        super().train(mode and self.cfg.trainable == "full")
        return self


def mean_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of (B, L, d) tokens under a (B, L) mask -> (B, d), through the ops facade."""
    return ops.masked_pool(tokens, mask, normalize=False, backend=None)


# --------------------------------------------------------------------------- registry
TOWERS: dict[str, Callable[[TowerConfig], Tower]] = {}


def register_tower(kind: str, builder: Callable[[TowerConfig], Tower]) -> None:
    """Make ``TowerConfig(kind=...)`` buildable."""
    TOWERS[kind] = builder


def build_tower(cfg: TowerConfig, modality: str) -> Tower:
    """Build the tower ``cfg.kind`` and check it serves ``modality`` ("image" or "text")."""
    from . import towers_pretrained  # noqa: F401  (registers the pretrained kinds, imports nothing heavy)
    if cfg.kind not in TOWERS:
        raise ValueError(f"unknown tower kind {cfg.kind!r}; kinds are {sorted(TOWERS)}")
    tower = TOWERS[cfg.kind](cfg)
    if tower.modality != modality:
        raise ValueError(f"tower kind {cfg.kind!r} is a {tower.modality} tower, "
                         f"not a {modality} tower")
    check_context(tower, cfg.context)
    return tower


def check_context(tower: Tower, context: Optional[str]) -> None:
    """A tower that does not encode segments serves only the "full" text context."""
    if context not in (None, "full") and not tower.segments:
        raise ValueError(f"tower kind {tower.cfg.kind!r} has no context={context!r} (only the "
                         "Hugging Face text towers encode segments)")


# --------------------------------------------------------------------------- tiny random towers
@dataclass(frozen=True)
class Pixels:
    """Preprocessing of an image tower: PIL images -> {"pixels": (B, 3, S, S)}."""
    transform: ImageTransform

    def __call__(self, items: list) -> dict:
        return {"pixels": self.transform(items)}


@dataclass(frozen=True)
class HashWords:
    """Preprocessing of the hashed-word text tower: strings -> {"input_ids": (B, max_length)}."""
    vocab: int
    max_length: int

    def __call__(self, items: list) -> dict:
        return {"input_ids": hash_tokenize(items, self.vocab, self.max_length)}


class TinyImageTower(Tower):
    """Random patchify conv + MLP: (B, 3, S, S) -> (S/patch)^2 tokens of ``width``."""
    modality = "image"

    def __init__(self, cfg: TowerConfig):
        super().__init__(cfg)
        if cfg.image_size % cfg.patch:
            raise ValueError(f"image_size ({cfg.image_size}) must be a multiple of patch ({cfg.patch})")
        self.token_dim = self.pooled_dim = cfg.width
        self.num_tokens = (cfg.image_size // cfg.patch) ** 2
        self.preprocess = Pixels(ImageTransform(cfg.image_size))
        self.backbone = nn.ModuleDict({
            "embed": nn.Conv2d(3, cfg.width, cfg.patch, stride=cfg.patch),
            "mlp": nn.Sequential(nn.GELU(), nn.Linear(cfg.width, cfg.width)),
        })
        self.finalize(self.backbone)

    def forward(self, pixels: torch.Tensor) -> TowerOutput:
        x = self.backbone["embed"](pixels).flatten(2).transpose(1, 2)      # (B, P, w)
        x = x + self.backbone["mlp"](x)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return TowerOutput(x, mask, mean_pool(x, mask))


def hash_tokenize(texts: list, vocab: int, max_length: int) -> torch.Tensor:
    """Lower-cased words hashed into ids 1..vocab-1 (0 = padding) -> (B, max_length) int64."""
    import re
    ids = torch.zeros(len(texts), max_length, dtype=torch.long)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str or None, got {type(t).__name__}")
        words = re.findall(r"\w+", t.lower())[:max_length]
        for j, w in enumerate(words):
            ids[i, j] = 1 + zlib.crc32(w.encode("utf-8")) % (vocab - 1)
    return ids


class TinyTextTower(Tower):
    """Hashed words -> embedding + positions -> ``depth`` small transformer layers."""
    modality = "text"

    def __init__(self, cfg: TowerConfig):
        super().__init__(cfg)
        self.token_dim = self.pooled_dim = cfg.width
        self.num_tokens = cfg.max_length
        layer = nn.TransformerEncoderLayer(cfg.width, 2, 2 * cfg.width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.backbone = nn.ModuleDict({
            "embed": nn.Embedding(cfg.vocab, cfg.width),
            "pos": nn.Embedding(cfg.max_length, cfg.width),
            "encoder": nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False),
        })
        self.preprocess = HashWords(cfg.vocab, cfg.max_length)
        self.finalize(self.backbone)

    def forward(self, input_ids: torch.Tensor) -> TowerOutput:
        mask = input_ids != 0                                                # (B, T)
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.backbone["embed"](input_ids) + self.backbone["pos"](pos)[None]
        # Rows with no word keep one visible position so attention stays finite.
        keep = mask.clone()
        keep[:, 0] |= ~mask.any(dim=1)
        x = self.backbone["encoder"](x, src_key_padding_mask=~keep)
        return TowerOutput(x, mask, mean_pool(x, mask))


register_tower("tiny-image", TinyImageTower)
register_tower("tiny-text", TinyTextTower)
