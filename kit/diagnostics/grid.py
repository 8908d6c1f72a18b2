"""Image grids as PNG: tiles of uint8 images with a caption each, drawn pixel for pixel (no resampling but an
integer upscale), so a test can crop any tile back out of the file and compare it with the reader's pixels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kit.io import atomic_path

__all__ = ["Grid", "Tile", "write_grid"]

MIN_TILE_PX = 128
"""Small inputs (32 px) are upscaled by a whole factor until a tile is at least this wide (room for its caption),
still exact."""
FONT_PX, PAD = 11, 4
BACKGROUND, INK, HEADING = (255, 255, 255), (20, 20, 20), (0, 0, 0)


@dataclass
class Tile:
    image: np.ndarray
    """H x W x 3 uint8."""
    caption: str = ""
    """Lines separated by newlines; each is cut to the tile's width."""
    key: str = ""
    """What the tile shows (an image id), for the callers and tests that look a tile up."""


@dataclass
class Grid:
    path: Path
    keys: list[str]
    """Each tile's key, in reading order (row by row)."""
    boxes: list[tuple[int, int]]
    """Top-left (y, x) of each tile's image in the PNG, in the order of ``keys``."""
    scale: int
    """Each image pixel is a scale x scale block in the PNG."""

    def crop(self, picture: np.ndarray, i: int, side: int) -> np.ndarray:
        """Tile ``i``'s image (``side`` x ``side`` pixels before the upscale) from the PNG's pixels."""
        y, x = self.boxes[i]
        block = picture[y:y + side * self.scale, x:x + side * self.scale, :3]
        return block[::self.scale, ::self.scale]


def _font(size: int = FONT_PX):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _fit(text: str, width: int, font) -> str:
    """``text`` cut (with an ellipsis) to ``width`` pixels in ``font``."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def write_grid(rows: Sequence[Sequence[Tile]], path: str | Path, title: str = "",
               headings: Sequence[str] | None = None) -> Grid:
    """Draw ``rows`` of tiles (each row left-aligned; tiles of one size) with ``title`` above and each row's
    ``headings`` line above it; write the PNG ``path``."""
    from PIL import Image, ImageDraw

    tiles = [t for row in rows for t in row]
    if not tiles:
        raise ValueError("a grid needs at least one tile")
    h, w = tiles[0].image.shape[:2]
    scale = max(1, -(-MIN_TILE_PX // max(h, w)))
    font = _font()
    n_lines = max(t.caption.count("\n") + 1 for t in tiles)
    caption_h = n_lines * (FONT_PX + 2) + PAD
    heading_h = (FONT_PX + 6) if headings else 0
    cell_w, cell_h = w * scale + PAD, heading_h + h * scale + caption_h + PAD
    top = (FONT_PX + 6 + PAD) if title else PAD
    columns = max(len(r) for r in rows)
    canvas = Image.new("RGB", (columns * cell_w + PAD, top + len(rows) * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((PAD, PAD), _fit(title, canvas.width - 2 * PAD, _font(FONT_PX + 2)), fill=HEADING,
                  font=_font(FONT_PX + 2))
    keys, boxes = [], []
    for r, row in enumerate(rows):
        if headings:
            draw.text((PAD, top + r * cell_h), _fit(headings[r], canvas.width - 2 * PAD, _font(FONT_PX + 1)),
                      fill=HEADING, font=_font(FONT_PX + 1))
        for c, tile in enumerate(row):
            x, y = PAD + c * cell_w, top + r * cell_h + heading_h
            lines = [_fit(line, w * scale, font) for line in tile.caption.split("\n")]
            draw.multiline_text((x, y), "\n".join(lines), fill=INK, font=font, spacing=2)
            image = np.repeat(np.repeat(np.asarray(tile.image, dtype=np.uint8), scale, 0), scale, 1)
            canvas.paste(Image.fromarray(image), (x, y + caption_h))
            keys.append(tile.key)
            boxes.append((y + caption_h, x))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG", optimize=True)
    return Grid(path, keys, boxes, scale)
