"""Tokenization per family, collation, and the multi-task batch sampler."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from more_cli.data import (
    IGNORE_INDEX,
    Collator,
    FeatureCache,
    MultiTaskBatchSampler,
    MultiTaskDataset,
    encode_examples,
    eval_loader,
    task_probabilities,
    train_loader,
)
from more_cli.recipe import TaskConfig
from more_cli.tasks import Example, get_task
from tests.helpers.tiny import tiny_tokenizer

EXAMPLES = [
    Example("rte sentence1: the cat sentence2: a cat", "entailment", 0),
    Example("rte sentence1: the good story was not great sentence2: it was", "not entailment", 1),
]


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_seq2seq_features_and_batch():
    tokenizer = tiny_tokenizer()
    features = encode_examples(EXAMPLES, tokenizer, "seq2seq", 128, 8)
    assert features[0]["labels"] == _ids(tokenizer, "entailment") + [tokenizer.eos_token_id]
    batch = Collator(0, "seq2seq")([{**f, "task_id": 3} for f in features])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "task_ids"}
    assert batch["task_ids"].tolist() == [3, 3]
    short = len(features[0]["input_ids"])
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (
        batch["input_ids"].shape[1] - short
    )
    answers = [f["labels"] for f in features]
    width = max(map(len, answers))
    assert batch["labels"].tolist() == [a + [IGNORE_INDEX] * (width - len(a)) for a in answers]


def test_decoder_loss_only_on_answer_tokens():
    tokenizer = tiny_tokenizer(add_eos=False)
    features = encode_examples(EXAMPLES, tokenizer, "decoder", 128, 8)
    batch = Collator(0, "decoder")([{**f, "task_id": 0} for f in features])
    for row, example in enumerate(EXAMPLES):
        prompt = _ids(tokenizer, example.text)
        answer = _ids(tokenizer, example.target) + [tokenizer.eos_token_id]
        length = len(prompt) + len(answer)
        assert batch["input_ids"][row, :length].tolist() == prompt + answer
        labels = batch["labels"][row].tolist()
        assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
        assert labels[len(prompt) : length] == answer
        assert all(label == IGNORE_INDEX for label in labels[length:])
        assert batch["attention_mask"][row].sum() == length


def test_encoder_labels_are_floats():
    tokenizer = tiny_tokenizer()
    examples = [*EXAMPLES, Example("stsb sentence1: a sentence2: b", "3.8", 3.77)]
    features = encode_examples(examples, tokenizer, "encoder", 128, 8)
    batch = Collator(0, "encoder")([{**f, "task_id": i} for i, f in enumerate(features)])
    assert batch["labels"].dtype == torch.float
    assert batch["labels"].tolist() == pytest.approx([0.0, 1.0, 3.77])
    assert batch["task_ids"].dtype == torch.long


def test_truncation():
    tokenizer = tiny_tokenizer()
    [feature] = encode_examples(EXAMPLES[1:], tokenizer, "seq2seq", 8, 1)
    assert len(feature["input_ids"]) == 8 and feature["input_ids"][-1] == tokenizer.eos_token_id
    [decoder] = encode_examples(EXAMPLES[1:], tiny_tokenizer(add_eos=False), "decoder", 8, 2)
    assert len(decoder["input_ids"]) == 10 and decoder["labels"].count(IGNORE_INDEX) == 8


def test_feature_cache_tokenizes_once(tmp_path):
    task = get_task(TaskConfig(name="demo_topic"))
    cache = FeatureCache(tiny_tokenizer(), "encoder", 32, 4)
    assert cache.features(task, "validation") is cache.features(task, "validation")


def test_dataset_and_loaders():
    per_task = [[{"input_ids": [5, 6], "labels": 1.0}] * 3, [{"input_ids": [7], "labels": 0.0}] * 2]
    dataset = MultiTaskDataset(per_task)
    assert len(dataset) == 5 and dataset[3]["task_id"] == 1 and dataset[2]["task_id"] == 0
    sampler = MultiTaskBatchSampler(dataset.sizes, batch_size=2, seed=0)
    batches = list(itertools.islice(train_loader(dataset, sampler, Collator(0, "encoder")), 4))
    assert all(len(set(b["task_ids"].tolist())) == 1 for b in batches)
    [batch] = list(eval_loader(per_task[1], 1, Collator(0, "encoder"), batch_size=8))
    assert batch["task_ids"].tolist() == [1, 1] and batch["input_ids"].tolist() == [[7], [7]]


SIZES = [100, 400, 1500]


def _task_of(index: int) -> int:
    return int(np.searchsorted(np.cumsum(SIZES), index, side="right"))


def test_probabilities():
    balanced = task_probabilities(SIZES, "balanced")
    expected = np.exp(np.array(SIZES) / sum(SIZES))
    assert balanced == pytest.approx(expected / expected.sum())
    assert task_probabilities(SIZES, "proportional") == pytest.approx([0.05, 0.2, 0.75])
    temperature = np.sqrt(SIZES) / np.sqrt(SIZES).sum()
    assert task_probabilities(SIZES, "temperature", 2.0) == pytest.approx(temperature)
    assert task_probabilities(SIZES, "uniform") == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("sampling", ["balanced", "proportional", "temperature", "uniform"])
def test_single_task_batches_follow_probabilities(sampling):
    sampler = MultiTaskBatchSampler(SIZES, batch_size=4, sampling=sampling, seed=1)
    tasks = []
    for batch in itertools.islice(sampler, 3000):
        batch_tasks = {_task_of(i) for i in batch}
        assert len(batch_tasks) == 1
        tasks.append(batch_tasks.pop())
    frequencies = np.bincount(tasks, minlength=3) / len(tasks)
    assert frequencies == pytest.approx(sampler.probabilities, abs=0.03)


def test_mixed_batches_mix_tasks_proportionally():
    sampler = MultiTaskBatchSampler(SIZES, batch_size=16, sampling="mixed", seed=1)
    batches = list(itertools.islice(sampler, 500))
    assert sum(len({_task_of(i) for i in b}) > 1 for b in batches) > 400
    counts = Counter(_task_of(i) for b in batches for i in b)
    assert [counts[t] / 8000 for t in range(3)] == pytest.approx([0.05, 0.2, 0.75], abs=0.02)


def test_each_pass_over_a_task_covers_it_once():
    sampler = MultiTaskBatchSampler([10], batch_size=3, seed=0)
    drawn = [i for b in itertools.islice(sampler, 10) for i in b]
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:20]) == list(range(10))
    assert drawn[:10] != drawn[10:20]  # reshuffled each pass


def test_deterministic_given_seed():
    def first(seed):
        return list(itertools.islice(MultiTaskBatchSampler(SIZES, 8, "mixed", seed=seed), 50))

    assert first(3) == first(3) and first(3) != first(4)


@pytest.mark.parametrize("sampling", ["balanced", "mixed"])
def test_resume_equals_uninterrupted(sampling):
    uninterrupted = list(itertools.islice(MultiTaskBatchSampler(SIZES, 8, sampling, seed=5), 60))
    sampler = MultiTaskBatchSampler(SIZES, 8, sampling, seed=5)
    head = list(itertools.islice(iter(sampler), 25))
    state = sampler.state_dict()
    resumed = MultiTaskBatchSampler(SIZES, 8, sampling, seed=5)
    resumed.load_state_dict(state)
    assert head + list(itertools.islice(iter(resumed), 35)) == uninterrupted


def test_state_after_consumed_batches_despite_prefetch():
    uninterrupted = list(itertools.islice(MultiTaskBatchSampler(SIZES, 8, seed=5), 30))
    sampler = MultiTaskBatchSampler(SIZES, 8, seed=5)
    list(itertools.islice(iter(sampler), 20))  # a loader prefetched 20, the loop used 12
    resumed = MultiTaskBatchSampler(SIZES, 8, seed=5)
    resumed.load_state_dict(sampler.state_dict(consumed=12))
    assert list(itertools.islice(iter(resumed), 18)) == uninterrupted[12:]


def test_state_from_other_data_is_refused():
    state = MultiTaskBatchSampler(SIZES, 8, seed=5).state_dict()
    with pytest.raises(ValueError, match="different data or seed"):
        MultiTaskBatchSampler([1, 2, 3], 8, seed=5).load_state_dict(state)


def test_sharding_splits_the_global_sequence():
    global_batches = list(itertools.islice(MultiTaskBatchSampler(SIZES, 4, "mixed", seed=2), 30))
    shards = [
        list(itertools.islice(MultiTaskBatchSampler(SIZES, 4, "mixed", 2.0, 2, 3, rank), 10))
        for rank in range(3)
    ]
    for rank, shard in enumerate(shards):
        assert shard == global_batches[rank::3]
    assert not set(map(tuple, shards[0])) & set(map(tuple, shards[1]))
