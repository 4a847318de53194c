"""RIFE IFNet (HDv3 layout, c=90) for x2 frame interpolation; parameter names match RIFE/flownet.pkl.

Inference runs three coarse-to-fine levels (scales 4, 2, 1), each bidirectional and averaged; the middle frame
is the mask-weighted blend of both backward-warped inputs. `block_tea` exists only to hold checkpoint weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import RIFE_CHANNELS

_PAD_MULTIPLE = 32  # the coarsest level downsamples by 4 (scale) x 4 (strided convs) x 2 (headroom)


def _conv_prelu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=True), nn.PReLU(out_channels))


def _decoder(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1),
        nn.PReLU(channels // 2),
        nn.ConvTranspose2d(channels // 2, out_channels, 4, 2, 1),
    )


class IFBlock(nn.Module):
    """One flow level: (images + mask + flow) at 1/scale -> flow residual (4 ch) and mask residual (1 ch)."""

    def __init__(self, in_channels: int, channels: int = RIFE_CHANNELS) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(
            _conv_prelu(in_channels, channels // 2, 2), _conv_prelu(channels // 2, channels, 2)
        )
        self.convblock0 = nn.Sequential(_conv_prelu(channels, channels), _conv_prelu(channels, channels))
        self.convblock1 = nn.Sequential(_conv_prelu(channels, channels), _conv_prelu(channels, channels))
        self.convblock2 = nn.Sequential(_conv_prelu(channels, channels), _conv_prelu(channels, channels))
        self.convblock3 = nn.Sequential(_conv_prelu(channels, channels), _conv_prelu(channels, channels))
        self.conv1 = _decoder(channels, 4)
        self.conv2 = _decoder(channels, 1)

    def forward(self, x: Tensor, flow: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        def resize(t: Tensor, factor: float) -> Tensor:
            return F.interpolate(t, scale_factor=factor, mode="bilinear", align_corners=False,
                                 recompute_scale_factor=False)

        x = resize(x, 1.0 / scale)
        flow = resize(flow, 1.0 / scale) / scale
        feat = self.conv0(torch.cat([x, flow], dim=1))
        for block in (self.convblock0, self.convblock1, self.convblock2, self.convblock3):
            feat = block(feat) + feat
        return resize(self.conv1(feat), scale) * scale, resize(self.conv2(feat), scale)


def backward_warp(image: Tensor, flow: Tensor) -> Tensor:
    """Sample `image` at pixel + flow (bilinear, border padding, align_corners=True)."""
    batch, _, height, width = flow.shape
    xs = torch.linspace(-1.0, 1.0, width, device=flow.device, dtype=flow.dtype)
    ys = torch.linspace(-1.0, 1.0, height, device=flow.device, dtype=flow.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    base = torch.stack([grid_x, grid_y], dim=0)[None].expand(batch, -1, -1, -1)
    norm_flow = torch.cat(
        [flow[:, 0:1] / ((image.shape[3] - 1.0) / 2.0), flow[:, 1:2] / ((image.shape[2] - 1.0) / 2.0)], dim=1
    )
    grid = (base + norm_flow).permute(0, 2, 3, 1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


class IFNet(nn.Module):
    """RIFE HDv3 flow network; `midpoint(img0, img1)` gives the frame halfway between two images in [0, 1]."""

    def __init__(self, channels: int = RIFE_CHANNELS) -> None:
        super().__init__()
        self.block0 = IFBlock(7 + 4, channels)
        self.block1 = IFBlock(7 + 4, channels)
        self.block2 = IFBlock(7 + 4, channels)
        self.block_tea = IFBlock(10 + 4, channels)

    def forward(self, img0: Tensor, img1: Tensor, scale_list: tuple[float, ...] = (4.0, 2.0, 1.0)) -> Tensor:
        """Middle frame of (N, 3, H, W) images whose sides are multiples of 32 (unclamped)."""
        batch, _, height, width = img0.shape
        flow = img0.new_zeros(batch, 4, height, width)
        mask = img0.new_zeros(batch, 1, height, width)
        warped0, warped1 = img0, img1
        for block, scale in zip((self.block0, self.block1, self.block2), scale_list):
            flow_fwd, mask_fwd = block(torch.cat([warped0, warped1, mask], 1), flow, scale)
            swapped = torch.cat([flow[:, 2:4], flow[:, :2]], 1)
            flow_bwd, mask_bwd = block(torch.cat([warped1, warped0, -mask], 1), swapped, scale)
            flow = flow + (flow_fwd + torch.cat([flow_bwd[:, 2:4], flow_bwd[:, :2]], 1)) / 2
            mask = mask + (mask_fwd - mask_bwd) / 2
            warped0 = backward_warp(img0, flow[:, :2])
            warped1 = backward_warp(img1, flow[:, 2:4])
        weight = torch.sigmoid(mask)
        return warped0 * weight + warped1 * (1 - weight)

    @torch.no_grad()
    def midpoint(self, img0: Tensor, img1: Tensor) -> Tensor:
        """Middle frame of (N, 3, H, W) images in [0, 1], any H, W (padded to 32 and cropped back), fp32, clamped."""
        param = next(self.parameters())
        img0 = img0.to(device=param.device, dtype=torch.float32)
        img1 = img1.to(device=param.device, dtype=torch.float32)
        height, width = img0.shape[-2:]
        pad_h = (-height) % _PAD_MULTIPLE
        pad_w = (-width) % _PAD_MULTIPLE
        if pad_h or pad_w:
            img0 = F.pad(img0, (0, pad_w, 0, pad_h))
            img1 = F.pad(img1, (0, pad_w, 0, pad_h))
        middle = self.forward(img0, img1)[..., :height, :width]
        return middle.clamp(0.0, 1.0)


def strip_module_prefix(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keep only DataParallel keys containing `module.` and drop that prefix (as the official loader does)."""
    return {key.replace("module.", ""): value for key, value in state_dict.items() if "module." in key}
