"""Prediction and per-task metrics.

seq2seq and decoder models use **rank classification**: every candidate answer
(``task.candidates()``: the label words, or ``"0.0"`` … ``"5.0"`` for regression) is scored
by the *summed* log-likelihood of its tokens (eos included, exactly the tokens trained on)
given the input, not length-normalised: the sum is the model's probability of the whole
answer. The prediction is the best candidate; ``probabilities`` is the softmax over the
candidates' scores. Rows sent through the model are (input, candidate) pairs, so
``batch_size`` bounds pairs per forward pass.

Encoder models are task-head models called as
``model(input_ids=, attention_mask=, task_ids=)`` returning ``.logits`` [B, max_num_labels]:
classification logits (``-inf`` beyond the task's label count) or the score in column 0.

Every model call passes ``task_ids=`` (the adapter pops it in a pre-hook).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from more_cli.data import (
    IGNORE_INDEX,
    Collator,
    Family,
    answer_ids,
    encode_examples,
    pad_token_id,
    prompt_ids,
    text_to_text_feature,
)
from more_cli.tasks import Example, Task, score_target


@dataclass(frozen=True)
class Prediction:
    """``label``: class id or score; ``text``: label word or score string;
    ``probabilities``: label word → probability (classification only)."""

    label: int | float
    text: str
    probabilities: dict[str, float] | None = None


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Task,
    examples: Sequence[Example],
    family: Family,
    batch_size: int,
    device: torch.device | str,
    *,
    task_id: int,
    max_source_length: int = 128,
    max_target_length: int = 8,
) -> list[Prediction]:
    """Predict ``examples`` of ``task``; ``task_id`` is the task's index in the run."""
    was_training = model.training
    model.eval()
    try:
        if family == "encoder":
            return _predict_with_head(
                model, tokenizer, task, examples, batch_size, device, task_id, max_source_length
            )
        scores = candidate_scores(
            model,
            tokenizer,
            family,
            [prompt_ids(tokenizer, example.text, max_source_length) for example in examples],
            [answer_ids(tokenizer, c, family, max_target_length) for c in task.candidates()],
            batch_size,
            device,
            task_id,
        )
        return [prediction_from_candidate_scores(task, row) for row in scores]
    finally:
        model.train(was_training)


def candidate_scores(
    model: torch.nn.Module,
    tokenizer: Any,
    family: Family,
    prompts: Sequence[list[int]],
    answers: Sequence[list[int]],
    batch_size: int,
    device: torch.device | str,
    task_id: int,
) -> torch.Tensor:
    """Summed log-likelihood of every answer given every prompt: a [prompts, answers] tensor."""
    collator = Collator(pad_token_id(tokenizer), family)
    pairs = [(p, a) for p in range(len(prompts)) for a in range(len(answers))]
    sums = []
    for start in range(0, len(pairs), batch_size):
        features = [
            {**text_to_text_feature(prompts[p], answers[a], family), "task_id": task_id}
            for p, a in pairs[start : start + batch_size]
        ]
        batch = {key: value.to(device) for key, value in collator(features).items()}
        sums.append(sequence_log_likelihood(model, batch, family))
    return torch.cat(sums).view(len(prompts), len(answers)).cpu()


def sequence_log_likelihood(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], family: Family
) -> torch.Tensor:
    labels = batch["labels"]
    if family == "seq2seq":
        logits = model(**batch).logits
    else:  # position i predicts token i + 1
        inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "task_ids")}
        logits = model(**inputs).logits[:, :-1]
        labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    # log-softmax only where answer tokens are, not over the whole [B, L, V] tensor
    picked = torch.log_softmax(logits[mask].float(), dim=-1)
    token_scores = picked.gather(-1, labels[mask].unsqueeze(-1)).squeeze(-1)
    rows = mask.nonzero()[:, 0]
    return torch.zeros(len(labels), device=logits.device).index_add_(0, rows, token_scores)


def prediction_from_candidate_scores(task: Task, scores: torch.Tensor) -> Prediction:
    best = int(scores.argmax())
    candidates = task.candidates()
    if task.is_regression:
        return Prediction(task.candidate_value(best), candidates[best])
    probabilities = torch.softmax(scores, dim=-1).tolist()
    return Prediction(best, candidates[best], dict(zip(candidates, probabilities, strict=True)))


def _predict_with_head(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Task,
    examples: Sequence[Example],
    batch_size: int,
    device: torch.device | str,
    task_id: int,
    max_source_length: int,
) -> list[Prediction]:
    features = encode_examples(examples, tokenizer, "encoder", max_source_length, 1)
    collator = Collator(pad_token_id(tokenizer), "encoder")
    predictions = []
    for start in range(0, len(features), batch_size):
        chunk = [{**f, "task_id": task_id} for f in features[start : start + batch_size]]
        batch = {key: value.to(device) for key, value in collator(chunk).items()}
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            task_ids=batch["task_ids"],
        ).logits.float()
        for row in logits.cpu():
            predictions.append(prediction_from_head_logits(task, row))
    return predictions


def prediction_from_head_logits(task: Task, logits: torch.Tensor) -> Prediction:
    if task.is_regression:
        score = float(logits[0])
        return Prediction(score, score_target(score))
    probabilities = torch.softmax(logits[: task.num_labels], dim=-1)
    best = int(probabilities.argmax())
    words = task.label_words or []
    return Prediction(best, words[best], dict(zip(words, probabilities.tolist(), strict=True)))
