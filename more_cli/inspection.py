"""What a trained adapter chose: ranks per task and layer, router confidence, task embeddings,
parameter counts. Each view is a rich table for the terminal and, where it helps, a figure.

Terminal tables put one row per block of the model (``enc 3``, ``dec 0``, ``layer 11``) and
one column per task; a cell lists the values of the block's adapted modules in the order of
the ``modules`` column, so a 24-block T5 with 8 tasks fits in 80-odd columns. Figures show
every layer (tasks × layers) and are drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from more_cli.adapters import MultiTaskAdapter

_BLOCK = re.compile(r"^(?P<stack>.*?)\.?(?P<index>\d+)\.(?P<rest>.+)$")
_STACKS = {"encoder": "enc", "decoder": "dec"}


@dataclass(frozen=True)
class LayerValues:
    """A ``[tasks, layers]`` matrix of one quantity (rank, confidence), with its labels."""

    title: str
    tasks: list[str]
    layers: list[str]
    values: np.ndarray
    maximum: float
    minimum: float = 0.0  # the scale's bottom: ranks start at 1, confidence at 0


def rank_values(adapter: MultiTaskAdapter) -> LayerValues:
    """The rank each task uses at each layer (r everywhere for kinds without rank routing)."""
    ranks = adapter.chosen_ranks()
    layers = list(adapter.layers)
    matrix = np.array([[ranks[t][name] for name in layers] for t in adapter.tasks], dtype=float)
    return LayerValues(
        "chosen rank", adapter.tasks, layers, matrix, float(adapter.config.r), minimum=1.0
    )


def confidence_values(adapter: MultiTaskAdapter) -> LayerValues:
    """Gate probability of the chosen expert per task and layer (1.0 without a router)."""
    confidence = adapter.router_confidence()
    layers = list(adapter.layers)
    matrix = np.array([[confidence[t][name] for name in layers] for t in adapter.tasks])
    return LayerValues("router confidence", adapter.tasks, layers, matrix, 1.0)


# ---------------------------------------------------------------------------------------------
# Grouping layers into blocks


@dataclass(frozen=True)
class Block:
    """Adapted layers that share a block index: ``label`` (``enc 3``) and module labels."""

    label: str
    indices: list[int]
    modules: list[str]


def layer_blocks(layers: Sequence[str]) -> list[Block]:
    """Group layer paths by their block (first numbered component), keeping model order.

    ``encoder.block.3.layer.0.SelfAttention.q`` → block ``enc 3``, module ``S.q`` when the
    block also holds ``EncDecAttention.q`` (module labels are the shortest unique suffix,
    inner components shortened to their first letter). Paths without a number go to
    ``other``.
    """
    grouped: dict[str, tuple[list[int], list[str]]] = {}
    for position, path in enumerate(layers):
        match = _BLOCK.match(path)
        if match:
            stack = match["stack"].split(".")[0]
            label = f"{_STACKS.get(stack, 'layer')} {match['index']}"
            rest = match["rest"]
        else:
            label, rest = "other", path
        indices, rests = grouped.setdefault(label, ([], []))
        indices.append(position)
        rests.append(rest)
    return [
        Block(label, indices, _module_labels(rests)) for label, (indices, rests) in grouped.items()
    ]


def _module_labels(paths: list[str]) -> list[str]:
    parts = [path.split(".") for path in paths]
    labels = []
    for own in parts:
        others = [p for p in parts if p is not own]
        k = 1
        while k < len(own) and any(other[-k:] == own[-k:] for other in others):
            k += 1
        suffix = own[-k:]
        labels.append(".".join([part[0] for part in suffix[:-1]] + [suffix[-1]]))
    return labels


# ---------------------------------------------------------------------------------------------
# Terminal tables


def _color(fraction: float) -> str:
    """A viridis colour for a value in [0, 1], as a rich hex colour."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return to_hex(colormaps["viridis"](0.15 + 0.85 * min(max(fraction, 0.0), 1.0)))


