"""Inspection views: rank and confidence matrices, block grouping, embeddings, figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console

from more_cli.adapters import AdapterConfig, inject_adapter
from more_cli.inspection import (
    inspect_adapter,
    layer_blocks,
    pca_2d,
    plot_layer_values,
    plot_task_embeddings,
    rank_values,
    task_embeddings,
)
from tests.helpers.tiny import tiny_bert, tiny_t5


def _render(console_width: int = 200) -> Console:
    return Console(width=console_width, record=True, color_system=None)


def test_heatmap_plots_the_forced_ranks(tmp_path: Path) -> None:
    model = tiny_t5()
    config = AdapterConfig(r=8, targets=["q", "v"], fixed_ranks={"a": 2, "b": 6})
    adapter = inject_adapter(model, config, ["a", "b"])
    ranks = rank_values(adapter)
    assert ranks.values.shape == (2, len(adapter.layers))
    figure = plot_layer_values(ranks, tmp_path / "ranks.png")
    plotted = np.asarray(figure.axes[0].images[0].get_array())
    np.testing.assert_array_equal(plotted[0], 2)
    np.testing.assert_array_equal(plotted[1], 6)
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["a", "b"]
    assert (tmp_path / "ranks.png").stat().st_size > 0
    assert figure.axes[0].images[0].get_clim() == (1.0, 8.0)  # ranks start at 1, not 0


def test_blocks_group_layers_with_unique_module_labels() -> None:
    model = tiny_t5()
    adapter = inject_adapter(model, AdapterConfig(r=4, targets=["q", "wo"]), ["a"])
    blocks = layer_blocks(list(adapter.layers))
    assert [b.label for b in blocks] == ["enc 0", "enc 1", "dec 0", "dec 1"]
    assert blocks[0].modules == ["q", "wo"]
    assert blocks[2].modules == ["S.q", "E.q", "wo"]  # self- and cross-attention q
    assert sorted(i for b in blocks for i in b.indices) == list(range(len(adapter.layers)))


def test_bert_blocks_tell_the_dense_layers_apart() -> None:
    adapter = inject_adapter(tiny_bert(), AdapterConfig(r=4), ["a"])
    block = layer_blocks(list(adapter.layers))[0]
    assert block.label == "enc 0"
    assert len(set(block.modules)) == len(block.modules)


def test_terminal_views_cover_every_section(tmp_path: Path) -> None:
    adapter = inject_adapter(tiny_t5(), AdapterConfig(r=4, targets=["q", "v"]), ["sst2", "rte"])
    console = _render()
    written = inspect_adapter(adapter, console, out_dir=tmp_path, image_format="svg")
    text = console.export_text()
    for title in ("chosen rank", "router confidence", "task-embedding", "trainable parameters"):
        assert title in text
    assert {p.name for p in written} == {
        "rank_heatmap.svg", "router_confidence.svg", "task_embeddings.svg", "inspection.json",
    }  # fmt: skip


def test_lora_has_no_task_embeddings() -> None:
    adapter = inject_adapter(tiny_t5(), AdapterConfig(kind="lora", r=4, targets=["q"]), ["a", "b"])
    assert task_embeddings(adapter) is None
    console = _render()
    inspect_adapter(adapter, console, sections=["embeddings"])
    assert "has no task embeddings" in console.export_text()


def test_embedding_similarity_and_projection() -> None:
    config = AdapterConfig(r=4, targets=["q"], task_embedding="shared", task_embedding_dim=8)
    adapter = inject_adapter(tiny_t5(), config, ["a", "b", "c"])
    embeddings = task_embeddings(adapter)
    np.testing.assert_allclose(np.diag(embeddings.cosine), 1.0, rtol=1e-6)
    np.testing.assert_allclose(embeddings.cosine, embeddings.cosine.T, atol=1e-7)
    assert embeddings.projection.shape == (3, 2)


def test_pca_keeps_distances_of_planar_points() -> None:
    points = np.array([[0.0, 0.0, 1.0], [3.0, 0.0, 1.0], [0.0, 4.0, 1.0]])
    projected = pca_2d(points)
    distance = np.linalg.norm(projected[1] - projected[2])
    assert distance == np.float64(distance) and abs(distance - 5.0) < 1e-9
    assert pca_2d(points[:1]).tolist() == [[0.0, 0.0]]


def test_two_tasks_have_one_principal_component(tmp_path: Path) -> None:
    two = pca_2d(np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]]))
    assert two[:, 1].tolist() == [0.0, 0.0] and abs(two[0, 0] - two[1, 0]) > 0
    config = AdapterConfig(r=4, targets=["q"], task_embedding="shared", task_embedding_dim=8)
    figure = plot_task_embeddings(
        task_embeddings(inject_adapter(tiny_t5(), config, ["a", "b"])), tmp_path / "e.png"
    )
    assert "one component" in figure.axes[1].get_title()
