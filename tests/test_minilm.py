"""VBP on a real trained network nobody here trained: all-MiniLM-L6-v2 (BERT, 6 layers, FFN 1536), offline.

Measured on this project's machines (2-core CPU, float32, 256 calibration / 128 evaluation sentences of the
embedded texts): at 50% of FFN neurons pruned, mean cosine similarity of the pruned model's mean-pooled
sentence embeddings to the unpruned ones is 0.862 with VBP, 0.791 without compensation and 0.646 for random
selection (the 1024 / 512-sentence table is in docs/minilm.md). The floors below sit just under those figures.
"""

import copy
import json

import pytest
import torch

import vbp
from vbp.cli import main
from vbp.workflows import minilm, text


@pytest.fixture(scope="module")
def minilm_setup():
    model, tokenizer = minilm.load_minilm()
    calibration = text.text_loader(minilm.calibration_sentences(256), tokenizer, 64)
    evaluation = text.text_loader(minilm.evaluation_sentences(128), tokenizer, 64)
    stats = vbp.calibrate(model, calibration, progress=False)
    real_tokens = int(sum(batch["attention_mask"].sum() for batch in calibration))
    return model, stats, evaluation, text.sentence_embeddings(model, evaluation), real_tokens


def agreement(setup, criterion="variance", compensation="mean", ratio=0.5):
    model, stats, evaluation, reference, _ = setup
    plan = vbp.select(stats, ratio, criterion=criterion, model=model)
    pruned = vbp.prune(copy.deepcopy(model), plan, stats, compensation=compensation)
    return text.embedding_agreement(reference, text.sentence_embeddings(pruned, evaluation))


def test_the_real_model_has_six_ffn_sites(minilm_setup):
    model, stats, _, _, real_tokens = minilm_setup
    sites = vbp.find_sites(model)
    assert [s.name for s in sites] == [f"encoder.layer.{i}" for i in range(6)]
    assert all(s.width == 1536 for s in sites)
    assert all(m.count == real_tokens for m in stats.sites.values())  # every real token, no padding


def test_half_pruned_minilm_keeps_its_embeddings(minilm_setup):
    vbp_result = agreement(minilm_setup)
    assert vbp_result["cosine"] > 0.84
    assert vbp_result["cosine"] > agreement(minilm_setup, compensation="none")["cosine"] + 0.03
    assert vbp_result["cosine"] > agreement(minilm_setup, criterion="random", compensation="none")["cosine"] + 0.1
    assert agreement(minilm_setup, ratio=0.0) == {"cosine": pytest.approx(1.0), "nn_agreement": 1.0}


def test_cli_prunes_an_hf_model_on_a_text_file(tmp_path, capsys):
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(minilm.calibration_sentences(40)) + "\n")
    model = f"hf:{minilm.minilm_dir()}"
    out = tmp_path / "pruned"
    args = ["prune", "--model", model, "--data", str(sentences), "--batch-size", "16", "--ratio", "0.5"]
    assert main([*args, "--output", str(out), "--summary", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["ratio_removed"] == pytest.approx(0.5) and summary["macs_g"] < summary["macs_full_g"]
    pruned = vbp.load_pruned(out / "model.safetensors")
    assert sum(vbp.families.site_widths(pruned).values()) == 6 * 1536 // 2
    ids = {"input_ids": torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])}
    stats = vbp.Stats.load(out / "stats.safetensors")
    reference, _ = minilm.load_minilm()
    plan = vbp.Plan.load(out / "plan.json")
    with torch.no_grad():
        want = vbp.prune(copy.deepcopy(reference), plan, stats)(**ids).last_hidden_state
        torch.testing.assert_close(pruned(**ids).last_hidden_state, want, rtol=0, atol=0)
    # vbp eval on the text model: the agreement of mean-pooled embeddings, against a hand computation
    evaluation = tmp_path / "evaluation.txt"
    evaluation.write_text("\n".join(minilm.evaluation_sentences(32)) + "\n")
    capsys.readouterr()
    assert main(["eval", "--pruned", str(out / "model.safetensors"), "--data", str(evaluation), "--batch-size", "16",
                 "--latency-batch", "8"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tokens = minilm.load_minilm()[1](minilm.evaluation_sentences(32), padding=True, return_tensors="pt")
    mask = tokens["attention_mask"].unsqueeze(-1).double()
    with torch.no_grad():
        pooled = [(m(**tokens).last_hidden_state.double() * mask).sum(1) / mask.sum(1) for m in (reference, pruned)]
    cosine = torch.nn.functional.cosine_similarity(*pooled, dim=-1).mean().item()
    assert result["cosine"] == pytest.approx(cosine, abs=1e-5) and 0.8 < cosine < 1
    assert 0 <= result["nn_agreement"] <= 1 and result["speedup"] > 0 and result["sentences_per_s"] > 0
    assert main(["eval", "--model", model, "--data", str(evaluation)]) == 2
    assert "has no accuracy to measure alone" in capsys.readouterr().err
