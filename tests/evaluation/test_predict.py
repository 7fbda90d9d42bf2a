"""Rank classification and head-based prediction on tiny models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from more_cli.data import answer_ids, prompt_ids
from more_cli.evaluation.predict import candidate_scores, predict
from more_cli.recipe import TaskConfig
from more_cli.tasks import get_task
from tests.helpers.tiny import accept_task_ids, tiny_gpt2, tiny_llama, tiny_t5, tiny_tokenizer


def _task(name: str, count: int = 3):
    return get_task(TaskConfig(name=name, max_eval_samples=count))


def _brute_force_score(model, family, prompt, answer) -> float:
    """Log-likelihood of one answer, one sequence at a time, without padding."""
    with torch.no_grad():
        if family == "seq2seq":
            out = model(input_ids=torch.tensor([prompt]), labels=torch.tensor([answer]))
            return -out.loss.item() * len(answer)
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
        log_probs = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
        return log_probs.gather(-1, torch.tensor(answer)[:, None]).sum().item()


@pytest.mark.parametrize(
    ("family", "build", "add_eos"),
    [("seq2seq", tiny_t5, True), ("decoder", tiny_llama, False), ("decoder", tiny_gpt2, False)],
)
def test_rank_classification_matches_brute_force(family, build, add_eos):
    model, tokenizer = accept_task_ids(build()), tiny_tokenizer(add_eos=add_eos)
    task = _task("demo_topic")
    examples = task.load_split("validation")
    predictions = predict(model, tokenizer, task, examples, family, 5, "cpu", task_id=0)
    for example, prediction in zip(examples, predictions, strict=True):
        prompt = prompt_ids(tokenizer, example.text, 128)
        scores = torch.tensor(
            [
                _brute_force_score(model, family, prompt, answer_ids(tokenizer, c, family, 8))
                for c in task.candidates()
            ]
        )
        assert prediction.label == int(scores.argmax())
        assert prediction.text == task.label_words[prediction.label]
        expected = torch.softmax(scores, dim=-1).tolist()
        assert list(prediction.probabilities.values()) == pytest.approx(expected, abs=1e-4)
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0)


def test_scores_do_not_depend_on_batching():
    model, tokenizer = accept_task_ids(tiny_t5()), tiny_tokenizer()
    prompts = [prompt_ids(tokenizer, t, 128) for t in ["the team", "a very long report about it"]]
    answers = [answer_ids(tokenizer, a, "seq2seq", 8) for a in ["sports", "not entailment"]]
    one = candidate_scores(model, tokenizer, "seq2seq", prompts, answers, 1, "cpu", 0)
    four = candidate_scores(model, tokenizer, "seq2seq", prompts, answers, 4, "cpu", 0)
    assert one.shape == (2, 2) and torch.allclose(one, four, atol=1e-5)


def test_regression_by_rank_classification():
    model, tokenizer = accept_task_ids(tiny_t5()), tiny_tokenizer()
    task = _task("demo_similarity", 2)
    predictions = predict(
        model, tokenizer, task, task.load_split("val_test"), "seq2seq", 26, "cpu", task_id=1
    )
    for prediction in predictions:
        assert prediction.text in task.candidates() and prediction.probabilities is None
        assert prediction.label == float(prediction.text)


class HeadStandIn(torch.nn.Module):
    """The encoder head contract: logits [B, max_labels], -inf beyond a task's labels."""

    def __init__(self, num_labels: list[int]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.EmbeddingBag(1000, max(num_labels), mode="sum")
        self.num_labels = num_labels
        self.seen_task_ids: list[int] = []

    def forward(self, input_ids, attention_mask, task_ids):
        self.seen_task_ids += task_ids.tolist()
        logits = self.embed(input_ids, per_sample_weights=attention_mask.float())
        columns = torch.arange(logits.shape[1])
        limit = torch.tensor(self.num_labels)[task_ids]
        return SimpleNamespace(logits=logits.masked_fill(columns >= limit[:, None], float("-inf")))


def test_encoder_head_predictions():
    topic, similarity = _task("demo_topic", 4), _task("demo_similarity", 4)
    model, tokenizer = HeadStandIn([4, 1]), tiny_tokenizer()
    examples = topic.load_split("validation")
    predictions = predict(model, tokenizer, topic, examples, "encoder", 3, "cpu", task_id=0)
    logits = model(
        **_encoded(tokenizer, examples), task_ids=torch.zeros(4, dtype=torch.long)
    ).logits
    assert [p.label for p in predictions] == logits.argmax(-1).tolist()
    assert all(sum(p.probabilities.values()) == pytest.approx(1.0) for p in predictions)
    scores = predict(
        model,
        tokenizer,
        similarity,
        similarity.load_split("validation"),
        "encoder",
        3,
        "cpu",
        task_id=1,
    )
    assert all(isinstance(p.label, float) and p.probabilities is None for p in scores)
    assert set(model.seen_task_ids) == {0, 1}


def _encoded(tokenizer, examples):
    batch = tokenizer([e.text for e in examples], padding=True, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
