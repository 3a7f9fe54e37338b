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
   input gradient patches, the kernel gradient ``chunked`` (below) on an output of at most
   ``FEW_TAPS_CHUNKED_MAX_SPATIAL`` positions; on a larger one patches for a small batch
   (N <= ``SMALL_BATCH``, ``few_taps_large_image_small_batch``) and lax for a larger one
   (``few_taps_large_image``). SimpleCNN's train step (a 3x3, 3 -> 16 convolution and a ReLU,
   one process, interleaved): chunked 1.5x faster than patches at 32x32, batch 256, and 1.2x
   at batch 32; at 64x64 0.86-0.97x of lax's speed at batch 32 and 64. A 3x3 RGB kernel
   gradient at batch 16 alone ran in lax in 13 ms at 112x112 (chunked 27 ms).
5. ``many_channels`` (K >= ``PATCHES_MIN_CONTRACTION``, 256 channels at 3x3): patches in all
   three passes, at every image size measured (up to 14x14, 2-3x faster than lax).
6. by the output's size: ``small_image`` (S <= ``KERNEL_PATCHES_MAX_SPATIAL``) patches in all
   three passes; ``medium_image`` (S <= ``PATCHES_MAX_SPATIAL``) chunked forward and for the
   kernel gradient, patches for the input gradient (the forward pass by chunks was 1.2-1.4x
   faster than patches on ResNet-18's two 8x8 layers at batch 32, in two grid runs; the
   input gradient by chunks, the transpose of a loop, was slower than patches);
   ``large_image`` lax forward and for the input gradient, the kernel gradient chunked; at a
   small batch the kernel gradient takes patches (``large_image_small_batch``), and with a
   stride too the input gradient (``large_image_strided_small_batch``): lax's strided input
   gradient was 1.17-1.68x slower in all three such rows of ResNet-18 at 224x224, batch 2 (the
   stem, layer2 and layer3's stride-2 3x3 convolutions; quiet machine). At batch 2 one chunk
   holds one such image, whose patches exceed the cache anyway, and the loop only costs:
   patches' kernel gradient alone was 1.10-1.33x faster than chunked on ResNet-18's 224x224
   stem, layer1 and layer2 (9 interleaved rounds), and in two grid runs the stem's 1.43x and
   1.25x; at batch 8 chunked was 1.45-1.47x faster on layer1 and layer2, the stem 1.06x
   slower. A whole ResNet-18 train step at 224x224, batch 2, measured the same either way
   (569.9 against 566.6 ms with chunked, 9 interleaved rounds).

The ``chunked`` kernel gradient is im2col and a matmul per chunk of images, each chunk's patches
matrix at most ``conv_lowerings.CHUNK_PATCHES_ELEMENTS`` (2 MiB of float32; one image per chunk
where an image's patches are larger), the chunks' products added up in a loop. Lax computes the
kernel gradient as one convolution reducing over N * S, slow on this CPU outside the few-tap
large images (16 -> 32 channels at 32x32, batch 64: lax 320 ms, chunked 21 ms); patches writes
the whole (N * S, K) matrix before its one matmul reads it back from memory (the same layer:
73 ms); a chunk's matrix is still in the cache when its matmul reads it. On the four 3x3 and
7x7 layers of a ResNet-18 at 64x64, batch 32, that take it (``funcmod bench --convs
--conv-inputs 64x32``), chunked was the fastest kernel gradient or within 4% of it in one run
(1.5-5.9x faster than lax on the stem and layer1, 1.8x faster than patches on the stem); in a
second run layer2's (128 channels at 8x8) took 1.10x the time of patches'. At batch 2 a chunk
holds the whole batch in most rows, and chunked is then patches.

Why these variables: XLA:CPU's convolution kernel parallelises and vectorises over the image,
so its cost per output falls as the image grows, and it has a high fixed cost per call for
small images (a 3x3, 512 -> 512 convolution on a 2x2 image, batch 32, runs over 50x slower
than the same product as patches and one matmul). im2col plus one matmul costs the same per
output at any size: the patches copy is kh * kw times the input, and the matmul runs near the
machine's peak once its contraction K is wide, which is why many channels favour patches even
on larger images. The kernel gradient is the exception to both: its matmul reduces over
N * S, which chunks split without changing its result's size.
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
    "FEW_TAPS_CHUNKED_MAX_SPATIAL",
    "KERNEL_PATCHES_MAX_SPATIAL",
    "LOWERINGS",
    "MAX_DIRECT_TAPS",
    "PATCHES_MAX_SPATIAL",
    "PATCHES_MIN_CONTRACTION",
    "RULE_BRANCHES",
    "SMALL_BATCH",
    "Plan",
    "check_plan",
    "choose_plan",
    "rule_branch",
    "valid_lowerings",
]

LOWERINGS = ("lax", "direct", "depthwise", "patches", "chunked")
# The most taps (kh * kw * C) the forward pass sums directly: one broadcast multiply-add per tap
# and output element, unrolled into one fused loop, so its cost and compile time grow with them.
MAX_DIRECT_TAPS = 32
# The largest output spatial size Ho * Wo whose forward pass and input gradient use patches
# (chunked in the forward pass above KERNEL_PATCHES_MAX_SPATIAL).
PATCHES_MAX_SPATIAL = 64
# The largest output spatial size Ho * Wo that uses patches in every pass (small_image).
KERNEL_PATCHES_MAX_SPATIAL = 16
# A small batch: at most this many images. A convolution on a large image takes patches for
# its kernel gradient at a small batch (a few-tap one lax at a larger one, any other chunked),
# and a strided one patches for its input gradient.
SMALL_BATCH = 4
# The largest output (Ho * Wo positions) whose few-tap kernel gradient is chunked.
FEW_TAPS_CHUNKED_MAX_SPATIAL = 1024
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
    "few_taps": Plan("direct", "patches", "chunked"),
    "few_taps_large_image_small_batch": Plan("direct", "patches", "patches"),
    "few_taps_large_image": Plan("direct", "patches", "lax"),
    "many_channels": _PATCHES,
    "small_image": _PATCHES,
    "medium_image": Plan("chunked", "patches", "chunked"),
    "large_image": Plan("lax", "lax", "chunked"),
    "large_image_small_batch": Plan("lax", "lax", "patches"),
    "large_image_strided_small_batch": Plan("lax", "patches", "patches"),
}


