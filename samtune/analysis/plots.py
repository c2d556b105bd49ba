"""The landscape figures, as PNGs of a fixed pixel size (matplotlib, Agg backend).

`landscape_1d.png`: the loss along one direction, one line per run on the same axes.
`landscape_2d.png`: contours of the loss over two directions, one panel per run side by side,
with the same contour levels (so equal colours mean equal losses across the panels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

DPI = 100
SIZE_1D = (6.4, 4.0)  # inches: 640 x 400 pixels
PANEL_2D = (5.0, 4.4)  # inches per panel: 500 x 440 pixels each
COLORBAR_2D = 1.4  # inches added on the right for the shared colour bar
CONTOUR_LEVELS = 20


def pixel_size_1d() -> tuple[int, int]:
    """Width and height in pixels of the 1-D figure."""
    return round(SIZE_1D[0] * DPI), round(SIZE_1D[1] * DPI)


def pixel_size_2d(panels: int) -> tuple[int, int]:
    """Width and height in pixels of the 2-D figure with `panels` runs."""
    return round((PANEL_2D[0] * panels + COLORBAR_2D) * DPI), round(PANEL_2D[1] * DPI)


@dataclass
class Landscape:
    """One run's measured landscape: a curve over alphas and a surface over (alphas, betas)."""

    label: str
    alphas: Sequence[float]
    curve: Sequence[float]
    betas: Sequence[float]
    surface: Sequence[Sequence[float]]  # rows over betas, columns over alphas


def _pyplot():
    matplotlib.use("Agg")
    return plt


def plot_curves(landscapes: Sequence[Landscape], path: Path) -> Path:
    """The 1-D losses of every run on one set of axes; a legend names the runs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=SIZE_1D, dpi=DPI)
    for land in landscapes:
        (line,) = ax.plot(land.alphas, land.curve, "-", marker=".", label=land.label)
        centre = min(range(len(land.alphas)), key=lambda i: abs(land.alphas[i]))
        ax.plot([land.alphas[centre]], [land.curve[centre]], "o", color=line.get_color())
    ax.set(xlabel="step along a filter-normalised random direction", ylabel="loss", title="1-D loss landscape")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


def _levels(landscapes: Sequence[Landscape]) -> np.ndarray:
    """CONTOUR_LEVELS levels spanning the finite losses of every surface."""
    values = np.concatenate([np.asarray(land.surface, dtype=float).ravel() for land in landscapes])
    values = values[np.isfinite(values)]
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if high <= low:
        high = low + max(abs(low), 1.0) * 1e-6
    return np.linspace(low, high, CONTOUR_LEVELS)


def plot_surfaces(landscapes: Sequence[Landscape], path: Path) -> Path:
    """Filled contours of each run's 2-D loss, side by side, on the same levels and one colour bar."""
    plt = _pyplot()
    width, height = pixel_size_2d(len(landscapes))
    w_in, h_in = width / DPI, height / DPI
    # Placed in inches (left 0.8, bottom 0.6, 3.9 x 3.4 per panel), so the layout does not depend on the count.
    fig = plt.figure(figsize=(w_in, h_in), dpi=DPI)
    axes = [
        fig.add_axes(((i * PANEL_2D[0] + 0.8) / w_in, 0.6 / h_in, 3.9 / w_in, 3.4 / h_in))
        for i in range(len(landscapes))
    ]
    levels = _levels(landscapes)
    filled = None
    for ax, land in zip(axes, landscapes):
        z = np.ma.masked_invalid(np.asarray(land.surface, dtype=float))
        filled = ax.contourf(land.alphas, land.betas, z, levels=levels, cmap="viridis", extend="neither")
        ax.contour(land.alphas, land.betas, z, levels=levels, colors="k", linewidths=0.3, alpha=0.6)
        ax.plot([0], [0], "+", color="white", markersize=10)
        ax.set(xlabel="direction 1", ylabel="direction 2", title=land.label, aspect="equal")
        ax.locator_params(nbins=5)
    if filled is not None:
        bar = fig.add_axes(((len(landscapes) * PANEL_2D[0]) / w_in, 0.6 / h_in, 0.18 / w_in, 3.4 / h_in))
        fig.colorbar(filled, cax=bar, label="loss")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)
