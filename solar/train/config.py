"""Training configuration: one dataclass for every registered recipe (solar.train.registry).

Defaults are the project's choices where the papers are silent ([I] in docs/method.md); they
fit the 2-core CPU machine with frozen offline towers and cached features.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Union

from solar.model.config import CONTEXTS

from .registry import recipe_spec

GLA_FORMS = ("mean", "local", "smoothmax")
LOCAL_FORMS = ("pair", "owner", "select", "both")
NEG_FORMS = ("hide", "swap", "both")


@dataclass
class TrainConfig:
    """Everything a training run needs.

    recipe: a registered recipe name (``solar.train.registry``): "stage1", "stage2", "gcl",
        "clip", the ablations ("stage1-no-mask", ...) or one added with ``register_recipe``.
    out_dir: run folder (checkpoint/, metrics.jsonl, the final model.safetensors + config.json).
    model: preset name or checkpoint folder to start from (stage2: the stage-1 run folder);
        None: the recipe's ``default_model``.
    model_overrides: ModelConfig fields replaced when ``model`` is a preset.
    data: one source spec or a list of them (anything ``solar-index ingest`` reads: folders,
        JSONL/CSV manifests, WebDataset shards, Parquet, ``clipart[:N]``, ``emoji[:N]``,
        ``clipart+emoji``); split: which split to train on (see solar.train.data).
    val_data: specs of an explicit validation set (then all of ``data`` trains).
    limit: use only the first ``limit`` records of the data (before splitting).
    stream: read the data as a stream (None: when it holds more than ``stream_above`` records).
    data_workers: DataLoader worker processes that read and decode a stream (0: in the loop).
    image_tower, text_tower: a tower name ("efficientnet-lite0", "minilm-l6", "tiny-image",
        "tiny-text") or a local Hugging Face folder, replacing the preset's tower.
    lora_rank: train the towers with LoRA of this rank; freeze_towers: False trains them fully.
    text_context: the text tower's ``context`` ("full" or "segments": each piece between
        punctuation encoded on its own; see ``TowerConfig``).
    steps: optimizer steps; epochs (if set) overrides steps as ceil(epochs * N / global batch).
    batch_size: per device and micro-step; grad_accum micro-steps per optimizer step.
    """
    recipe: str = "stage1"
    out_dir: str = "runs/solar"
    model: Optional[str] = None
    model_overrides: dict = field(default_factory=dict)
    data: Union[str, list] = "clipart"
    split: str = "train"
    limit: Optional[int] = None
    val_data: Optional[list] = None
    stream: Optional[bool] = None
    stream_above: int = 20_000             # more records than this stream (and skip the cache)
    data_workers: int = 2
    shuffle_buffer: int = 512              # raw records shuffled per stream reader
    val_max: int = 1000                    # validation documents scored at the end
    log_ids: bool = False                  # write each rank's batch ids (doc_ids.rank<r>.jsonl)
    image_tower: Optional[str] = None
    text_tower: Optional[str] = None
    lora_rank: Optional[int] = None
    freeze_towers: Optional[bool] = None
    text_context: Optional[str] = None
    val_frac: float = 0.1
    test_frac: float = 0.1
    split_seed: int = 0
    steps: int = 500
    epochs: Optional[float] = None
    batch_size: int = 64
    grad_accum: int = 1
    lr: Optional[float] = None             # None: the recipe's default_lr (1e-3; stage2 1e-4) [I]
    weight_decay: float = 0.05
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True                       # bf16 autocast on CUDA (no effect on CPU)
    cache_dir: Optional[str] = None        # default ~/.cache/solar/features
    use_cache: bool = True                 # cache tower features when both towers are frozen
    feature_batch: int = 32
    save_every: int = 0                    # also checkpoint every N steps (0: only at the end)
    resume: bool = True
    stop_at: Optional[int] = None          # stop (with a checkpoint) at this step; resume later
    progress: bool = True
    max_text_tokens: Optional[int] = None  # trim cached text tokens (None: the tower's max_length)
    # ---- stage 1 (docs/method.md, "Stage 1") [I] values
    gla_margin: float = 0.1                # delta of the GLA hinge
    gla_form: str = "mean"                 # "mean": hinge on mean scores (paper); "local": per
                                           # element; "smoothmax": on a soft max of the elements
    gla_temp: float = 0.05                 # temperature of the "smoothmax" pooling
    w_local: float = 0.0                   # weight of token-to-patch alignment (losses.py)
    local_temp: float = 0.05               # its temperature
    local_form: str = "pair"               # "pair": mean-of-best-match pair InfoNCE; per element:
                                           # "owner", "select" or "both" (losses.element_alignment)
    w_empty: float = 0.0                   # weight of empty-cell rejection (losses.py)
    empty_cos: float = 0.35                # a cell is empty within this cosine of a blank canvas's
    empty_null: float = 0.2                # the "none" option's score
    mix_text: float = 0.0                  # pair mixing (mixing.py): share of captions that get
    mix_image: float = 0.0                 # another's keywords / images half another's patches
    w_compose: float = 0.0                 # weight of composite supervision (composites.py): 0 =
                                           # the paper's stage 1 (plain pairs only)
    compose_n: int = 4096                  # composites built from the training documents
    compose_batch: int = 32                # composites per step
    compose_words: tuple = (8, 8)          # (min, max) words of each part of a composite's text
    compose_center: float = 0.2            # score where the composite loss is undecided
    compose_temp: float = 0.05             # its temperature
    compose_own_alpha: bool = False        # offline drawings keep their own transparency in
                                           # composites (else near-white is cut out)
    compose_qda: bool = False              # QDA thresholds from the composites' intersection vs
                                           # difference scores (else: own vs other pairs, paper)
    mask_probe_every: int = 0              # log mask-benchmark metrics (val split) every N steps
    mask_probe_cases: int = 64             # composites in that probe
    w_gla: float = 1.0                     # lambda1
    w_gd: float = 1.0                      # lambda2
    w_ld: float = 1.0                      # lambda3
    qda_momentum: float = 0.9              # EMA of the Gaussian statistics across steps
    qda_priors: Optional[tuple] = None     # (pi+, pi-) or None (equal densities, the papers' rule)
    anneal_frac: float = 0.5               # rho goes 1 -> 0 linearly over this fraction of steps
    # ---- stage 2 (docs/method.md, "Stage 2") [I] values
    temperature: float = 0.05              # eta
    pos_ratio: float = 0.5                 # share of intersection tokens hidden in a positive
    area_cap: float = 0.5                  # r_max: at most this share of patches hidden per view
    neg_ratio: float = 1.0                 # share of difference tokens hidden in a negative
    segments: int = 6                      # K_max clusters of patches per image
    mine_k: int = 2                        # mined negatives per anchor and step (0: none)
    mine_skip: int = 3                     # nearest neighbours skipped (likely false negatives)
    mine_window: int = 30                  # ranks skip+1 .. skip+window are sampled
    mine_queue: int = 4096                 # stream: mined among the last N documents of the rank
    crop_views: float = 0.0                # views drop up to this share of patch-grid rows/cols
    token_drop: float = 0.0                # views drop each token with this probability
    anchor_view: bool = False              # the anchor is such a view too (else unmasked)
    neg_min_share: float = 0.0             # a constructed negative must hide >= this share
    neg_form: str = "hide"                 # constructed negatives: "hide" difference parts (paper),
                                           # "swap" one modality for a batch partner's, or "both"
    s2_distill: float = 0.0                # weight of global distillation of the documents

    def __post_init__(self):
        spec = recipe_spec(self.recipe)
        if self.model is None:
            self.model = spec.default_model
        if self.lr is None:
            self.lr = spec.default_lr
        if self.model is None:
            raise ValueError(f"recipe {self.recipe!r} has no default model; it needs model= "
                             "(stage 2: the stage-1 run folder)")
        for name in ("steps", "batch_size", "grad_accum", "feature_batch", "segments"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("mine_k", "mine_skip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.mine_k > 0 and self.mine_window <= 0:
            raise ValueError(f"mine_window must be positive when mine_k > 0, got {self.mine_window}")
        if self.mine_k > 0 and self.mine_queue <= 0:
            raise ValueError(f"mine_queue must be positive when mine_k > 0, got {self.mine_queue}")
        for name in ("pos_ratio", "area_cap", "neg_ratio", "anneal_frac", "crop_views",
                     "token_drop", "neg_min_share", "mix_text", "mix_image"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.gla_form not in GLA_FORMS:
            raise ValueError(f"gla_form must be one of {GLA_FORMS}, got {self.gla_form!r}")
        if self.mask_probe_every < 0 or self.mask_probe_cases < 2:
            raise ValueError("mask_probe_every must be >= 0 and mask_probe_cases >= 2")
        if self.s2_distill < 0:
            raise ValueError(f"s2_distill must be >= 0, got {self.s2_distill}")
        if self.neg_form not in NEG_FORMS:
            raise ValueError(f"neg_form must be one of {NEG_FORMS}, got {self.neg_form!r}")
        if self.local_form not in LOCAL_FORMS:
            raise ValueError(f"local_form must be one of {LOCAL_FORMS}, got {self.local_form!r}")
        if self.w_empty < 0 or not -1.0 <= self.empty_cos <= 1.0 or not -1.0 <= self.empty_null <= 1.0:
            raise ValueError("w_empty must be >= 0, empty_cos and empty_null in [-1, 1]")
        if self.w_local < 0 or self.local_temp <= 0:
            raise ValueError("w_local must be >= 0 and local_temp positive")
        if self.w_compose < 0 or self.compose_temp <= 0 or not -1.0 <= self.compose_center <= 1.0:
            raise ValueError("w_compose must be >= 0, compose_temp positive and compose_center "
                             "in [-1, 1]")
        self.compose_words = tuple(int(x) for x in self.compose_words)
        if len(self.compose_words) != 2 or not 1 <= self.compose_words[0] <= self.compose_words[1]:
            raise ValueError(f"compose_words must be (min, max) with 1 <= min <= max, got "
                             f"{self.compose_words}")
        if self.compose_qda and self.w_compose <= 0:
            raise ValueError("compose_qda takes the thresholds from the composites: it needs "
                             "w_compose > 0")
        if self.compose_n < 2 or self.compose_batch < 2:
            raise ValueError("compose_n and compose_batch must be at least 2")
        if self.gla_temp <= 0:
            raise ValueError(f"gla_temp must be positive, got {self.gla_temp}")
        if self.temperature <= 0 or self.lr <= 0:
            raise ValueError("temperature and lr must be positive")
        if isinstance(self.val_data, str):
            self.val_data = [self.val_data]
        if isinstance(self.data, (list, tuple)):
            self.data = list(self.data)
        if self.data_workers < 0 or self.stream_above < 0 or self.val_max < 0:
            raise ValueError("data_workers, stream_above and val_max must be >= 0")
        if self.lora_rank is not None and self.lora_rank <= 0:
            raise ValueError(f"lora_rank must be positive, got {self.lora_rank}")
        if self.lora_rank is not None and self.freeze_towers is False:
            raise ValueError("lora_rank trains LoRA factors of frozen towers; it cannot be "
                             "combined with freeze_towers=False (full training)")
        if self.text_context is not None and self.text_context not in CONTEXTS:
            raise ValueError(f"text_context must be one of {CONTEXTS}, got {self.text_context!r}")
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {self.split!r}")
        if self.qda_priors is not None:
            self.qda_priors = tuple(float(x) for x in self.qda_priors)
            if len(self.qda_priors) != 2 or min(self.qda_priors) <= 0:
                raise ValueError(f"qda_priors must be two positive numbers, got {self.qda_priors}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown train config keys: {sorted(unknown)}")
        return cls(**d)
