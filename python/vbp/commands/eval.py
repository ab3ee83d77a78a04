"""vbp eval: top-1/top-5 of a pruned model (or one pruned now) and its retention and speed-up against the
unpruned one; under torchrun every rank evaluates its shard and the counts are summed."""

import json
import sys

from ..checkpoint import load_pruned
from ..compact import KERNELS, compact
from ..distributed import rank_and_world
from ..errors import VbpError
from ..families import site_widths
from ..files import check_writable, write_text_atomic
from ..select import check_ratio, check_selection_options
from ..timing import latencies
from ..workflows.data import TEXT_HALVES, is_text_model, text_half
from ..workflows.evaluate import accuracy, latency_images, retention
from ..workflows.generation import generation_fidelity, tokens_per_s
from ..workflows.text import is_causal_lm, read_sentences, text_fidelity, text_loader, tokenizer_of
from .arguments import (
    add_data_args,
    add_model_args,
    add_overwrite_arg,
    add_selection_args,
    add_sequential_arg,
    add_stats_args,
)
from .options import (
    batches,
    builder_named,
    check_data_options_used,
    check_model_of_pruned,
    check_stats_args,
    compensation_of,
    limited,
    model_of,
    pruned_model,
    reference_of,
    settle_method,
    stats_for,
)
from .paths import check_output_kinds, check_outputs_spare_inputs
from .session import distributed_session

NAME = "eval"
HELP = "top-1/top-5 accuracy, and retention against the unpruned model"


def add_arguments(p) -> None:
    add_model_args(p)
    add_data_args(p)
    p.add_argument(
        "--pruned",
        help="a model written by `vbp prune --output` (model.safetensors); its unpruned "
        "reference is rebuilt from its recorded id with --pretrained/--checkpoint",
    )
    p.add_argument("--ratio", type=float, help="prune --model at this ratio first (calibrating on the train split)")
    p.add_argument(
        "--compact",
        nargs="?",
        const="native",
        choices=list(KERNELS),
        help="run the evaluated model's MLPs as vbp.CompactMlp, with the native kernel (default) or the Triton one",
    )
    p.add_argument(
        "--latency-batch",
        type=int,
        metavar="N",
        help="also time a batch of N evaluation images (median), against the unpruned model when pruned",
    )
    p.add_argument(
        "--tokens-per-s",
        action="store_true",
        help="causal LMs: also time prefill (a 128-token prompt) and decode (64 new tokens, batch 1, KV cache) in "
        "tokens/s against the unpruned model, beside the ideal speed-ups (MAC and weight-bytes ratios)",
    )
    add_selection_args(p)
    add_sequential_arg(p)
    add_stats_args(p)
    p.add_argument("--summary", help="also write the result as JSON to this file")
    add_overwrite_arg(p, "a --summary file that holds something else than a vbp summary")


def run(args) -> None:
    if args.pruned and args.ratio is not None:
        raise VbpError("--pruned evaluates a model pruned before and --ratio prunes one now: give one of them")
    if args.pruned:
        _check_no_pruning_options(args)
    if args.ratio is not None:
        compensation_of(args)  # contradictory options end here, before any work
    elif args.sequential:
        raise VbpError("--sequential prunes site by site: give it with --ratio R")
    check_stats_args(args)
    check_data_options_used(args, calibrates=args.ratio is not None and (not args.stats or args.sequential),
                            reads_data=True, why="this run calibrates nothing (--pruned, --stats or no --ratio)")
    if args.latency_batch is not None and args.latency_batch < 1:
        raise VbpError(f"--latency-batch must be at least 1, got {args.latency_batch}")
    check_outputs_spare_inputs(NAME, args)
    check_output_kinds(NAME, args)
    if args.summary:
        check_writable(args.summary)
    with distributed_session(args.device) as (args.device, rank, _):
        result = _measure(args)
    if rank == 0:
        print(json.dumps(result))
        if args.summary:
            write_text_atomic(args.summary, json.dumps(result, indent=2) + "\n")
            print(f"wrote {args.summary}")


def _measure(args) -> dict:
    reference, model = _models(args)
    if is_text_model(reference):
        return _measure_text(args, reference, model)
    val = limited(
        batches(args.data, reference, "test", args.batch_size, args.num_batches, args.skip_bad_images), args.num_batches
    )
    evaluated = model if model is not None else reference
    if args.compact:
        evaluated = compact(evaluated, args.compact)
    result = accuracy(evaluated, val)
    if model is not None:
        base = accuracy(reference, val)  # the unpruned model's pass: as long as the first, so it shows progress
        result.update(reference_top1=base["top1"], retention_pct=retention(result["top1"], base["top1"]))
    if args.latency_batch:
        images = latency_images(val, args.latency_batch, args.device)
        timed = {"model": evaluated} if model is None else {"model": evaluated, "reference": reference}
        times = latencies(timed, images)
        result["latency_ms"] = 1e3 * times["model"]
        if model is not None:
            result["reference_latency_ms"] = 1e3 * times["reference"]
            result["speedup"] = times["reference"] / times["model"]
    return result


