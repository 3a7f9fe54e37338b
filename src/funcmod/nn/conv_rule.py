"""Which CPU lowering ``funcmod.nn.conv.conv_general_dilated`` uses for each pass of a 2-D
NHWC / HWIO convolution, chosen from the shapes alone (at trace time).

The rule (``choose_plan``), for an input (N, H, W, C), a kernel (kh, kw, C/groups, O) and an
output (N, Ho, Wo, O), with S = Ho * Wo the output's spatial size and K = kh * kw * C the
contraction size (the patches matrix's width); the first that applies:

1. ``depthwise`` (C/groups == 1, groups == C): the depthwise sum in all three passes (the
   input gradient as ``conv_lowerings.depthwise_input_grad``'s phase-split sum). XLA:CPU runs a
   grouped convolution through a generic loop, 5-40x slower than this fused sum in every
   depthwise row measured.
2. ``grouped`` (any other groups > 1): lax in all three passes (no other lowering computes it).
3. ``pointwise`` (a 1x1 kernel): patches in all three passes: the convolution is one matmul
   (of strided rows when strided), 3-80x faster than lax's convolution in the 1x1 rows.
4. ``few_taps`` (K <= ``MAX_DIRECT_TAPS``, e.g. an RGB stem): the forward pass ``direct``, the
   input gradient patches, the kernel gradient patches (the patches matrix is at most 32 wide)
   for a small batch, or a larger one on an output of at most
   ``FEW_CHANNELS_KERNEL_PATCHES_MAX_SPATIAL`` positions with at most
   ``KERNEL_PATCHES_MAX_ELEMENTS`` patches elements; else lax (``few_taps_large_batch``: at
   64x64 lax's kernel gradient was 1.5-2.4x faster from batch 16, and writing a matrix of
   hundreds of MB costs more than its reduction; at 32x32 it was 2.3-4.2x slower from batch 64).
5. ``many_channels`` (K >= ``PATCHES_MIN_CONTRACTION``, 256 channels at 3x3): patches in all
   three passes, at every image size measured (up to 14x14, 2-3x faster than lax).
6. by the output's size: ``small_image`` (S <= ``KERNEL_PATCHES_MAX_SPATIAL``) patches in all
   three passes; ``medium_image`` (S <= ``PATCHES_MAX_SPATIAL``) patches forward and for the
   input gradient; ``large_image`` lax forward and for the input gradient. The kernel gradient
   of both is patches for a small batch (N <= ``KERNEL_PATCHES_MAX_BATCH``, the
   ``_small_batch`` branches: 1.3-2.2x faster than lax on ResNet-18's 3x3 and 7x7 layers at
   224x224, batch 2) and lax for a larger one (1.2-1.3x faster at batch 32 on 8x8 and 16x16),
   except for an image stem (C <= ``STEM_MAX_CHANNELS`` input channels), whose kernel gradient
   follows the few-tap branch's batch, size and element limits (ResNet-18's 7x7 stride-2 RGB
   stem at 64x64, batch 32: lax 154 ms, patches 89 ms, busy machine). A strided large image
   with a small batch (``large_image_strided_small_batch``) also takes patches for its input
   gradient: lax's strided input gradient was 1.17-1.68x slower in all three such rows of
   ResNet-18 at 224x224, batch 2 (the stem, layer2 and layer3's stride-2 3x3 convolutions;
   quiet machine).

Why these variables: XLA:CPU's convolution kernel parallelises and vectorises over the image,
so its cost per output falls as the image grows, and it has a high fixed cost per call for
small images (a 3x3, 512 -> 512 convolution on a 2x2 image, batch 32, runs over 50x slower
than the same product as patches and one matmul). im2col plus one matmul costs the same per
output at any size: the patches copy is kh * kw times the input, and the matmul runs near the
machine's peak once its contraction K is wide, which is why many channels favour patches even
on larger images. The kernel gradient crosses over earlier because lax computes it as one
convolution reducing over N * S directly, where patches first writes the (N * S, K) matrix.
The measured times behind each threshold are in docs/pitfalls.md ("CPU convolution
lowerings"), from ``funcmod bench --convs``, which also marks, per row, whether the rule's
pick was the fastest of each pass.

``RULE_BRANCHES`` names every plan the rule can return, by branch; tests/test_conv.py checks
each against torch.
"""

