"""A pruned causal LM as LLM users judge it (vbp.workflows.generation): greedy continuations against a hand-written
greedy loop without KV cache, the token-match measures on a hand-made example, the self-generated perplexity
against a per-token float64 computation, the ideal speed-ups against hand-counted MACs and weight bytes of a tiny
LLaMA pruned by vbp, and `vbp eval` on a pruned causal LM."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
import transformers

import vbp
from vbp.cli import main
from vbp.workflows import generation, minilm, text

H, INTER, LAYERS, VOCAB = 32, 64, 2, 30522


def tiny_llama(tie: bool = False) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=H, intermediate_size=INTER, num_hidden_layers=LAYERS, num_attention_heads=2,
        num_key_value_heads=2, initializer_range=0.3, tie_word_embeddings=tie,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny random LLaMA LM saved as an hf: folder with MiniLM's tokenizer, and a text file of sentences."""
    _, tokenizer = minilm.load_minilm()
    folder = tmp_path_factory.mktemp("llama")
    tiny_llama().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder.parent / f"{folder.name}_sentences.txt").write_text("\n".join(minilm.calibration_sentences(64)) + "\n")
    return folder


@pytest.fixture(scope="module")
def llama(llama_folder):
    model = vbp.create_model(f"hf:{llama_folder}")
    return model, text.tokenizer_of(model)


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a little fox"]


def test_the_prompt_set_holds_facts_code_and_stories():
    prompts = generation.llm_prompts()
    assert len(prompts) == 24 and len(set(prompts)) == 24
    assert "The capital of France is" in prompts and "def fibonacci(n):" in prompts
    assert "import numpy as np\n\ndef softmax(x):" in prompts  # \n in a line is a line break


def test_token_agreement_on_a_hand_made_example():
    refs = [torch.tensor(t) for t in ([1, 2, 3, 4], [5, 6], [7, 8, 9], [4, 4, 4, 4, 4], [1, 1, 2])]
    got = [torch.tensor(t) for t in ([1, 2, 9, 4], [5, 6], [7], [3, 4, 4, 4, 4], [1, 1, 3])]
    # matched before the first divergence: 2 of 4, 2 of 2, 1 of 3 (stopped early), 0 of 5 (later matches count
    # not), 2 of 3 (only the last differs)
    result = generation.token_agreement(refs, got)
    assert result["prefix_match"] == pytest.approx((2 / 4 + 1 + 1 / 3 + 0 + 2 / 3) / 5, rel=1e-12)
    assert result["exact_match"] == 1 / 5
    assert generation.matched_prefix([1, 2], [1, 2, 3]) == 2
    assert generation.token_agreement(refs, refs) == {"prefix_match": 1.0, "exact_match": 1.0}


def greedy_by_hand(model, prompt: torch.Tensor, new_tokens: int, eos: int) -> list[int]:
    """Greedy decoding without any cache: the whole sequence through the model for every token."""
    ids = prompt.tolist()
    out = []
    with torch.no_grad():
        for _ in range(new_tokens):
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(token)
            out.append(token)
            if token == eos:
                break
    return out


