"""Fine-tuning a causal LM on a CPU, on a tiny random LLaMA: a time budget the steps and the learning-rate schedule
are fitted to (stopping within it, keeping the best validated weights, resumable mid-epoch), the projected duration
said before the first step, a log led by token measures, and text the unpruned model writes itself mixed into the
training text (seeded, cached, reused on resume).

The budget's logic is checked against a clock that moves only when the test says (one "second" per optimizer step),
so that the plan, the stop and a resumed run are exact; one run of the command checks it on the real clock."""

import copy
import csv
import json
import math

import pytest
import torch
import transformers

import vbp
from vbp.cli import main
from vbp.workflows import finetune as finetune_module
from vbp.workflows import minilm, text
from vbp.workflows import teacher_text as tt
from vbp.workflows.finetune import FinetuneConfig, finetune


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run as fast on one thread, and far faster than on two when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def short_sentences(n: int, offset: int = 0) -> list[str]:
    sentences = [s for s in minilm.calibration_sentences(400) if len(s) < 70]
    return sentences[offset : offset + n]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """(teacher, student): a tiny LLaMA saved as an hf: folder with MiniLM's tokenizer, and a copy pruned by half
    (random neurons, no compensation), also saved as p.safetensors beside cal.txt (32 sentences) and val.txt (8)."""
    folder = tmp_path_factory.mktemp("llm")
    _, tokenizer = minilm.load_minilm()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, initializer_range=0.3,
    )
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    teacher = vbp.create_model(f"hf:{folder / 'model'}")
    sentences = short_sentences(32)
    batches = text.text_loader(sentences, text.tokenizer_of(teacher), 16)
    stats = vbp.calibrate(teacher, batches, progress=False)
    plan = vbp.select(stats, 0.5, criterion="random")
    student = vbp.prune(copy.deepcopy(teacher), plan, stats, compensation="none")
    vbp.save_pruned(student, folder / "p.safetensors")
    (folder / "cal.txt").write_text("\n".join(sentences) + "\n")
    (folder / "val.txt").write_text("\n".join(short_sentences(8, offset=40)) + "\n")
    return teacher, student, folder


def sentences_of(model, path) -> text.Sentences:
    return text.Sentences(text.read_sentences(path), text.tokenizer_of(model))


class StepClock:
    """finetune's clock, moving `tick` seconds per optimizer step (the probe's too) and never otherwise, `slow`
    seconds per step after the first `after` steps."""

    def __init__(self, monkeypatch, tick: float = 1.0, after: int | None = None, slow: float | None = None):
        self.now, self.steps = 0.0, 0
        update = finetune_module._Step.update

        def timed_update(step, optimizer):
            update(step, optimizer)
            self.now += slow if after is not None and self.steps >= after else tick
            self.steps += 1

        monkeypatch.setattr(finetune_module._Step, "update", timed_update)
        monkeypatch.setattr(finetune_module, "_clock", lambda: self.now)


BUDGET_S = 40.0  # with StepClock: 3 timed steps, then 36 more fit (see test_budget_fits_the_schedule...)


def budget_config(**changes) -> FinetuneConfig:
    return FinetuneConfig(**{"epochs": None, "batch_size": 8, "lr": 3e-3, "time_budget_s": BUDGET_S,
                             "teacher_text": 0, **changes})


def saved_plan(folder) -> dict:
    return torch.load(folder / "checkpoint.pt", weights_only=True)["plan"]


