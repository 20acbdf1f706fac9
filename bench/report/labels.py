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
    to_px = fig.dpi / 72  # offsets are in points
    markers = [ax.transData.transform(p) for p in points]
    taken = [_box(x - MARKER_PX, y - MARKER_PX, x + MARKER_PX, y + MARKER_PX) for x, y in markers]
    placed = []
    for (x, y), (mx, my), text in zip(points, markers, labels):
        # The label's size is measured once; a candidate's box is that size put at the marker plus the
        # offset, aligned as the annotation will be (left/right of it, above/below it), which is where
        # matplotlib draws it: no trial annotation per candidate.
        probe = ax.annotate(text, (x, y), fontsize=fontsize)
        size = probe.get_window_extent(renderer)
        probe.remove()
        best = None
        for dx, dy in OFFSETS:
            left = mx + dx * to_px - (0 if dx >= 0 else size.width)
            bottom = my + dy * to_px - (0 if dy >= 0 else size.height)
            box = _box(left, bottom, left + size.width, bottom + size.height)
            crowding = sum(box.overlaps(other) for other in taken)
            if best is None or crowding < best[0]:
                best = (crowding, (dx, dy), box)
            if crowding == 0:
                break
        crowding, (dx, dy), box = best
        # where even the best spot is crowded (none free nearby), a thin line joins the label to its point
        note = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                           ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top",
                           arrowprops={"arrowstyle": "-", "lw": 0.4} if crowding else None)
        taken.append(box)
        placed.append(note)
    return placed


def _box(x0, y0, x1, y1):
    from matplotlib.transforms import Bbox

    return Bbox([[x0, y0], [x1, y1]])
