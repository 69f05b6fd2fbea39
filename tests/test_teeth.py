"""Teeth: every check fails on a deliberately broken module, and every seeded bug is caught.

The broken modules are the generated ones with one bug each: the tutorial's own bugs (SE returning
``x * pooled``, ``torch.max`` misuse), a swapped pooling order, a missing scale, softmax over the wrong
axis, an inverted mask, heads merged in the wrong order, a gate applied twice, and more. For each we
assert that the named check fails on the broken module and passes on the real one.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnforge import checks, registry
from attnforge.spec import KIND_NAMES


def _base(name: str) -> type:
    return registry.default.cls(name)


# --- channel / spatial --------------------------------------------------------------------------


class SeReturnsPooled(_base("se_tutorial")):
    """The tutorial's SE bug: returns x * y with the pooled y instead of the gate."""

    def forward(self, x):
        y = x.mean((2, 3), keepdim=True)
        self.fc2(self.act(self.fc1(y)))
        return x * y


class SeGateTwice(_base("se_resnet")):
    def forward(self, x):
        s = torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * s * s


class SeGateTimesTwo(_base("se_resnet")):
    def forward(self, x):
        return x * 2 * torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


class SeDetachedGate(_base("se_resnet")):
    """Forward is right; the gate's gradient is dropped."""

    def forward(self, x):
        return (
            x * torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))).detach()
        )


class SeBatchLeak(_base("se_resnet")):
    """Pools over the batch too: samples are no longer independent."""

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((0, 2, 3), keepdim=True)))))


class SeIgnoresDtype(_base("se_resnet")):
    """Drops the factory kwargs: parameters are always float32 on the default device."""

    def __init__(self, channels, *, device=None, dtype=None):
        super().__init__(channels)


class SeWrongDtype(_base("se_resnet")):
    def forward(self, x):
        return super().forward(x).float()


class SeBfloat16Inside(_base("se_resnet")):
    """A float32 'fast path' that computes the gate in bfloat16: right in float64, wrong in float32."""

    def forward(self, x):
        s = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        if x.dtype == torch.float32:
            s = s.bfloat16()
        return x * torch.sigmoid(s).to(x.dtype)


class ChannelMaxIndices(_base("cbam_channel_paper")):
    """torch.max(...) returns (values, indices); taking [1] pools indices, not values."""

    def forward(self, x):
        avg = x.mean((2, 3), keepdim=True)
        mx = torch.max(x.flatten(2), dim=2, keepdim=True)[1].to(x.dtype)[..., None]
        s = self.fc2(self.act(self.fc1(avg))) + self.fc2(self.act(self.fc1(mx)))
        return x * torch.sigmoid(s)


class SpatialSwappedOrder(_base("cbam_spatial_paper")):
    """Concatenates [max, mean] where the spec says [mean, max]."""

    def forward(self, x):
        s = self.conv(torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1))
        return x * torch.sigmoid(s)


class SpatialWrongInferencePath(_base("cbam_spatial_paper")):
    """Right when autograd records, wrong (min instead of max) on the no-grad fast path."""

    def forward(self, x):
        pooled = (
            x.max(1, keepdim=True).values
            if torch.is_grad_enabled() and x.requires_grad
            else x.amin(1, keepdim=True)
        )
        return x * torch.sigmoid(self.conv(torch.cat([x.mean(1, keepdim=True), pooled], dim=1)))


class SeFloorRounding(_base("se_timm")):
    """Rounds the hidden width down (C // 16) where the spec asks for timm's make_divisible(C / 16, 8)."""

    def __init__(self, channels, *, device=None, dtype=None):
        super().__init__(channels, device=device, dtype=dtype)
        self.rd_channels = max(1, channels // 16)
        self.fc1 = nn.Conv2d(channels, self.rd_channels, 1, device=device, dtype=dtype)
        self.fc2 = nn.Conv2d(self.rd_channels, channels, 1, device=device, dtype=dtype)


class EcaTimmOverride(_base("eca_k5")):
    """timm's EcaModule: given channels, the adaptive size silently replaces the kernel size asked for."""

    def __init__(self, channels, *, device=None, dtype=None):
        super().__init__(channels, device=device, dtype=dtype)
        t = int(abs((math.log2(channels) + 1) / 2))
        self.kernel_size = max(t if t % 2 else t + 1, 3)
        self.conv = nn.Conv1d(
            1,
            1,
            self.kernel_size,
            padding=self.kernel_size // 2,
            bias=False,
            device=device,
            dtype=dtype,
        )


# --- attention ----------------------------------------------------------------------------------


class SdpaMissingScale(_base("sdpa")):
    def forward(self, q, k, v, attn_mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0)


def _explicit(q, k, v, attn_mask=None, softmax_dim=-1, causal=False):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(
            ~torch.ones(scores.shape[-2:], dtype=torch.bool).tril(), float("-inf")
        )
    if attn_mask is not None:
        scores = (
            scores.masked_fill(~attn_mask, float("-inf"))
            if attn_mask.dtype == torch.bool
            else scores + attn_mask
        )
    return torch.softmax(scores, dim=softmax_dim) @ v


class SdpaSoftmaxWrongAxis(_base("sdpa")):
    def forward(self, q, k, v, attn_mask=None):
        return _explicit(q, k, v, attn_mask, softmax_dim=-2)


class SdpaNaNOnMaskedRows(_base("sdpa")):
    """Plain softmax over -inf rows: NaN where every key is masked."""

    def forward(self, q, k, v, attn_mask=None):
        return _explicit(q, k, v, attn_mask)


class SdpaPositionalBias(_base("sdpa")):
    """Adds a bias that depends on the key's position."""

    def forward(self, q, k, v, attn_mask=None):
        bias = (torch.arange(k.shape[-2], dtype=q.dtype) * 0.3).expand(q.shape[-2], -1)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias if attn_mask is None else attn_mask
        )


class SdpaNotCausal(_base("sdpa_causal")):
    def forward(self, q, k, v, attn_mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


class SdpaInvertedMask(_base("sdpa")):
    """Reads a bool attn_mask as True = masked (nn.MultiheadAttention's convention)."""

    def forward(self, q, k, v, attn_mask=None):
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = ~attn_mask
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


class SdpaDropoutInEval(_base("sdpa_dropout")):
    def forward(self, q, k, v, attn_mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.1)


class MhaInvertedPadding(_base("mha_torch")):
    """Treats key_padding_mask True as 'keep' instead of 'padding'."""

    def forward(self, query, key, value, key_padding_mask=None, attn_mask=None):
        if key_padding_mask is not None and key_padding_mask.dtype == torch.bool:
            key_padding_mask = ~key_padding_mask
        return super().forward(query, key, value, key_padding_mask, attn_mask)


class MhaHeadsMergedWrong(_base("mha_tutorial")):
    """Merges (B, H, L, D) heads with a reshape that skips the transpose."""

    def forward(self, query, key, value, key_padding_mask=None, attn_mask=None):
        b, lq, _ = query.shape
        lk = key.shape[1]
        q = self.q_proj(query).view(b, lq, 4, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).view(b, lk, 4, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).view(b, lk, 4, self.value_head_dim).transpose(1, 2)
        mask = self._mask(key_padding_mask, attn_mask, b, lq, lk, q)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.reshape(b, lq, 4 * self.value_head_dim))