def test_budget_fits_the_schedule_to_its_cosine_floor(llm, tmp_path, monkeypatch):
    """The 3 timed steps take 3 s of a 40 s budget; validations and checkpoints take none here (but an estimate
    of the writes), so 36 more steps of 1 s fit, validated every 5 steps (8 validations), with warm-up and cosine
    over those 36: the run ends at its planned last step, at the schedule's floor, inside the budget."""
    teacher, student, folder = llm
    StepClock(monkeypatch)
    config = budget_config()
    history = finetune(copy.deepcopy(student), sentences_of(teacher, folder / "cal.txt"), None, config, teacher,
                       output=tmp_path, progress=False)
    plan = saved_plan(tmp_path)
    assert plan["steps"] == 39 and plan["offset"] == 3 and plan["eval_every"] == 5 and plan["step_s"] == 1.0
    assert [row["step"] for row in history] == [5, 10, 15, 20, 25, 30, 35, 39]
    assert history[-1]["lr"] == pytest.approx(config.lr * 1e-2, rel=1e-9)  # cosine floor at the last step
    floor = config.lr * 1e-2  # step 35 is step 32 of the 36 the schedule spans, after its 3-step warm-up
    assert history[-2]["lr"] == pytest.approx(floor + (config.lr - floor) * (1 + math.cos(math.pi * 32 / 36)) / 2)
    assert max(row["lr"] for row in history) > 0.9 * config.lr
    assert history[-1]["stop"] == "end of schedule" and history[-1]["elapsed"] == 39.0 <= BUDGET_S
    assert history[-1]["epoch"] == 9.75 and history[0]["epoch"] == 1.25  # 4 steps an epoch, validated mid-epoch
    assert all("kept" not in row for row in history)  # no validation data: the last weights are kept


def test_budget_stops_within_it_when_steps_run_slower_than_probed(llm, tmp_path, monkeypatch):
    """Steps take 2.5 s after the 3 timed ones, not the 1 s measured: the run checks before every step, stops
    after 14 of its 36 planned steps (3 + 14 x 2.5 = 38 s: another would end at 40.5), validates where it
    stopped and keeps the best of what it did."""
    teacher, student, folder = llm
    StepClock(monkeypatch, after=3, slow=2.5)
    val = sentences_of(teacher, folder / "val.txt")
    history = finetune(copy.deepcopy(student), sentences_of(teacher, folder / "cal.txt"), val, budget_config(),
                       teacher, output=tmp_path, progress=False)
    assert saved_plan(tmp_path)["steps"] == 39
    assert [row["step"] for row in history] == [5, 10, 15, 17]  # validated where it stopped
    assert [row["stop"] for row in history] == ["", "", "", "time budget"]
    assert history[-1]["elapsed"] == 38.0 <= BUDGET_S  # within the budget (plus one step, at worst)
    assert history[-1]["lr"] > 3e-3 * 1e-2 * 2  # stopped early: the schedule had not reached its floor
    best = max(i for i in range(4) if history[i]["perplexity"] == min(row["perplexity"] for row in history))
    assert [row["kept"] for row in history] == [i == best for i in range(4)]


def test_budget_keeps_the_best_validated_weights(llm, tmp_path, monkeypatch):
    """Validation measures scripted to be best at the second of 8 validations: those weights end in the student
    and in model.safetensors, and the log marks that row kept; a resume with another budget, or none, is refused
    (the schedule was fitted to the first)."""
    teacher, student, folder = llm
    StepClock(monkeypatch)
    compare, weights = tt.TokenReference.compare, []
    scripted = iter([5.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0])

    def scripted_compare(reference, model):
        result = compare(reference, model)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        return {**result, "perplexity": next(scripted)}

    monkeypatch.setattr(tt.TokenReference, "compare", scripted_compare)
    tuned = copy.deepcopy(student)
    val = sentences_of(teacher, folder / "val.txt")
    history = finetune(tuned, sentences_of(teacher, folder / "cal.txt"), val, budget_config(), teacher,
                       output=tmp_path, progress=False)
    assert len(history) == len(weights) == 8
    assert [row["kept"] for row in history] == [False, True] + [False] * 6
    assert not all(torch.equal(weights[1][k], weights[-1][k]) for k in weights[1])  # training went on after it
    saved = vbp.load_pruned(tmp_path / "model.safetensors").state_dict()
    for name, value in tuned.state_dict().items():
        assert torch.equal(value, weights[1][name]), name
        assert torch.equal(saved[name], weights[1][name]), name
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["kept"] for r in rows] == ["False", "True"] + ["False"] * 6 and rows[1]["perplexity"] == "3.0"
    for changes in ({"time_budget_s": 2 * BUDGET_S}, {"time_budget_s": None, "epochs": 3}):
        with pytest.raises(vbp.VbpError, match="resume with the same --time-budget"):
            finetune(copy.deepcopy(student), sentences_of(teacher, folder / "cal.txt"), val, budget_config(**changes),
                     teacher, output=tmp_path, resume=True, progress=False, accept_changes=True)


