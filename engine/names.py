"""The names the engine gives the files it makes beside a user's file (temporaries, probes).

Why one place: a temporary is the output's name plus a suffix (``.<name>.<pid>.<tag>.cog.tmp.tif.msk.ovr.tmp`` is
the longest GDAL and the writer make), so an output name that is legal on its own — up to 255 bytes on most file
systems — may leave no room for it (issue 25: a 240-character output was refused for its temporary's name). Every
writer (GeoTIFFs, report files, the batch summary, weights) takes its temporary's stem from :func:`temporary_stem`,
and the stale-temporary cleanup recognises names by the same stem. Standard library only (every layer uses it).
"""

from __future__ import annotations

import hashlib
import re

NAME_MAX = 255  # bytes in one file name on ext4, XFS, btrfs, APFS, NTFS (UTF-16 units there)
SUFFIX_ROOM = 64  # what a temporary adds after its stem, with room to spare: .<pid>.<tag>.probe.tmp.tif.msk.ovr.tmp
STEM_MAX = NAME_MAX - SUFFIX_ROOM - 1  # the leading dot


def temporary_stem(name: str) -> str:
    """``name`` itself when a temporary built on it fits the file system's name limit, else its first characters,
    ``~`` and 8 hex digits of its SHA-1: unique per name, the same every time (the cleanup finds it again)."""
    if len(name.encode("utf-8")) <= STEM_MAX:
        return name
    digest = hashlib.sha1(name.encode("utf-8"), usedforsecurity=False).hexdigest()[:8]  # a name, not a secret
    head = name.encode("utf-8")[: STEM_MAX - 9].decode("utf-8", errors="ignore")
    return f"{head}~{digest}"


# ---------------------------------------------------------------------------------------------------------------
# The writer's temporaries: .<stem>.<pid>.<tag>[.<kind>].tmp.tif, and GDAL's side files on them

TMP_SUFFIX = ".tmp.tif"
KINDS = ("cog", "probe")  # the COG copy; the writability probe of an output folder
SIDE_FILES = (".aux.xml", ".ovr.tmp", ".msk.ovr.tmp")  # what GDAL may write beside a temporary


def temporary_name(name: str, group: str, kind: str = "") -> str:
    """The temporary of the output ``name`` for the writer ``group`` (``<pid>.<8 hex digits>``) and ``kind``."""
    return f".{temporary_stem(name)}.{group}{'.' + kind if kind else ''}{TMP_SUFFIX}"


def temporary_pattern(name: str) -> re.Pattern[str]:
    """Exactly the names :func:`temporary_name` (and GDAL's side files on them) gives the output ``name``: the
    stale-temporary cleanup removes nothing else — not a user's ``.a.tif.123.deadbeef.notes-tmp.txt``. The stem is
    matched literally (``scene[1].tif`` is no pattern)."""
    kinds = "|".join(KINDS)
    sides = "|".join(re.escape(s) for s in SIDE_FILES)
    return re.compile(rf"{re.escape('.' + temporary_stem(name) + '.')}(?P<pid>\d+)\.(?P<tag>[0-9a-f]{{8}})"
                      rf"(?:\.(?P<kind>{kinds}))?{re.escape(TMP_SUFFIX)}(?P<side>{sides})?")  # fmt: skip