class MhaGqaTiled(_base("mha_gqa")):
    """Shares key/value heads by tiling (repeat) instead of contiguous groups (repeat_interleave)."""

    def forward(self, query, key, value, key_padding_mask=None, attn_mask=None):
        b, lq, _ = query.shape
        lk = key.shape[1]
        q = self.q_proj(query).view(b, lq, 8, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).view(b, lk, 2, self.head_dim).transpose(1, 2).repeat(1, 4, 1, 1)
        v = (
            self.v_proj(value)
            .view(b, lk, 2, self.value_head_dim)
            .transpose(1, 2)
            .repeat(1, 4, 1, 1)
        )
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=self._mask(key_padding_mask, attn_mask, b, lq, lk, q)
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, 8 * self.value_head_dim))


class SdpaDecodeTopLeft(_base("sdpa_causal_decode")):
    """Uses SDPA's is_causal (top-left) where the spec asks for bottom-right alignment."""

    def forward(self, q, k, v, attn_mask=None):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class MhaWeightsSummed(_base("mha_weights")):
    """Sums the weights over heads where the spec asks for their mean."""

    def forward(self, *args, **kwargs):
        out, weights = super().forward(*args, **kwargs)
        return out, weights * 8


# --- modern options: RoPE, ALiBi, sliding windows, soft-capping ----------------------------------------


class MhaRopeWrongPairs(_base("mha_llama")):
    """Turns GPT-J's interleaved pairs (2i, 2i + 1) where the spec asks for rotate_half's (i, i + R/2)."""

    def _rotate(self, x, positions):
        r = self.rotary_dim
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, r, 2, dtype=torch.float64) / r))
        angles = positions[:, None, :, None].to(torch.float64) * inv_freq
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


class MhaRopeQueriesOnly(_base("mha_llama")):
    """Rotates the queries (8 heads) but not the keys (2 heads): scores see absolute positions."""

    def _rotate(self, x, positions):
        return super()._rotate(x, positions) if x.shape[1] == 8 else x


class MhaAlibiSlopesReversed(_base("mha_bloom")):
    """ALiBi's slopes in the reverse head order."""

    ALIBI_SLOPES = tuple(reversed(_base("mha_bloom").ALIBI_SLOPES))


class MhaWindowOffByOne(_base("mha_mistral")):
    """A window of 3 that lets in 4 keys (i - 3 <= j <= i: the query's own key not counted)."""

    def _mask(self, key_padding_mask, attn_mask, b, lq, lk, like, shift):
        rows = torch.arange(lq, device=like.device)[:, None] + shift
        offset = rows - torch.arange(lk, device=like.device)
        return (offset >= 0) & (offset <= 3)


class SdpaLocalOffByOne(_base("sdpa_local")):
    """A non-causal window of 3 that lets in keys 3 away (|i - j| <= 3)."""

    def forward(self, q, k, v, attn_mask=None):
        offset = torch.arange(q.shape[-2])[:, None] - torch.arange(k.shape[-2])
        local = offset.abs() <= 3
        mask = local if attn_mask is None else local & attn_mask
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class SdpaSoftcapAfterMask(_base("sdpa_gemma2")):
    """Soft-caps after the mask is added, so a float mask's values are capped too (Gemma 2 caps
    the logits alone)."""

    def forward(self, q, k, v, attn_mask=None):
        lq, lk = q.shape[-2], k.shape[-2]
        offset = torch.arange(lq)[:, None] - torch.arange(lk)
        allowed = (offset >= 0) & (offset < 4)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(
            ~allowed, float("-inf")
        )
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        elif attn_mask is not None:
            scores = scores + attn_mask
        return torch.softmax(50.0 * torch.tanh(scores / 50.0), dim=-1) @ v


class MhaCacheDropsFirstToken(_base("mha_llama")):
    """A cache that loses its first token once decoding is under way."""

    def forward(self, *args, cache=None, **kwargs):
        if cache is not None and cache.length > 1:
            cache.key, cache.value = cache.key[:, :, 1:], cache.value[:, :, 1:]
            cache.positions = cache.positions[:, 1:]
        return super().forward(*args, cache=cache, **kwargs)


class MhaCachePositionsRestart(_base("mha_bloom")):
    """Positions restart at 0 on every call instead of continuing from the cache's length."""

    def forward(self, query, key, value, *args, cache=None, **kwargs):
        lq = query.shape[1]
        positions = torch.arange(lq, device=query.device)
        return super().forward(query, key, value, *args, positions=positions, cache=cache, **kwargs)


# --- bugs that show only under the conditions of real use ---------------------------------------------


class SeSumPooling(_base("se_resnet")):
    """Mean pooling as x.sum() / count in the input dtype: a float16 sum of 784 values of ~100
    overflows (65504) where the mean does not. Right in float64, float32 and bfloat16."""

    def forward(self, x):
        pooled = x.sum((2, 3), keepdim=True) / (x.shape[2] * x.shape[3])
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(pooled))))


class SeBfloat16ViaFloat16(_base("se_resnet")):
    """A 'half-precision fast path' that pools bfloat16 inputs through a float16 sum: overflows, and
    only for bfloat16 inputs (float16 takes the right path)."""

    def forward(self, x):
        if x.dtype == torch.bfloat16:
            pooled = (x.half().sum((2, 3), keepdim=True) / (x.shape[2] * x.shape[3])).to(x.dtype)
            return x * torch.sigmoid(self.fc2(self.act(self.fc1(pooled))))
        return super().forward(x)


class SdpaSoftmaxNoUpcast(_base("sdpa")):
    """Softmax as exp(scores) / sum in the input dtype, without subtracting the row max: exp of a
    logit above 11 overflows float16; float32 and bfloat16 (float32's range) are fine."""

    def forward(self, q, k, v, attn_mask=None):
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if attn_mask is not None:
            scores = (
                scores + attn_mask
                if attn_mask.is_floating_point()
                else scores.masked_fill(~attn_mask, float("-inf"))
            )
        e = scores.exp()
        return (e / e.sum(-1, keepdim=True)) @ v


class SeGraphBreak(_base("se_resnet")):
    """Validates its input with a data-dependent Python branch (.item()): right in eager, a graph
    break under torch.compile(fullgraph=True)."""

    def forward(self, x):
        if x.abs().max().item() > 1e30:
            raise ValueError("SeGraphBreak: input too large")
        return super().forward(x)


class SeStaticCount(_base("se_resnet")):
    """The pooled count as x.shape[2:].numel(): right in eager and compile, but torch.export
    specialises H and W to the traced sizes."""

    def forward(self, x):
        pooled = x.sum((2, 3), keepdim=True) / x.shape[2:].numel()
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(pooled))))


class SeTrainScale(_base("se_resnet")):
    """Scales the gate in training mode only (a forgotten debugging hook): eval is right."""

    def forward(self, x):
        out = super().forward(x)
        return out * 0.5 if self.training else out


class SeAutocastDowncast(_base("se_resnet")):
    """Returns the autocast dtype under autocast, where a gating block keeps its input's dtype."""

    def forward(self, x):
        out = super().forward(x)
        if torch.is_autocast_enabled("cpu"):
            return out.to(torch.get_autocast_dtype("cpu"))
        return out


class SeNoInputCheck(_base("se_resnet")):
    """Skips the input validation: a wrong channel count fails deep inside a conv instead."""

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