def test_budget_run_resumes_mid_epoch_to_the_same_weights_with_its_cached_teacher_text(llm, tmp_path, monkeypatch):
    """Interrupted after its second checkpoint (step 10, halfway through epoch 3) and resumed, a budget run with
    teacher text reaches the weights, log and stop of an uninterrupted one; the resumed run reads the texts from
    the folder (generating them again would fail here), and both runs wrote the same texts for the seed."""
    teacher, student, folder = llm
    data = sentences_of(teacher, folder / "cal.txt")
    config = budget_config(teacher_text=4)
    StepClock(monkeypatch)
    straight = copy.deepcopy(student)
    history = finetune(straight, data, None, config, teacher, output=tmp_path / "a", progress=False)

    write_epoch = finetune_module._write_epoch

    def write_then_die(output, *args):
        write_epoch(output, *args)
        if args[4][-1]["step"] == 10:  # the history
            raise KeyboardInterrupt

    StepClock(monkeypatch)
    monkeypatch.setattr(finetune_module, "_write_epoch", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(copy.deepcopy(student), data, None, config, teacher, output=tmp_path / "b", progress=False)
    monkeypatch.setattr(finetune_module, "_write_epoch", write_epoch)

    def no_generation(*args, **kwargs):
        raise AssertionError("the teacher text was generated again")

    monkeypatch.setattr(tt, "generate_texts", no_generation)
    StepClock(monkeypatch)
    resumed = copy.deepcopy(student)
    resumed_history = finetune(resumed, data, None, config, teacher, output=tmp_path / "b", resume=True,
                               progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["step"] for r in resumed_history] == [r["step"] for r in history]
    assert [r["train_loss"] for r in resumed_history] == [r["train_loss"] for r in history]
    assert resumed_history[-1]["stop"] == history[-1]["stop"] == "end of schedule"
    assert "general_token_kl" in history[-1]  # validated on the held-out teacher text
    cached = (tmp_path / "a" / tt.CACHE).read_text()
    assert cached == (tmp_path / "b" / tt.CACHE).read_text()
    assert len(cached.splitlines()) == 1 + 4 + tt.held_out_count(4)


def test_teacher_text_is_seeded_cached_and_from_held_out_prompts(llm, tmp_path, monkeypatch):
    teacher, _, _ = llm
    tokenizer = text.tokenizer_of(teacher)
    train, held = tt.teacher_texts(teacher, tokenizer, 6, seed=3)
    assert (train, held) == tt.teacher_texts(teacher, tokenizer, 6, seed=3)
    assert tt.teacher_texts(teacher, tokenizer, 6, seed=4)[0] != train
    assert len(train) == 6 and len(held) == tt.held_out_count(6) == 4
    train_prompts, held_prompts = tt.split_prompts(tt.distill_prompts())
    assert not set(train_prompts) & set(held_prompts) and len(held_prompts) == len(tt.distill_prompts()) // 8
    lower = lambda s: " ".join(tokenizer.tokenize(s))  # noqa: E731  (MiniLM's tokenizer lower-cases)
    for texts, prompts in ((train, train_prompts), (held, held_prompts)):
        for i, t in enumerate(texts):
            assert lower(t).startswith(lower(prompts[i % len(prompts)])) and len(t) > len(prompts[i % len(prompts)])
    cache = tmp_path / tt.CACHE
    assert tt.teacher_texts(teacher, tokenizer, 6, seed=3, cache=cache) == (train, held)
    monkeypatch.setattr(tt, "generate_texts", lambda *a, **k: ["regenerated"] * 12)
    assert tt.teacher_texts(teacher, tokenizer, 6, seed=3, cache=cache) == (train, held)  # read back
    assert tt.teacher_texts(teacher, tokenizer, 8, seed=3, cache=cache)[0] == ["regenerated"] * 8  # other settings


def test_default_teacher_text_fills_whole_batches_and_yields_to_a_tight_budget():
    assert [tt.auto_count(n) for n in (0, 10, 48, 49, 112, 113, 10_000)] == [48, 48, 48, 112, 112, 176, 240]
    assert all((n + tt.held_out_count(n)) % tt.BATCH == 0 for n in (48, 112, 176, 240))
    assert tt.auto_count(1000, budget_s=480, batch_s=50) == 112  # 2 batches fit a quarter of 8 minutes
    assert tt.auto_count(1000, budget_s=60, batch_s=50) == 0  # not one: none


def test_timing_the_first_steps_changes_nothing(llm, capsys):
    """A run that times its first steps (to say its projected duration) trains to the same weights as one that
    does not, and says the line after them."""
    teacher, student, folder = llm
    data = sentences_of(teacher, folder / "cal.txt")
    config = FinetuneConfig(epochs=1, batch_size=8, lr=3e-3, teacher_text=0)
    quiet, timed = copy.deepcopy(student), copy.deepcopy(student)
    finetune(quiet, data, None, config, teacher, progress=False)
    capsys.readouterr()
    finetune(timed, data, None, config, teacher, progress=True)
    for (name, a), b in zip(quiet.state_dict().items(), timed.state_dict().values()):
        assert torch.equal(a, b), name
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("projected: "))
    assert line.startswith("projected: 4 steps (1.00 epochs) x ") and "timed on steps 2-3: teacher forward " in line


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_finetune_command_projects_its_duration_and_leads_the_log_with_token_measures(llm, tmp_path, capsys):
    """One epoch with the default teacher text (48 texts and 16 held out, with a one-line note): the projected
    duration is said before the first step, and the log and printed lines lead with perplexity, token KL and
    top-1 agreement; the encoders' measures come last."""
    _, _, folder = llm
    code, out, err = run_cli(
        capsys, "finetune", "--pruned", str(folder / "p.safetensors"), "--data", str(folder / "cal.txt"),
        "--val-data", str(folder / "val.txt"), "--epochs", "1", "--batch-size", "8", "--output", str(tmp_path / "ft"),
    )
    assert code == 0, err
    lines = err.splitlines()
    assert any(line.startswith("teacher text: ") and "the default for causal LMs" in line for line in lines)
    projected = next(i for i, line in enumerate(lines) if line.startswith("projected: "))
    first_step = next(i for i, line in enumerate(lines) if line.startswith("step "))
    assert projected < first_step
    assert lines[projected].startswith("projected: 10 steps (1.00 epochs) x ")  # (32 + 48) / 8
    assert "teacher forward" in lines[projected] and "peak memory" in lines[projected]
    assert lines[first_step].startswith("step 10/10 (epoch 1/1): perplexity ")
    header = (tmp_path / "ft" / "log.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["epoch", "step", "perplexity", "reference_perplexity", "token_kl", "top1_agreement"]
    assert header.index("cosine") > header.index("train_loss")
    assert len((tmp_path / "ft" / tt.CACHE).read_text().splitlines()) == 1 + 48 + 16
    assert json.loads(out.splitlines()[0])["step"] == 10


def test_finetune_command_with_a_time_budget_on_the_real_clock(llm, tmp_path, capsys):
    """`vbp finetune --time-budget` as a user runs it: the fitted plan is said, the run ends inside the budget
    (plus one step), and model.safetensors holds the kept row's weights: its perplexity is the logged one."""
    teacher, _, folder = llm
    budget_min = 0.4
    code, out, err = run_cli(
        capsys, "finetune", "--pruned", str(folder / "p.safetensors"), "--data", str(folder / "cal.txt"),
        "--val-data", str(folder / "val.txt"), "--time-budget", str(budget_min), "--batch-size", "8",
        "--teacher-text", "0", "--output", str(tmp_path / "ft"),
    )
    assert code == 0, err
    assert any(line.startswith(f"time budget {budget_min} min: ") for line in err.splitlines())
    log = json.loads((tmp_path / "ft" / "log.json").read_text())
    last, kept = log[-1], [row for row in log if row["kept"]]
    assert last["stop"] in ("time budget", "end of schedule") and len(kept) == 1
    step_s = max(row["seconds"] / (row["step"] - (log[i - 1]["step"] if i else 0)) for i, row in enumerate(log))
    assert last["elapsed"] <= budget_min * 60 + step_s + 1.0  # a second for the estimates of validation and writes
    assert json.loads(out.splitlines()[0]) == kept[0]
    model = vbp.load_pruned(tmp_path / "ft" / "model.safetensors")
    batches = text.text_loader(text.read_sentences(folder / "val.txt"), text.tokenizer_of(teacher), 8)
    assert text.perplexity(model, batches) == pytest.approx(kept[0]["perplexity"], rel=1e-5)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--time-budget", "0"], "the time budget must be a positive number of minutes"),
        (["--time-budget", "-2"], "the time budget must be a positive number of minutes"),
        (["--teacher-text", "-1"], "--teacher-text is a number of texts"),
        (["--teacher-text", "4", "--no-kd"], "give one of them"),
    ],
)
def test_finetune_command_refuses_what_makes_no_sense_for_a_causal_lm(llm, tmp_path, capsys, extra, message):
    _, _, folder = llm
    args = ["finetune", "--pruned", str(folder / "p.safetensors"), "--data", str(folder / "cal.txt"), "--batch-size",
            "8", "--output", str(tmp_path / "ft"), *extra]
    code, _, err = run_cli(capsys, *args, *([] if "--teacher-text" in extra else ["--teacher-text", "0"]))
    assert code == 2 and message in err.strip().splitlines()[-1]  # said in one line


