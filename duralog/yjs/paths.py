"""Document paths, names and where a document's streams live in the Store.

YJS-PROTOCOL.md 4 lets document paths hold slashes; 12.2 asks servers to refuse
``.`` and ``..`` segments and to normalize double slashes. We follow the
reference server's rules: percent-decode first (so ``%2e%2e`` is ``..``), collapse
runs of slashes, refuse ``.``/``..`` segments and any character outside
``[A-Za-z0-9_-/]``, at most 256 characters.

One Yjs document is several ordinary streams, all under
``yjs/{service}/docs/{docPath}/``. Their last segments start with ``.``, which a
document path can never contain, so no document's streams collide with
another's:

=========================================  =====================================
``.updates``                               the lib0-framed updates, as sent
``.index``                                 JSON, one entry per snapshot written
``.snapshots/{offset}_snapshot``           one compacted snapshot (octet-stream)
``.awareness/{name}``                      presence, octet-stream, sliding TTL
=========================================  =====================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from ..protocol.offsets import is_offset_token

MAX_DOC_PATH = 256
MAX_NAME = 64
_DOC_CHARS = re.compile(r"[A-Za-z0-9_\-/]+")
_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_SLASHES = re.compile(r"/+")
SNAPSHOT_SUFFIX = "_snapshot"


class PathError(ValueError):
    """A document path, service or awareness name the server refuses (400)."""


def normalize_doc_path(raw: bytes) -> str:
    """The document path for the raw (percent-encoded) URL tail after ``/docs/``."""
    try:
        decoded = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise PathError("document path is not valid UTF-8") from None
    path = _SLASHES.sub("/", decoded).strip("/")
    if not path:
        raise PathError("document path is empty")
    for segment in path.split("/"):
        if segment in (".", ".."):
            raise PathError("document path has a '.' or '..' segment")
    if not _DOC_CHARS.fullmatch(path):
        raise PathError("document path may hold only letters, digits, '_', '-' and '/'")
    if len(path) > MAX_DOC_PATH:
        raise PathError(f"document path is longer than {MAX_DOC_PATH} characters")
    return path


def check_name(value: str, what: str) -> str:
    """A service or awareness name: 1-64 of ``[A-Za-z0-9_-]``."""
    if not _NAME.fullmatch(value):
        raise PathError(f"{what} must be 1-{MAX_NAME} letters, digits, '_' or '-'")
    return value


def snapshot_key(token: str) -> str:
    """6: the offset sentinel that names a snapshot taken at ``token``."""
    return token + SNAPSHOT_SUFFIX


def parse_snapshot_key(value: str) -> str | None:
    """The offset token in ``{offset}_snapshot``, or None when it is not one of ours."""
    if not value.endswith(SNAPSHOT_SUFFIX):
        return None
    token = value[: -len(SNAPSHOT_SUFFIX)]
    return token if is_offset_token(token) else None


@dataclass(frozen=True, slots=True)
class DocStreams:
    """The Store paths of one document's streams."""

    service: str
    doc: str

    @property
    def base(self) -> str:
        return f"yjs/{self.service}/docs/{self.doc}/"

    @property
    def key(self) -> str:
        return f"{self.service}/{self.doc}"

    @property
    def updates(self) -> str:
        return self.base + ".updates"

    @property
    def index(self) -> str:
        return self.base + ".index"

    @property
    def snapshots_prefix(self) -> str:
        return self.base + ".snapshots/"

    def snapshot(self, token: str) -> str:
        return self.snapshots_prefix + snapshot_key(token)

    @property
    def awareness_prefix(self) -> str:
        return self.base + ".awareness/"

    def awareness(self, name: str) -> str:
        return self.awareness_prefix + name

    def owns(self, path: str) -> bool:
        """Whether a Store path is one of this document's streams (not a nested document's:
        those continue with a segment that cannot start with '.')."""
        return path.startswith(self.base + ".")


def doc_of_updates_path(path: str) -> DocStreams | None:
    """The document whose updates stream is at ``path``, if it is one."""
    if not (path.startswith("yjs/") and path.endswith("/.updates")):
        return None
    inner = path[len("yjs/"):-len("/.updates")]
    service, sep, doc = inner.partition("/docs/")
    if not sep or not service or not doc:
        return None
    return DocStreams(service, doc)
