"""Tokenization per model family, multi-task batch sampling and collation.

Batches (dicts of tensors) always carry ``task_ids`` (LongTensor [B], index into the run's
task list) next to ``input_ids`` and ``attention_mask`` (right padding everywhere), and:

- ``seq2seq``: ``labels`` [B, T] = answer token ids (tokenizer's eos included), padding -100.
- ``decoder``: ``labels`` [B, L] aligned with ``input_ids`` = -100 on the prompt and on
  padding, the answer ids (+ eos) elsewhere: the loss falls on the answer only.
- ``encoder``: ``labels`` [B] float = class id or score; the task head decides which.

Over-long inputs are truncated to ``max_source_length`` tokens (the end of the text is
dropped), answers to ``max_target_length`` tokens.

Sampling (:class:`MultiTaskBatchSampler`) is an endless, seeded sequence of *global* batches;
with ``num_replicas`` processes, process ``rank`` takes global batches ``rank``,
``rank + num_replicas``, … so processes never share a batch and together follow the same
sequence whatever their number. Processes draw a round of ``num_replicas`` batches at a time,
so after each yielded batch all of them hold the same sampler state (a checkpoint written by
one process resumes every process). Shard here and do not let accelerate shard the loader
again.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from more_cli.tasks import Example, Task

Family = Literal["seq2seq", "decoder", "encoder"]
Sampling = Literal["balanced", "proportional", "temperature", "uniform", "mixed"]
Feature = dict[str, Any]
"""One tokenized example: ``input_ids`` (list[int]) and ``labels`` (list[int] or float)."""

IGNORE_INDEX = -100


def prompt_ids(tokenizer: Any, text: str, max_length: int) -> list[int]:
    """Token ids of an input (with the tokenizer's special tokens), truncated to max_length."""
    return tokenizer(text, truncation=True, max_length=max_length)["input_ids"]


def answer_ids(tokenizer: Any, target: str, family: Family, max_length: int) -> list[int]:
    """Token ids of an answer as the model must produce it.

    seq2seq: the tokenizer's own encoding (T5 appends eos). decoder: ``" " + target`` without
    special tokens, then eos, so that the prompt and answer join with a space.
    """
    if family == "seq2seq":
        return tokenizer(target, truncation=True, max_length=max_length)["input_ids"]
    ids = tokenizer(" " + target, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is None:
        return ids[:max_length]
    return ids[: max_length - 1] + [tokenizer.eos_token_id]


def encode_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    family: Family,
    max_source_length: int,
    max_target_length: int,
) -> list[Feature]:
    """Tokenize examples into features for ``family`` (see the module docstring)."""
    features = []
    for example in examples:
        source = prompt_ids(tokenizer, example.text, max_source_length)
        if family == "encoder":
            features.append({"input_ids": source, "labels": float(example.label)})
            continue
        answer = answer_ids(tokenizer, example.target, family, max_target_length)
        features.append(text_to_text_feature(source, answer, family))
    return features


def text_to_text_feature(source: list[int], answer: list[int], family: Family) -> Feature:
    """seq2seq: input = source, labels = answer; decoder: source + answer, loss on answer."""
    if family == "seq2seq":
        return {"input_ids": source, "labels": answer}
    return {"input_ids": source + answer, "labels": [IGNORE_INDEX] * len(source) + answer}


class FeatureCache:
    """Tokenizes each (task, split) once and keeps the features in memory."""

    def __init__(
        self, tokenizer: Any, family: Family, max_source_length: int, max_target_length: int
    ) -> None:
        self.tokenizer = tokenizer
        self.family = family
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self._features: dict[tuple[str, str], list[Feature]] = {}

    def features(self, task: Task, split: str) -> list[Feature]:
        key = (task.name, split)
        if key not in self._features:
            self._features[key] = encode_examples(
                task.load_split(split),
                self.tokenizer,
                self.family,
                self.max_source_length,
                self.max_target_length,
            )
        return self._features[key]


class Collator:
    """Pads features (right padding) into a batch; each feature carries ``task_id``."""

    def __init__(self, pad_token_id: int, family: Family) -> None:
        self.pad_token_id = pad_token_id
        self.family = family

    def __call__(self, features: Sequence[Feature]) -> dict[str, torch.Tensor]:
        input_ids = [feature["input_ids"] for feature in features]
        batch = {
            "input_ids": _pad(input_ids, self.pad_token_id),
            "attention_mask": _pad([[1] * len(ids) for ids in input_ids], 0),
            "task_ids": torch.tensor([feature["task_id"] for feature in features]),
        }
        labels = [feature["labels"] for feature in features]
        if self.family == "encoder":
            batch["labels"] = torch.tensor(labels, dtype=torch.float)
        else:
            batch["labels"] = _pad(labels, IGNORE_INDEX)
        return batch


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id (LLaMA, GPT-2 have no pad token)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise ValueError("the tokenizer has neither a pad nor an eos token")


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([list(row) + [value] * (width - len(row)) for row in rows])


class MultiTaskDataset(Dataset):
    """The features of several tasks behind one global index; items get their ``task_id``.

    Global index = offset of the task + index within the task, tasks in run order.
    """

    def __init__(self, per_task: Sequence[Sequence[Feature]]) -> None:
        self.per_task = per_task
        self.sizes = [len(features) for features in per_task]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> Feature:
        task_id = bisect.bisect_right(self.offsets, index) - 1
        return {**self.per_task[task_id][index - self.offsets[task_id]], "task_id": task_id}


def task_probabilities(
    sizes: Sequence[int], sampling: Sampling, temperature: float = 2.0
) -> np.ndarray:
    """p_t per sampling strategy (``mixed`` draws samples with the proportional p_t)."""
    sizes_array = np.asarray(sizes, dtype=np.float64)
    if sampling == "balanced":  # paper: softmax(|D_t| / sum |D|)
        logits = sizes_array / sizes_array.sum()
        weights = np.exp(logits - logits.max())
    elif sampling in ("proportional", "mixed"):
        weights = sizes_array
    elif sampling == "temperature":
        weights = sizes_array ** (1.0 / temperature)
    elif sampling == "uniform":
        weights = np.ones_like(sizes_array)
    else:
        raise ValueError(f"unknown sampling {sampling!r}")
    return weights / weights.sum()


class MultiTaskBatchSampler:
    """Endless, seeded, resumable batches of global indices into a :class:`MultiTaskDataset`.

    Each task is read through its own stream: a permutation per pass (seeded by seed, task and
    pass number), so every sample is seen once per pass over that task. Global batch ``b``
    picks its task (or, for ``mixed``, each sample's task) with an RNG seeded by (seed, b).
    The state is therefore a few integers: batches drawn, and each task's pass and position.

    DataLoader workers prefetch batches, so the sampler runs ahead of the training loop; pass
    the number of batches the loop has *consumed* to :meth:`state_dict` to save the state
    just after them (the last ``HISTORY`` states are kept).
    """

    HISTORY = 1024

    def __init__(
        self,
        task_sizes: Sequence[int],
        batch_size: int,
        sampling: Sampling = "balanced",
        temperature: float = 2.0,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        if min(task_sizes) < 1:
            raise ValueError("every task needs at least one training example")
        self.task_sizes = list(task_sizes)
        self.offsets = np.concatenate([[0], np.cumsum(self.task_sizes)]).tolist()
        self.batch_size = batch_size
        self.sampling = sampling
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.probabilities = task_probabilities(task_sizes, sampling, temperature)
        self._batch = 0
        self._passes = [0] * len(task_sizes)
        self._positions = [0] * len(task_sizes)
        self._permutations: dict[int, tuple[int, np.ndarray]] = {}
        self._history: deque[tuple[int, dict[str, Any]]] = deque(maxlen=self.HISTORY)
        self._start_history()

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            # Draw a whole round (one global batch per process) before yielding this
            # process's share, so that after k batches every process is in the same state
            # (k * num_replicas global batches drawn): any process's saved state resumes all.
            round_of_batches = [self._draw() for _ in range(self.num_replicas)]
            self._yielded += 1
            self._history.append((self._yielded, self.state_dict()))
            yield round_of_batches[self.rank]

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """The state after every batch yielded so far, or after the first ``consumed``
        batches yielded since this sampler was built or loaded."""
        if consumed is not None:
            for count, state in self._history:
                if count == consumed:
                    return state
            raise ValueError(f"no saved sampler state for {consumed} consumed batches")
        return {
            "seed": self.seed,
            "task_sizes": list(self.task_sizes),
            "batch": self._batch,
            "passes": list(self._passes),
            "positions": list(self._positions),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` was saved (same tasks, seed and batch size)."""
        if state["seed"] != self.seed or state["task_sizes"] != self.task_sizes:
            raise ValueError(
                "sampler state is from different data or seed: "
                f"sizes {state['task_sizes']} seed {state['seed']}, "
                f"now sizes {self.task_sizes} seed {self.seed}"
            )
        self._batch = state["batch"]
        self._passes = list(state["passes"])
        self._positions = list(state["positions"])
        self._start_history()

    def _start_history(self) -> None:
        self._yielded = 0
        self._history.clear()
        self._history.append((0, self.state_dict()))

    def _draw(self) -> list[int]:
        rng = np.random.default_rng([self.seed, 0, self._batch])
        self._batch += 1
        num_tasks = len(self.task_sizes)
        if self.sampling == "mixed":
            choices = rng.choice(num_tasks, size=self.batch_size, p=self.probabilities)
            return [self._take(int(task), 1)[0] for task in choices]
        task = int(rng.choice(num_tasks, p=self.probabilities))
        return self._take(task, self.batch_size)

    def _take(self, task: int, count: int) -> list[int]:
        taken: list[int] = []
        while len(taken) < count:
            permutation = self._permutation(task)
            start = self._positions[task]
            stop = min(len(permutation), start + count - len(taken))
            taken += (permutation[start:stop] + self.offsets[task]).tolist()
            self._positions[task] = stop
            if stop == len(permutation):
                self._passes[task] += 1
                self._positions[task] = 0
        return taken

    def _permutation(self, task: int) -> np.ndarray:
        cached = self._permutations.get(task)
        if cached is None or cached[0] != self._passes[task]:
            rng = np.random.default_rng([self.seed, 1, task, self._passes[task]])
            cached = (self._passes[task], rng.permutation(self.task_sizes[task]))
            self._permutations[task] = cached
        return cached[1]


def train_loader(
    dataset: MultiTaskDataset,
    sampler: MultiTaskBatchSampler,
    collator: Collator,
    num_workers: int = 0,
) -> DataLoader:
    """An endless training loader; count steps yourself (it has no length)."""
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=num_workers)


def eval_loader(
    features: Sequence[Feature], task_id: int, collator: Collator, batch_size: int
) -> DataLoader:
    """One task's features in order, no shuffle, each tagged with ``task_id``."""
    tagged = [{**feature, "task_id": task_id} for feature in features]
    return DataLoader(tagged, batch_size=batch_size, shuffle=False, collate_fn=collator)
