"""The stand-ins' detector and recogniser networks, layer for layer as exported to ONNX.

SCRFD-10GF with keypoints (`det_10g.onnx`), from deepinsight/insightface `detection/scrfd/configs/scrfd/
scrfd_10g_bnkps.py` and the code it names (`mmdet/models/backbones/resnet.py` ResNetV1e, mmdet 2.x `PAFPN`,
`mmdet/models/dense_heads/scrfd_head.py` SCRFDHead):

* backbone ResNetV1e (deep stem 3x3 convs 3->28 s2, 28->28, 28->56, then a 2x2 max pool, no 3x3 pool), BasicBlocks
  (3, 4, 2, 3) with planes (56, 88, 88, 224), strides (1, 2, 2, 2), `avg_down` shortcuts (2x2 average pool, then a
  1x1 conv);
* neck PAFPN on the last three stages, 56 channels, no norm and no activation (laterals 1x1, fpn 3x3, a bottom-up
  path of stride-2 3x3 convs and 3x3 pafpn convs), nearest upsampling to the finer level's size;
* head per stride (strides_share=False, cls_reg_share=True): three 3x3 conv-BN-ReLU of 80 channels, then 3x3
  predictors for 2 anchors: score (sigmoid), box (times a learnt per-stride Scale) and 5 keypoints.
  (The brief's "shared GroupNorm heads" are the non-keypoint scrfd_10g config; scrfd_10g_bnkps has the BN heads
  above, commented-out GN, and its parameter count 4.23M only fits unshared heads.)

IResNet-50 (`w600k_r50.onnx`), from insightface `recognition/arcface_torch/backbones/iresnet.py` as exported (the
ONNX names of somanchiu/ReSwapper `weight_transfer.py` show every BatchNorm that follows a conv folded into that conv
and the pre-activation BatchNorm of each block kept): conv 3x3 64 + PReLU, IBasicBlocks (3, 4, 14, 3) with
(64, 128, 256, 512) planes, each BN -> conv3x3 -> PReLU -> conv3x3 (stride 2 in a stage's first block) plus a 1x1
stride-2 shortcut, then BN, flatten, a 25088->512 fully connected layer and a BatchNorm1d.

Every BatchNorm that the exporter folds is folded here too (the conv keeps a bias), so the initializers are those of
the real files. Weights are He-initialised, residual branches damped, so activations stay finite through every layer.
"""

from __future__ import annotations

from typing import Final

from inference.models.standin_graph import Builder

SCRFD_STRIDES: Final = (8, 16, 32)
SCRFD_ANCHORS: Final = 2
_SCRFD_STEM: Final = (28, 28, 56)
_SCRFD_STAGES: Final = ((3, 56, 1), (4, 88, 2), (2, 88, 2), (3, 224, 2))
_SCRFD_NECK: Final = 56
_SCRFD_HEAD: Final = 80
_SCRFD_STACKED: Final = 3
_SCRFD_CLS_BIAS: Final = -4.595  # the head's own initial score bias (scrfd_head.py init_weights)
_SCRFD_PRED_STD: Final = 0.01
_RESIDUAL_GAIN: Final = 0.5

_IRESNET_STAGES: Final = ((64, 3), (128, 4), (256, 14), (512, 3))
_IRESNET_FEATURES: Final = 512
_IRESNET_SIDE: Final = 7  # 112 / 2**4


def _basic_block(b: Builder, x: str, cin: int, planes: int, stride: int, name: str) -> str:
    out = b.relu(b.conv(x, cin, planes, 3, f"{name}.conv1", stride=stride), f"{name}.relu1")
    out = b.conv(out, planes, planes, 3, f"{name}.conv2", gain=_RESIDUAL_GAIN)
    identity = x
    if stride != 1 or cin != planes:
        if stride != 1:
            identity = b.op(
                "AveragePool",
                [x],
                f"{name}.downsample.0",
                kernel_shape=[stride, stride],
                strides=[stride, stride],
                ceil_mode=1,
                count_include_pad=0,
            )
        identity = b.conv(identity, cin, planes, 1, f"{name}.downsample.1", gain=1.0)
    return b.relu(b.add(out, identity, f"{name}.add"), f"{name}.relu2")


def _upsample_to(b: Builder, x: str, like: str, name: str) -> str:
    """F.interpolate(x, size=like.shape[2:], mode='nearest') with the size read at run time (any input size)."""
    hw = b.op("Slice", [b.op("Shape", [like], f"{name}_like_shape"), b.ints([2]), b.ints([4])], f"{name}_hw")
    nc = b.op("Slice", [b.op("Shape", [x], f"{name}_shape"), b.ints([0]), b.ints([2])], f"{name}_nc")
    sizes = b.op("Concat", [nc, hw], f"{name}_sizes", axis=0)
    return b.op(
        "Resize",
        [x, "", "", sizes],
        name,
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )


