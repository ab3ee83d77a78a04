"""Recovery: the distillation losses against float64 formulas, sequential pruning against a hooked reference,
perplexity against a per-sentence float64 computation, and fine-tuning text models by distillation."""

import copy
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import assert_close_to_scale, run_torchrun
from torch.utils.data import Subset

import vbp
from vbp.cli import main
from vbp.model_attributes import PRUNING
from vbp.sequential import prune_sequential
from vbp.workflows import minilm, text
from vbp.workflows.data import loader
from vbp.workflows.distill import hidden_loss, output_target, pooled_loss, token_kl_loss
from vbp.workflows.finetune import FinetuneConfig, finetune

G = torch.Generator().manual_seed(0)


def padded_mask(lengths: list[int], length: int) -> torch.Tensor:
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]


def test_losses_match_float64_formulas_and_ignore_padding():
    s, t = torch.randn(3, 5, 8, generator=G, dtype=torch.float64), torch.randn(3, 5, 8, generator=G, dtype=torch.float64)
    mask = padded_mask([5, 2, 3], 5)
    real = [(b, i) for b in range(3) for i in range(5) if mask[b, i]]
    mse = sum(((s[b, i] - t[b, i]) ** 2).mean() for b, i in real) / sum((t[b, i] ** 2).mean() for b, i in real)
    cos = sum(1 - s[b, i] @ t[b, i] / (s[b, i].norm() * t[b, i].norm()) for b, i in real) / len(real)
    pooled = [(s[b, : int(mask[b].sum())].mean(0), t[b, : int(mask[b].sum())].mean(0)) for b in range(3)]
    pooled = sum(1 - a @ c / (a.norm() * c.norm()) for a, c in pooled) / 3
    logits_s, logits_t = s * 2, t * 2  # 8 "tokens" of vocabulary
    kl = 0
    for b, i in real:
        p_t, log_p_s = F.softmax(logits_t[b, i] / 3, -1), F.log_softmax(logits_s[b, i] / 3, -1)
        kl += (p_t * (p_t.log() - log_p_s)).sum()
    kl = 9 * kl / len(real)
    eps = 64 * torch.finfo(torch.float64).eps
    assert hidden_loss(s, t, mask, "mse").item() == pytest.approx(mse.item(), rel=eps)
    assert hidden_loss(s, t, mask, "cosine").item() == pytest.approx(cos.item(), rel=eps)
    assert pooled_loss(s, t, mask).item() == pytest.approx(pooled.item(), rel=eps)
    assert token_kl_loss(logits_s, logits_t, mask, 3.0).item() == pytest.approx(kl.item(), rel=eps)
    garbage = s.clone()
    garbage[~mask] = 1e6  # padding never counts
    assert hidden_loss(garbage, t, mask, "mse").item() == pytest.approx(mse.item(), rel=eps)
    assert pooled_loss(garbage, t, mask).item() == pytest.approx(pooled.item(), rel=eps)


def tiny_bert() -> transformers.BertModel:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return transformers.BertModel(cfg).eval()


def tiny_llama() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, initializer_range=0.3,  # peaked next-token distributions, to distil
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tiny_text_models(tmp_path_factory):
    """A tiny BERT encoder and a tiny LLaMA LM saved as hf: folders with MiniLM's tokenizer, loaded from them."""
    _, tokenizer = minilm.load_minilm()
    models = {}
    for name, build in (("bert", tiny_bert), ("llama", tiny_llama)):
        folder = tmp_path_factory.mktemp(name)
        build().save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        models[name] = vbp.create_model(f"hf:{folder}")
    return models


def test_output_target_follows_what_the_model_outputs(tiny_text_models):
    ids = {"input_ids": torch.tensor([[101, 2000, 102]])}
    assert output_target(tiny_text_models["bert"](**ids)) == "hidden"
    assert output_target(tiny_text_models["llama"](**ids)) == "tokens"
    assert output_target(torch.zeros(2, 10)) == "logits"
    with pytest.raises(vbp.VbpError, match=r"of shape \(2, 5, 10\)"):  # a plain tensor of tokens or patches
        output_target(torch.zeros(2, 5, 10))


