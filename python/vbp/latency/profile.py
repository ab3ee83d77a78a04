"""Measure a latency table (`profile`), reuse one (`table_for`), and measure a pruned model's speed-up
(`measure_speedup`).

Each distinct MLP shape of the model is timed as the pruned model will run it, Linear (or 1x1 Conv2d) -> act ->
Linear at width w (CompactMlp with runtime="compact" where `vbp.compact` applies), at a grid of widths: coarse
multiples of 8 (about COARSE_STEPS of them, the full width and its largest multiple of 8 included), timed briefly
to find where the cost steps up; then up to REFINE_POINTS multiples of 8 inside each of the REFINE_INTERVALS
coarse intervals that rise most above the curve's mean slope (where a width just below a step is cheap; see
`refine_widths`). The final pass times, in turn, the full model, the model with every MLP at width 0
(`without_mlps`: its consumers add their biases alone) and every width of every shape (width 0 included), after a
warm-up call each, and keeps each one's median. The bare model is the fixed cost; the MLPs cost the full model minus the bare one,
spread over the sites and widths in proportion to their isolated times above width 0 (the curves are those
increments scaled by the one ratio that makes them add up, `in_model_scale`: an MLP inside the model and one
timed alone see other caches and call overheads, and on a shared machine short calls are interrupted less often
than long ones). The table thus predicts both measured models exactly.
"""

import copy
import os
import platform
import statistics
import sys
import time
import warnings
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..activations import gelu_kind
from ..batches import batch_size, first_rows, run_model
from ..compact import CompactMlp, compact, compact_problem
from ..errors import VbpError
from ..families import find_sites
from ..model_ids import canonical_id
from ..models import example_input, model_device, model_name
from ..sites import set_submodule
from ..timing import interleaved_medians, interleaved_times, spread
from .table import LatencyTable, MlpShape, WidthCurve

RUNTIMES = ("eager", "compact")
DEFAULT_ROUNDS = 5
COARSE_ROUNDS = 2
COARSE_STEPS = 24
REFINE_INTERVALS = 4
REFINE_POINTS = 7
MAX_SPREAD = 0.5  # a table whose end-to-end rounds disagree more (see `vbp.timing.spread`) is not saved


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise VbpError(f"runtime must be one of {', '.join(RUNTIMES)}, got '{runtime}'")
    return runtime


def check_batch(batch) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise VbpError(f"the latency batch must be a whole number of inputs, at least 1, got {batch!r}")
    return batch


def batch_of(model: nn.Module, batch):
    """The inputs a latency is measured on: `batch` itself (a tensor or a mapping of the model's keyword
    arguments, batch first), or for a number N the example input repeated N times (see `latency_inputs`)."""
    return latency_inputs(model, check_batch(batch)) if isinstance(batch, int) else batch


def runtime_model(model: nn.Module, runtime: str) -> nn.Module:
    """The model as `runtime` runs it: itself (eager), or a `vbp.compact`ed copy (compact)."""
    return compact(copy.deepcopy(model)) if check_runtime(runtime) == "compact" else model


def latency_inputs(model: nn.Module, batch: int):
    """The model's example input (see `vbp.models.example_input`) repeated to `batch` inputs on its device;
    floating parts random (seeded), token ids and masks as they are."""
    x = example_input(model)
    device, dtype = model_device(model), next(model.parameters()).dtype
    g = torch.Generator().manual_seed(0)

    def grown(t: torch.Tensor) -> torch.Tensor:
        t = t.expand(batch, *t.shape[1:])
        if t.is_floating_point():
            return torch.randn(t.shape, generator=g).to(device, dtype)
        return t.contiguous().to(device)

    return {k: grown(v) for k, v in x.items()} if isinstance(x, dict) else grown(x)