def valid_lowerings(lhs_shape: Shape, rhs_shape: Shape, spec: ConvSpec) -> tuple[str, ...]:
    """The lowerings that can compute this convolution (in any pass): lax always, direct,
    patches and chunked for groups=1, depthwise for groups == C (one input channel per group)."""
    names = ["lax"]
    if spec.groups == 1:
        names += ["direct", "patches", "chunked"]
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
    small_batch = lhs_shape[0] <= SMALL_BATCH
    if contraction <= MAX_DIRECT_TAPS:
        if spatial <= FEW_TAPS_CHUNKED_MAX_SPATIAL:
            return "few_taps"
        return "few_taps_large_image" + ("_small_batch" if small_batch else "")
    if contraction >= PATCHES_MIN_CONTRACTION:
        return "many_channels"
    if spatial <= KERNEL_PATCHES_MAX_SPATIAL:
        return "small_image"
    if spatial <= PATCHES_MAX_SPATIAL:
        return "medium_image"
    if small_batch:
        return (
            "large_image_strided_small_batch"
            if max(spec.strides) > 1
            else "large_image_small_batch"
        )
    return "large_image"


def choose_plan(lhs_shape: Shape, rhs_shape: Shape, spec: ConvSpec) -> Plan:
    """The rule of the module docstring: ``RULE_BRANCHES[rule_branch(...)]``."""
    return RULE_BRANCHES[rule_branch(lhs_shape, rhs_shape, spec)]