def test_perplexity_matches_a_per_sentence_float64_computation(tiny_text_models):
    model = tiny_text_models["llama"]
    tokenizer = text.tokenizer_of(model)
    sentences = minilm.evaluation_sentences(6)
    nll, count = 0.0, 0
    for sentence in sentences:  # one at a time: no padding at all
        ids = tokenizer(sentence, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            log_p = F.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        nll -= log_p.gather(1, ids[0, 1:, None]).sum().item()
        count += ids.shape[1] - 1
    want = torch.exp(torch.tensor(nll / count, dtype=torch.float64)).item()
    got = text.perplexity(model, text.text_loader(sentences, tokenizer, 4))  # padded batches
    assert got == pytest.approx(want, rel=1e-4)  # float32 logits over 30522 tokens, summed over ~100 tokens


def half_pruned(model, sentences, compensation="mean"):
    batches = text.text_loader(sentences, text.tokenizer_of(model), 16)
    stats = vbp.calibrate(model, batches, progress=False)
    return vbp.prune(copy.deepcopy(model), vbp.select(stats, 0.5, criterion="random"), stats, compensation=compensation)


def test_finetune_distils_a_causal_lm_token_by_token(tiny_text_models):
    teacher = tiny_text_models["llama"]
    sentences = minilm.calibration_sentences(64)
    student = half_pruned(teacher, sentences, compensation="none")
    batches = list(text.text_loader(sentences, text.tokenizer_of(teacher), 16))

    def token_kl() -> float:
        with torch.no_grad():
            return sum(
                token_kl_loss(student(**b).logits, teacher(**b).logits, b["attention_mask"].bool(), 1.0).item()
                for b in batches
            )

    before = token_kl()
    data = text.Sentences(sentences, text.tokenizer_of(teacher))
    history = finetune(student, data, None, FinetuneConfig(epochs=3, batch_size=16, lr=3e-3, teacher_text=0), teacher, progress=False)
    assert token_kl() < 0.8 * before
    assert len(history) == 3


def test_train_only_mlp_tunes_the_mlps_alone(tiny_text_models):
    teacher = tiny_text_models["bert"]
    sentences = minilm.calibration_sentences(32)
    student = half_pruned(teacher, sentences)
    before = copy.deepcopy(student.state_dict())
    config = FinetuneConfig(epochs=1, batch_size=16, lr=1e-3, train_only="mlp")
    finetune(student, text.Sentences(sentences, text.tokenizer_of(teacher)), None, config, teacher, progress=False)
    mlp = {f"{s.name}.{part}" for s in vbp.find_sites(student) for part in ("intermediate", "output.dense")}
    for name, value in student.state_dict().items():
        in_mlp = any(name.startswith(prefix + ".") for prefix in mlp)
        assert torch.equal(value, before[name]) != in_mlp, name
    assert all(p.requires_grad for p in student.parameters())


def test_text_finetune_resumes_to_the_same_weights(tiny_text_models, tmp_path, monkeypatch):
    from vbp.workflows import finetune as finetune_module

    teacher = tiny_text_models["bert"]
    sentences = minilm.calibration_sentences(48)
    student = half_pruned(teacher, sentences)
    data = text.Sentences(sentences, text.tokenizer_of(teacher))
    config = FinetuneConfig(epochs=2, batch_size=16, lr=1e-3, kd_layers=True)
    straight = copy.deepcopy(student)
    finetune(straight, data, None, config, teacher, output=tmp_path / "a", progress=False)
    write_epoch = finetune_module._write_epoch

    def write_then_die(output, *args):
        write_epoch(output, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_module, "_write_epoch", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(copy.deepcopy(student), data, None, config, teacher, output=tmp_path / "b", progress=False)
    monkeypatch.setattr(finetune_module, "_write_epoch", write_epoch)
    resumed = copy.deepcopy(student)
    finetune(resumed, data, None, config, teacher, output=tmp_path / "b", resume=True, progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    other = dataclasses.replace(config, epochs=3, train_only="mlp")
    with pytest.raises(vbp.VbpError, match="--train-only mlp"):  # even when changes are accepted
        finetune(copy.deepcopy(student), data, None, other, teacher, output=tmp_path / "b", resume=True,
                 accept_changes=True)


def test_sequential_pruning_equals_a_hooked_reference():
    """Site by site: each site's statistics are those of the model whose earlier sites are already held at their
    means, its kept neurons the highest-variance ones at the planned width; the reference builds that from
    the unpruned model with hooks and `vbp.calibrate`, site after site."""
    model = vbp.create_model("vbp_digits_vit", pretrained=True)
    data = loader(Subset(vbp.digits_split("train"), range(256)), 64)
    plan = vbp.select(vbp.calibrate(model, data, progress=False), 0.6)
    pruned, followed = prune_sequential(copy.deepcopy(model), plan, data, progress=False)

    reference = copy.deepcopy(model)
    for site in vbp.find_sites(reference):
        stats = vbp.calibrate(reference, data, progress=False)
        keep = torch.topk(stats.variance(site.name), len(plan.keep[site.name])).indices.sort().values
        assert followed.keep[site.name] == keep.tolist()
        held = torch.ones(site.width, dtype=torch.bool)
        held[keep] = False
        mean = stats.mean(site.name).float()

        def hold_at_mean(module, inputs, held=held, mean=mean):
            h = inputs[0].clone()
            h[..., held] = mean[held]
            return (h,)

        site.consumer_layer.register_forward_pre_hook(hold_at_mean)
    assert [len(k) for k in followed.keep.values()] == [len(k) for k in plan.keep.values()]
    images = vbp.digits_split("test").tensors[0][:64]
    with torch.no_grad():
        assert_close_to_scale(pruned(images), reference(images))
    assert pruned.__dict__[PRUNING]["sequential"] is True


@pytest.fixture(scope="module")
def sentence_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sentences")
    (folder / "cal.txt").write_text("\n".join(minilm.calibration_sentences(256)) + "\n")
    (folder / "val.txt").write_text("\n".join(minilm.evaluation_sentences(128)) + "\n")
    return folder


def cli_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(list(args)) == 0
    return json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1])


def test_distillation_brings_half_pruned_minilm_back(sentence_files, tmp_path, capsys):
    """The issue's commands on the real MiniLM: prune half its FFN neurons on 256 sentences, distil for two
    epochs on them, and measure both on 128 sentences of other modules. Measured on this project's 2-core
    CPUs: VBP 0.862 cosine before, 0.905 after (floors just under; the untuned model is passed by a margin)."""
    model, cal, val = f"hf:{minilm.minilm_dir()}", str(sentence_files / "cal.txt"), str(sentence_files / "val.txt")
    pruned, tuned = tmp_path / "p", tmp_path / "ft"
    assert main(["prune", "--model", model, "--data", cal, "--ratio", "0.5", "--output", str(pruned)]) == 0
    history = cli_json(
        capsys, "finetune", "--pruned", str(pruned / "model.safetensors"), "--data", cal, "--val-data", val,
        "--epochs", "2", "--lr", "3e-4", "--batch-size", "32", "--output", str(tuned),
    )
    before = cli_json(capsys, "eval", "--pruned", str(pruned / "model.safetensors"), "--data", val)
    after = cli_json(capsys, "eval", "--pruned", str(tuned / "model.safetensors"), "--data", val)
    assert after["cosine"] == pytest.approx(history["cosine"], abs=1e-4)  # the saved model is the tuned one
    assert before["cosine"] > 0.84
    assert after["cosine"] > 0.88
    assert after["cosine"] > before["cosine"] + 0.03


def test_text_models_are_not_finetuned_without_a_teacher(sentence_files, tmp_path, capsys):
    model = f"hf:{minilm.minilm_dir()}"
    pruned = tmp_path / "p"
    cal = str(sentence_files / "cal.txt")
    assert main(["prune", "--model", model, "--data", cal, "--num-batches", "1", "--ratio", "0.5",
                 "--output", str(pruned)]) == 0
    capsys.readouterr()
    args = ["finetune", "--pruned", str(pruned / "model.safetensors"), "--data", cal, "--output", str(tmp_path / "f")]
    assert main([*args, "--no-kd"]) == 2
    assert "leave out --no-kd" in capsys.readouterr().err


def test_eval_reports_the_perplexity_of_a_pruned_causal_lm(tiny_text_models, sentence_files, capsys):
    model = tiny_text_models["llama"]
    val = str(sentence_files / "val.txt")
    result = cli_json(
        capsys, "eval", "--model", f"hf:{model.config._name_or_path}", "--data", val, "--ratio", "0.5",
        "--sequential",
    )
    sentences = text.read_sentences(val)  # --ratio calibrates on the first half and evaluates on the other
    batches = text.text_loader(sentences[len(sentences) // 2 :], text.tokenizer_of(model), 64)
    assert result["reference_perplexity"] == pytest.approx(text.perplexity(model, batches), rel=1e-6)
    assert {"cosine", "nn_agreement"} <= set(result)
    one_shot = cli_json(capsys, "eval", "--model", f"hf:{model.config._name_or_path}", "--data", val, "--ratio", "0.5")
    assert one_shot["reference_perplexity"] == result["reference_perplexity"]
    assert one_shot["perplexity"] != result["perplexity"]  # the sequential statistics shaped the pruned model


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--kd-layers"], "--kd-layers) is for Hugging Face text models"),
        (["--kd-pooled", "-1"], "--kd-pooled is a weight"),
    ],
)
def test_finetune_options_that_do_not_fit_are_refused(digits_files, tmp_path, capsys, extra, message):
    args = ["finetune", "--pruned", str(digits_files / "pruned.safetensors"), "--data", "digits", "--epochs", "1",
            "--num-batches", "1", "--output", str(tmp_path / "f"), *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_text_finetune_under_torchrun_with_two_gloo_processes(tiny_text_models, sentence_files, tmp_path):
    teacher = tiny_text_models["bert"]
    pruned = half_pruned(teacher, minilm.calibration_sentences(32))
    vbp.save_pruned(pruned, tmp_path / "p.safetensors")
    args = ["--data", str(sentence_files / "cal.txt"), "--val-data", str(sentence_files / "val.txt"), "--epochs", "2",
            "--num-batches", "2", "--batch-size", "16", "--output", str(tmp_path / "ft"), "--device", "cpu"]
    done = run_torchrun(29519, "finetune", "--pruned", str(tmp_path / "p.safetensors"), *args)
    assert done.returncode == 0, done.stderr[-3000:]
    log = json.loads((tmp_path / "ft" / "log.json").read_text())
    assert [row["epoch"] for row in log] == [1, 2] and 0 < log[-1]["cosine"] <= 1
    tuned = vbp.load_pruned(tmp_path / "ft" / "model.safetensors")
    assert vbp.families.site_widths(tuned) == vbp.families.site_widths(pruned)
