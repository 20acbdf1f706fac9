"""Point labels that do not collide: each label takes the first of a ring of positions around its
point whose box overlaps no label placed before it and no marker; when none is free, the least
crowded one, joined to its point by a thin leader line."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg

# Offsets (points) from the marker, nearest first: right/left, above/below, then further out.
OFFSETS = [(6, 3), (6, -10), (-6, 3), (-6, -10), (0, 9), (0, -15), (14, 12), (14, -20), (-14, 12),
           (-14, -20), (24, 0), (-24, 0), (20, 24), (20, -30), (-20, 24), (-20, -30), (0, 28), (0, -34)]
MARKER_PX = 5  # half the side of the box a marker is taken to cover, in pixels


def place_labels(ax, points: list[tuple[float, float]], labels: list[str], fontsize: float = 7) -> list:
    """Annotate each (x, y) in data coordinates with its label; returns the annotations.

    Call it after everything else is drawn on `ax` (scales, limits, margins): placement is in
    display space, which later changes of the limits would move.
    """
    fig = ax.figure
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    ax.autoscale_view()
    markers = [ax.transData.transform(p) for p in points]
    taken = [_box(x - MARKER_PX, y - MARKER_PX, x + MARKER_PX, y + MARKER_PX) for x, y in markers]
    placed = []
    for (x, y), text in zip(points, labels):
        best = None
        for dx, dy in OFFSETS:
            note = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                               ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top")
            extent = note.get_window_extent(renderer)
            crowding = sum(extent.overlaps(other) for other in taken)
            if best is None or crowding < best[0]:
                if best is not None:
                    best[1].remove()
                best = (crowding, note, extent)
            else:
                note.remove()
            if crowding == 0:
                break
        crowding, note, extent = best
        if crowding:  # nowhere free nearby: the least crowded spot, with a line back to the point
            note.arrow_patch = None
            note.remove()
            dx, dy = note.xyann
            note = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                               ha=note.get_ha(), va=note.get_va(), arrowprops={"arrowstyle": "-", "lw": 0.4})
        taken.append(extent)
        placed.append(note)
    return placed


def _box(x0, y0, x1, y1):
    from matplotlib.transforms import Bbox

    return Bbox([[x0, y0], [x1, y1]])