class SeBnFrozen(_base("se_bn")):
    """Runs its batchnorm on the running statistics in training too (eval-mode BN always): eval is
    right, training normalises with the wrong statistics and never updates them."""

    def forward(self, x):
        bn = self.bn
        h = F.batch_norm(
            self.fc1(x.mean((2, 3), keepdim=True)),
            bn.running_mean,
            bn.running_var,
            bn.weight,
            bn.bias,
            False,
            0.0,
            bn.eps,
        )
        return x * torch.sigmoid(self.fc2(self.act(h)))


class EseSigmoidGate(_base("ese_timm")):
    """timm's ese gates with a hard sigmoid; a plain sigmoid is a different function."""

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class CecaZeroPadding(_base("ceca_timm")):
    """Zero-pads the channel axis where the spec says circular (the point of CECA)."""

    def forward(self, x):
        pooled = x.mean((2, 3), keepdim=True)
        y = F.pad(pooled.view(x.shape[0], 1, -1), (self.padding, self.padding))
        return x * torch.sigmoid(self.conv(y).view_as(pooled))


class EcamSkipsActivation(_base("ecam_timm")):
    """Drops the activation between the two convs of ECA's MLP."""

    def forward(self, x):
        pooled = x.mean((2, 3), keepdim=True)
        s = self.conv2(self.conv(pooled.view(x.shape[0], 1, -1))).view_as(pooled)
        return x * torch.sigmoid(s)


class CbamTimmSpatialNoNorm(_base("cbam_timm")):
    """Skips the spatial half's batchnorm (timm's CBAM has one; the paper's does not)."""

    def forward(self, x):
        x = self.channel(x)
        sp = self.spatial
        s = sp.conv.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1))
        return x * torch.sigmoid(s)


class GeCountsPadding(_base("ge_extent4")):
    """Averages each window with the padding counted (avg_pool2d's default), where GE, as timm,
    divides by the positions inside the map: wrong at every border."""

    def forward(self, x):
        pooled = F.avg_pool2d(x, 7, stride=4, padding=3)
        return x * torch.sigmoid(F.interpolate(pooled, size=x.shape[2:], mode="nearest"))


class GeBilinearResize(_base("ge_extent2_mlp")):
    """Resizes the gate map bilinearly where GE (and timm) take the nearest neighbour."""

    def forward(self, x):
        avg = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        pooled = 0.5 * (avg + F.max_pool2d(x, 3, stride=2, padding=1))
        s = F.interpolate(self.mlp(pooled), size=x.shape[2:], mode="bilinear")
        return x * torch.sigmoid(s)


class GeGatherNormFrozen(_base("ge_params")):
    """Runs the gather's batchnorms on their running statistics in training too."""

    def forward(self, x):
        g = x
        for layer in self.gather:
            if isinstance(layer, nn.BatchNorm2d):
                g = F.batch_norm(
                    g, layer.running_mean, layer.running_var, layer.weight, layer.bias, False
                )
            else:
                g = layer(g)
        s = F.interpolate(self.mlp(g), size=x.shape[2:], mode="nearest")
        return x * torch.sigmoid(s)


def _gc_context(module, x):
    weights = torch.softmax(module.conv_attn(x).flatten(2), dim=-1)
    return (x.flatten(2) @ weights.mT)[..., None]


class GcSoftmaxOverChannels(_base("gc_timm")):
    """Softmax over conv_attn's one output channel instead of the positions: every weight is 1,
    the context a sum instead of a weighted mean."""

    def forward(self, x):
        weights = torch.softmax(self.conv_attn(x).flatten(2), dim=1)
        context = (x.flatten(2) @ weights.mT)[..., None]
        return x * torch.sigmoid(self.mlp_scale(context))


class GcAddThroughGate(_base("gca_timm")):
    """Gates the added context (x + sigmoid(mlp_add)): GCNet adds the transform itself."""

    def forward(self, x):
        return x + torch.sigmoid(self.mlp_add(_gc_context(self, x)))


class GcNormOverBatch(_base("gc_timm")):
    """Normalises the transform's hidden layer over the batch and channels (a batch norm in
    disguise), where GC's layer norm takes each sample alone."""

    def forward(self, x):
        mlp = self.mlp_scale
        h = mlp.fc1(_gc_context(self, x))
        mean, var = h.mean((0, 1), keepdim=True), h.var((0, 1), unbiased=False, keepdim=True)
        h = (h - mean) / torch.sqrt(var + 1e-6)
        h = h * mlp.norm.weight[:, None, None] + mlp.norm.bias[:, None, None]
        return x * torch.sigmoid(mlp.fc2(mlp.act(h)))


# --- the zoo's blocks (SimAM, SGE) ------------------------------------------------------------------


class SimamPaperVariance(_base("simam")):
    """Divides the variance by H * W, as the text of the paper's closed form, where the spec (and the
    paper's own code) divide by H * W - 1."""

    def forward(self, x):
        d = (x - x.mean((2, 3), keepdim=True)).square()
        v = d.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(d / (4 * (v + 1e-4)) + 0.5)


class SimamNoPositionCheck(_base("simam")):
    """Drops the single-position check: a 1x1 map returns NaN (0 / 0) instead of raising."""

    def forward(self, x):
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean((2, 3), keepdim=True)).square()
        return x * torch.sigmoid(d / (4 * (d.sum((2, 3), keepdim=True) / n + 1e-4)) + 0.5)


class SimamHalfStatistics(_base("simam")):
    """The official code as written, its statistics in the input's dtype: right in float64, float32
    and bfloat16; in float16 the squared deviations of realistic activations (above 256) overflow
    and the gate turns NaN."""

    def forward(self, x):
        n = x.shape[2] * x.shape[3] - 1
        x_minus_mu_square = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        y = x_minus_mu_square / (4 * (x_minus_mu_square.sum((2, 3), keepdim=True) / n + 1e-4))
        return x * torch.sigmoid(y + 0.5)


class SgeBiasedStd(_base("sge")):
    """Normalises by the biased standard deviation (the paper's text) where the spec, after the
    official code, takes torch.std's unbiased one."""

    def forward(self, x):
        groups = x.unflatten(1, (64, -1))
        c = (groups * groups.mean((3, 4), keepdim=True)).sum(2)
        c = c - c.mean((2, 3), keepdim=True)
        c = c / (c.std((2, 3), correction=0, keepdim=True) + 1e-5)
        gate = torch.sigmoid(c * self.weight + self.bias)
        return (groups * gate.unsqueeze(2)).flatten(1, 2)


class SgeGroupsInterleaved(_base("sge_g8")):
    """Groups channels c, c + 8, c + 16 ... (unflatten into (C / 8, 8)) where the official code
    groups contiguous channels."""

    def forward(self, x):
        groups = x.unflatten(1, (-1, 8)).transpose(1, 2)
        c = (groups * groups.mean((3, 4), keepdim=True)).sum(2)
        c = c - c.mean((2, 3), keepdim=True)
        c = c / (c.std((2, 3), keepdim=True) + 1e-5)
        gate = torch.sigmoid(c * self.weight + self.bias)
        return (groups * gate.unsqueeze(2)).transpose(1, 2).flatten(1, 2)


