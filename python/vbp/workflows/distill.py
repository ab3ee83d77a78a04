"""Distillation from the unpruned teacher, with the loss that what the model outputs calls for:

    logits  [B, classes] (image classifiers, HF sequence classifiers): KL at a temperature, + label loss
            when the data has labels (`kd_loss`)
    tokens  [B, T, vocab] (causal and masked LMs): token-level KL over real tokens (`token_kl_loss`)
    hidden  [B, T, H] (encoders, AutoModel folders, backbones): MSE or cosine on the last hidden state over
            real tokens (`hidden_loss`), optionally on the mean-pooled embedding too (`pooled_loss`)

and, for any Hugging Face model, optionally every block's output as well (`layers`). Real tokens are those
the attention mask marks; images have no mask (every position counts).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import VbpError

TARGETS = ("logits", "tokens", "hidden")
HIDDEN_LOSSES = ("mse", "cosine")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)).

    logits: [B, classes]; labels: [B] class indices, or None (unlabelled data: the KL term alone). The T^2
    factor keeps the soft term's gradient scale independent of T (Hinton et al., 2015). KL is averaged over
    the batch.
    """
    soft = soft_kl(student_logits, teacher_logits, temperature).mean()
    if labels is None:
        return soft
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if alpha == 0:
        return hard
    return (1 - alpha) * hard + alpha * soft


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)) over the last dimension: logits [..., V] -> [...]."""
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="none",
        log_target=True,
    )
    return temperature * temperature * kl.sum(-1)


def _mean_over(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values [B, T] over the positions mask [B, T] (bool) marks."""
    return values.masked_select(mask).mean()


def token_kl_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """`soft_kl` per token [B, T, vocab], averaged over real tokens. Only the real tokens' logits enter the
    softmaxes: over a vocabulary of tens of thousands, padding would cost what a real token does."""
    return soft_kl(student_logits[mask], teacher_logits[mask], temperature).mean()


def hidden_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance of hidden states [B, T, H] over real tokens: "mse" is the squared error relative to the
    teacher's mean square (so that blocks of any scale weigh alike), "cosine" the mean of 1 - cos per token."""
    if kind == "cosine":
        return _mean_over(1 - F.cosine_similarity(student, teacher, dim=-1), mask)
    error = _mean_over((student - teacher).square().mean(-1), mask)
    return error / _mean_over(teacher.square().mean(-1), mask).clamp_min(torch.finfo(teacher.dtype).tiny)


def pooled_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - cos of the mean-pooled embeddings [B, H] (the sentence embedding), averaged over the batch."""
    weights = mask.unsqueeze(-1).to(student.dtype)
    pooled = lambda h: (h * weights).sum(1) / weights.sum(1).clamp_min(1)  # noqa: E731
    return (1 - F.cosine_similarity(pooled(student), pooled(teacher), dim=-1)).mean()


def output_target(output) -> str:
    """What a model's output is, as one of TARGETS: a tensor or `logits` [B, C] are logits, `logits`
    [B, T, V] are tokens, an output with a `last_hidden_state` and no logits is hidden states."""
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if logits is not None and (logits.dim() == 2 or (logits.dim() == 3 and logits is not output)):
        return "logits" if logits.dim() == 2 else "tokens"
    if logits is None and getattr(output, "last_hidden_state", None) is not None:
        return "hidden"
    shape = f" of shape {tuple(logits.shape)}" if logits is not None else ""
    raise VbpError(
        f"cannot distil a model whose output is a {type(output).__name__}{shape}: vbp fine-tunes classifiers "
        "(logits [B, classes]), language models (token logits) and encoders (a last hidden state)"
    )


@dataclass(frozen=True)
class Distillation:
    """The distillation loss of one fine-tuning run.

    target: one of TARGETS (see `output_target`). alpha, temperature, label_smoothing: for logits with labels
    and the KL terms. hidden: "mse" or "cosine" on hidden states. pooled: weight of `pooled_loss` (hidden
    target). layers: also match every block's output but the last, which the main loss covers (Hugging Face
    models; each weighted as the main loss).
    """

    target: str
    alpha: float = 0.5
    temperature: float = 2.0
    label_smoothing: float = 0.0
    hidden: str = "mse"
    pooled: float = 0.0
    layers: bool = False

    def loss(self, student, teacher, mask: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        """The loss of a batch from the student's and the teacher's outputs; mask: [B, T] bool real tokens."""
        if self.target == "logits":
            logits = lambda out: (out if isinstance(out, torch.Tensor) else out.logits).float()  # noqa: E731
            loss = kd_loss(logits(student), logits(teacher), labels, self.alpha, self.temperature, self.label_smoothing)
        elif self.target == "tokens":
            loss = token_kl_loss(student.logits.float(), teacher.logits.float(), mask, self.temperature)
        else:
            s, t = student.last_hidden_state.float(), teacher.last_hidden_state.float()
            loss = hidden_loss(s, t, mask, self.hidden)
            if self.pooled:
                loss = loss + self.pooled * pooled_loss(s, t, mask)
        if self.layers:  # hidden_states[0] is the embedding output, untouched by pruning
            pairs = list(zip(student.hidden_states[1:-1], teacher.hidden_states[1:-1]))
            loss = loss + sum(hidden_loss(s.float(), t.float(), mask, self.hidden) for s, t in pairs)
        return loss