def rank_table(ranks: LayerValues) -> Table:
    """Blocks × tasks; each cell lists the block's module ranks, coloured by rank / r.

    The caption gives the module order of each kind of block (``enc: q k v o wi wo``).
    """
    blocks = layer_blocks(ranks.layers)
    width = len(f"{ranks.maximum:.0f}")
    table = Table(title=f"chosen rank per task and layer (r = {ranks.maximum:g})")
    table.add_column("block", no_wrap=True)
    for task in ranks.tasks:
        table.add_column(task, no_wrap=True)
    for block in blocks:
        cells = []
        for row in ranks.values:
            cell = Text()
            for position, index in enumerate(block.indices):
                value = row[index]
                separator = " " if position else ""
                cell.append(separator + f"{value:>{width}.0f}", style=_color(value / ranks.maximum))
            cells.append(cell)
        table.add_row(block.label, *cells)
    table.add_section()
    table.add_row("mean", *(f"{row.mean():.2f}" for row in ranks.values))
    orders: dict[str, str] = {}
    for block in blocks:
        orders.setdefault(" ".join(block.modules), block.label.split()[0])
    legend = "; ".join(f"{kind}: {modules}" for modules, kind in orders.items())
    table.caption = f"each cell: ranks of the block's modules in order ({legend})"
    return table


def confidence_table(confidence: LayerValues) -> Table:
    """Blocks × tasks; each cell is the mean confidence over the block's modules."""
    table = Table(title="router confidence (gate probability of the chosen expert)")
    table.add_column("block")
    for task in confidence.tasks:
        table.add_column(task, justify="right")
    for block in layer_blocks(confidence.layers):
        means = confidence.values[:, block.indices].mean(axis=1)
        table.add_row(block.label, *(Text(f"{m:.2f}", style=_color(m)) for m in means))
    table.add_section()
    table.add_row("mean", *(f"{row.mean():.2f}" for row in confidence.values))
    table.add_row("min", *(f"{row.min():.2f}" for row in confidence.values))
    return table


def parameter_table(adapter: MultiTaskAdapter) -> Table:
    """Trainable parameters by component, per task, and against a LoRA of the same rank."""
    counts = adapter.parameter_counts()
    r, tasks = adapter.config.r, len(adapter.tasks)
    table = Table(title=f"trainable parameters ({adapter.config.kind}, r = {r}, {tasks} tasks)")
    table.add_column("component")
    table.add_column("parameters", justify="right")
    rows = [
        ("low-rank factors A, B", counts["lora"]),
        ("gates", counts["gates"]),
        ("task embeddings", counts["task_embeddings"]),
        ("contrastive projection", counts["cl_projection"]),
    ]
    for name, count in rows:
        if count:
            table.add_row(name, _count(count))
    table.add_row("total", _count(counts["total"]), style="bold")
    table.add_section()
    table.add_row("task-specific, per task", _count(counts["per_task_specific"]))
    table.add_row("total / tasks", _count(counts["per_task_average"]))
    table.add_row(f"one LoRA r = {r} on the same layers", _count(counts["lora_same_rank"]))
    ratio = counts["per_task_average"] / max(counts["lora_same_rank"], 1)
    table.add_row("total / tasks vs that LoRA", f"{ratio:.2f}x")
    return table


def _count(n: int) -> str:
    short = f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)
    return f"{n:,} ({short})"


# ---------------------------------------------------------------------------------------------
# Task embeddings


@dataclass(frozen=True)
class TaskEmbeddings:
    """Cosine similarity between task embeddings and their 2-D PCA projection."""

    tasks: list[str]
    cosine: np.ndarray
    projection: np.ndarray