class SgeHalfStatistics(_base("sge")):
    """The official code as written (views, avg_pool, std), in the input's dtype: right in
    float64, float32 and bfloat16; in float16 the products of realistic activations with their
    means, summed over a group, overflow."""

    def forward(self, x):
        b, c, h, w = x.shape
        x = x.view(b * 64, -1, h, w)
        xn = (x * F.adaptive_avg_pool2d(x, 1)).sum(dim=1, keepdim=True)
        t = xn.view(b * 64, -1)
        t = t - t.mean(dim=1, keepdim=True)
        t = t / (t.std(dim=1, keepdim=True) + 1e-5)
        t = t.view(b, 64, h, w) * self.weight + self.bias
        return (x * torch.sigmoid(t.view(b * 64, 1, h, w))).view(b, c, h, w)


# --- ela, strip ------------------------------------------------------------------------------------


def _group_norm_over_batch(s, norm):
    """A group norm (one group) whose statistics span the whole batch, not each sample."""
    mean, var = s.mean(), s.var(unbiased=False)
    shape = (1, -1, 1, 1)
    return (s - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(shape) + norm.bias.view(shape)


class ElaSharedNorm(_base("ela_timm")):
    """Normalises both strips with norm_h (the paper's code shares one norm; timm has one per
    axis, and norm_w's parameters then get no gradient)."""

    def forward(self, x):
        a_h = torch.sigmoid(self.act(self.norm_h(self.conv_h(x.mean(3, keepdim=True)))))
        a_w = torch.sigmoid(self.act(self.norm_h(self.conv_w(x.mean(2, keepdim=True)))))
        return x * a_h * a_w


class ElaKernelsSwapped(_base("ela_timm")):
    """Runs the H strip through conv_w's kernel and the W strip through conv_h's (transposed to
    fit): the axes mixed up, invisible to the shapes."""

    def forward(self, x):
        c = self.channels
        kh, kw = self.conv_w.weight.transpose(2, 3), self.conv_h.weight.transpose(2, 3)
        s_h = F.conv2d(x.mean(3, keepdim=True), kh, padding=(3, 0), groups=c)
        s_w = F.conv2d(x.mean(2, keepdim=True), kw, padding=(0, 3), groups=c)
        a_h = torch.sigmoid(self.act(self.norm_h(s_h)))
        a_w = torch.sigmoid(self.act(self.norm_w(s_w)))
        return x * a_h * a_w


class ElaBatchStatistics(_base("ela_timm")):
    """Group norm statistics over the whole batch: the samples are no longer independent."""

    def forward(self, x):
        s_h = _group_norm_over_batch(self.conv_h(x.mean(3, keepdim=True)), self.norm_h)
        s_w = _group_norm_over_batch(self.conv_w(x.mean(2, keepdim=True)), self.norm_w)
        return x * torch.sigmoid(self.act(s_h)) * torch.sigmoid(self.act(s_w))


class ElaBnFrozen(_base("ela_bn_skip")):
    """Runs its batchnorms on the running statistics in training too: eval is right, training
    normalises with the wrong statistics and never updates them."""

    def forward(self, x):
        def norm(s, bn):
            return F.batch_norm(
                s, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )

        a_h = F.relu6(self.act(norm(self.conv_h(x.mean(3, keepdim=True)), self.norm_h)) + 3) / 6
        a_w = F.relu6(self.act(norm(self.conv_w(x.mean(2, keepdim=True)), self.norm_w)) + 3) / 6
        return x * a_h * a_w + x


class StripGatesMultiplied(_base("strip_timm")):
    """Gates each strip on its own and multiplies the gates (ELA's combination), where StripAttn
    gates the sum of the strips."""

    def forward(self, x):
        a_h = torch.sigmoid(self.conv_h(x.mean(3, keepdim=True)))
        a_w = torch.sigmoid(self.conv_w(x.mean(2, keepdim=True)))
        return x * a_h * a_w


class StripMaxPooled(_base("strip_pooled")):
    """Max-pools the strips where StripAttn averages them."""

    def forward(self, x):
        return x * torch.sigmoid(x.amax(3, keepdim=True) + x.amax(2, keepdim=True))


class StripSkipInsideGate(_base("strip_k7_skip")):
    """Adds the residual to the gate (x * (gate + 1)) and then x again: x counted twice."""

    def forward(self, x):
        s = self.conv_h(x.mean(3, keepdim=True)) + self.conv_w(x.mean(2, keepdim=True))
        return x * (torch.sigmoid(s) + 1) + x


class CoordHeadsSwapped(_base("coord_timm")):
    """Scores the rows with conv_w and the columns with conv_h (shapes agree, so nothing fails)."""

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        pooled = torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).transpose(2, 3)], 2)
        y_h, y_w = torch.split(self.act(self.bn1(self.conv1(pooled))), [h, w], dim=2)
        a_h = torch.sigmoid(self.conv_w(y_h))
        a_w = torch.sigmoid(self.conv_h(y_w.transpose(2, 3)))
        return x * a_h * a_w


class CoordBnPerStrip(_base("coord_timm")):
    """Runs bn1 on the row strip and the column strip separately: in eval the same function, in
    training each strip normalised by its own batch statistics (and the running ones updated
    twice)."""

    def forward(self, x):
        y_h = self.act(self.bn1(self.conv1(x.mean(3, keepdim=True))))
        y_w = self.act(self.bn1(self.conv1(x.mean(2, keepdim=True).transpose(2, 3))))
        return x * torch.sigmoid(self.conv_h(y_h)) * torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))


class ScoordGateProduct(_base("scoord_timm")):
    """Multiplies a row gate and a column gate (CoordAttn's recombination) where SimpleCoordAttn
    gates the sum of the scores."""

    def forward(self, x):
        s_h = self.fc_h(self.act(self.fc1(x.mean(3).transpose(1, 2)))).transpose(1, 2)
        s_w = self.fc_w(self.act(self.fc1(x.mean(2).transpose(1, 2)))).transpose(1, 2)
        return x * torch.sigmoid(s_h[..., None]) * torch.sigmoid(s_w[..., None, :])


class ScoordSkipDropped(_base("scoord_skip")):
    """Forgets has_skip's residual: returns x * gate where the spec asks for x * gate + x."""

    def forward(self, x):
        s_h = self.fc_h(self.act(self.fc1(x.mean(3).transpose(1, 2)))).transpose(1, 2)
        s_w = self.fc_w(self.act(self.fc1(x.mean(2).transpose(1, 2)))).transpose(1, 2)
        return x * (F.relu6(s_h[..., None] + s_w[..., None, :] + 3) / 6)


# --- zoo blocks: triplet attention, BAM -----------------------------------------------------------


def _triplet_gate(branch, t, pools=("max", "mean")):
    maps = {"max": t.amax(1, keepdim=True), "mean": t.mean(1, keepdim=True)}
    return torch.sigmoid(branch.conv(torch.cat([maps[p] for p in pools], dim=1)))


class TripletZPoolMeanFirst(_base("triplet")):
    """Z-pools [mean, max] (CBAM's order) where the official code, whose weights the layout
    loads, concatenates [max, mean]."""

    def forward(self, x):
        pools = ("mean", "max")
        cw = _triplet_gate(self.cw, x.transpose(1, 2), pools).transpose(1, 2)
        hc = _triplet_gate(self.hc, x.permute(0, 3, 2, 1), pools).permute(0, 3, 2, 1)
        return x * ((cw + hc + _triplet_gate(self.hw, x, pools)) / 3)


