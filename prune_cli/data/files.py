"""File plumbing shared by the loaders: checksums, downloads with a timeout, safe extraction."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from prune_cli.errors import DataError, one_line

__all__ = ["DataError", "one_line"]

DOWNLOAD_TIMEOUT_S = 30.0


def md5sum(path: Path) -> str:
    """Hex md5 of the file at `path`."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_md5(path: Path, md5: str) -> None:
    """Raise DataError naming `path` unless its md5 is `md5`."""
    actual = md5sum(path)
    if actual != md5:
        raise DataError(
            f"{path}: md5 {actual} does not match the official {md5} (corrupt or partial file; delete it)"
        )


def download(url: str, dest: Path, md5: str | None, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download `url` to `dest` atomically (never leaves a partial file at `dest`), checking `md5`.

    Raises OSError-family errors (URLError, timeouts) on network failure and DataError on a bad
    checksum; callers turn the former into a DataError that names the dataset root.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            _copy_with_progress(resp, out, url, dest.name)
        if md5 is not None and md5sum(tmp) != md5:
            raise DataError(f"{url}: downloaded file has the wrong md5 (expected {md5})")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _copy_with_progress(resp, out, url: str, name: str) -> None:
    """Copy a download to ``out``: a bar on a terminal, a log line every 10% elsewhere."""
    import logging

    from tqdm.auto import tqdm

    log = logging.getLogger("prune_cli")
    total = int(resp.headers.get("Content-Length") or 0) or None
    log.info("downloading %s (%s)", url, f"{total / 2**20:.0f} MiB" if total else "size unknown")
    done, next_note = 0, 0.1
    with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=None, leave=False) as bar:
        while chunk := resp.read(1 << 20):
            out.write(chunk)
            done += len(chunk)
            bar.update(len(chunk))
            if total and bar.disable and done / total >= next_note:
                log.info("downloading %s: %d%%", name, int(100 * done / total))
                next_note += 0.1


def extract_tar(archive: Path, member_dir: str, dest_root: Path) -> Path:
    """Extract the `member_dir/` tree of a .tar.gz into `dest_root` and return its path.

    Extraction goes to a private temporary folder that is renamed into place, so an interrupted
    or concurrent extraction never leaves a half-written folder; members outside `member_dir/`,
    absolute paths, `..` and links are refused.
    """
    final = dest_root / member_dir
    tmp = Path(tempfile.mkdtemp(dir=dest_root, prefix=f".{member_dir}."))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = []
                for m in tar.getmembers():
                    parts = Path(m.name).parts
                    if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
                        raise DataError(f"{archive}: unsafe member {m.name!r} in archive")
                    if parts and parts[0] == member_dir:
                        members.append(m)
                if not members:
                    raise DataError(f"{archive}: archive has no {member_dir}/ folder")
                for m in members:
                    if m.isdir():
                        (tmp / m.name).mkdir(parents=True, exist_ok=True)
                        continue
                    target = tmp / m.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    assert src is not None  # regular files always have data
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"{archive}: cannot extract ({type(e).__name__}: {e})") from e
        try:
            os.replace(tmp / member_dir, final)
        except OSError:
            # Another process finished first; its copy is as good as ours.
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