@torch.inference_mode()
def mlp_shapes(model: nn.Module, batch) -> tuple[list[MlpShape], dict[str, int], list[nn.Module | None]]:
    """(distinct MLP shapes at `batch` (see `batch_of`), site name -> shape index, the first site's activation
    module per shape), from one forward pass of its first input that records each producer's input shape."""
    inputs = batch_of(model, batch)
    sites = find_sites(model)
    seen: dict[str, tuple[int, ...]] = {}

    def record(name: str, module: nn.Module, args: tuple) -> None:
        seen.setdefault(name, tuple(args[0].shape))

    hooks = [s.producer_layers[0].register_forward_pre_hook(partial(record, s.name)) for s in sites]
    was_training = model.training
    try:
        model.eval()
        run_model(model, first_rows(inputs, 1), model_device(model))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    shapes, index, acts = [], {}, []
    for s in sites:
        if s.name not in seen:
            raise VbpError(f"MLP site '{s.name}' did not run on the example input, so its latency cannot be measured")
        producer, consumer = s.producer_layers[0], s.consumer_layer
        shape = MlpShape(
            in_features=producer.weight.shape[1],
            hidden=s.width,
            out_features=consumer.weight.shape[0],
            input_shape=(batch_size(inputs) * seen[s.name][0], *seen[s.name][1:]),
            gated=s.gated,
            layer=type(producer).__name__,
            activation=type(s.activation).__name__ if s.activation is not None else "none",
            bias=producer.bias is not None,
            compact=compact_problem(s) is None,
        )
        if shape not in shapes:
            shapes.append(shape)
            acts.append(s.activation)
        index[s.name] = shapes.index(shape)
    return shapes, index, acts


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector-ISA flags of this CPU that decide GEMM speed (AVX, FMA, AMX, ...; Linux only, else [])."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "sse4")))


def table_key(model: nn.Module, batch, runtime: str, shapes=None, sites=None) -> dict:
    """What a table must have been measured for to be reused for `model` at `batch` (see `batch_of`) under
    `runtime`."""
    batch = batch_of(model, batch)
    if shapes is None:
        shapes, sites, _ = mlp_shapes(model, batch)
    device = model_device(model)
    cuda = device.type == "cuda"
    return {
        "model": canonical_id(model_name(model)),
        "runtime": check_runtime(runtime),
        "batch": batch_size(batch),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "cpu_capability": None if cuda else torch.backends.cpu.get_cpu_capability(),
        "threads": None if cuda else torch.get_num_threads(),
        "torch": torch.__version__,
        "shapes": [s.to_dict() for s in shapes],
        "sites": sites,
    }


