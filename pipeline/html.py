"""Self-contained HTML pages: matplotlib figures as PNG data URIs, escaped tables, one inline style sheet.

Nothing in a page refers to a URL: it opens offline, from any folder, and can be mailed as one file.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Iterable, Optional

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:0 20px 40px;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin:.8em 0 .3em}h2{font-size:1.25em;margin:1.6em 0 .3em;border-bottom:1px solid #ddd}
h3{font-size:1.05em;margin:1.1em 0 .2em}
p.reading{margin:.2em 0 .7em;color:#444;font-style:italic}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.9em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f4f4f6}td.text,th.text{text-align:left;max-width:560px}
.headline td.num{font-size:1.35em;font-weight:600}
.figs{display:flex;flex-wrap:wrap;gap:8px}.figs img{border:1px solid #eee}
img{max-width:100%}details{margin:.3em 0}summary{cursor:pointer;font-weight:600}
pre{background:#f6f6f8;padding:8px;overflow:auto;font-size:.85em}
.flag{color:#b00020;font-weight:600}.muted{color:#777}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def figure_uri(fig) -> str:
    """A matplotlib Figure as a `data:image/png;base64,...` URI (Agg canvas, no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.get_dpi(), bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def img(fig, alt: str) -> str:
    """An <img> holding the figure itself."""
    return f'<img src="{figure_uri(fig)}" alt="{esc(alt)}">'


def new_figure(width: float, height: float, dpi: int = 80):
    """A Figure not registered with pyplot (no global state, nothing to close)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi)


def table(header: list, rows: Iterable[list], text_cols: Iterable[int] = (), cls: str = "") -> str:
    """An HTML table; cells are escaped; columns in `text_cols` are left-aligned."""
    text_cols = set(text_cols)

    def cells(row, tag):
        return "".join(f'<{tag}{" class=text" if j in text_cols else ""}>{esc(v)}</{tag}>' for j, v in enumerate(row))

    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    return f'<table{f" class={cls}" if cls else ""}><tr>{cells(header, "th")}</tr>{body}</table>'


def section(title: str, reading: str, body: str, anchor: Optional[str] = None) -> str:
    """A titled section with its one-line reading of what it shows."""
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{ident}><h2>{esc(title)}</h2><p class=reading>{esc(reading)}</p>{body}</section>"


def page(title: str, body: str) -> str:
    """A whole HTML document: inline style, no script, no external reference."""
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{STYLE}</style></head>"
            f"<body><h1>{esc(title)}</h1>{body}</body></html>\n")


def num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
