"""Model configuration dataclasses and named presets.

A model is fully described by a ``ModelConfig`` (saved as ``config.json`` beside the weights), so a
checkpoint directory can be rebuilt without pickles.  Values marked [I] in docs/method.md are
choices of this project; their defaults live here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

TRAINABLE = ("frozen", "lora", "full")
CONTEXTS = ("full", "segments")
ARCHS = ("solar", "score_fusion")
READOUTS = ("cls", "cls+pooled")


@dataclass
class TowerConfig:
    """One unimodal tower (image or text).

    kind: a registered tower kind (see ``solar.model.towers.TOWERS``): "efficientnet-lite0",
        "minilm-l6", "hf-image", "hf-text", "tiny-image", "tiny-text".
    path: local folder of a Hugging Face checkpoint (for "hf-*"; optional for "minilm-l6").
    family: model family for "hf-*" ("clip", "siglip", "dinov2", "bert", ...); None reads
        ``model_type`` from the folder's config.json.
    image_size: square input side in pixels (image towers).
    max_length: text tokens kept, special tokens included (text towers).
    pooling: how the tower's global vector is made: "mean" (masked mean of tokens), "cls" or
        "pooler" (the model's pooled output); None picks the family's usual one.
    trainable: "frozen" (features can be cached), "lora" or "full".
    context: what a text token's feature sees (Hugging Face text towers): "full" (the whole
        text, one pass: the usual form) or "segments" (each piece of the text between
        punctuation, [.,;:!?] or a line break, is encoded on its own and the pieces' tokens are
        joined in order, so a keyword's feature carries no other keyword's meaning).
    output_stride: pixels per patch token of the "efficientnet-lite0" tower: 32 (the network as
        trained: a 7 x 7 grid at 224 px) or 16 (the last stride-2 stage runs at stride 1 with its
        depthwise convolutions dilated by 2: a 14 x 14 grid at 224 px from the same weights,
        each token covering a smaller part of the picture).
    lora_rank, lora_alpha, lora_targets: LoRA settings; targets are suffixes of module names.
    width, depth, patch, vocab: sizes of the random "tiny-*" towers used by tests.
    """
    kind: str
    path: Optional[str] = None
    family: Optional[str] = None
    image_size: int = 224
    max_length: int = 64
    pooling: Optional[str] = None
    trainable: str = "frozen"
    context: str = "full"
    output_stride: int = 32
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple = ("query", "value", "q_proj", "v_proj", "_project_conv")
    width: int = 32
    depth: int = 1
    patch: int = 8
    vocab: int = 2048

    def __post_init__(self):
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        if self.context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {self.context!r}")
        if self.output_stride not in (16, 32):
            raise ValueError(f"output_stride must be 16 or 32, got {self.output_stride!r}")
        if self.output_stride != 32 and self.kind != "efficientnet-lite0":
            raise ValueError(f"output_stride applies to the efficientnet-lite0 tower, not to "
                             f"{self.kind!r}")
        self.lora_targets = tuple(self.lora_targets)
        for name in ("image_size", "max_length", "lora_rank", "width", "depth", "patch", "vocab"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d, where: str = "tower") -> "TowerConfig":
        """A TowerConfig from parsed JSON; ValueError naming ``where`` and the key for anything
        that is not an object, an unknown or missing key, or a value of the wrong type."""
        if not isinstance(d, dict):
            raise ValueError(f"{where} must be a JSON object, got {_json_type(d)}")
        if "kind" not in d:
            raise ValueError(f"{where} lacks the key 'kind'")
        return cls(**checked_fields(cls, d, where))


@dataclass
class ModelConfig:
    """A whole document encoder: two towers plus the trained parts.

    arch: "solar" (adapters + fusion encoder over [CLS; V'; L']) or "score_fusion" (per-modality
        embeddings e_i, e_t and the document vector normalize(e_i + e_t), the CLIP-SF / GCL model).
    width: adapter output and fusion-encoder width [I: 128 for the CPU recipe; SOLAR uses 768].
    adapter_hidden: hidden size of the 2-layer MLP adapters.
    layers, heads, mlp_ratio: fusion encoder shape [I: 2 layers, 4 heads].
    dim: joint embedding dimension [I: 256; SOLAR uses 768].
    max_text_tokens: text positions the trained parts see (the tower may return more, which are
        cut) [I: 32 keeps CPU training fast; clip-art captions average 13 tokens].
    logit_scale_init: initial exp(logit scale) of the contrastive losses (CLIP's 1/0.07).
    readout: how a pass of the fusion encoder becomes an embedding: "cls" (the paper's: the CLS
        output through the head) or "cls+pooled" (the unit CLS vector plus one unit vector per
        present modality, each a projection of the masked mean of that modality's adapter
        outputs, then normalized: every present modality has a direct, equal share of the
        embedding, and the pooled paths keep the towers' instance detail) [I; docs/method.md].
    mask_scores: what a token or patch is scored against for the intersection mask: "global"
        (the paper's: the partner modality's global vector) or "local" (its best match among the
        partner's locals, so one object among several, or one word among several, is found).
    mask_context: the text context of the token features the *token* masks are read from
        (``intersection_masks``, the mask benchmark, heat maps): None (the text tower's own, as
        the embedding) or "segments" (each piece between punctuation encoded on its own, see
        ``TowerConfig.context``); patch masks, embeddings and training keep the tower's own
        [I; docs/method.md].
    """
    image_tower: TowerConfig = field(default_factory=lambda: TowerConfig("efficientnet-lite0"))
    text_tower: TowerConfig = field(default_factory=lambda: TowerConfig("minilm-l6"))
    arch: str = "solar"
    width: int = 128
    adapter_hidden: int = 256
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    dim: int = 256
    max_text_tokens: int = 32
    dropout: float = 0.0
    logit_scale_init: float = 1.0 / 0.07
    readout: str = "cls"
    mask_scores: str = "global"
    mask_context: Optional[str] = None

    def __post_init__(self):
        if isinstance(self.image_tower, dict):
            self.image_tower = TowerConfig(**self.image_tower)
        if isinstance(self.text_tower, dict):
            self.text_tower = TowerConfig(**self.text_tower)
        if self.mask_scores not in ("global", "local"):
            raise ValueError(f"mask_scores must be 'global' or 'local', got {self.mask_scores!r}")
        if self.mask_context is not None and self.mask_context not in CONTEXTS:
            raise ValueError(f"mask_context must be None or one of {CONTEXTS}, "
                             f"got {self.mask_context!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        for name in ("width", "adapter_hidden", "layers", "heads", "dim", "max_text_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d) -> "ModelConfig":
        """A ModelConfig from parsed JSON; ValueError naming the key for anything that is not an
        object, an unknown key or a value of the wrong type (a tower included)."""
        if not isinstance(d, dict):
            raise ValueError(f"'model' must be a JSON object, got {_json_type(d)}")
        kw = checked_fields(cls, d, "model")
        for name in ("image_tower", "text_tower"):
            if name in kw:
                kw[name] = TowerConfig.from_dict(kw[name], f"model.{name}")
        return cls(**kw)

    def replace(self, **kw) -> "ModelConfig":
        """A copy with fields replaced; a tower given as a dict without another "kind" updates
        only those fields of this config's tower (``image_tower={"image_size": 320}``)."""
        for name in ("image_tower", "text_tower"):
            d, own = kw.get(name), getattr(self, name)
            if isinstance(d, dict) and d.get("kind", own.kind) == own.kind:
                kw[name] = TowerConfig(**{**own.__dict__, **d})
        return dataclasses.replace(self, **kw)


_CHECKS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "Optional[str]": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "tuple": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
              "a list of strings"),
    "TowerConfig": (lambda v: True, ""),        # checked by TowerConfig.from_dict
}


def checked_fields(cls, d: dict, where: str) -> dict:
    """``d`` as keyword arguments of dataclass ``cls``: ValueError naming ``where`` and the key
    for an unknown key or a value whose JSON type does not match the field's type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(d) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are {sorted(fields)}")
    for k, v in d.items():
        check, what = _CHECKS.get(str(fields[k].type), (lambda v: True, ""))
        if not check(v):
            raise ValueError(f"{where}.{k} must be {what}, got {_json_type(v)} {v!r:.40}")
    return dict(d)


def _json_type(v) -> str:
    return {type(None): "null", bool: "a boolean", int: "an integer", float: "a number",
            str: "a string", list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def _tiny(arch: str) -> ModelConfig:
    return ModelConfig(image_tower=TowerConfig("tiny-image", image_size=32, patch=8, width=32),
                       text_tower=TowerConfig("tiny-text", max_length=16, width=32),
                       arch=arch, width=32, adapter_hidden=64, layers=1, heads=2, dim=16)


# Built-in names accepted by ``load_model`` (random init; no weights needed for the tiny ones).
PRESETS = {
    "solar-offline": lambda: ModelConfig(),
    "score-fusion-offline": lambda: ModelConfig(arch="score_fusion"),
    "solar-tiny-random": lambda: _tiny("solar"),
    "score-fusion-tiny-random": lambda: _tiny("score_fusion"),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; presets are {sorted(PRESETS)}")
    return PRESETS[name]()