from __future__ import annotations

from typing import NamedTuple

from funcmod.nn.conv_lowerings import ConvSpec, output_size

__all__ = [
    "FEW_CHANNELS_KERNEL_PATCHES_MAX_SPATIAL",
    "KERNEL_PATCHES_MAX_BATCH",
    "KERNEL_PATCHES_MAX_ELEMENTS",
    "KERNEL_PATCHES_MAX_SPATIAL",
    "LOWERINGS",
    "MAX_DIRECT_TAPS",
    "PATCHES_MAX_SPATIAL",
    "PATCHES_MIN_CONTRACTION",
    "RULE_BRANCHES",
    "STEM_MAX_CHANNELS",
    "Plan",
    "check_plan",
    "choose_plan",
    "rule_branch",
    "valid_lowerings",
]

LOWERINGS = ("lax", "direct", "depthwise", "patches")
# The most taps (kh * kw * C) the forward pass sums directly: one broadcast multiply-add per tap
# and output element, unrolled into one fused loop, so its cost and compile time grow with them.
MAX_DIRECT_TAPS = 32
# A few-tap or stem kernel gradient with more than KERNEL_PATCHES_MAX_BATCH images takes patches
# while its output has at most FEW_CHANNELS_KERNEL_PATCHES_MAX_SPATIAL positions and its patches
# matrix at most KERNEL_PATCHES_MAX_ELEMENTS elements (64 MB in float32). A 3x3 RGB convolution
# (quiet machine, kernel gradient alone, lax / patches): 32x32 at batch 64, 128, 256: 19 / 8.1,
# 53 / 12.5, 113 / 43 ms; 64x64 at batch 16, 32, 64: 2.2 / 5.3, 8.2 / 12.9, 25 / 26 ms; 64x64
# at batch 256 (28M elements): lax 2.3x faster (busy machine).
FEW_CHANNELS_KERNEL_PATCHES_MAX_SPATIAL = 1024
KERNEL_PATCHES_MAX_ELEMENTS = 2**24
# The largest output spatial size Ho * Wo whose forward pass and input gradient use patches.
PATCHES_MAX_SPATIAL = 64
# The largest output spatial size Ho * Wo whose kernel gradient uses patches.
KERNEL_PATCHES_MAX_SPATIAL = 16
# The largest batch whose kernel gradient uses patches at any output size.
KERNEL_PATCHES_MAX_BATCH = 4
# An image stem: at most this many input channels (RGB, RGBA, grey) ...
STEM_MAX_CHANNELS = 4
# ... takes patches for its kernel gradient at a larger batch too, as a few-tap one does.
# The smallest contraction kh * kw * C that uses patches in every pass at any image size.
PATCHES_MIN_CONTRACTION = 2304

Shape = tuple[int, ...]


class Plan(NamedTuple):
    """The lowering of each pass: ``forward``, ``input_grad`` and ``kernel_grad``, each one of
    ``LOWERINGS``."""

    forward: str
    input_grad: str
    kernel_grad: str


_LAX, _PATCHES = Plan("lax", "lax", "lax"), Plan("patches", "patches", "patches")
RULE_BRANCHES: dict[str, Plan] = {
    "depthwise": Plan("depthwise", "depthwise", "depthwise"),
    "grouped": _LAX,
    "pointwise": _PATCHES,
    "few_taps": Plan("direct", "patches", "patches"),
    "few_taps_large_batch": Plan("direct", "patches", "lax"),
    "many_channels": _PATCHES,
    "small_image": _PATCHES,
    "medium_image_small_batch": _PATCHES,
    "medium_image": Plan("patches", "patches", "lax"),
    "large_image_small_batch": Plan("lax", "lax", "patches"),
    "large_image_strided_small_batch": Plan("lax", "patches", "patches"),
    "large_image": _LAX,
}


