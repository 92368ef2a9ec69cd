"""Pictures of planned episodes: the arena (hazard, start, goal) with trajectories (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Circle, Rectangle  # noqa: E402

OUTCOME_COLORS = {"success": "tab:green", "hazard": "tab:red", "timeout": "tab:gray"}


def arena_figure(
    env,
    trajectories: Sequence[np.ndarray],
    outcomes: Sequence[str] | None = None,
    title: str | None = None,
):
    """A figure of a WindyPointMass-like arena with ``trajectories`` (each ``[T, 2]`` positions),
    coloured by outcome (``success``, ``hazard``, ``timeout``). Returns ``(figure, axes)``."""
    u = getattr(env, "unwrapped", env)
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=100)
    hz = u.hazard
    ax.add_patch(Rectangle((hz.x0, hz.y0), hz.x1 - hz.x0, hz.y1 - hz.y0, color="tab:red", alpha=0.25, lw=0))
    ax.add_patch(Circle(tuple(u.goal), u.goal_radius, color="tab:green", alpha=0.35, lw=0))
    ax.plot(*u.start, "ko", ms=4)
    for i, tr in enumerate(trajectories):
        tr = np.asarray(tr)
        c = OUTCOME_COLORS.get(outcomes[i], "tab:blue") if outcomes is not None else "tab:blue"
        ax.plot(tr[:, 0], tr[:, 1], "-", color=c, lw=0.8, alpha=0.7)
    ax.set_xlim(min(u.start[0], u.goal[0]) - 0.4, max(u.start[0], u.goal[0]) + 0.4)
    ax.set_ylim(-1.0, 1.0)
    ax.set_aspect("equal")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if outcomes is not None:
        counts = {k: sum(o == k for o in outcomes) for k in OUTCOME_COLORS}
        handles = [plt.Line2D([], [], color=c, label=f"{k} ({counts[k]})") for k, c in OUTCOME_COLORS.items()]
        ax.legend(handles=handles, loc="upper left", fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig, ax


def figure_to_array(fig) -> np.ndarray:
    """RGB pixels ``[H, W, 3]`` (uint8) of a figure; closes it."""
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img