def task_embeddings(adapter: MultiTaskAdapter) -> TaskEmbeddings | None:
    """None for kinds without task embeddings (all but more and moelora)."""
    if adapter.router is None:
        return None
    vectors = adapter.router.task_embeddings().float().cpu().numpy()
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return TaskEmbeddings(list(adapter.tasks), unit @ unit.T, pca_2d(vectors))


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """Rows projected on their first two principal components (zeros where fewer exist: n
    centred rows span at most n - 1 directions, so two tasks have one component)."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coords = np.zeros((vectors.shape[0], 2))
    n = min(2, s.shape[0], vectors.shape[0] - 1)
    coords[:, :n] = u[:, :n] * s[:n]
    return coords


def similarity_table(embeddings: TaskEmbeddings) -> Table:
    table = Table(title="task-embedding cosine similarity")
    table.add_column("")
    for task in embeddings.tasks:
        table.add_column(task, justify="right")
    for task, row in zip(embeddings.tasks, embeddings.cosine, strict=True):
        cells = (Text(f"{v:+.2f}", style=_color((v + 1) / 2)) for v in row)
        table.add_row(task, *cells)
    return table


# ---------------------------------------------------------------------------------------------
# Figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layer_values(values: LayerValues, path: Path):
    """Heatmap tasks × layers, one labelled column per layer; returns the saved figure."""
    plt = _pyplot()
    labels = [""] * len(values.layers)
    for block in layer_blocks(values.layers):
        for index, module in zip(block.indices, block.modules, strict=True):
            labels[index] = f"{block.label} {module}"
    width = min(max(6.0, 0.22 * len(labels) + 2.5), 60.0)
    figure, axes = plt.subplots(figsize=(width, 1.0 + 0.45 * len(values.tasks) + 1.2))
    image = axes.imshow(
        values.values, aspect="auto", cmap="viridis", vmin=values.minimum, vmax=values.maximum,
        interpolation="nearest",
    )  # fmt: skip
    axes.set_yticks(range(len(values.tasks)), values.tasks)
    axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    if values.values.size <= 600:
        fmt = "{:.0f}" if values.maximum > 1 else "{:.2f}"
        for (row, column), value in np.ndenumerate(values.values):
            colour = "black" if value > 0.6 * values.maximum else "white"
            axes.text(column, row, fmt.format(value), ha="center", va="center", fontsize=6,
                      color=colour)  # fmt: skip
    figure.colorbar(image, ax=axes, label=values.title, fraction=0.03, pad=0.01)
    axes.set_title(f"{values.title} per task and layer")
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return figure


def plot_task_embeddings(embeddings: TaskEmbeddings, path: Path):
    """Cosine-similarity matrix and 2-D PCA map of the task embeddings; returns the figure."""
    plt = _pyplot()
    n = len(embeddings.tasks)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    image = left.imshow(embeddings.cosine, cmap="coolwarm", vmin=-1, vmax=1)
    left.set_xticks(range(n), embeddings.tasks, rotation=45, ha="right")
    left.set_yticks(range(n), embeddings.tasks)
    for (row, column), value in np.ndenumerate(embeddings.cosine):
        left.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8)
    figure.colorbar(image, ax=left, fraction=0.046)
    left.set_title("cosine similarity")
    x, y = embeddings.projection[:, 0], embeddings.projection[:, 1]
    right.scatter(x, y)
    for task, xi, yi in zip(embeddings.tasks, x, y, strict=True):
        right.annotate(task, (xi, yi), textcoords="offset points", xytext=(4, 4))
    right.set_xlabel("PC 1")
    if n > 2:
        right.set_title("PCA of task embeddings")
        right.set_ylabel("PC 2")
    else:  # two tasks span one direction: a second axis would be noise
        right.set_title("PCA of task embeddings (two tasks: one component)")
        right.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return figure


def as_json(adapter: MultiTaskAdapter) -> dict:
    """Every number the views show, for scripts: ranks, confidence, embeddings, counts."""
    embeddings = task_embeddings(adapter)
    return {
        "kind": adapter.config.kind,
        "r": adapter.config.r,
        "tasks": list(adapter.tasks),
        "ranks": adapter.chosen_ranks(),
        "confidence": adapter.router_confidence(),
        "task_embedding_cosine": None if embeddings is None else embeddings.cosine.tolist(),
        "parameters": adapter.parameter_counts(),
    }


# ---------------------------------------------------------------------------------------------
# Everything at once (what `more inspect` runs)

SECTIONS = ("ranks", "embeddings", "params", "confidence")


def inspect_adapter(
    adapter: MultiTaskAdapter,
    console: Console,
    sections: Sequence[str] = SECTIONS,
    out_dir: Path | None = None,
    image_format: str = "png",
) -> list[Path]:
    """Print the chosen ``sections``; with ``out_dir``, also write their figures and
    ``inspection.json``. Returns the files written."""
    written: list[Path] = []

    def figure(name: str) -> Path | None:
        if out_dir is None:
            return None
        path = out_dir / f"{name}.{image_format}"
        written.append(path)
        return path

    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    if "ranks" in sections:
        ranks = rank_values(adapter)
        console.print(rank_table(ranks))
        if path := figure("rank_heatmap"):
            plot_layer_values(ranks, path)
    if "confidence" in sections:
        confidence = confidence_values(adapter)
        console.print(confidence_table(confidence))
        if path := figure("router_confidence"):
            plot_layer_values(confidence, path)
    if "embeddings" in sections:
        embeddings = task_embeddings(adapter)
        if embeddings is None:
            console.print(f"adapter kind {adapter.config.kind} has no task embeddings")
        else:
            console.print(similarity_table(embeddings))
            if path := figure("task_embeddings"):
                plot_task_embeddings(embeddings, path)
    if "params" in sections:
        console.print(parameter_table(adapter))
    if out_dir is not None:
        path = out_dir / "inspection.json"
        path.write_text(json.dumps(as_json(adapter), indent=2) + "\n")
        written.append(path)
    return written