def valid_lowerings(lhs_shape: Shape, rhs_shape: Shape, spec: ConvSpec) -> tuple[str, ...]:
    """The lowerings that can compute this convolution (in any pass): lax always, direct and
    patches for groups=1, depthwise for groups == C (one input channel per group)."""
    names = ["lax"]
    if spec.groups == 1:
        names += ["direct", "patches"]
    if rhs_shape[2] == 1 and spec.groups == lhs_shape[3]:
        names.append("depthwise")
    return tuple(names)


def check_plan(plan: Plan, lhs_shape: Shape, rhs_shape: Shape, spec: ConvSpec) -> None:
    """Raise ValueError unless every lowering of ``plan`` can compute this convolution."""
    valid = valid_lowerings(lhs_shape, rhs_shape, spec)
    bad = [name for name in plan if name not in valid]
    if bad:
        raise ValueError(
            f"plan {tuple(plan)}: {bad} cannot compute a convolution of input {lhs_shape}, "
            f"kernel {rhs_shape}, groups={spec.groups}; valid here: {list(valid)}"
        )


def _few_channels_kernel_patches(batch: int, spatial: int, contraction: int) -> bool:
    """Whether a few-tap or stem kernel gradient takes patches (see the constants' comment)."""
    return batch <= KERNEL_PATCHES_MAX_BATCH or (
        spatial <= FEW_CHANNELS_KERNEL_PATCHES_MAX_SPATIAL
        and batch * spatial * contraction <= KERNEL_PATCHES_MAX_ELEMENTS
    )


def rule_branch(lhs_shape: Shape, rhs_shape: Shape, spec: ConvSpec) -> str:
    """The branch of the rule (a key of ``RULE_BRANCHES``) this convolution takes."""
    kh, kw, c_group, _ = rhs_shape
    if "depthwise" in valid_lowerings(lhs_shape, rhs_shape, spec):
        return "depthwise"
    if spec.groups != 1:
        return "grouped"
    if kh == kw == 1:
        return "pointwise"
    ho = output_size(lhs_shape[1], kh, spec.strides[0], spec.dilation[0], spec.padding[0])
    wo = output_size(lhs_shape[2], kw, spec.strides[1], spec.dilation[1], spec.padding[1])
    spatial, contraction = ho * wo, kh * kw * c_group
    if contraction <= MAX_DIRECT_TAPS:
        small = _few_channels_kernel_patches(lhs_shape[0], spatial, contraction)
        return "few_taps" if small else "few_taps_large_batch"
    if contraction >= PATCHES_MIN_CONTRACTION:
        return "many_channels"
    if spatial <= KERNEL_PATCHES_MAX_SPATIAL:
        return "small_image"
    image = "medium_image" if spatial <= PATCHES_MAX_SPATIAL else "large_image"
    stem = c_group <= STEM_MAX_CHANNELS
    small = lhs_shape[0] <= KERNEL_PATCHES_MAX_BATCH or (
        stem and _few_channels_kernel_patches(lhs_shape[0], spatial, contraction)
    )
    if image == "large_image" and small and max(spec.strides) > 1:
        return "large_image_strided_small_batch"
    return f"{image}_small_batch" if small else image


def choose_plan(lhs_shape: Shape, rhs_shape: Shape, spec: ConvSpec) -> Plan:
    """The rule of the module docstring: ``RULE_BRANCHES[rule_branch(...)]``."""
    return RULE_BRANCHES[rule_branch(lhs_shape, rhs_shape, spec)]
