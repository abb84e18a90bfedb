"""QuickDraw categories by name, downloaded from the dataset's official public storage.

    python -m wgan_dist.shard quickdraw:bicycle,cat -o shards/qd -s 28

28 px takes the numpy bitmaps (``full/numpy_bitmap/<category>.npy``, 28x28 already), any
other size the simplified drawings (``full/simplified/<category>.ndjson``, rendered from their
strokes). Files go to ``$WGAN_DIST_CACHE/quickdraw/`` (default ``~/.cache/wgan_dist``) and are
reused. A download shows a bytes progress bar, resumes an interrupted transfer with an HTTP
Range request (from the ``.part`` file a killed run left, and after a dropped connection, up
to ``RETRIES`` times), and checks the result: the size the server announced, and that the
file parses (an ``.npy`` header whose data size matches, an ``.ndjson`` whose last line is
complete JSON) before it takes the final name.

``WGAN_DIST_QUICKDRAW_URL`` replaces the base URL (files are then expected under
``$WGAN_DIST_QUICKDRAW_URL/numpy_bitmap/<category>.npy`` and ``.../simplified/<category>.ndjson``),
for a mirror or a local server.
"""
from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from ..cache import cache_root

BASE_URL = "https://storage.googleapis.com/quickdraw_dataset/full"
URL_ENV = "WGAN_DIST_QUICKDRAW_URL"
CATEGORIES_URL = "https://github.com/googlecreativelab/quickdraw-dataset/blob/master/categories.txt"
PREFIX = "quickdraw:"
RETRIES = 3
CHUNK = 1 << 16


class DownloadError(OSError):
    """A download that cannot be completed; the message names the URL and what to do."""


class UnknownCategory(ValueError):
    """The server has no such category (exit 2: the name is wrong, not the network)."""


def categories_of(spec: str) -> list[str]:
    """``quickdraw:bicycle,aircraft carrier`` -> ["bicycle", "aircraft carrier"]."""
    names = [n.strip() for n in spec[len(PREFIX):].split(",") if n.strip()]
    if not names:
        raise ValueError(f"{spec!r}: name at least one category, e.g. quickdraw:bicycle,cat "
                         f"(the list: {CATEGORIES_URL})")
    return names


def url_for(category: str, kind: str) -> str:
    """``kind``: numpy_bitmap (.npy) or simplified (.ndjson)."""
    base = os.environ.get(URL_ENV) or BASE_URL
    ext = ".npy" if kind == "numpy_bitmap" else ".ndjson"
    return f"{base.rstrip('/')}/{kind}/{urllib.parse.quote(category)}{ext}"


def _check_complete(path: Path, kind: str) -> None:
    """The downloaded bytes are a whole file of their kind."""
    if kind == "numpy_bitmap":
        import numpy as np

        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as e:
            raise DownloadError(f"{path}: not a complete .npy ({type(e).__name__}: {e})") from None
        if arr.size * arr.itemsize > path.stat().st_size:
            raise DownloadError(f"{path}: truncated .npy (shape {arr.shape})")
        return
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        lines = [x for x in f.read().splitlines() if x.strip()]
    try:
        json.loads(lines[-1]) if lines else None
    except ValueError:
        raise DownloadError(f"{path}: truncated .ndjson (its last line is not complete JSON)") from None


def _open(url: str, offset: int):
    req = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        return urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part is already whole
            return None
        raise


def _fetch(url: str, part: Path, what: str, progress: bool) -> None:
    """Append the rest of ``url`` to ``part``, resuming from its size; checks the length."""
    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    resp = _open(url, offset)
    if resp is None:
        return
    with resp:
        if offset and resp.status != 206:  # the server ignored Range: start over
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=what,
                disable=not progress, leave=False) as bar:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise ConnectionError(f"{part.stat().st_size} of {total} bytes")


def download(category: str, kind: str, progress: bool = True,
             log: Callable[[str], None] = print) -> Path:
    """The cached file of ``category`` (downloading it first if needed)."""
    url = url_for(category, kind)
    dest = cache_root() / "quickdraw" / kind / Path(urllib.parse.unquote(url.rsplit("/", 1)[1]))
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log(f"downloading QuickDraw {category!r} ({kind}) from {url}"
        + (f", resuming at {part.stat().st_size} bytes" if part.exists() else ""))
    for attempt in range(RETRIES + 1):
        try:
            _fetch(url, part, category, progress)
            break
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise UnknownCategory(f"{url}: no QuickDraw category {category!r} (HTTP 404); the "
                                    f"345 category names are listed at {CATEGORIES_URL}") from None
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", e)
            if attempt == RETRIES:
                raise DownloadError(f"{url}: cannot download ({reason}); {part} keeps the "
                                    f"{part.stat().st_size if part.exists() else 0} bytes so far "
                                    f"and the next run resumes from there; set {URL_ENV} "
                                    f"for a mirror") from None
            log(f"download of {category!r} interrupted ({reason}); resuming")
            time.sleep(0.5 * (attempt + 1))
    _check_complete(part, kind)
    os.replace(part, dest)
    return dest


def resolve_sources(sources: list[str], resolution: int, progress: bool = True,
                    log: Callable[[str], None] = print) -> list[str]:
    """``quickdraw:NAME,...`` entries replaced by their downloaded files; others kept."""
    out = []
    for src in sources:
        if not src.startswith(PREFIX):
            out.append(src)
            continue
        kind = "numpy_bitmap" if resolution == 28 else "simplified"
        out += [str(download(c, kind, progress, log)) for c in categories_of(src)]
    return out
