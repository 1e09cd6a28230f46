"""Image preprocessing for the image towers: RGB, fit into a square, scale, normalize.

Clip-art and icons lose their edges under a center crop, so the default fits the whole image into
the square and pads with white ("pad"); photo models can use "crop" (resize the short side, then
center-crop), as their processors do.
"""
from __future__ import annotations

from solar.data.decode import to_rgb  # noqa: F401  (re-exported: the one RGB conversion)

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageTransform:
    """size: output side in pixels; mean/std: per-channel, applied to values in [0, 1]."""
    size: int
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    resize: str = "pad"

    def __post_init__(self):
        if self.resize not in ("pad", "crop"):
            raise ValueError(f"resize must be 'pad' or 'crop', got {self.resize!r}")
        if self.size <= 0:
            raise ValueError(f"size must be positive, got {self.size}")

    def __call__(self, images: list) -> torch.Tensor:
        """PIL images -> (B, 3, size, size) float32, normalized."""
        arrays = [self._one(img, i) for i, img in enumerate(images)]
        x = torch.stack(arrays) if arrays else torch.empty(0, 3, self.size, self.size)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (x - mean) / std

    def _one(self, img, index: int) -> torch.Tensor:
        from PIL import Image
        if not isinstance(img, Image.Image):
            raise TypeError(f"images[{index}] must be a PIL.Image.Image or None, "
                            f"got {type(img).__name__}")
        img = to_rgb(img)
        img = fit_square(img, self.size) if self.resize == "pad" else crop_square(img, self.size)
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        return data.view(self.size, self.size, 3).permute(2, 0, 1).float().div_(255.0)


def fit_square(img, size: int):
    """Resize so the long side is ``size`` and pad to size x size on white."""
    from PIL import Image
    w, h = img.size
    s = size / max(w, h, 1)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    img = img.resize((nw, nh), Image.BICUBIC)
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(img, ((size - nw) // 2, (size - nh) // 2))
    return out


def crop_square(img, size: int):
    """Resize so the short side is ``size`` and center-crop to size x size."""
    from PIL import Image
    w, h = img.size
    s = size / max(min(w, h), 1)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))
