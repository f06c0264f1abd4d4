"""The clean job's review page: one static HTML file and PNG montages a curator opens in a browser.

What it shows: the numbers per class (suspected, kept, relabelled, dropped), the flagged groups
(given label -> new label, with counts), and each suspicious cluster: its numbers, a montage of a
bounded number of its images (read by guid from the petastorm dataset, without pixels of any other
row) and a bounded list of its titles (from the catalogue CSVs). Every text from the data is
HTML-escaped. A missing dataset or CSV directory leaves a note on the page, never a failed job.
"""
from __future__ import annotations

import html
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import storage
from .clean import ALL_SCOPE
from .config import Settings
from .log import get_logger
from .schema import CLASSES
from .storage import S3Options

log = get_logger(__name__)

TILE = 180  # thumbnail box in the montage, pixels
CAPTION = 34  # caption height under each thumbnail
COLUMNS = 6


@dataclass
class Page:
    files: dict[str, bytes] = field(default_factory=dict)  # name under review/ -> bytes
    montages: int = 0


# ---------------------------------------------------------------- inputs (edges)


def read_titles(data_dir: str, settings: Settings, s3: S3Options | None) -> tuple[dict[str, str], str | None]:
    """guid -> description from the catalogue CSVs, and a note when they cannot be read."""
    from .catalogue import CsvError
    from .ingest import read_input_rows

    try:
        rows = read_input_rows(data_dir, settings, s3)
    except (CsvError, storage.StorageError) as exc:
        log.warning("review: no titles (%s)", exc)
        return {}, f"titles unavailable: {exc}"
    # Accepted rows only: the title of a rejected repeat of a guid is not the one its models read.
    return {r.guid: r.description for r in rows if r.guid and r.description and r.rejected_reason is None}, None


def read_thumbnails(dataset_url: str, guids: set[str], s3: S3Options | None, side: int = TILE) -> tuple[dict[str, Any], str | None]:
    """guid -> a PIL thumbnail for the wanted guids that have an image in the dataset. Only the
    rows asked for are read (a Parquet filter on guid), so the cost is bounded by the page."""
    from PIL import Image

    if not guids:
        return {}, None
    if not storage.exists(storage.join(dataset_url, "_common_metadata"), s3):
        return {}, f"no image dataset at {dataset_url}"
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(dataset_url, s3)
    try:
        table = pq.read_table(path, columns=["guid", "image"], filters=[("guid", "in", sorted(guids))], filesystem=fs)
    except (OSError, ValueError) as exc:
        log.warning("review: cannot read images from %s (%s)", dataset_url, exc)
        return {}, f"images unavailable: {exc}"
    thumbs = {}
    for guid, data in zip(table.column("guid").to_pylist(), table.column("image").to_pylist()):
        try:
            # petastorm's codec stores a standard JPEG/PNG of the RGB image: Pillow reads it as is.
            image = Image.open(io.BytesIO(data)).convert("RGB")
            image.thumbnail((side, side))
            thumbs[guid] = image
        except Exception as exc:  # one bad image must not cost the page
            log.warning("review: image %s unreadable (%s)", guid, exc)
    return thumbs, None


# ---------------------------------------------------------------- montage (pure: images in, PNG out)