def perplexity_by_hand(model, prompts, continuations) -> float:
    """Per-token float64 log-softmax of each continuation token given all tokens before it."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for prompt, cont in zip(prompts, continuations):
            ids = torch.cat([prompt, cont])
            log_p = F.log_softmax(model(input_ids=ids[None]).logits[0].double(), -1)
            for t in range(len(prompt), len(ids)):
                nll -= float(log_p[t - 1, ids[t]])
                count += 1
    return float(torch.exp(torch.tensor(nll / count, dtype=torch.float64)))


def test_greedy_continuations_and_self_generated_perplexity_against_hand_computations(llama):
    model, tokenizer = llama
    prompts = generation.prompt_ids(tokenizer, PROMPTS)
    continuations = generation.greedy_continuations(model, prompts, 12, tokenizer.pad_token_id)
    eos = model.generation_config.eos_token_id
    for prompt, cont in zip(prompts, continuations):
        assert cont.tolist() == greedy_by_hand(model, prompt, 12, eos)
    got = generation.continuation_perplexity(model, prompts, continuations)
    assert got == pytest.approx(perplexity_by_hand(model, prompts, continuations), rel=1e-5)


def test_a_model_follows_itself_and_one_with_a_perturbed_head_diverges(llama):
    model, tokenizer = llama
    same = generation.generation_fidelity(model, model, tokenizer, PROMPTS, new_tokens=12)
    assert same["generation_prefix_match"] == 1.0 and same["generation_exact_match"] == 1.0
    assert same["self_generated_perplexity"] == same["reference_self_generated_perplexity"]
    assert same["generation_prompts"] == 3 and same["generation_new_tokens"] == 12
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        head = perturbed.lm_head.weight
        head += 2 * head.std() * torch.randn(head.shape, generator=g)
    other = generation.generation_fidelity(model, perturbed, tokenizer, PROMPTS, new_tokens=12)
    assert other["generation_prefix_match"] < 0.5 and other["generation_exact_match"] == 0.0
    assert other["reference_self_generated_perplexity"] == same["reference_self_generated_perplexity"]
    assert other["self_generated_perplexity"] > 2 * same["self_generated_perplexity"]


def pruned_llama(model, tokenizer):
    sentences = minilm.calibration_sentences(32)
    stats = vbp.calibrate(model, text.text_loader(sentences, tokenizer, 16), progress=False)
    return vbp.prune(copy.deepcopy(model), vbp.select(stats, 0.5), stats)


def test_tokens_per_s_and_ideal_speedups_equal_hand_counts(llama):
    model, tokenizer = llama
    pruned = pruned_llama(model, tokenizer)
    widths = [s.width for s in vbp.find_sites(pruned)]
    assert sum(widths) == LAYERS * INTER // 2
    t = 16  # prompt tokens

    def prefill_macs(mlp_widths):  # q, k, v, o and the gated MLP per token, both attention matmuls, head on one token
        return sum(t * (4 * H * H + 3 * H * w) + 2 * t * t * H for w in mlp_widths) + H * VOCAB

    def weight_bytes(mlp_widths, down_bias):  # float32; the input embedding table is not read whole
        per_layer = [4 * H * H + 3 * H * w + down_bias + 2 * H for w in mlp_widths]  # + the two RMSNorms
        return 4 * (sum(per_layer) + H + VOCAB * H)  # + the final norm and the head

    result = generation.tokens_per_s(model, pruned, tokenizer, prefill_tokens=t, decode_tokens=4, rounds=2)
    assert result["prefill_ideal_speedup"] == prefill_macs([INTER] * LAYERS) / prefill_macs(widths)
    assert result["decode_ideal_speedup"] == weight_bytes([INTER] * LAYERS, 0) / weight_bytes(widths, H)
    assert result["weight_mb_per_token"] == weight_bytes(widths, H) / 1e6
    for key in ("prefill_tokens_per_s", "reference_prefill_tokens_per_s", "decode_tokens_per_s",
                "reference_decode_tokens_per_s", "prefill_speedup", "decode_speedup"):
        assert result[key] > 0, key
    assert generation.prefill_prompt(tokenizer, t).shape == (1, t)


def test_tied_embeddings_are_read_whole_by_the_head():
    tied, untied = tiny_llama(tie=True), tiny_llama()
    assert tied.lm_head.weight is tied.get_input_embeddings().weight
    layers = LAYERS * (4 * H * H + 3 * H * INTER + 2 * H) + H
    assert generation.weight_bytes_per_token(tied) == 4 * (layers + VOCAB * H)  # the one table, once
    assert generation.weight_bytes_per_token(untied) == 4 * (layers + VOCAB * H)  # the head's, not the input table
    assert sum(p.numel() for p in untied.parameters()) == layers + 2 * VOCAB * H


def cli_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(list(args)) == 0
    return json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1])


def test_vbp_eval_reports_generation_fidelity_and_tokens_per_s_of_a_pruned_causal_lm(llama, llama_folder, tmp_path,
                                                                                    capsys):
    model, tokenizer = llama
    data = str(llama_folder.parent / f"{llama_folder.name}_sentences.txt")
    out = tmp_path / "p"
    assert main(["prune", "--model", f"hf:{llama_folder}", "--data", data, "--ratio", "0.5", "--output", str(out)]) == 0
    pruned = str(out / "model.safetensors")
    summary = tmp_path / "summary.json"
    result = cli_json(capsys, "eval", "--pruned", pruned, "--data", data, "--num-batches", "1", "--summary",
                      str(summary))
    want = generation.generation_fidelity(model, vbp.load_pruned(pruned), tokenizer)
    for key, value in want.items():
        assert result[key] == pytest.approx(value, rel=1e-9), key
    assert result["generation_prompts"] == 24 and 0 <= result["generation_prefix_match"] <= 1
    assert "perplexity" in result and "prefill_tokens_per_s" not in result
    assert json.loads(summary.read_text())["generation_prefix_match"] == result["generation_prefix_match"]
    timed = cli_json(capsys, "eval", "--pruned", pruned, "--data", data, "--num-batches", "1", "--tokens-per-s")
    assert timed["prefill_tokens_per_s"] > 0 and timed["decode_tokens_per_s"] > 0
    assert timed["decode_ideal_speedup"] > 1 and timed["prefill_ideal_speedup"] > 1


def test_tokens_per_s_is_refused_for_a_model_that_is_no_causal_lm(digits_files, capsys):
    args = ["eval", "--pruned", str(digits_files / "pruned.safetensors"), "--data", "digits", "--num-batches", "1"]
    assert main([*args, "--tokens-per-s"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--tokens-per-s" in err and "causal" in err and len(err.splitlines()) == 1