def width_grid(hidden: int) -> list[int]:
    """Coarse widths of a `hidden`-wide MLP: multiples of a multiple of 8 (about COARSE_STEPS of them), the
    largest multiple of 8 below `hidden`, and `hidden`."""
    step = 8 * max(1, -(-hidden // (8 * COARSE_STEPS)))
    return sorted({*range(step, hidden, step), 8 * ((hidden - 1) // 8), hidden} - {0})


def refine_widths(widths: list[int], ms: list[float]) -> list[int]:
    """Up to REFINE_POINTS multiples of 8 inside each of the REFINE_INTERVALS intervals of the measured
    (`widths`, `ms`) whose cost rises most above the mean slope, by more than half the mean rise of an interval
    (a step); [] where none does."""
    w, t = np.asarray(widths, dtype=np.float64), np.asarray(ms)
    if len(w) < 3:
        return []
    slope = (t[-1] - t[0]) / (w[-1] - w[0])
    excess = np.diff(t) - slope * np.diff(w)
    extra = []
    for i in np.argsort(-excess, kind="stable")[:REFINE_INTERVALS]:
        if excess[i] <= 0.5 * abs(t[-1] - t[0]) / (len(w) - 1):
            break
        inner = list(range(8 * (int(w[i]) // 8 + 1), int(w[i + 1]), 8))
        if len(inner) > REFINE_POINTS:
            inner = [inner[j] for j in np.linspace(0, len(inner) - 1, REFINE_POINTS).round().astype(int)]
        extra += inner
    return sorted(set(extra) - set(widths))


class PrunedMlp(nn.Module):
    """consumer(act(producers[0](x)) [* producers[1](x)]): one MLP site as the pruned model runs it.
    x: [..., in] (Linear) or [N, in, H, W] (1x1 Conv2d) -> [..., out] / [N, out, H, W]."""

    def __init__(self, producers: list[nn.Module], act: nn.Module, consumer: nn.Module):
        super().__init__()
        self.producers, self.act, self.consumer = nn.ModuleList(producers), act, consumer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.producers[0](x))
        if len(self.producers) == 2:
            h = h * self.producers[1](x)
        return self.consumer(h)


def _layer(kind: str, in_features: int, out_features: int, bias: bool, device, dtype) -> nn.Module:
    """A random Linear or 1x1 Conv2d (either side may have 0 features), no uninitialised memory (denormals would
    slow the CPU); a zero bias."""
    args = (nn.Linear, in_features, out_features) if kind == "Linear" else (nn.Conv2d, in_features, out_features, 1)
    with warnings.catch_warnings():  # torch warns that a zero-width layer's (skipped) initialisation does nothing
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        layer = nn.utils.skip_init(*args, bias=bias, device=device, dtype=dtype)
    if layer.weight.numel():
        nn.init.normal_(layer.weight, std=in_features**-0.5)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def without_mlps(model: nn.Module) -> nn.Module:
    """A copy of `model` with every MLP site at width 0: each consumer adds its bias alone. What the rest of the
    model costs, run the way the pruned model runs."""
    bare = copy.deepcopy(model)
    for s in find_sites(bare):
        for path in (*s.producers, s.consumer):
            layer = bare.get_submodule(path)
            out_features, in_features = layer.weight.shape[:2]
            kind, device, dtype = type(layer).__name__, layer.weight.device, layer.weight.dtype
            if path == s.consumer:
                set_submodule(bare, path, _layer(kind, 0, out_features, True, device, dtype))
            else:
                set_submodule(bare, path, _layer(kind, in_features, 0, layer.bias is not None, device, dtype))
    return bare


def mlp_at(shape: MlpShape, width: int, act: nn.Module | None, runtime: str, device, dtype) -> nn.Module:
    """A random-weight MLP of `shape` at `width` hidden neurons, as `runtime` runs the pruned site. The consumer
    has a bias (mean compensation gives it one)."""
    producers = [
        _layer(shape.layer, shape.in_features, width, shape.bias, device, dtype) for _ in range(1 + shape.gated)
    ]
    consumer = _layer(shape.layer, width, shape.out_features, True, device, dtype)
    if runtime == "compact" and shape.compact:
        return CompactMlp(producers[0], consumer, "none" if gelu_kind(act) == "gelu" else "tanh")
    act = copy.deepcopy(act) if act is not None else (nn.SiLU() if shape.gated else nn.GELU())
    return PrunedMlp(producers, act, consumer).eval()


def _sync(device: torch.device):
    return partial(torch.cuda.synchronize, device) if device.type == "cuda" else lambda: None


@torch.inference_mode()
def profile(
    model: nn.Module,
    batch,
    runtime: str = "eager",
    rounds: int = DEFAULT_ROUNDS,
    progress: bool = True,
    max_spread: float = MAX_SPREAD,
) -> LatencyTable:
    """The latency table of `model` (on its device, in its dtype, at the current torch threads) for `batch` (a
    number of example inputs, or the inputs themselves: see `batch_of`) under `runtime` ("eager": the pruned
    model as it is; "compact": after `vbp.compact`).

    Two passes: the coarse widths of every MLP shape (COARSE_ROUNDS rounds) to find the steps to refine; then the
    full model and every width of every shape, all in turn (`rounds` rounds), so that the curves and the fixed
    cost come from one pass over the same machine state.

    The rounds of that pass measure the machine's noise: where the full model's or the bare model's rounds
    spread by more than `max_spread` (median absolute deviation over the median, `vbp.timing.spread`), a busy
    machine slowed them and the table is refused (VbpError) rather than trusted; the table records its spread."""
    batch = batch_of(model, batch)
    check_runtime(runtime)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise VbpError(f"rounds must be a whole number, at least 1, got {rounds!r}")
    if isinstance(max_spread, bool) or not isinstance(max_spread, (int, float)) or not max_spread > 0:
        raise VbpError(f"max_spread must be a positive number (0.5: rounds 50% apart; inf: never refuse), got {max_spread!r}")
    start = time.perf_counter()
    model.eval()
    device, dtype = model_device(model), next(model.parameters()).dtype
    sync = _sync(device)
    shapes, sites, acts = mlp_shapes(model, batch)
    xs = [torch.randn(s.input_shape, generator=torch.Generator().manual_seed(i)).to(device, dtype)
          for i, s in enumerate(shapes)]

    def timed(grids: dict[int, list[int]], extra: dict, n: int) -> tuple[dict, float | None]:
        """(median ms of `extra`'s callables and of shape i's MLP at each width of grids[i], keyed (i, width);
        the largest spread of `extra`'s rounds, None without any)."""
        fns = dict(extra)
        for i, grid in grids.items():
            for w in grid:
                fns[i, w] = partial(mlp_at(shapes[i], w, acts[i], runtime, device, dtype), xs[i])
        times = interleaved_times(fns, n, sync)
        spreads = [x for x in (spread(times[k]) for k in extra) if x is not None]
        return {k: 1e3 * statistics.median(v) for k, v in times.items()}, max(spreads, default=None)

    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr)

    for i, s in enumerate(shapes):
        say(f"MLP {s.in_features} -> {s.hidden} -> {s.out_features} x {s.tokens} rows: "
            f"{sum(1 for j in sites.values() if j == i)} sites")
    coarse = {i: width_grid(s.hidden) for i, s in enumerate(shapes)}
    say(f"profiling {sum(map(len, coarse.values()))} coarse widths")
    first, _ = timed(coarse, {}, COARSE_ROUNDS)
    grids = {i: sorted({*grid, *refine_widths(grid, [first[i, w] for w in grid])}) for i, grid in coarse.items()}
    grids = {i: [0, *grid] for i, grid in grids.items()}
    say(f"profiling the full model, the model without MLPs and {sum(map(len, grids.values()))} widths, in turn")
    models = {"model": runtime_model(model, runtime), "bare": runtime_model(without_mlps(model), runtime)}
    t, noise = timed(grids, {k: partial(run_model, m, batch, device) for k, m in models.items()}, rounds)
    if noise is not None and noise > max_spread:
        raise VbpError(
            f"the timings are too noisy to trust: the rounds of the model, end to end, spread by {noise:.0%} of their median "
            f"(median absolute deviation; at most {max_spread:.0%} is trusted), so the machine was busy and the "
            "table would predict its load, not the model; no table was saved: profile again on a quieter machine "
            "(or accept the noise: vbp profile --max-spread, profile(max_spread=))"
        )
    uses = Counter(sites.values())
    isolated = sum(n * (t[i, shapes[i].hidden] - t[i, 0]) for i, n in uses.items())
    if not (isolated > 0 and t["model"] > t["bare"]):
        raise VbpError(
            f"the MLPs measured no cost (the model {t['model']:.2f} ms, without its MLPs {t['bare']:.2f} ms; the MLPs "
            f"alone at full width {isolated:.2f} ms more than at width 0): the machine's speed changed during "
            "profiling, or the MLPs are too small to time; run it again on a quieter machine, with more rounds"
        )
    scale = (t["model"] - t["bare"]) / isolated
    curves = [WidthCurve(grids[i], [scale * max(t[i, w] - t[i, 0], 0.0) for w in grids[i]]) for i in range(len(shapes))]
    environment = {
        "cpu_flags": cpu_flags() if device.type == "cpu" else None,
        "rounds": rounds,
        "spread": noise,  # of the end-to-end rounds (vbp.timing.spread); None for one round
        "max_spread": max_spread,
        "in_model_scale": scale,
        "profile_s": time.perf_counter() - start,
        "platform": platform.platform(),
    }
    key = table_key(model, batch, runtime, shapes, sites)
    return LatencyTable(key, shapes, curves, sites, t["model"], t["bare"], environment)


def table_for(
    model: nn.Module,
    batch,
    runtime: str = "eager",
    path: str | os.PathLike | None = None,
    rounds: int = DEFAULT_ROUNDS,
    progress: bool = True,
) -> LatencyTable:
    """The table at `path` when it exists (a VbpError unless it was measured for this model, batch, runtime
    and machine); else one measured now, written to `path` when given."""
    if path is not None and Path(path).exists():
        table = LatencyTable.load(path)
        differs = table.mismatch(table_key(model, batch, runtime))
        if differs:
            raise VbpError(
                f"the latency table {path} was measured for other conditions ({'; '.join(differs)}): measure it "
                f"again (vbp profile --output {path}), or give another path to measure one there"
            )
        return table
    table = profile(model, batch, runtime, rounds, progress)
    if path is not None:
        table.save(path)
    return table


@torch.inference_mode()
def measure_speedup(
    full: nn.Module, pruned: nn.Module, batch, runtime: str = "eager", rounds: int = DEFAULT_ROUNDS
) -> dict:
    """{"latency_ms", "reference_latency_ms", "speedup"}: medians of the pruned and the full model on `batch`
    (see `batch_of`) under `runtime`, timed in turn."""
    device = model_device(full)
    inputs = batch_of(full, batch)
    models = {"reference": runtime_model(full, runtime).eval(), "model": runtime_model(pruned, runtime).eval()}
    t = interleaved_medians({k: partial(run_model, m, inputs, device) for k, m in models.items()}, rounds, _sync(device))
    return {"latency_ms": 1e3 * t["model"], "reference_latency_ms": 1e3 * t["reference"],
            "speedup": t["reference"] / t["model"]}
