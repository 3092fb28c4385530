"""PyTorch twin of the latent-diffusion denoiser step (`LatentDiffusion.train_step` on cached
posterior moments, i.e. what `keras-cxr train --model ldm` runs per batch).

The U-Net mirrors `keras_cxr.unet.build_unet` block by block (sinusoidal time features -> MLP,
label embedding with a learned null token, GroupNorm-SiLU-conv residual blocks with the conditioning
vector added, multi-head self-attention at the lowest resolution, stride-2 conv down, nearest
upsampling + conv up, skip concatenations). The step is the same:

    z0 = (mean + exp(log_var / 2) eps) * latent_scale   (no gradient)
    t ~ U{0..T-1}, n ~ N(0, I), z_t = sqrt(ab_t) z0 + sqrt(1 - ab_t) n
    target = n (eps) | sqrt(ab_t) n - sqrt(1 - ab_t) z0 (v);   labels kept with prob 1 - label_dropout
    loss = mean((f(z_t, t, y, mask) - target)^2), Adam, then EMA of the weights with
    decay = min(ema_decay, (1 + n) / (10 + n))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import keras_adam, keras_param_counts, same_padding, torch_param_counts


def groups(channels: int) -> int:
    from keras_cxr.unet import _groups  # the product's rule, so the twin follows it

    return _groups(channels)


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim, max_period=10000.0):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half), persistent=False)

    def forward(self, t):
        args = t.float()[:, None] * self.freqs[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class LabelEmbedding(nn.Module):
    def __init__(self, num_classes, dim):
        super().__init__()
        self.proj = nn.Linear(num_classes, dim)
        self.null_token = nn.Parameter(torch.zeros(dim))

    def forward(self, labels, mask):
        return mask * self.proj(labels) + (1.0 - mask) * self.null_token[None]


class ResidualBlock(nn.Module):
    def __init__(self, in_ch, width, cond_dim, dropout=0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups(in_ch), in_ch, eps=1e-5)
        self.conv1 = nn.Conv2d(in_ch, width, 3, padding=1)
        self.cond_proj = nn.Linear(cond_dim, width)
        self.norm2 = nn.GroupNorm(groups(width), width, eps=1e-5)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, width, 1) if in_ch != width else None

    def forward(self, x, cond):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.cond_proj(cond)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return h + (self.skip(x) if self.skip is not None else x)


class AttentionBlock(nn.Module):
    def __init__(self, ch, num_heads):
        super().__init__()
        if ch % num_heads:
            raise NotImplementedError("attention twin needs channels divisible by heads (key_dim = ch / heads)")
        self.norm = nn.GroupNorm(groups(ch), ch, eps=1e-5)
        self.attn = nn.MultiheadAttention(ch, num_heads, batch_first=True)

    def forward(self, x):
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)  # [B, hw, c]
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    def __init__(self, in_ch, widths, num_res_blocks, attention, num_heads, num_classes, dropout):
        super().__init__()
        emb_dim = widths[0] * 4
        self.time = SinusoidalEmbedding(widths[0])
        self.t_mlp1, self.t_mlp2 = nn.Linear(widths[0] // 2 * 2, emb_dim), nn.Linear(emb_dim, emb_dim)
        self.label_emb = LabelEmbedding(num_classes, emb_dim) if num_classes else None
        down_pad = same_padding(3, 2)
        self.stem = nn.Conv2d(in_ch, widths[0], 3, padding=1)
        chans = [widths[0]]
        ch = widths[0]
        self.down = nn.ModuleList()
        last = len(widths) - 1
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down.append(ResidualBlock(ch, width, emb_dim, dropout))
                ch = width
                if attention and level == last:
                    self.down.append(AttentionBlock(ch, num_heads))
                chans.append(ch)
            if level < last:
                self.down.append(nn.Conv2d(ch, width, 3, stride=2, padding=down_pad))
                chans.append(width)
        self.mid = nn.ModuleList([ResidualBlock(ch, widths[-1], emb_dim, dropout)]
                                 + ([AttentionBlock(widths[-1], num_heads)] if attention else [])
                                 + [ResidualBlock(widths[-1], widths[-1], emb_dim, dropout)])
        ch = widths[-1]
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResidualBlock(ch + chans.pop(), widths[level], emb_dim, dropout))
                ch = widths[level]
                if attention and level == last:
                    self.up.append(AttentionBlock(ch, num_heads))
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(nn.Conv2d(ch, widths[level], 3, padding=1))
        self.out_norm = nn.GroupNorm(groups(widths[0]), widths[0], eps=1e-3)  # Keras' default epsilon
        self.out = nn.Conv2d(widths[0], in_ch, 3, padding=1)

    def forward(self, x, t, labels=None, mask=None):
        emb = self.t_mlp2(F.silu(self.t_mlp1(self.time(t))))
        if self.label_emb is not None:
            emb = emb + self.label_emb(labels, mask)
        emb = F.silu(emb)
        h = self.stem(x)
        skips = [h]
        for m in self.down:
            if isinstance(m, ResidualBlock):
                h = m(h, emb)
                skips.append(h)
            elif isinstance(m, AttentionBlock):
                h = m(h)
                skips[-1] = h  # the attention output replaces its block's skip
            else:
                h = m(h)
                skips.append(h)
        for m in self.mid:
            h = m(h, emb) if isinstance(m, ResidualBlock) else m(h)
        for m in self.up:
            if isinstance(m, ResidualBlock):
                h = m(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = m(h)
        return self.out(F.silu(self.out_norm(h)))


class LDMTwin:
    name = "ldm"

    def __init__(self, keras_model, channels_last: bool = False):
        km = keras_model
        h, w, c = km.noise_shape
        self.latent_shape = (c, h, w)
        self.conditional, self.num_classes = km.conditional, km.num_classes
        self.net = UNet(c, km.widths, km.num_res_blocks, km.attention, km.num_heads,
                        km.num_classes if km.conditional else 0, km.dropout)
        k = keras_param_counts(km.denoiser)[0]
        t = torch_param_counts(self.net)[0]
        if k != t:
            raise AssertionError(f"ldm denoiser: Keras trainable params {k} != PyTorch twin {t}")
        self.params = {"denoiser": (k, 0)}
        self.ema = [p.detach().clone() for p in self.net.parameters()]
        self.alpha_bar = torch.from_numpy(km._alpha_bar).float()
        self.timesteps, self.prediction = km.timesteps, km.prediction
        self.label_dropout, self.ema_decay = km.label_dropout, km.ema_decay
        self.scale = float(km._scale())
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format).train()
        self.opt = keras_adam(km.optimizer, self.net.parameters())
        self.iterations = 0

    def trainable_count(self):
        return self.params["denoiser"][0]

    def make_batch(self, moments, labels):
        """Cached posterior moments [B, h, w, 2c] (NHWC numpy) -> NCHW torch, labels."""
        x = torch.from_numpy(moments).permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)
        return x, torch.from_numpy(labels)

    def step(self, moments, labels):
        with torch.no_grad():
            mean, log_var = torch.chunk(moments, 2, dim=1)
            z0 = (mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)) * self.scale
            b = z0.shape[0]
            t = torch.randint(0, self.timesteps, (b,))
            noise = torch.randn_like(z0)
            ab = self.alpha_bar[t][:, None, None, None]
            z_t = ab.sqrt() * z0 + (1.0 - ab).sqrt() * noise
            target = noise if self.prediction == "eps" else ab.sqrt() * noise - (1.0 - ab).sqrt() * z0
            mask = (torch.rand(b, 1) >= self.label_dropout).float() if self.conditional else None
        self.opt.zero_grad(set_to_none=True)
        out = self.net(z_t, t, labels if self.conditional else None, mask)
        loss = torch.mean((out - target) ** 2)
        loss.backward()
        self.opt.step()
        self.iterations += 1
        decay = min(self.ema_decay, (1.0 + self.iterations) / (10.0 + self.iterations))
        with torch.no_grad():
            params = [p.detach() for p in self.net.parameters()]
            torch._foreach_lerp_(self.ema, params, 1.0 - decay)
        return float(loss.detach())
