"""Capture exact attention weights while the model runs its own kernels.

Each attention site gets a *tap*, installed per instance on entering :func:`capture_attention` and
removed on leaving it, even when the body raises:

- ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer``: the instance's ``forward`` is wrapped
  to read its inputs, and the weights are recomputed from the module's own projections. Wrapping,
  not forward hooks: PyTorch disables the encoder layer's fused fast path when any hook is attached,
  and a function mode would disable it too, changing the outputs.
- every other site (timm, Hugging Face, nanoGPT): while the module's forward runs, a
  ``TorchFunctionMode`` sees its calls to ``F.scaled_dot_product_attention`` (weights recomputed from
  the same q, k, mask and scale, beside the fused kernel that still runs), to softmax over a
  ``(B, H, L, S)`` tensor (eager attention: the model's own weights are kept), and to
  ``F.multi_head_attention_forward``.

The taps themselves live in :mod:`lightning_attnviz.capture.taps`; this module installs and removes them and
records what they read. Only the first ``samples`` batch rows are ever computed or kept.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, cast, overload

import torch
from torch import Tensor, nn

from lightning_attnviz.capture.discover import AttentionSite, ModuleSelector, find_attention, named_modules
from lightning_attnviz.capture.flex import flex_scores
from lightning_attnviz.capture.forward import install_attr, install_forward, is_tapped
from lightning_attnviz.capture.inputs import (
    AttentionMap,
    Inputs,
    Path,
    Pending,
    ScoresInputs,
    SoftmaxOutput,
    compute,
)
from lightning_attnviz.capture.kinds import WINDOW_READERS, CallInputs, read_call, unsupported_warning
from lightning_attnviz.capture.readers import band_tap, block_sparse_taps, host_tap, read_windows
from lightning_attnviz.capture.taps import _Interceptor, encoder_layer_tap, encoder_tap, mha_tap
from lightning_attnviz.capture.windows import WindowCall
from lightning_attnviz.util.checks import check_int

__all__ = ["AttentionCapture", "AttentionMap", "capture_attention"]

_COMPUTE_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)


class AttentionCapture:
    """Holds the taps and what they recorded; use it through :func:`capture_attention`.

    Immediately (``defer=False``) each call's weights are computed as the model runs and land in
    :attr:`records`. Deferred, the taps only keep detached CPU copies of the sampled rows' inputs in
    :attr:`pending`; :func:`~lightning_attnviz.capture.inputs.compute` turns each into an
    :class:`AttentionMap` later, anywhere (the monitor does it in its drawing process).
    """

    def __init__(
        self,
        model: nn.Module,
        samples: int = 2,
        modules: ModuleSelector = None,
        max_tokens: int | None = None,
        stats: bool = False,
        defer: bool = False,
        sites: list[AttentionSite] | None = None,
    ) -> None:
        check_int("samples", samples, minimum=1)
        check_int("max_tokens", max_tokens, minimum=2, optional=True)
        self.max_tokens = max_tokens
        self.stats = stats
        self.defer = defer
        self.model = _unwrap_compiled(model)
        self.samples = samples
        self.sites: list[AttentionSite] = find_attention(self.model, modules) if sites is None else sites
        self.records: dict[str, AttentionMap] = {}  # immediate: {key: map} in forward order
        self.pending: list[Pending] = []  # deferred: what compute() needs, in forward order
        self.failures: list[str] = []  # modules whose weights could not be computed, with why
        self._calls: dict[str, int] = {}
        self.entered: set[str] = set()
        self._restore: list[Callable[[], None]] = []
        self.scope: list[AttentionSite] = []  # function-tap sites whose forward is running
        self._mode = _Interceptor(self)
        self._mode_on = False
        self.padded_width: int | None = None  # set by nn.TransformerEncoder for nested inputs
        self._failed: set[str] = set()
        self.flex_calls: list[tuple[str, tuple, dict]] = []  # FlexAttention calls not yet recorded
        self._by_name = {site.name: site for site in self.sites}
        self._by_module: dict[str, nn.Module] = {}
        self.skipped: dict[str, str] = {}  # modules whose layout is not captured: {name: why}
        self.call = CallInputs()  # what the model's own forward was given (batch, padding, decoder)
        self.windows: dict[str, WindowCall] = {}  # windowed sites running now: where their windows lie
        self._host_calls: dict[str, tuple[tuple, dict]] = {}  # their blocks' calls, while they run
        # an eager softmax waiting for the `weights @ values` that follows it: (site, shape, inputs, meta)
        self._held: tuple[str, torch.Size, SoftmaxOutput, dict[str, Any]] | None = None

    @property
    def maps(self) -> dict[str, Tensor]:
        """``{key: weights}`` of :attr:`records`; see :class:`AttentionMap` for the keys."""
        return {key: record.weights for key, record in self.records.items()}

    def clear(self) -> None:
        """Forget what was recorded, keeping the taps (call counts restart at 0)."""
        self._held = None
        self.records.clear()
        self.pending.clear()
        self._calls.clear()
        self.entered.clear()

    @overload
    def keep(self, t: Tensor) -> Tensor: ...
    @overload
    def keep(self, t: None) -> None: ...
    def keep(self, t: Tensor | None) -> Tensor | None:
        """``t`` itself, or with ``defer`` a detached CPU copy that later training cannot change."""
        if t is None or not self.defer:
            return t
        return t.detach().to("cpu", copy=True)

    # -- install / remove -------------------------------------------------------------------------

    def __enter__(self) -> AttentionCapture:
        if not self.sites:
            warnings.warn(
                f"No attention modules found in {type(self.model).__name__}: searched for "
                "nn.MultiheadAttention and modules whose class name contains 'Attention' or 'Attn'. "
                "Pass `modules=` with their names or a predicate.",
                UserWarning,
                stacklevel=3,
            )
        try:
            named = named_modules(self.model)
            self._by_module = named
            for site in self.sites:
                if site.layout.supported:
                    self._install(site, named)
                else:
                    self.skip(site.name, unsupported_warning(site.name, site.layout), stacklevel=4)
            self._read_calls(self.model)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        if exc[0] is None:
            seen = {r.module for r in self.records.values()} | {p.module for p in self.pending}
            silent = sorted(self.entered - seen - self._failed - set(self.skipped))
            if silent:
                warnings.warn(
                    f"These modules ran but computed no attention that could be captured: {silent}. "
                    "Capture sees F.scaled_dot_product_attention, softmax over (B, H, L, S) tensors "
                    "and nn.MultiheadAttention.",
                    UserWarning,
                    stacklevel=2,
                )

    def close(self) -> None:
        """Remove every tap and the function mode; safe to call twice."""
        while self._restore:
            self._restore.pop()()
        while self._mode_on:  # only if a forward was abandoned mid-way
            self._mode_off()
        self.scope.clear()
        self._held = None

    def _install(self, site: AttentionSite, named: dict[str, nn.Module]) -> None:
        module = named[site.name]
        if site.tap == "mha":  # discover gives this tap to nn.MultiheadAttention modules only
            self._wrap(module, mha_tap(self, site, cast(nn.MultiheadAttention, module)))
        elif site.layout.reader == "longformer":
            self._wrap(module, band_tap(self, site, module))
        elif site.layout.reader == "bigbird":
            before, gather = block_sparse_taps(self, site, module)
            self._wrap(module, before)
            self._set_attr(module, "torch_gather_b2", gather)
        elif site.tap == "encoder_layer":
            # discover gives this tap to the self_attn of an nn.TransformerEncoderLayer only: its parent
            layer = cast(nn.TransformerEncoderLayer, named[site.name.rpartition(".")[0]])
            self._wrap(layer, encoder_layer_tap(self, site, layer))
            for encoder in self.model.modules():
                if isinstance(encoder, nn.TransformerEncoder) and any(m is layer for m in encoder.layers):
                    self._wrap(encoder, encoder_tap(self, encoder))
        else:
            if site.layout.reader in WINDOW_READERS and site.layout.host not in (None, site.name):
                self._wrap(named[site.layout.host], host_tap(self._host_calls, site.name))
            self._wrap_scope(module, site)

    def _read_windows(self, site: AttentionSite, module: nn.Module, args: tuple, kwargs: dict) -> None:
        host_call = (args, kwargs) if site.layout.host == site.name else self._host_calls.get(site.name)
        host = self._by_module.get(site.layout.host or "", module)
        read_windows(self, site, host, host_call, (args, kwargs))

    def _read_calls(self, model: nn.Module) -> None:
        """Read the batch size, attention mask and decoder inputs of each call of the model itself."""
        original = model.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            self.call = read_call(args, kwargs)
            return original(*args, **kwargs)

        self._set_forward(model, forward, tap=False)

    def skip(self, name: str, message: str, stacklevel: int = 3) -> None:
        """Declare ``name``'s attention not captured, with one warning that says what is not shown."""
        if name not in self.skipped:
            self.skipped[name] = message
            warnings.warn(message, UserWarning, stacklevel=stacklevel)

    def _wrap(
        self, module: nn.Module, before: Callable[[tuple, dict], Callable[[Any], object] | None]
    ) -> None:
        """Run ``before(args, kwargs)`` ahead of ``module``'s own forward, for this instance only; what
        it returns, if anything, is called with the forward's result."""
        if is_tapped(module):
            return  # an encoder shared by several tapped layers is wrapped once
        original = module.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            after = before(args, kwargs)
            result = original(*args, **kwargs)
            if after is not None:
                after(result)
            return result

        self._set_forward(module, forward)

    def _wrap_scope(self, module: nn.Module, site: AttentionSite) -> None:
        """Keep the function mode on while ``module``'s forward runs."""
        original = module.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            self.entered.add(site.name)
            if site.layout.reader in WINDOW_READERS:
                self._read_windows(site, module, args, kwargs)
            self.scope.append(site)
            if len(self.scope) == 1:
                self._mode_on_()
            try:
                return original(*args, **kwargs)
            finally:
                self.windows.pop(site.name, None)
                self.scope.pop()
                if self._held is not None and self._held[0] == site.name:
                    self.complete(None, None)  # the site returned without a product after its softmax
                if not self.scope:
                    self._mode_off()
                    if self.flex_calls:
                        self.record_flex()

        self._set_forward(module, forward)

    def _set_forward(self, module: nn.Module, forward: Callable[..., Any], tap: bool = True) -> None:
        self._restore.append(install_forward(module, forward, tap))

    def _set_attr(self, module: nn.Module, name: str, value: Callable[..., Any]) -> None:
        """Set ``module.<name>`` on this instance only, restored on leaving the capture."""
        self._restore.append(install_attr(module, name, value))

    def _mode_on_(self) -> None:
        self._mode.__enter__()
        self._mode_on = True

    def _mode_off(self) -> None:
        self._mode.__exit__(None, None, None)
        self._mode_on = False

    # -- recording --------------------------------------------------------------------------------

    def record_flex(self) -> None:
        """Record the FlexAttention calls seen so far: their masked, score-modded scores, sampled rows."""
        calls, self.flex_calls = self.flex_calls, []
        for name, args, kwargs in calls:
            try:
                scores = flex_scores(args, kwargs, self.samples)
            except _COMPUTE_ERRORS as err:
                self._fail(name, err)
                continue
            self.add(
                name,
                ScoresInputs(self.keep(scores)),
                path="flex",
                causal=None,
                masked=bool(torch.isneginf(scores).any()),
                gqa_groups=args[0].shape[-3] // args[1].shape[-3],
                scale=float(args[5]) if len(args) > 5 else None,
                dropout_p=0.0,
            )

    def _fail(self, name: str, err: BaseException) -> None:
        if name not in self._failed:
            self._failed.add(name)
            message = failure_message(name, err)
            self.failures.append(message)
            warnings.warn(message, UserWarning, stacklevel=4)

    def hold(self, name: str, inputs: SoftmaxOutput, shape: torch.Size, **meta: Any) -> None:
        """Keep an eager softmax of ``name`` until the ``weights @ values`` product that follows it
        (:meth:`complete`), so that its fidelity can be checked; ``shape``: the weights' full shape."""
        self.complete(None, None)
        self._held = (name, shape, inputs, meta)

    def held_shape(self, name: str) -> torch.Size | None:
        """The shape of the softmax ``name`` holds, if it holds one."""
        return self._held[1] if self._held is not None and self._held[0] == name else None

    def complete(self, values: Tensor | None, product: Tensor | None) -> None:
        """Record the held softmax, with the values it was multiplied with and the product (``None``:
        not seen, so its fidelity is not checked)."""
        if self._held is None:
            return
        name, _, inputs, meta = self._held
        self._held = None
        self.add(name, replace(inputs, values=values, product=product), "eager_softmax", **meta)

    def add(self, name: str, inputs: Inputs, path: Path, **meta: Any) -> None:
        """Record one call of ``name`` under its next key: pending, or computed now."""
        self.complete(None, None)  # a softmax still held comes first: calls stay in forward order
        call = self._calls.get(name, 0)
        self._calls[name] = call + 1
        key = name if call == 0 else f"{name}#{call}"
        while call and key in self._by_name:  # a watched module really named "attn#1" keeps its name
            key += "#"
        site = self._by_name.get(name)
        if site is not None:
            meta.update(axes=site.axes, layout=site.layout.kind, note=site.layout.note)
        pending = Pending(key=key, module=name, call=call, path=path, inputs=inputs, **meta)
        if self.defer:
            self.pending.append(pending)
            return
        try:
            self.records[key] = compute(pending, self.max_tokens, self.stats)
        except _COMPUTE_ERRORS as err:  # never the user's exception: their forward is unaffected
            self._fail(name, err)