def _check_no_pruning_options(args) -> None:
    """With --pruned, refuse the options that only shape a model pruned now (--ratio): they would be ignored."""
    defaults = {"stats": None, "sites": None, "input_size": None, "scope": None, "criterion": None,
                "compensation": None, "no_compensation": False, "ridge": None, "min_keep": 1, "round_to": 1,
                "sequential": False}
    given = ["--" + k.replace("_", "-") for k, v in defaults.items() if getattr(args, k, v) != v]
    if given:
        raise VbpError(
            f"{', '.join(given)} shape a model pruned now (--ratio), and --pruned {args.pruned} was pruned before: "
            "leave them out"
        )


def _models(args):
    """(the unpruned model, the pruned one or None): from --pruned, or --model pruned now by --ratio."""
    if args.pruned:
        model = load_pruned(args.pruned, args.device, model=builder_named(args.model))
        check_model_of_pruned(args.model, model, args.pruned)
        _check_evaluable(args.data, model)
        _check_causal_options(args, model)
        reference = reference_of(model, args.pretrained, args.checkpoint, args.num_classes, args.device)
    else:
        reference = model_of(args)
        _check_evaluable(args.data, reference)
        _check_causal_options(args, reference)
        model = None
        if args.ratio is not None:
            if is_text_model(reference) and not args.stats:
                _hold_out_half(args)
            check_ratio(args.ratio)
            check_selection_options(site_widths(reference), args.min_keep, args.round_to)
            settle_method(args, reference)
            model = pruned_model(args, reference, stats_for(args, reference))[1]
    return reference, model


def _check_evaluable(data: str, model) -> None:
    """Synthetic inputs have nothing to evaluate against: say what data the model takes instead."""
    if data == "synthetic":
        takes = "--data FILE.txt (sentences, one per line)" if is_text_model(model) else "--data digits or an image folder"
        raise VbpError(f"synthetic data has no labels or sentences to evaluate against; give {takes}")


def _check_causal_options(args, model) -> None:
    """--tokens-per-s times a causal LM's prefill and decode: refused for any other model, before any work."""
    if args.tokens_per_s and not (is_text_model(model) and is_causal_lm(model)):
        name = args.pruned or args.model
        raise VbpError(
            f"--tokens-per-s times the prefill and decode of a causal LM, and {name} is not one: leave it out "
            "(--latency-batch N times a batch of its inputs)"
        )


def _hold_out_half(args) -> None:
    """eval --ratio on a text file calibrates on its first half and evaluates on the other half, never on the
    sentences it was calibrated on (a text file has no splits); says so."""
    sentences = read_sentences(args.data)
    n = len(text_half(sentences, TEXT_HALVES[0], args.data))  # fewer than 4 sentences: refused here
    args.calibration_split, args.eval_split = TEXT_HALVES
    print(
        f"--ratio on a text file: calibrating on the first {n} sentences of {args.data} and evaluating on the "
        f"other {len(sentences) - n}, held out (give --stats to calibrate on other text and evaluate on all of it)",
        file=sys.stderr,
    )


def _measure_text(args, reference, model) -> dict:
    """A pruned text model against the unpruned one on the sentences of --data: how close their mean-pooled
    embeddings stay (cosine, nearest-neighbour agreement), with --latency-batch N sentences per second; for
    causal LMs also the perplexity of both, the fidelity of greedy generation on the shipped prompt set
    (`workflows.generation`), and with --tokens-per-s prefill and decode tokens/s beside their ideal speed-ups."""
    if model is None:
        raise VbpError(
            f"{args.model} is a text model: it has no accuracy to measure alone; give --pruned FILE or --ratio R to "
            "compare a pruned model with it"
        )
    if rank_and_world()[1] > 1:
        raise VbpError("the evaluation of a text model runs in one process (its neighbours span all sentences)")
    if args.compact:
        model = compact(model, args.compact)
    split = getattr(args, "eval_split", "test")
    sentences = limited(
        batches(args.data, reference, split, args.batch_size, args.num_batches, args.skip_bad_images), args.num_batches
    )
    result = text_fidelity(reference, model, sentences)
    if is_causal_lm(reference):
        tokenizer = tokenizer_of(reference)
        result.update(generation_fidelity(reference, model, tokenizer))
        if args.tokens_per_s:
            result.update(tokens_per_s(reference, model, tokenizer))
    if args.latency_batch:
        batch = text_loader(read_sentences(args.data)[: args.latency_batch], tokenizer_of(reference), args.latency_batch)
        inputs = {k: v.to(args.device) for k, v in next(iter(batch)).items()}
        times = latencies({"model": model, "reference": reference}, inputs)
        n = len(inputs["input_ids"])
        result.update(
            latency_ms=1e3 * times["model"],
            reference_latency_ms=1e3 * times["reference"],
            sentences_per_s=n / times["model"],
            speedup=times["reference"] / times["model"],
        )
    return result