class TripletHcPlaneTransposed(_base("triplet")):
    """Rotates W out as (B, W, C, H): the hc conv then runs over the (C, H) plane, its kernel
    transposed against the official code's (H, C) orientation."""

    def forward(self, x):
        cw = _triplet_gate(self.cw, x.transpose(1, 2)).transpose(1, 2)
        hc = _triplet_gate(self.hc, x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x * ((cw + hc + _triplet_gate(self.hw, x)) / 3)


class TripletDefaultMomentum(_base("triplet")):
    """Batchnorms with PyTorch's default momentum 0.1 where the official code uses 0.01: every
    output is right, the running statistics drift ten times too fast in training."""

    def __init__(self, channels, *, device=None, dtype=None):
        super().__init__(channels, device=device, dtype=dtype)
        for branch in (self.cw, self.hc, self.hw):
            branch.conv.bn.momentum = 0.1


class TripletSummed(_base("triplet")):
    """Sums the three gated copies instead of averaging them (drops the official code's 1/3)."""

    def forward(self, x):
        cw = _triplet_gate(self.cw, x.transpose(1, 2)).transpose(1, 2)
        hc = _triplet_gate(self.hc, x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)
        return x * (cw + hc + _triplet_gate(self.hw, x))


class BamNoResidual(_base("bam")):
    """Returns x * sigmoid(s), a plain gate, where BAM returns x * (1 + sigmoid(s))."""

    def forward(self, x):
        return x * torch.sigmoid(self.channel_att(x) + self.spatial_att(x))


class BamProduct(_base("bam")):
    """Multiplies the branches, as the authors' released code does, where the spec (the paper)
    sums them."""

    def forward(self, x):
        return x * (1 + torch.sigmoid(self.channel_att(x) * self.spatial_att(x)))


class BamUndilated(_base("bam")):
    """The spatial branch's 3x3 convs with dilation 1 (and padding 1) where the spec says 4."""

    def __init__(self, channels, *, device=None, dtype=None):
        super().__init__(channels, device=device, dtype=dtype)
        for m in self.spatial_att.gate_s:
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                m.dilation, m.padding = (1, 1), (1, 1)


class BamFrozenChannelNorm(_base("bam")):
    """Runs the channel branch's BatchNorm1d on its running statistics in training too."""

    def forward(self, x):
        gate_c = self.channel_att.gate_c
        bn = gate_c.gate_c_bn_1
        h = gate_c.gate_c_fc_0(x.mean((2, 3)))
        h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        c = gate_c.gate_c_fc_final(torch.relu(h))[..., None, None]
        return x * (1 + torch.sigmoid(c + self.spatial_att(x)))


class NlScaledByWidth(_base("nl_timm")):
    """Scales the scores by C' ** -0.5, the embeddings' width (the transformer habit), where timm's
    use_scale takes the input channels C."""

    def __init__(self, channels, *, device=None, dtype=None):
        super().__init__(channels, device=device, dtype=dtype)
        self.scale = self.rd_channels**-0.5


class NlSoftmaxOverQueries(_base("nl_timm")):
    """Normalises each key's scores over the queries (softmax over dim 1 of (B, N, N)) where each
    query's weights should sum to one over the keys."""

    def forward(self, x):
        t = self.t(x).flatten(2).transpose(1, 2)
        p = self.p(x).flatten(2)
        g = self.g(x).flatten(2).transpose(1, 2)
        att = torch.softmax(t @ p * self.scale, dim=1)
        y = (att @ g).transpose(1, 2).reshape(x.shape[0], -1, *x.shape[2:])
        return self.norm(self.z(y)) + x


class NlNormFrozen(_base("nl_timm")):
    """Runs the norm on its running statistics in training too (eval's function, always)."""

    def forward(self, x):
        was = self.norm.training
        self.norm.eval()
        try:
            return super().forward(x)
        finally:
            self.norm.train(was)


class BatRowsAndColumnsSwapped(_base("bat_b4_g4")):
    """Applies P along W and Q along H (x^T-wise): the matrices of the wrong axis (H != W in the
    case, so the bands differ)."""

    def __init__(self, channels, *, device=None, dtype=None):
        super().__init__(channels, device=device, dtype=dtype)
        ba = self.ba
        forward = type(ba).forward

        def swapped(x):
            return forward(ba, x.transpose(2, 3)).transpose(2, 3)

        ba.forward = swapped


class BatUnnormalised(_base("bat_b4_g4")):
    """Leaves the bilinear matrices as sigmoids (no row / column normalisation): the transform
    then scales the map up by the block size."""

    def __init__(self, channels, *, device=None, dtype=None):
        super().__init__(channels, device=device, dtype=dtype)
        ba = self.ba

        def forward(x):
            b, c, h, w = x.shape
            out = ba.conv1(x)
            p = torch.sigmoid(ba.conv_p(F.adaptive_max_pool2d(out, (4, 1))).view(b, 4, 4, 4))
            q = torch.sigmoid(ba.conv_q(F.adaptive_max_pool2d(out, (1, 4))).view(b, 4, 4, 4))
            bands = x.reshape(b, 4, c // 4, 4, h // 4, 4, w // 4)
            y = torch.einsum("bgij,bgkjamd,bgml->bgkiald", p, bands, q)
            return ba.conv2(y.reshape(b, c, h, w))

        ba.forward = forward


class BatDropoutAlways(_base("bat_timm")):
    """Channel dropout in eval too (F.dropout2d with training=True)."""

    def forward(self, x):
        y = self.conv2(self.ba(self.conv1(x)))
        return F.dropout2d(y, 0.2, training=True) + x


# --- sk ---------------------------------------------------------------------------------------------


def _sk_paths(module, x, padding=None):
    """The stacked paths of an sk module, (B, P, out_channels, H', W'); ``padding(conv)`` in place
    of each conv's own."""
    parts = torch.split(x, module.channels // len(module.paths), 1)
    outs = []
    for part, path in zip(parts, module.paths, strict=True):
        conv = path.conv
        pad = conv.padding if padding is None else padding(conv)
        y = F.conv2d(part, conv.weight, None, conv.stride, pad, conv.dilation, conv.groups)
        outs.append(path.act(path.bn(y)))
    return torch.stack(outs, 1)


def _sk_select(module, paths, dim=1):
    s = module.attn(paths.sum(1).mean((2, 3), keepdim=True))
    return torch.softmax(s.unflatten(1, (len(module.paths), -1)), dim)


class SkSlicesSwapped(_base("sk_timm")):
    """Each path convolves the other path's half of the channels (the split reversed)."""

    def forward(self, x):
        return super().forward(torch.cat(torch.split(x, self.channels // 2, 1)[::-1], 1))


class SkSoftmaxOverChannels(_base("sk_timm")):
    """The selection's softmax over the output channels instead of over the paths."""

    def forward(self, x):
        paths = _sk_paths(self, x)
        return (paths * _sk_select(self, paths, dim=2)).sum(1)


class SkPaddingIgnoresStride(_base("sk_timm")):
    """Pads d (k - 1) // 2, leaving out timm's (stride - 1) // 2: the same at stride 1 and 2,
    one row and column fewer at stride 3."""

    def forward(self, x):
        paths = _sk_paths(self, x, lambda c: c.dilation[0] * (c.kernel_size[0] - 1) // 2)
        return (paths * _sk_select(self, paths)).sum(1)


class SkAttnBnFrozen(_base("sk_resnet18")):
    """The attention's batchnorm on its running statistics in training too."""

    def forward(self, x):
        paths = _sk_paths(self, x)
        z = self.attn.fc_reduce(paths.sum(1).mean((2, 3), keepdim=True))
        bn = self.attn.bn
        z = F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        s = self.attn.fc_select(F.relu(z))
        return (paths * torch.softmax(s.unflatten(1, (2, -1)), 1)).sum(1)


# --- splat ------------------------------------------------------------------------------------------


class SplatSoftmaxAcrossGroups(_base("splat_resnest_4s2x")):
    """RadixSoftmax without the transpose: fc2's channels read as (split, group, channel), so
    the softmax mixes the groups' logits."""

    def forward(self, x):
        x = self.act0(self.bn0(self.conv(x)))
        splits = x.unflatten(1, (4, -1))
        s = self.fc2(self.act1(self.bn1(self.fc1(splits.sum(1).mean((2, 3), keepdim=True)))))
        return (splits * torch.softmax(s.unflatten(1, (4, -1)), 1)).sum(1)


class SplatSplitsInterleaved(_base("splat_timm")):
    """The conv's channels split as (channel, split) instead of (split, channel)."""

    def forward(self, x):
        x = self.act0(self.conv(x))
        splits = x.unflatten(1, (-1, 2)).transpose(1, 2)
        s = self.fc2(self.act1(self.fc1(splits.sum(1).mean((2, 3), keepdim=True))))
        return (splits * torch.softmax(s.unflatten(1, (2, -1)), 1)).sum(1)


class SplatPoolsBeforeConv(_base("splat_timm")):
    """The attention pools the input, not the conv's splits: the widths fit only where
    out_channels equals channels, and the function is another."""

    def forward(self, x):
        y = self.act0(self.conv(x))
        splits = y.unflatten(1, (2, -1))
        s = self.fc2(self.act1(self.fc1(x.mean((2, 3), keepdim=True))))
        return (splits * torch.softmax(s.unflatten(1, (2, -1)), 1)).sum(1)


class SplatBnFrozen(_base("splat_resnest")):
    """bn1 on its running statistics in training too."""

    def forward(self, x):
        x = self.act0(self.bn0(self.conv(x)))
        splits = x.unflatten(1, (2, -1))
        z = self.fc1(splits.sum(1).mean((2, 3), keepdim=True))
        bn = self.bn1
        z = F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        s = self.fc2(self.act1(z))
        return (splits * torch.softmax(s.unflatten(1, (2, -1)), 1)).sum(1)


# --- timm's self-attention layers ------------------------------------------------------------------


def _lambda_forward(self, x, keys_dim=-1, flip_offsets=False):
    """The generated lambda layer's forward (without its input checks), with the bugs below."""
    b, _, h, w = x.shape
    m = h * w
    q, k, v = torch.split(
        self.qkv(x), [self.num_heads * self.dim_qk, self.dim_qk, self.dim_v], dim=1
    )
    q = self.norm_q(q).reshape(b, self.num_heads, self.dim_qk, m).transpose(-1, -2)
    v = self.norm_v(v).reshape(b, self.dim_v, m).transpose(-1, -2)
    k = k.reshape(b, self.dim_qk, m).softmax(dim=keys_dim)
    out = q @ (k @ v).unsqueeze(1)
    if self.rel_pos_indices is None:
        weight = self.conv_lambda.weight[..., 0]
        v_maps = v.transpose(-1, -2).reshape(b * self.dim_v, 1, h, w)
        position = F.conv2d(v_maps, weight, self.conv_lambda.bias, padding=weight.shape[-1] // 2)
        position = position.reshape(b, self.dim_v, self.dim_qk, m).permute(0, 3, 2, 1)
    else:
        table = self.pos_emb.flip(0, 1) if flip_offsets else self.pos_emb
        emb = table[self.rel_pos_indices[0], self.rel_pos_indices[1]]
        position = emb.transpose(-1, -2) @ v.unsqueeze(1)
    out = out + (q.unsqueeze(-2) @ position.unsqueeze(1)).squeeze(-2)
    return self.pool(out.transpose(-1, -2).reshape(b, self.out_channels, h, w))


class LambdaKeysOverChannels(_base("lambda_timm")):
    """Normalises the keys over their K channels where the lambda layer normalises each key
    channel over the positions."""

    rel_pos_indices = None

    def forward(self, x):
        return _lambda_forward(self, x, keys_dim=1)


class LambdaOffsetsReversed(_base("lambda_rpt")):
    """Indexes the relative position embedding by the query's offset from the key (m - n) where
    timm's layer indexes it by the key's offset from the query (n - m)."""

    def forward(self, x):
        return _lambda_forward(self, x, flip_offsets=True)


class BottleneckPositionScaled(_base("bottleneck_timm")):
    """Scales the relative position logits with the content logits (timm's scale_pos_embed=True)
    where the spec adds them after scaling."""

    def forward(self, x):
        b, _, h, w = x.shape
        width_qk = self.num_heads * self.dim_qk
        q, k, v = torch.split(self.qkv(x), [width_qk, width_qk, self.num_heads * self.dim_v], 1)
        q = q.reshape(b * self.num_heads, self.dim_qk, -1).transpose(-1, -2)
        k = k.reshape(b * self.num_heads, self.dim_qk, -1)
        v = v.reshape(b * self.num_heads, self.dim_v, -1).transpose(-1, -2)
        attn = ((q @ k + self.pos_embed(q)) * self.scale).softmax(dim=-1)
        return self.pool((attn @ v).transpose(-1, -2).reshape(b, self.out_channels, h, w))


class HaloPaddingMasked(_base("halo_timm")):
    """Masks the zero-padded keys at the map's border where timm's layer attends over them (keys
    and values of zero, their logits the position term alone)."""

    def forward(self, x):
        b, _, h, w = x.shape
        rows, cols = h // self.block_size, w // self.block_size
        blocks, bs = rows * cols, self.block_size_ds
        q = self.q(x).reshape(-1, self.dim_qk, rows, bs, cols, bs).permute(0, 1, 3, 5, 2, 4)
        q = q.reshape(b * self.num_heads, self.dim_qk, -1, blocks).transpose(1, 3)
        pad = [self.halo_size] * 4
        kv = F.pad(self.kv(x), pad)
        inside = F.pad(x.new_ones(1, 1, h, w), pad)
        windows = []
        for t in (kv, inside):
            t = t.unfold(2, self.win_size, self.block_size).unfold(
                3, self.win_size, self.block_size
            )
            windows.append(t.reshape(t.shape[0], t.shape[1], blocks, -1))
        kv = windows[0].reshape(b * self.num_heads, self.dim_qk + self.dim_v, blocks, -1)
        k, v = torch.split(kv.permute(0, 2, 3, 1), [self.dim_qk, self.dim_v], dim=-1)
        attn = (q @ k.transpose(-1, -2)) * self.scale + self.pos_embed(q)
        attn = attn.masked_fill(windows[1][0, 0, :, None, :] == 0, float("-inf")).softmax(dim=-1)
        out = (attn @ v).transpose(1, 3).reshape(-1, bs, bs, rows, cols)
        return self.pool(out.permute(0, 3, 1, 4, 2).reshape(b, self.out_channels, h, w))


ACT = "act_b1_c448_21x22"
F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64

# (broken class, the variant whose spec it claims, check, case, dtype, options)
SEEDED = [
    (SeReturnsPooled, "se_tutorial", "reference", "b2_c32_7x5", F64, {}),
    (SeGateTwice, "se_resnet", "reference", "b2_c32_7x5", F64, {}),
    (SeGateTimesTwo, "se_resnet", "gate_bound", "b2_c32_7x5", F64, {}),
    (SeDetachedGate, "se_resnet", "gradcheck", "tiny", F64, {}),
    (SeDetachedGate, "se_resnet", "reference", "b2_c32_7x5", F64, {}),
    (SeBatchLeak, "se_resnet", "layout", "b2_c32_7x5", F64, {}),
    (SeIgnoresDtype, "se_resnet", "construct", "b2_c32_7x5", F64, {}),
    (SeWrongDtype, "se_resnet", "shape", "b2_c32_7x5", F64, {}),
    (SeBfloat16Inside, "se_resnet", "parity", "b2_c32_7x5", F32, {"target": "cpu"}),
    (SeBfloat16Inside, "se_resnet", "reference", "b2_c32_7x5", F32, {}),
    (ChannelMaxIndices, "cbam_channel_paper", "reference", "b2_c32_7x5", F64, {}),
    (SpatialSwappedOrder, "cbam_spatial_paper", "reference", "b2_c32_7x5", F64, {}),
    (SpatialWrongInferencePath, "cbam_spatial_paper", "reference", "b2_c32_7x5", F64, {}),
    (SdpaMissingScale, "sdpa", "reference", "b2h3_q4_k6", F64, {}),
    (SdpaMissingScale, "sdpa", "anchor", "b2h3_q4_k6", F64, {}),
    (SdpaSoftmaxWrongAxis, "sdpa", "reference", "b2h3_q4_k6", F64, {}),
    (SdpaNaNOnMaskedRows, "sdpa", "masked_row", "b2h3_q4_k6", F64, {}),
    (SdpaPositionalBias, "sdpa", "permutation", "b2h3_q4_k6", F64, {}),
    (SdpaNotCausal, "sdpa_causal", "causal", "b2h3_q4_k6", F64, {}),
    (SdpaInvertedMask, "sdpa", "masked_keys", "b2h3_q4_k6", F64, {}),
    (SdpaInvertedMask, "sdpa", "reference", "mask_bool", F64, {}),
    (SdpaDropoutInEval, "sdpa_dropout", "dropout", "b2h3_q4_k6", F64, {}),
    (MhaInvertedPadding, "mha_torch", "masked_keys", "self_b2_l5", F64, {}),
    (MhaInvertedPadding, "mha_torch", "anchor", "kpm_bool", F64, {}),
    (MhaHeadsMergedWrong, "mha_tutorial", "reference", "self_b2_l5", F64, {}),
    (SeFloorRounding, "se_timm", "construct", "b2_c32_7x5", F64, {}),
    (EcaTimmOverride, "eca_k5", "construct", "b2_c32_7x5", F64, {}),
    (MhaGqaTiled, "mha_gqa", "reference", "self_b2_l5", F64, {}),
    (SdpaDecodeTopLeft, "sdpa_causal_decode", "reference", "b2h3_q4_k6", F64, {}),
    (MhaWeightsSummed, "mha_weights", "weights", "self_b2_l5", F64, {}),
    # RoPE's layout and relativity, ALiBi's slope order, the window's edge, the soft cap's place.
    (MhaRopeWrongPairs, "mha_llama", "reference", "self_b2_l5", F64, {}),
    (MhaRopeQueriesOnly, "mha_llama", "relative_positions", "self_b2_l5", F64, {}),
    (MhaAlibiSlopesReversed, "mha_bloom", "reference", "self_b2_l5", F64, {}),
    (MhaWindowOffByOne, "mha_mistral", "window", "self_b2_l5", F64, {}),
    (MhaWindowOffByOne, "mha_mistral", "reference", "self_b2_l5", F64, {}),
    (SdpaLocalOffByOne, "sdpa_local", "window", "b2h3_q4_k6", F64, {}),
    (SdpaLocalOffByOne, "sdpa_local", "anchor", "b2h3_q4_k6", F64, {}),
    (SdpaSoftcapAfterMask, "sdpa_gemma2", "reference", "mask_float_4d", F64, {}),
    (MhaCacheDropsFirstToken, "mha_llama", "cache", "self_b2_l5", F64, {}),
    (MhaCachePositionsRestart, "mha_bloom", "cache", "self_b2_l5", F64, {}),
    # Only under the conditions of real use:
    (SeSumPooling, "se_resnet", "reference", ACT, F16, {}),
    (SeBfloat16ViaFloat16, "se_resnet", "reference", ACT, BF16, {}),
    (SdpaSoftmaxNoUpcast, "sdpa", "reference", "act_b2h4_q32_k48", F16, {}),
    (SeGraphBreak, "se_resnet", "compile", "b2_c32_7x5", F32, {}),
    (SeStaticCount, "se_resnet", "export", "b2_c32_7x5", F32, {}),
    (SeTrainScale, "se_resnet", "train", "b2_c32_7x5", F64, {}),
    (SeAutocastDowncast, "se_resnet", "autocast", "b2_c32_7x5", BF16, {}),
    (SeNoInputCheck, "se_resnet", "errors", "wrong_channels", F32, {}),
    # The timm options: a norm with running statistics, circular padding, the MLP, the gate.
    (SeBnFrozen, "se_bn", "train", "b2_c32_7x5", F64, {}),
    (EseSigmoidGate, "ese_timm", "reference", "b2_c32_7x5", F64, {}),
    (CecaZeroPadding, "ceca_timm", "reference", "b2_c32_7x5", F64, {}),
    (EcamSkipsActivation, "ecam_timm", "reference", "b2_c32_7x5", F64, {}),
    (CbamTimmSpatialNoNorm, "cbam_timm", "reference", "b2_c32_7x5", F64, {}),
    # Gather-excite and global context: the gather's pooling, resize and norm; the context's
    # softmax, the fusion, the transform's norm.
    (GeCountsPadding, "ge_extent4", "reference", "b2_c32_7x5", F64, {}),
    (GeBilinearResize, "ge_extent2_mlp", "reference", "b2_c32_7x5", F64, {}),
    (GeGatherNormFrozen, "ge_params", "train", "b2_c32_7x5", F64, {}),
    (GcSoftmaxOverChannels, "gc_timm", "reference", "b2_c32_7x5", F64, {}),
    (GcAddThroughGate, "gca_timm", "reference", "b2_c32_7x5", F64, {}),
    (GcNormOverBatch, "gc_timm", "layout", "b2_c32_7x5", F64, {}),
    # The zoo's blocks: the paper's text against its code, a missing check, the grouping, float16.
    (SimamPaperVariance, "simam", "reference", "b2_c32_7x5", F64, {}),
    (SimamNoPositionCheck, "simam", "errors", "single_position", F32, {}),
    (SimamHalfStatistics, "simam", "reference", ACT, F16, {}),
    (SgeBiasedStd, "sge", "reference", "b2_c128_7x5", F64, {}),
    (SgeGroupsInterleaved, "sge_g8", "reference", "b2_c32_7x5", F64, {}),
    (SgeHalfStatistics, "sge", "reference", ACT, F16, {}),
    # The strip blocks: one norm for two axes, the axes' kernels swapped (H != W in the case),
    # batch statistics in a group norm, a frozen batchnorm, gates combined the other block's way.
    (ElaSharedNorm, "ela_timm", "reference", "b2_c32_7x5", F64, {}),
    (ElaKernelsSwapped, "ela_timm", "reference", "b3_c24_4x9", F64, {}),
    (ElaBatchStatistics, "ela_timm", "layout", "b2_c32_7x5", F64, {}),
    (ElaBnFrozen, "ela_bn_skip", "train", "b2_c32_7x5", F64, {}),
    (StripGatesMultiplied, "strip_timm", "reference", "b2_c32_7x5", F64, {}),
    (StripMaxPooled, "strip_pooled", "reference", "b2_c32_7x5", F64, {}),
    (StripSkipInsideGate, "strip_k7_skip", "reference", "b2_c32_7x5", F64, {}),
    # Coordinate attention: H != W in the cases, so rows and columns cannot be confused.
    (CoordHeadsSwapped, "coord_timm", "reference", "b2_c32_7x5", F64, {}),
    (CoordHeadsSwapped, "coord_timm", "reference", "b3_c24_4x9", F64, {}),
    (CoordBnPerStrip, "coord_timm", "train", "b2_c32_7x5", F64, {}),
    (ScoordGateProduct, "scoord_timm", "reference", "b2_c32_7x5", F64, {}),
    (ScoordSkipDropped, "scoord_skip", "reference", "b2_c32_7x5", F64, {}),
    # The zoo blocks: the official code's pooling order, rotations, norm momentum and average;
    # BAM's residual, merge, dilation and norms.
    (TripletZPoolMeanFirst, "triplet", "reference", "b2_c32_7x5", F64, {}),
    (TripletHcPlaneTransposed, "triplet", "reference", "b2_c32_7x5", F64, {}),
    (TripletDefaultMomentum, "triplet", "train", "b2_c32_7x5", F64, {}),
    (TripletSummed, "triplet", "gate_bound", "b2_c32_7x5", F64, {}),
    (BamNoResidual, "bam", "reference", "b2_c32_7x5", F64, {}),
    (BamProduct, "bam", "reference", "b2_c32_7x5", F64, {}),
    (BamUndilated, "bam", "reference", "b2_c64_11x10", F64, {}),
    (BamFrozenChannelNorm, "bam", "train", "b2_c32_7x5", F64, {}),
    # The non-local blocks: timm's scale, the softmax's axis, the norm's training statistics.
    (NlScaledByWidth, "nl_timm", "reference", "b2_c32_7x5", F64, {}),
    (NlScaledByWidth, "nl_timm", "anchor", "b2_c32_7x5", F64, {}),
    (NlSoftmaxOverQueries, "nl_timm", "reference", "b2_c32_7x5", F64, {}),
    (NlNormFrozen, "nl_timm", "train", "b2_c32_7x5", F64, {}),
    (BatRowsAndColumnsSwapped, "bat_b4_g4", "reference", "b3_c24_12x8", F64, {}),
    (BatUnnormalised, "bat_b4_g4", "reference", "b2_c32_4x8", F64, {}),
    (BatUnnormalised, "bat_b4_g4", "anchor", "b2_c32_4x8", F64, {}),
    (BatDropoutAlways, "bat_timm", "dropout", "b2_c32_7x14", F64, {}),
    # Selective kernel: the split, the softmax's axis, timm's padding at a stride, the attention's
    # batchnorm in training.
    (SkSlicesSwapped, "sk_timm", "reference", "b2_c32_7x5", F64, {}),
    (SkSoftmaxOverChannels, "sk_timm", "reference", "b2_c16_9x6_s2_o18", F64, {}),
    (SkPaddingIgnoresStride, "sk_timm", "shape", "b1_c16_5x7_s3", F64, {}),
    (SkAttnBnFrozen, "sk_resnet18", "train", "b2_c32_7x5", F64, {}),
    # Split attention: RadixSoftmax's layout across groups, the splits' layout, what is pooled,
    # bn1 in training.
    (SplatSoftmaxAcrossGroups, "splat_resnest_4s2x", "reference", "b2_c32_7x5", F64, {}),
    (SplatSplitsInterleaved, "splat_timm", "reference", "b2_c32_7x5", F64, {}),
    (SplatPoolsBeforeConv, "splat_timm", "reference", "b2_c32_7x5", F64, {}),
    (SplatBnFrozen, "splat_resnest", "train", "b2_c32_7x5", F64, {}),
    # timm's self-attention layers: the keys' softmax axis, the relative offsets' sign.
    (LambdaKeysOverChannels, "lambda_timm", "reference", "b2_c16_7x5", F64, {}),
    (LambdaOffsetsReversed, "lambda_rpt", "reference", "b2_c16_7x5", F64, {}),
    (BottleneckPositionScaled, "bottleneck_timm", "reference", "b2_c16_7x5", F64, {}),
    (HaloPaddingMasked, "halo_timm", "reference", "b2_c32_16x8", F64, {}),
]
# The dtype-only bugs pass where they do not bite: the same case in the other dtypes.
DTYPE_ONLY = [
    (SeSumPooling, "se_resnet", ACT, (F64, F32, BF16)),
    (SeBfloat16ViaFloat16, "se_resnet", ACT, (F64, F32, F16)),
    (SdpaSoftmaxNoUpcast, "sdpa", "act_b2h4_q32_k48", (F64, F32, BF16)),
    (SimamHalfStatistics, "simam", ACT, (F64, F32, BF16)),
    (SgeHalfStatistics, "sge", ACT, (F64, F32, BF16)),
]


def _id(b, check, dtype) -> str:
    return f"{b.__name__}-{check}-{str(dtype).removeprefix('torch.')}"


@pytest.mark.parametrize(
    ("broken", "variant", "check", "case", "dtype", "options"),
    SEEDED,
    ids=[_id(b, c, d) for b, _, c, _, d, _ in SEEDED],
)
def test_check_catches_seeded_bug(broken, variant, check, case, dtype, options):
    real = checks.Subject.of(variant)
    checks.run(check, real, case, dtype, **options)  # the real module passes the same check
    with pytest.raises(checks.CheckFailure):
        checks.run(check, checks.Subject(real.spec, broken), case, dtype, **options)


@pytest.mark.parametrize(
    ("broken", "variant", "case", "dtypes"), DTYPE_ONLY, ids=[b.__name__ for b, *_ in DTYPE_ONLY]
)
def test_dtype_only_bugs_pass_in_the_other_dtypes(broken, variant, case, dtypes):
    subject = checks.Subject(registry.spec_of(variant), broken)
    for dtype in dtypes:
        checks.run("reference", subject, case, dtype)


def test_every_check_is_shown_to_fail_on_something():
    assert {check for _, _, check, _, _, _ in SEEDED} == set(checks.CHECKS)


def test_every_kind_has_a_seeded_bug():
    assert {registry.spec_of(variant).kind for _, variant, *_ in SEEDED} == set(KIND_NAMES)