def test_teacher_text_is_refused_for_models_that_cannot_write(digits_files, tmp_path, capsys):
    """An image model, and a text encoder (a tiny BERT pruned by half), have no text to mix in."""
    code, _, err = run_cli(capsys, "finetune", "--pruned", str(digits_files / "pruned.safetensors"), "--data",
                           "digits", "--teacher-text", "8", "--output", str(tmp_path / "a"))
    assert code == 2 and "--teacher-text means nothing for --data digits" in err
    _, tokenizer = minilm.load_minilm()
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)).eval()
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    encoder = vbp.create_model(f"hf:{tmp_path / 'bert'}")
    sentences = short_sentences(16)
    stats = vbp.calibrate(encoder, text.text_loader(sentences, tokenizer, 16), progress=False)
    vbp.save_pruned(vbp.prune(copy.deepcopy(encoder), vbp.select(stats, 0.5), stats), tmp_path / "p.safetensors")
    (tmp_path / "cal.txt").write_text("\n".join(sentences) + "\n")
    code, _, err = run_cli(capsys, "finetune", "--pruned", str(tmp_path / "p.safetensors"), "--data",
                           str(tmp_path / "cal.txt"), "--teacher-text", "8", "--output", str(tmp_path / "b"))
    assert code == 2 and "--teacher-text means nothing for hf:" in err and "only a causal LM" in err


