"""The meta-attacker: a network that maps an image to a predicted input-gradient map.

Du, Zhang, Zhou, Yang, Feng, "Query-efficient meta attack to deep neural
networks" (ICLR 2020), Sec. 3: an autoencoder-shaped network — an encoder of
strided convolutions and a decoder of transposed convolutions — is meta-trained
on (image, gradient map) pairs of whitebox models, so that after a few
fine-tuning steps on zeroth-order estimates it predicts the gradient of an
unseen blackbox. The paper's widths are 1→16→32→64→64 for MNIST and
3→32→64→128→256 for CIFAR-10, mirrored by the decoder back to the image's
channels.

Any channel count and image size work: every encoder layer halves the side
(rounding up), every decoder layer doubles it, and the output is cropped (or
zero-padded) to the input's size. There is no BatchNorm, so the network runs
under ``torch.func.vmap`` with stacked per-image parameters (Algorithm 4 of
the lazy paper fine-tunes one copy per attacked image).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

#: The widths of Du et al. by dataset.
PAPER_WIDTHS: dict[str, tuple[int, ...]] = {
    "mnist": (16, 32, 64, 64),
    "cifar10": (32, 64, 128, 256),
}


class MetaAttacker(nn.Module):
    """Image → gradient map (same shape as the image).

    Args:
        in_channels: channels of the images (and of the predicted maps).
        widths: output channels of the encoder's strided 3×3 convolutions; the
            decoder's 4×4 transposed convolutions mirror them back.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = PAPER_WIDTHS["mnist"]):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if in_channels < 1 or not widths or min(widths) < 1:
            raise ValueError(f"need in_channels >= 1 and positive widths, got {in_channels}, {widths}")
        self.in_channels, self.widths = int(in_channels), widths
        chans = (self.in_channels, *widths)
        encoder: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            encoder += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
        decoder: list[nn.Module] = []
        back = chans[::-1]
        for i, (c_in, c_out) in enumerate(zip(back[:-1], back[1:])):
            decoder.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if i < len(back) - 2:  # the last layer is linear: gradients take both signs
                decoder.append(nn.ReLU())
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    @classmethod
    def for_dataset(cls, dataset: str, in_channels: int | None = None) -> MetaAttacker:
        """The paper's network for ``mnist`` or ``cifar10`` (other names get the CIFAR widths)."""
        widths = PAPER_WIDTHS.get(dataset, PAPER_WIDTHS["cifar10"])
        channels = in_channels if in_channels is not None else (1 if dataset == "mnist" else 3)
        return cls(channels, widths)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        out = self.decoder(self.encoder(x))
        out = out[..., :h, :w]
        if out.shape[-2] < h or out.shape[-1] < w:  # cannot happen with ceil-halving, kept for safety
            out = F.pad(out, (0, w - out.shape[-1], 0, h - out.shape[-2]))
        return out

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, widths={self.widths}"


def describe(model: MetaAttacker) -> dict[str, object]:
    """The settings that rebuild ``model`` (saved with its checkpoint)."""
    return {"in_channels": model.in_channels, "widths": list(model.widths)}


def build(settings: dict[str, object]) -> MetaAttacker:
    """Rebuild a :class:`MetaAttacker` from :func:`describe`'s settings."""
    return MetaAttacker(int(settings["in_channels"]), tuple(int(w) for w in settings["widths"]))  # type: ignore[arg-type]


__all__ = ["MetaAttacker", "PAPER_WIDTHS", "describe", "build"]