def _font(size: int):
    from PIL import ImageFont

    try:
        import matplotlib

        # DejaVu Sans ships with matplotlib and has Cyrillic; Pillow's default font has not.
        return ImageFont.truetype(f"{matplotlib.get_data_path()}/fonts/ttf/DejaVuSans.ttf", size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def montage_png(tiles: list[tuple[Any, str, str]], columns: int = COLUMNS) -> bytes:
    """A grid of (image, caption line 1, caption line 2) on white, as PNG bytes."""
    from PIL import Image, ImageDraw

    columns = max(1, min(columns, len(tiles)))
    rows = (len(tiles) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * (TILE + 8) + 8, rows * (TILE + CAPTION + 8) + 8), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(10)
    for n, (image, line1, line2) in enumerate(tiles):
        x0 = 8 + (n % columns) * (TILE + 8)
        y0 = 8 + (n // columns) * (TILE + CAPTION + 8)
        draw.rectangle([x0 - 1, y0 - 1, x0 + TILE, y0 + TILE], outline=(200, 200, 200))
        canvas.paste(image, (x0 + (TILE - image.width) // 2, y0 + (TILE - image.height) // 2))
        draw.text((x0, y0 + TILE + 3), _fit(line1, font), fill=(0, 0, 0), font=font)
        draw.text((x0, y0 + TILE + 18), _fit(line2, font), fill=(90, 90, 90), font=font)
    out = io.BytesIO()
    canvas.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _fit(text: str, font, width: int = TILE) -> str:
    """Cut ``text`` with an ellipsis so that it fits ``width`` pixels in ``font``."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


# Short class names for captions under 180-pixel thumbnails (the full names run to 50 characters).
SHORT = {
    "предметы археологии": "археология",
    "предметы естественнонаучной коллекции": "естественнонауч.",
    "предметы минералогической коллекции": "минералогия",
    "предметы нумизматики": "нумизматика",
    "предметы печатной продукции": "печатная прод.",
    "предметы прикладного искусства, быта и этнографии": "прикладное иск.",
    "предметы техники": "техника",
    "фотографии и негативы": "фото/негативы",
}


def short(name: str | None) -> str:
    return "drop" if name is None else SHORT.get(name, name)


# ---------------------------------------------------------------- the page


def shown_clusters(clusters: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The suspicious clusters, most changed rows first: per label first, then the overall ones."""
    chosen = [c for c in clusters if c["suspicious"]]
    chosen.sort(key=lambda c: (c["scope"] == ALL_SCOPE, -(c["relabelled"] + c["dropped"]), -c["suspected"], -c["size"], c["scope"], c["cluster"]))
    return chosen[:limit]


def flagged_groups(labels: list[str], actions: list[str], new_labels: list[str | None]) -> list[dict[str, Any]]:
    """(given label, what happened) -> rows, biggest first: "документы -> редкие книги: 31"."""
    counts = Counter((given, new if action == "relabel" else "(dropped)") for given, action, new in zip(labels, actions, new_labels) if action != "keep")
    return [{"given": g, "to": t, "rows": n} for (g, t), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def build(cleaned, per_class: list[dict[str, Any]], cs, dataset_url: str, data_dir: str, settings: Settings, s3: S3Options | None) -> Page:
    """Render index.html and one montage per shown cluster that has images."""
    oof, ev = cleaned.oof, cleaned.ev
    labels = [CLASSES[i] for i in oof.y]
    clusters = shown_clusters(cleaned.clusters, cs.review_max_clusters)
    members_of: dict[tuple[str, int], list[int]] = {}
    for c in clusters:
        if c["scope"] == ALL_SCOPE:
            mask = cleaned.cluster == c["cluster"]
        else:
            mask = (np.array(labels, dtype=object) == c["scope"]) & (cleaned.label_cluster == c["cluster"])
        rows = np.where(mask)[0]
        # The rows a curator should see first: changed ones, then suspected, then the largest margin.
        order = sorted(rows, key=lambda i: (cleaned.actions[i] == "keep", not cleaned.suspected[i], -ev["margin"][i], oof.guids[i]))
        members_of[(c["scope"], c["cluster"])] = order

    titles, titles_note = read_titles(data_dir, settings, s3)
    # About the tiles the page shows (twice as many, for images that turn out unreadable): a
    # cluster of 180K rows' out-of-fold predictions can hold tens of thousands, and reading and
    # shrinking all of their images took minutes and GBs.
    wanted_images = {oof.guids[i] for rows in members_of.values() for i in [i for i in rows if "image" in oof.sources[i]][: 2 * cs.review_thumbnails]}
    thumbs, images_note = read_thumbnails(dataset_url, wanted_images, s3)

    page = Page()
    sections = []
    for n, c in enumerate(clusters):
        rows = members_of[(c["scope"], c["cluster"])]
        with_images = [i for i in rows if oof.guids[i] in thumbs][: cs.review_thumbnails]
        montage_name = None
        if with_images:
            montage_name = f"cluster_{n:03d}.png"
            tiles = [
                (thumbs[oof.guids[i]], f"{short(labels[i])} → {short(cleaned.new_labels[i])}", f"p={ev['p_given'][i]:.2f}, pred. {short(CLASSES[ev['predicted'][i]])}")
                for i in with_images
            ]
            page.files[montage_name] = montage_png(tiles)
            page.montages += 1
        sections.append(_cluster_section(n, c, rows[: cs.review_titles], len(rows), montage_name, cleaned, labels, titles))

    summary_rows = "".join(
        f"<tr><td>{_e(r['class'])}</td><td>{r['rows']}</td><td>{r['suspected']}</td><td>{r['kept']}</td><td>{r['relabelled']}</td>"
        f"<td>{r['dropped']}</td><td>{r['relabelled_into']}</td><td>{cleaned.thresholds[CLASSES.index(r['class'])]:.2f}</td></tr>"
        for r in per_class
        if r["rows"] or r["relabelled_into"]
    )
    groups = flagged_groups(labels, cleaned.actions, cleaned.new_labels)
    shown_groups = [g for g in groups if g["rows"] >= 3][:30]
    group_rows = "".join(f"<tr><td>{_e(g['given'])}</td><td>{_e(g['to'])}</td><td class=r>{g['rows']}</td></tr>" for g in shown_groups)
    if len(groups) > len(shown_groups):
        rest = groups[len(shown_groups):]
        group_rows += f"<tr><td colspan=2 class=small>{len(rest)} smaller groups</td><td class=r>{sum(g['rows'] for g in rest)}</td></tr>"
    toc = "".join(
        f"<li><a href=\"#c{n}\">{_e(c['scope'] if c['scope'] != ALL_SCOPE else 'all rows')} #{c['cluster']}</a>: {c['size']} rows, mostly predicted "
        f"{_e(c['dominant_predicted'])} ({c['purity']:.0%}); relabelled {c['relabelled']}, dropped {c['dropped']}</li>"
        for n, c in enumerate(clusters)
    )
    actions = Counter(cleaned.actions)
    notes = "".join(f"<p class=note>{_e(x)}</p>" for x in (titles_note, images_note) if x)
    k_lines = ", ".join(f"{_e(scope)}: k={v['k']}" for scope, v in cleaned.k_choice.items())
    body = f"""<!doctype html>
<html lang="ru"><head><meta charset="utf-8"><title>Label review: {len(oof)} rows</title>
<style>
body {{ font-family: "DejaVu Sans", Arial, sans-serif; margin: 24px; color: #222; max-width: 1280px; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }}
th {{ background: #f0f0f0; }} .num td:not(:first-child), td.r {{ text-align: right; }}
section {{ border-top: 2px solid #888; margin-top: 28px; padding-top: 8px; }}
.relabel {{ background: #fff4d6; }} .drop {{ background: #fde0e0; }} .note {{ color: #a33; }}
.small {{ color: #666; font-size: 12px; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head><body>
<h1>Label review</h1>
<p>{len(oof)} rows ({_e(', '.join(f'{k} {v}' for k, v in sorted(Counter(oof.sources).items())))}):
<b>{actions['keep']}</b> kept, <b>{actions['relabel']}</b> relabelled, <b>{actions['drop']}</b> dropped;
{int(cleaned.suspected.sum())} suspected ({int(cleaned.suspected_cl.sum())} by confident learning, filter "{_e(cs.filter)}").
Clusters: Spark MLlib KMeans on √p, k by silhouette.</p>
<p class=small>k per scope: {k_lines}.</p>
{notes}
<h2>Per class</h2>
<table class=num><tr><th>given label</th><th>rows</th><th>suspected</th><th>kept</th><th>relabelled</th><th>dropped</th><th>relabelled into</th><th>threshold</th></tr>
{summary_rows}</table>
<h2>Flagged groups</h2>
<table><tr><th>given label</th><th>→ new label</th><th>rows</th></tr>{group_rows}</table>
<h2>Suspicious clusters ({len(clusters)})</h2>
<p class=small>A cluster of one given label whose rows the models mostly call another class (per label), or a
cluster over all rows whose rows mostly carry another label than the class it is predicted as (overall).</p>
<ol>{toc}</ol>
{''.join(sections)}
</body></html>
"""
    page.files["index.html"] = body.encode("utf-8")
    return page


def _cluster_section(n: int, c: dict[str, Any], rows: list[int], total: int, montage: str | None, cleaned, labels: list[str], titles: dict[str, str]) -> str:
    oof, ev = cleaned.oof, cleaned.ev
    scope = "all rows" if c["scope"] == ALL_SCOPE else f"given label {c['scope']}"
    head = (
        f"<section id=c{n}><h3>{n + 1}. {_e(scope)}, cluster {c['cluster']}: mostly predicted {_e(c['dominant_predicted'])}</h3>"
        f"<p>{c['size']} rows, purity {c['purity']:.2f} (share predicted {_e(c['dominant_predicted'])}), "
        f"given labels: {_e(c['given_labels'])}; suspected {c['suspected']}, relabelled {c['relabelled']}, dropped {c['dropped']}.</p>"
    )
    picture = f'<p><img src="{_e(montage)}" alt="images of cluster {n + 1}"></p>' if montage else "<p class=small>no images of this cluster in the dataset</p>"
    lines = []
    for i in rows:
        action = cleaned.actions[i]
        title = titles.get(oof.guids[i], "")
        lines.append(
            f"<tr class={action}><td class=small>{_e(oof.guids[i][:13])}</td><td>{_e(title) or '<span class=small>(no title)</span>'}</td>"
            f"<td>{_e(labels[i])}</td><td>{_e(CLASSES[ev['predicted'][i]])}</td><td>{ev['p_given'][i]:.2f}</td><td>{ev['margin'][i]:+.2f}</td>"
            f"<td>{_e(action)}</td><td>{_e(cleaned.new_labels[i] or '')}</td></tr>"
        )
    more = f"<p class=small>… and {total - len(rows)} more rows (see cleaned_manifest.csv, column label_cluster / cluster).</p>" if total > len(rows) else ""
    table = (
        "<table><tr><th>guid</th><th>title</th><th>given</th><th>predicted</th><th>p given</th><th>margin</th><th>action</th><th>new label</th></tr>"
        + "".join(lines)
        + "</table>"
    )
    return head + picture + table + more + "</section>\n"


# Control characters HTML does not allow (a NUL or ESC in a catalogue title made the page invalid).
_NOT_IN_HTML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _e(text: Any) -> str:
    """``text`` escaped for HTML, its control characters other than tab and line breaks shown as
    ``\\xNN``."""
    return html.escape(_NOT_IN_HTML.sub(lambda found: f"\\x{ord(found.group()):02x}", str(text)), quote=True)
