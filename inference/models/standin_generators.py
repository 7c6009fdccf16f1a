"""The stand-ins' image generators, layer for layer as exported to ONNX.

inswapper_128 (`inswapper_128.onnx`), as re-implemented by somanchiu/ReSwapper `StyleTransferModel_128.py` (its
README: "ReSwapper aims to reproduce the implementation of inswapper"; compare in Netron): an encoder (7x7 conv
3->128 with reflect padding, 3x3 convs 128->256, 256->512 stride 2, 512->1024 stride 2, LeakyReLU 0.2), six style
blocks at 1024 channels and 32x32 (each two 3x3 convs, each followed by AdaIN: InstanceNorm, then a scale and shift
from a Linear 512->2048 of the source latent; ReLU after the first; the block is residual), and a decoder (bilinear
x2, 3x3 1024->512, bilinear x2, 3x3 512->256, 3x3 256->128, 7x7 reflect 128->3, tanh, then (x + 1) / 2 into [0, 1]).
Its 138,292,739 weights plus the 512x512 emap make 554.2 MB of float32, against the real file's 554,253,681 bytes.

GFPGAN 1.4 (`gfpgan_1.4.onnx`), TencentARC/GFPGAN `gfpgan/archs/gfpganv1_clean_arch.py` (GFPGANv1Clean) and
`stylegan2_clean_arch.py`, with the v1.4 settings of `gfpgan/utils.py` (out_size 512, channel_multiplier 2,
input_is_latent, different_w, sft_half): a U-Net (1x1 conv 3->32, seven down ResBlocks to 4x4, a 3x3 conv, a
Linear 4096->8192 giving 16 style codes of 512, seven up ResBlocks with SFT scale/shift branches) and the StyleGAN2
decoder (a 4x4 constant, 15 modulated 3x3 convs with demodulation, noise and bias, bilinear upsampling before each
level's first conv, 8 modulated 1x1 to-RGB layers with an upsampled skip), SFT applied to half the channels of each
level's first conv. The modulated convs are the static ops the exporter writes for batch 1: the weight times the
style's modulation, demodulated (rsqrt of the sum of squares), then a Conv with that computed weight. The noise
inputs are fixed tensors (the randomised noise of training has no place in an inference file). Left out, as in
the ONNX exports: the style MLP (unused with input_is_latent) and the U-Net's intermediate to-RGB outputs.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from inference.models.standin_graph import LEAKY_GAIN, Builder

# --- inswapper_128 --------------------------------------------------------------------------------------------

SWAPPER_LATENT: Final = 512
_SWAPPER_DOWN: Final = ((3, 128, 7, 1), (128, 256, 3, 1), (256, 512, 3, 2), (512, 1024, 3, 2))
_SWAPPER_STYLE_BLOCKS: Final = 6
_SWAPPER_WIDTH: Final = 1024
_SWAPPER_UP: Final = ((1024, 512, 3, True), (512, 256, 3, True), (256, 128, 3, False))
_ADAIN_EPS: Final = 1e-6


def _adain(b: Builder, x: str, latent: str, channels: int, name: str) -> str:
    """InstanceNorm(x) * gamma + beta, (gamma, beta) = Linear(latent); gamma starts near 1, beta near 0."""
    gamma_bias = np.concatenate([np.ones(channels, np.float32), np.zeros(channels, np.float32)])
    weight = b.weight(f"{name}.style.weight", (2 * channels, SWAPPER_LATENT), std=0.1 / math.sqrt(SWAPPER_LATENT))
    bias = b.const(f"{name}.style.bias", gamma_bias)
    style = b.op("Gemm", [latent, weight, bias], f"{name}.style", transB=1)
    style = b.op("Reshape", [style, b.ints([1, 2 * channels, 1, 1])], f"{name}.style_4d")
    gamma, beta = b.op_outputs("Split", [style], f"{name}.split", 2, axis=1)
    normed = b.op(
        "InstanceNormalization",
        [x, b.fill(1.0, channels), b.fill(0.0, channels)],
        f"{name}.norm",
        epsilon=_ADAIN_EPS,
    )
    return b.add(b.mul(normed, gamma, f"{name}.scale"), beta, f"{name}.shift")


def inswapper(b: Builder, target: str, source: str) -> str:
    """The inswapper_128 network: target [1, 3, 128, 128] in [0, 1], source latent [1, 512]; returns the swapped
    crop [1, 3, 128, 128] in [0, 1]."""
    x = target
    for i, (cin, cout, kernel, stride) in enumerate(_SWAPPER_DOWN):
        if kernel == 7:
            x = b.reflect_pad(x, 3, f"down.{2 * i}.pad")
        pad = 0 if kernel == 7 else 1
        x = b.leaky(
            b.conv(x, cin, cout, kernel, f"down.{2 * i}", stride=stride, pad=pad, gain=LEAKY_GAIN), f"down_act{i}"
        )
    for i in range(_SWAPPER_STYLE_BLOCKS):
        name = f"style_blocks.{i}"
        y = b.conv(x, _SWAPPER_WIDTH, _SWAPPER_WIDTH, 3, f"{name}.conv1.conv")
        y = b.relu(_adain(b, y, source, _SWAPPER_WIDTH, f"{name}.conv1.adain"), f"{name}.conv1.act")
        y = b.conv(y, _SWAPPER_WIDTH, _SWAPPER_WIDTH, 3, f"{name}.conv2.conv")
        y = _adain(b, y, source, _SWAPPER_WIDTH, f"{name}.conv2.adain")
        x = b.add(y, x, f"{name}.residual")
    for i, (cin, cout, kernel, upsample) in enumerate(_SWAPPER_UP):
        if upsample:
            x = b.resize(x, 2.0, f"up.upsample{i}")
        x = b.leaky(b.conv(x, cin, cout, kernel, f"up.conv{i}", gain=LEAKY_GAIN), f"up_act{i}")
    x = b.reflect_pad(x, 3, "up.out.pad")
    x = b.op("Tanh", [b.conv(x, 128, 3, 7, "up.out", pad=0, gain=1.0)], "up.tanh")
    return b.mul(b.add(x, b.scalar(1.0), "out_plus_one"), b.scalar(0.5), "out_unit")


# --- GFPGAN 1.4 -----------------------------------------------------------------------------------------------

ENHANCER_SIZE: Final = 512
_STYLE: Final = 512
_LOG_SIZE: Final = 9  # log2(512)
_NUM_LATENT: Final = 2 * _LOG_SIZE - 2  # 16 style codes (different_w)
# channel_multiplier 2, narrow 1: the StyleGAN2 decoder's channels per resolution; the U-Net uses half of them.
_DECODER_CHANNELS: Final = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}
_DEMOD_EPS: Final = 1e-8
_HALF: Final = math.sqrt(0.5)
_CONDITION_GAIN: Final = 0.1  # SFT scale and shift stay near (1, 0), as trained ones do


def _unet(resolution: int) -> int:
    return _DECODER_CHANNELS[resolution] // 2


def _res_block(b: Builder, x: str, cin: int, cout: int, scale: float, name: str) -> str:
    # Both paths at half variance, so the sum keeps the input's scale through the 14 blocks.
    out = b.leaky(b.conv(x, cin, cin, 3, f"{name}.conv1", gain=LEAKY_GAIN), f"{name}.act1")
    out = b.resize(out, scale, f"{name}.resize")
    out = b.leaky(b.conv(out, cin, cout, 3, f"{name}.conv2", gain=_HALF * LEAKY_GAIN), f"{name}.act2")
    skip = b.conv(b.resize(x, scale, f"{name}.skip_resize"), cin, cout, 1, f"{name}.skip", bias=False, gain=_HALF)
    return b.add(out, skip, f"{name}.sum")


def _modulated_conv(
    b: Builder, x: str, style: str, cin: int, cout: int, kernel: int, name: str, *, demodulate: bool, upsample: bool
) -> str:
    """ModulatedConv2d for batch 1: weight * Linear(style) over input channels, demodulated, then a plain Conv."""
    modulation = b.gemm(style, _STYLE, cin, f"{name}.modulation", bias_mean=1.0)
    modulation = b.op("Reshape", [modulation, b.ints([1, cin, 1, 1])], f"{name}.modulation_4d")
    weight = b.weight(f"{name}.weight", (cout, cin, kernel, kernel), std=1.0 / math.sqrt(cin * kernel * kernel))
    weight = b.mul(weight, modulation, f"{name}.modulated")
    if demodulate:
        energy = b.op("ReduceSumSquare", [weight], f"{name}.energy", axes=[1, 2, 3], keepdims=1)
        demod = b.op(
            "Reciprocal",
            [b.op("Sqrt", [b.add(energy, b.scalar(_DEMOD_EPS), f"{name}.energy_eps")], f"{name}.norm")],
            f"{name}.demod",
        )
        weight = b.mul(weight, demod, f"{name}.demodulated")
    if upsample:
        x = b.resize(x, 2.0, f"{name}.upsample")
    pad = kernel // 2
    return b.op("Conv", [x, weight], f"{name}.conv", kernel_shape=[kernel, kernel], pads=[pad] * 4)


def _style_conv(
    b: Builder, x: str, style: str, cin: int, cout: int, resolution: int, name: str, *, upsample: bool
) -> str:
    out = _modulated_conv(b, x, style, cin, cout, 3, f"{name}.modulated_conv", demodulate=True, upsample=upsample)
    out = b.mul(out, b.scalar(math.sqrt(2.0)), f"{name}.gain")
    noise = b.weight(f"{name}.noise", (1, 1, resolution, resolution), std=1.0)
    strength = b.weight(f"{name}.weight", (1,), std=0.0, mean=0.0)
    out = b.add(out, b.mul(noise, strength, f"{name}.noise_scaled"), f"{name}.noisy")
    out = b.add(out, b.weight(f"{name}.bias", (1, cout, 1, 1), std=0.0), f"{name}.biased")
    return b.leaky(out, f"{name}.act")


def _to_rgb(b: Builder, x: str, style: str, cin: int, skip: str | None, name: str) -> str:
    out = _modulated_conv(b, x, style, cin, 3, 1, f"{name}.modulated_conv", demodulate=False, upsample=False)
    out = b.add(out, b.weight(f"{name}.bias", (1, 3, 1, 1), std=0.0), f"{name}.biased")
    if skip is not None:
        out = b.add(out, b.resize(skip, 2.0, f"{name}.skip_upsample"), f"{name}.sum")
    return out


def gfpgan_v14(b: Builder, image: str) -> str:
    """The GFPGANv1Clean network (v1.4 settings) on `image` [1, 3, 512, 512] in [-1, 1]; returns the restored
    image [1, 3, 512, 512] (unbounded, about [-1, 1] when trained)."""
    feat = b.leaky(b.conv(image, 3, _unet(ENHANCER_SIZE), 1, "conv_body_first", gain=LEAKY_GAIN), "first_act")
    cin = _unet(ENHANCER_SIZE)
    skips: list[str] = []
    for i, level in enumerate(range(_LOG_SIZE, 2, -1)):
        cout = _unet(2 ** (level - 1))
        feat = _res_block(b, feat, cin, cout, 0.5, f"conv_body_down.{i}")
        skips.insert(0, feat)
        cin = cout
    feat = b.leaky(b.conv(feat, cin, _unet(4), 3, "final_conv", gain=LEAKY_GAIN), "final_act")
    flat = b.op("Flatten", [feat], "final_flatten", axis=1)
    codes = b.gemm(flat, _unet(4) * 4 * 4, _NUM_LATENT * _STYLE, "final_linear")
    codes = b.op("Reshape", [codes, b.ints([1, _NUM_LATENT, _STYLE])], "style_codes")
    latents = [b.op("Gather", [codes, b.ints([k])], f"latent{k}", axis=1) for k in range(_NUM_LATENT)]
    latents = [b.op("Reshape", [latent, b.ints([1, _STYLE])], f"latent{k}_2d") for k, latent in enumerate(latents)]

    conditions: list[str] = []
    cin = _unet(4)
    for i, resolution in enumerate(2**level for level in range(3, _LOG_SIZE + 1)):
        feat = b.add(feat, skips[i], f"unet_skip{i}")
        cout = _unet(resolution)
        feat = _res_block(b, feat, cin, cout, 2.0, f"conv_body_up.{i}")
        cin = cout
        for kind, centre in (("condition_scale", 1.0), ("condition_shift", 0.0)):
            hidden = b.leaky(b.conv(feat, cout, cout, 3, f"{kind}.{i}.0", gain=LEAKY_GAIN), f"{kind}.{i}.act")
            conditions.append(b.conv(hidden, cout, cout, 3, f"{kind}.{i}.2", gain=_CONDITION_GAIN, bias_mean=centre))

    decoder = "stylegan_decoder"
    out = b.weight(f"{decoder}.constant_input.weight", (1, _DECODER_CHANNELS[4], 4, 4), std=1.0)
    out = _style_conv(b, out, latents[0], 512, 512, 4, f"{decoder}.style_conv1", upsample=False)
    skip = _to_rgb(b, out, latents[1], 512, None, f"{decoder}.to_rgb1")
    cin = _DECODER_CHANNELS[4]
    k = 1
    for level, resolution in enumerate(2**level for level in range(3, _LOG_SIZE + 1)):
        cout = _DECODER_CHANNELS[resolution]
        name = f"{decoder}.style_convs.{2 * level}"
        out = _style_conv(b, out, latents[k], cin, cout, resolution, name, upsample=True)
        same, sft = b.op_outputs("Split", [out], f"{name}.sft_split", 2, axis=1)
        sft = b.add(b.mul(sft, conditions[k - 1], f"{name}.sft_scale"), conditions[k], f"{name}.sft_shift")
        out = b.op("Concat", [same, sft], f"{name}.sft", axis=1)
        out = _style_conv(
            b, out, latents[k + 1], cout, cout, resolution, f"{decoder}.style_convs.{2 * level + 1}", upsample=False
        )
        skip = _to_rgb(b, out, latents[k + 2], cout, skip, f"{decoder}.to_rgbs.{level}")
        cin = cout
        k += 2
    return skip
