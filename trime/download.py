"""Downloads that survive interruption: ``URL`` to ``PATH`` through ``PATH.partial``.

A rerun continues a cut download where it stopped (an HTTP ``Range`` request; a server that
ignores it sends the whole file again), the free disk space is checked before writing, and a
file is only ever at ``PATH`` once complete. ``sha256`` fingerprints what was downloaded.
"""

import hashlib
import os
import shutil
import urllib.parse
import urllib.request


def sha256(path: str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_free_space(folder: str, needed: int, what: str) -> None:
    """Refuse to start writing ``needed`` bytes into ``folder`` when they do not fit."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise OSError(f"{what} needs {needed / 2**30:.2f} GiB in {folder}, {free / 2**30:.2f} GiB "
                      "are free: free some space or choose another folder")


def download(url: str, path: str, progress: bool = True, extra_bytes: int = 0) -> str:
    """``url`` to ``path`` (resumed from ``path.partial``); returns ``path``. ``extra_bytes``:
    space the caller will need next to it (e.g. to unpack), checked with the download's own."""
    partial = path + ".partial"
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    have = os.path.getsize(partial) if os.path.exists(partial) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request) as response:
        resumed = have > 0 and getattr(response, "status", None) == 206  # file:// has no status
        if not resumed:
            have = 0
        length = int(response.headers.get("Content-Length") or 0)
        check_free_space(folder, length + extra_bytes, f"downloading {url}")
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=(have + length) or None, initial=have, unit="B", unit_scale=True,
                       desc=os.path.basename(path))
        with open(partial, "ab" if resumed else "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
        if bar is not None:
            bar.close()
    if length and os.path.getsize(partial) != have + length:
        raise OSError(f"the download of {url} stopped at {os.path.getsize(partial):,} of "
                      f"{have + length:,} bytes: run again to resume it")
    os.replace(partial, path)
    return path


def local_path(source: str, folder: str) -> str:
    """Where ``obtain`` keeps ``source``: a local file where it is, a URL's file in ``folder``
    under its own name."""
    if "://" not in source:
        return source
    return os.path.join(folder, os.path.basename(urllib.request.url2pathname(
        urllib.parse.urlparse(source).path)))


def obtain(source: str, folder: str, progress: bool = True, extra_bytes: int = 0) -> str:
    """A local file as it is, or a URL (http(s)://, file://) downloaded into ``folder`` under its
    own name (resumed; kept, so a rerun does not download it again). Returns the local path."""
    path = local_path(source, folder)
    if path == source:
        if not os.path.isfile(source):
            raise FileNotFoundError(f"no file {source}")
    elif not os.path.isfile(path):
        download(source, path, progress, extra_bytes)
    return path


def open_zip(path: str):
    """``zipfile.ZipFile(path)``, a damaged or foreign file refused with what to do."""
    import zipfile

    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path} is not a zip archive ({error}): delete it and run again to "
                         "download it anew") from error