def failure_message(module: str, err: BaseException) -> str:
    return (
        f"Could not compute attention weights for {module!r} ({type(err).__name__}: {err}); "
        "the model's own output is unaffected."
    )


def _unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper runs, so names match the user's own model."""
    return getattr(model, "_orig_mod", model)


@contextmanager
def capture_attention(
    model: nn.Module,
    samples: int = 2,
    modules: ModuleSelector = None,
    max_tokens: int | None = None,
    stats: bool = False,
    defer: bool = False,
) -> Iterator[AttentionCapture]:
    """Capture the attention weights ``model`` computes inside the ``with`` block.

    The model runs its own kernels: its outputs are bit-identical to a run without capture (fused
    SDPA keeps running; weights are recomputed beside it for the first ``samples`` batch rows).

    Args:
        model: any ``nn.Module`` (a ``torch.compile`` wrapper is looked through).
        samples: how many leading batch rows to keep; memory is O(samples·H·L·S) per call.
        modules: which modules to watch; see :func:`~lightning_attnviz.capture.discover.find_attention`.
        max_tokens: ``None`` keeps exact maps. Otherwise a map longer than this is block-pooled while
            it is computed, a block of query rows at a time, so memory stays O(samples·H·max_tokens²)
            however long the sequence (see :attr:`AttentionMap.block`).
        stats: also accumulate per-row statistics at full resolution (:attr:`AttentionMap.stats`).
        defer: only keep detached CPU copies of the sampled rows' inputs (their q/k and masks) in
            :attr:`AttentionCapture.pending`; :func:`~lightning_attnviz.capture.inputs.compute` makes the
            weights later, e.g. in another process while training goes on.

    Raises:
        TypeError: ``samples`` or ``max_tokens`` is not an int.
        ValueError: ``samples`` < 1, ``max_tokens`` < 2, or a name in ``modules`` matches no module.

    Example::

        with capture_attention(model, samples=2) as cap:
            model(x)
        cap.maps  # {"blocks.0.attn": tensor(2, heads, L, L), ...}
    """
    cap = AttentionCapture(model, samples, modules, max_tokens=max_tokens, stats=stats, defer=defer)
    with cap:
        yield cap