def test_budget_and_teacher_text_under_torchrun_with_two_gloo_processes(llm, tmp_path):
    """Rank 0 writes the teacher text and the plan, every rank stops at the same step (a collective per step),
    and the kept row is rank 0's best validated one."""
    from conftest import run_torchrun

    _, _, folder = llm
    done = run_torchrun(29531, "finetune", "--pruned", str(folder / "p.safetensors"), "--data", str(folder / "cal.txt"),
                        "--val-data", str(folder / "val.txt"), "--time-budget", "0.4", "--teacher-text", "4",
                        "--batch-size", "4", "--output", str(tmp_path / "ft"), "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "time budget 0.4 min: " in done.stderr
    log = json.loads((tmp_path / "ft" / "log.json").read_text())
    assert log[-1]["stop"] in ("time budget", "end of schedule") and sum(row["kept"] for row in log) == 1
    assert len((tmp_path / "ft" / tt.CACHE).read_text().splitlines()) == 1 + 4 + 4


def test_a_budget_too_small_to_train_ends_with_a_warning(llm, tmp_path, capsys):
    """A budget spent by the first step: the run stops there (inside the budget plus that step), keeps what it
    has (trained at the warm-up's starting learning rate, as the log says) and says to give more time."""
    _, _, folder = llm
    code, out, err = run_cli(
        capsys, "finetune", "--pruned", str(folder / "p.safetensors"), "--data", str(folder / "cal.txt"),
        "--time-budget", "0.0005", "--teacher-text", "0", "--batch-size", "8", "--output", str(tmp_path / "ft"),
    )
    assert code == 0, err
    assert "warning: the 0.0 min time budget left no time to train after timing the first step " in err
    log = json.loads((tmp_path / "ft" / "log.json").read_text())
    assert [(row["step"], row["stop"]) for row in log] == [(1, "time budget")]
    assert log[0]["lr"] == pytest.approx(3e-4 * 1e-2)
    assert (tmp_path / "ft" / "model.safetensors").is_file()