def scrfd_10g_kps(b: Builder, image: str) -> dict[str, list[str]]:
    """The SCRFD-10GF-KPS network on `image` ([1, 3, H, W], normalised). Returns its nine heads, already in the
    exported rank-2 layout: {"score": [s8, s16, s32], "bbox": [...], "kps": [...]}."""
    x = image
    cin = 3
    for i, cout in enumerate(_SCRFD_STEM):
        x = b.relu(b.conv(x, cin, cout, 3, f"backbone.stem.{3 * i}", stride=2 if i == 0 else 1), f"stem_relu{i}")
        cin = cout
    x = b.op("MaxPool", [x], "backbone.maxpool", kernel_shape=[2, 2], strides=[2, 2])
    stages: list[tuple[str, int]] = []
    for index, (blocks, planes, stride) in enumerate(_SCRFD_STAGES):
        for j in range(blocks):
            x = _basic_block(b, x, cin, planes, stride if j == 0 else 1, f"backbone.layer{index + 1}.{j}")
            cin = planes
        stages.append((x, planes))

    # PAFPN, start_level=1: the last three stages (strides 8, 16, 32).
    levels = stages[1:]
    laterals = [
        b.conv(feat, channels, _SCRFD_NECK, 1, f"neck.lateral_convs.{i}", gain=1.0)
        for i, (feat, channels) in enumerate(levels)
    ]
    for i in range(len(laterals) - 1, 0, -1):
        up = _upsample_to(b, laterals[i], laterals[i - 1], f"neck.top_down{i}")
        laterals[i - 1] = b.add(laterals[i - 1], up, f"neck.lateral_sum{i - 1}")
    inter = [
        b.conv(lat, _SCRFD_NECK, _SCRFD_NECK, 3, f"neck.fpn_convs.{i}", gain=1.0) for i, lat in enumerate(laterals)
    ]
    for i in range(len(inter) - 1):
        down = b.conv(inter[i], _SCRFD_NECK, _SCRFD_NECK, 3, f"neck.downsample_convs.{i}", stride=2, gain=0.5)
        inter[i + 1] = b.add(inter[i + 1], down, f"neck.bottom_up{i + 1}")
    outs = [inter[0]] + [
        b.conv(inter[i], _SCRFD_NECK, _SCRFD_NECK, 3, f"neck.pafpn_convs.{i - 1}", gain=1.0)
        for i in range(1, len(inter))
    ]

    heads: dict[str, list[str]] = {"score": [], "bbox": [], "kps": []}
    for stride, feat in zip(SCRFD_STRIDES, outs, strict=True):
        key = f"bbox_head.stride{stride}"
        cin = _SCRFD_NECK
        for i in range(_SCRFD_STACKED):
            feat = b.relu(b.conv(feat, cin, _SCRFD_HEAD, 3, f"{key}.cls_convs.{i}"), f"{key}.relu{i}")
            cin = _SCRFD_HEAD
        a = SCRFD_ANCHORS
        score = b.conv(feat, cin, a, 3, f"{key}.cls", std=_SCRFD_PRED_STD, bias_mean=_SCRFD_CLS_BIAS)
        bbox = b.conv(feat, cin, 4 * a, 3, f"{key}.reg", std=_SCRFD_PRED_STD)
        bbox = b.mul(bbox, b.weight(f"bbox_head.scales.{stride}.scale", (1,), std=0.0, mean=1.0), f"{key}.scale")
        kps = b.conv(feat, cin, 10 * a, 3, f"{key}.kps", std=_SCRFD_PRED_STD)
        heads["score"].append(b.flatten_head(b.op("Sigmoid", [score], f"{key}.sigmoid"), 1, f"{key}.score"))
        heads["bbox"].append(b.flatten_head(bbox, 4, f"{key}.bbox"))
        heads["kps"].append(b.flatten_head(kps, 10, f"{key}.kps_flat"))
    return heads


def iresnet50(b: Builder, image: str) -> str:
    """The IResNet-50 embedding network on `image` ([N, 3, 112, 112]); returns the [N, 512] embedding."""
    x = b.prelu(b.conv(image, 3, 64, 3, "conv1", gain=1.0), 64, "prelu")
    cin = 64
    for index, (planes, blocks) in enumerate(_IRESNET_STAGES):
        for j in range(blocks):
            name = f"layer{index + 1}.{j}"
            stride = 2 if j == 0 else 1
            out = b.batch_norm(x, cin, f"{name}.bn1")
            out = b.prelu(b.conv(out, cin, planes, 3, f"{name}.conv1"), planes, f"{name}.prelu")
            out = b.conv(out, planes, planes, 3, f"{name}.conv2", stride=stride, gain=_RESIDUAL_GAIN)
            identity = x
            if stride != 1 or cin != planes:
                identity = b.conv(x, cin, planes, 1, f"{name}.downsample.0", stride=stride, pad=0, gain=1.0)
            x = b.add(out, identity, f"{name}.add")
            cin = planes
    x = b.batch_norm(x, cin, "bn2")
    x = b.op("Flatten", [x], "flatten", axis=1)
    x = b.gemm(x, cin * _IRESNET_SIDE * _IRESNET_SIDE, _IRESNET_FEATURES, "fc")
    return b.batch_norm(x, _IRESNET_FEATURES, "features")
