"""Caller URIs -> places inside the caller's own file area, as an object store serves keys under a bucket.

The operator names roots (FORETELL_IMPORT_ROOTS, FORETELL_EXPORT_ROOTS: directories or s3://bucket/prefix).
Each tenant's area is ROOT/<tenant> (with authentication off, the root itself); a URI is a path relative
to the caller's first area, or a file:// path / s3:// key under one of its areas. The internal principal has no
area; no tenant reaches the artifact area, the database or the key files, whatever the roots are.

Local files are never opened by path: `Place` walks from the area's root one component at a time with
O_NOFOLLOW (a symlink anywhere below the root is refused, and checks cannot be raced by swapping one in), reads
regular files only, and writes a new file only: to a hidden partial in the same directory, hard-linked into its
name, which fails if anything (a file, a symlink) took the name meanwhile. Nothing here ever puts a file's
content into an error or a log line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from foretell.core import auth
from foretell.core.artifacts import is_s3, parse_s3
from foretell.core.errors import InvalidArgument, invalid
from foretell.core.settings import Settings

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Place:
    """A local file: `parts` under the trusted directory `base` (which is resolved and never a tenant's)."""

    base: str
    parts: tuple[str, ...]
    field: str
    # Only for places the server chose itself (a default export under artifacts/exports).
    make_parents: bool = False

    @property
    def uri(self) -> str:
        return Path(self.base, *self.parts).as_uri()

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "parts": list(self.parts), "field": self.field, "make_parents": self.make_parents}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Place:
        return cls(str(data["base"]), tuple(data["parts"]), str(data["field"]), bool(data["make_parents"]))

    @classmethod
    def server_chosen(cls, base: Path, parts: tuple[str, ...], field: str) -> Place:
        """A place the server picked under its own directory `base` (never a caller's URI)."""
        return cls(str(base.resolve()), parts, field, make_parents=True)

    def _refuse(self, why: str) -> InvalidArgument:
        return invalid(self.field, why)

    @contextlib.contextmanager
    def _parent(self, make: bool = False) -> Iterator[int]:
        """A descriptor of the directory holding the file, reached without following any link below `base`."""
        try:
            fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:  # an area's root not made yet
            raise self._refuse("names a directory that does not exist in your file area") from None
        try:
            for name in self.parts[:-1]:
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not make:
                        raise self._refuse("names a directory that does not exist in your file area") from None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o750, dir_fd=fd)
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:  # ELOOP (a symlink), ENOTDIR, EACCES
                    raise self._refuse(
                        "goes through a symbolic link or a non-directory; links are not followed"
                    ) from None
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def check_readable(self) -> None:
        with self.open_read():
            pass

    def open_read(self) -> IO[bytes]:
        """The file, opened for reading: a regular file reached without links, else INVALID_ARGUMENT."""
        name = self.parts[-1]
        with self._parent() as parent:
            try:
                before = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                raise self._refuse("is not a file in your file area") from None
            if not stat.S_ISREG(before.st_mode):
                raise self._refuse("is not a regular file (links, devices, pipes and sockets are refused)")
            try:
                # O_NONBLOCK: were it swapped for a FIFO after the check, opening it must not hang.
                fd = os.open(
                    name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=parent
                )
            except OSError:
                raise self._refuse("is not a readable regular file") from None
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            os.close(fd)
            raise self._refuse("changed while it was opened; try again")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def check_writable(self) -> None:
        """INVALID_ARGUMENT unless the parent directory is reachable and the name is free."""
        with self._parent() as parent:
            self._check_free(parent)

    def _check_free(self, parent: int) -> None:
        try:
            os.stat(self.parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        raise self._refuse("already exists; an export writes a new file and never replaces one")

    @contextlib.contextmanager
    def writing(self, text: bool = True) -> Iterator[IO[Any]]:
        """A new file at this place: written to a hidden partial next to it, linked into its name at the end."""
        name = self.parts[-1]
        with self._parent(self.make_parents) as parent:
            self._check_free(parent)
            partial = f".{name}.{uuid.uuid4().hex[:12]}.partial"
            fd = os.open(
                partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640, dir_fd=parent
            )
            try:
                mode = {"mode": "w", "encoding": "utf-8", "newline": ""} if text else {"mode": "wb"}
                with os.fdopen(fd, **mode) as out:  # type: ignore[call-overload]
                    yield out
                self._link(partial, name, parent)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(partial, dir_fd=parent)

    def _link(self, partial: str, name: str, parent: int) -> None:
        try:
            os.link(partial, name, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
        except FileExistsError:
            raise self._refuse("already exists; an export writes a new file and never replaces one") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            self._check_free(parent)  # a file system without hard links: rename, after one more look
            os.rename(partial, name, src_dir_fd=parent, dst_dir_fd=parent)

    def deliver(self, local_file: Path) -> None:
        """Copies a finished server-side file (a batch output, a forecast export) to this place."""
        with local_file.open("rb") as source, self.writing(text=False) as out:
            shutil.copyfileobj(source, out, 1 << 20)


@dataclass(frozen=True)
class _Area:
    base: Path  # resolved; the walk starts here
    parts: tuple[str, ...]  # the tenant's directory below it, if any
    shown: tuple[Path, ...]  # the spellings a caller may use for the area (configured and resolved)


class FileRoots:
    """Resolves caller URIs against the configured roots, for the tenant of the current call."""

    def __init__(self, settings: Settings) -> None:
        artifacts = settings.artifacts.resolve()
        # What no tenant may touch even when a root holds it (a root of data_dir with authentication off).
        self._server_files = [artifacts]
        for file in (
            settings.api_keys_file,
            settings.tls_key_file,
            settings.tls_cert_file,
            settings.tls_client_ca_file,
        ):
            if file is not None:
                self._server_files.append(file.resolve())
        if settings.database_url.startswith("sqlite:///"):
            database = settings.database_url.removeprefix("sqlite:///").partition("?")[0]
            if database and database != ":memory:":
                self._server_files.append(Path(database).resolve())
        self._import = self._roots(settings.import_roots, artifacts, settings.artifact_uri)
        self._export = self._roots(settings.export_roots, artifacts, settings.artifact_uri)

    @staticmethod
    def _roots(roots: list[str], artifacts: Path, artifact_uri: str) -> list[str | Path]:
        out: list[str | Path] = []
        for root in roots:
            if is_s3(root):
                bucket, prefix = parse_s3(root, "file root")
                if artifact_uri and is_s3(artifact_uri):
                    other, other_prefix = parse_s3(artifact_uri, "artifact_uri")
                    if bucket == other and (
                        f"{prefix}/".startswith(f"{other_prefix}/") or f"{other_prefix}/".startswith(f"{prefix}/")
                    ):
                        raise ValueError(f"file root {root!r} overlaps FORETELL_ARTIFACT_URI")
                out.append(f"s3://{bucket}/{prefix}")
                continue
            path = Path(root).resolve()
            if path.is_relative_to(artifacts):
                raise ValueError(f"file root {root!r} lies inside the artifact directory")
            path.mkdir(parents=True, exist_ok=True)
            out.append(Path(os.path.abspath(root)))  # as configured; resolved again per call
        return out

    # ---- whose area -----------------------------------------------------------------------------------

    @staticmethod
    def _tenant() -> str | None:
        """The caller's directory name under each root (its tenant); None with authentication off (the root
        itself), the internal principal for the services' own calls."""
        principal = auth.current()
        if principal is None:
            return None
        if principal.name == auth.INTERNAL_PRINCIPAL:
            return auth.INTERNAL_PRINCIPAL
        return principal.tenant  # a plain path segment (core/tenancy.PATTERN)

    def _areas(self, roots: list[str | Path], tenant: str | None) -> tuple[list[_Area], list[str]]:
        local: list[_Area] = []
        buckets: list[str] = []
        internal = tenant == auth.INTERNAL_PRINCIPAL
        for root in [] if internal else roots:
            if isinstance(root, str):
                buckets.append(f"{root}/{tenant}" if tenant else root)
                continue
            real = root.resolve()
            parts = (tenant,) if tenant else ()
            shown = dict.fromkeys([root.joinpath(*parts), real.joinpath(*parts)])
            local.append(_Area(real, parts, tuple(shown)))
        return local, buckets

    # ---- resolving ------------------------------------------------------------------------------------

    def source(self, uri: str, field: str) -> Place | str:
        """Where an import or batch input may be read: a local Place (checked readable) or an s3:// key."""
        place, _ = self._resolve(uri, field, self._import)
        if isinstance(place, Place):
            place.check_readable()
        return place

    def destination(self, uri: str, field: str) -> Place | str:
        """Where an export or batch output may be written: a new local file (checked free) or an s3:// key."""
        place, area = self._resolve(uri, field, self._export)
        if isinstance(place, Place):
            if area is not None and area.parts:
                # The tenant's own directory is the server's to make; deeper ones are the tenant's.
                area.base.joinpath(*area.parts).mkdir(mode=0o750, exist_ok=True)
            place.check_writable()
        return place

    def _resolve(self, uri: str, field: str, roots: list[str | Path]) -> tuple[Place | str, _Area | None]:
        if not uri:
            raise invalid(field, "is required")
        if "\x00" in uri:
            raise invalid(field, "must not contain a NUL character")
        local, buckets = self._areas(roots, self._tenant())
        if is_s3(uri):
            bucket, key = parse_s3(uri, field)
            found = f"s3://{bucket}/{key}"
            if not any(found.startswith(f"{area}/") for area in buckets):
                raise invalid(field, f"is outside your file area{_listing(buckets[:1])}")
            return found, None
        if "://" in uri and not uri.startswith("file://"):
            raise invalid(field, "must be a path in your file area, a file:// URI or an s3:// URI")
        raw = uri.removeprefix("file://")
        if uri.startswith("file://") and not raw.startswith("/"):
            raise invalid(field, "a file:// URI needs an absolute path (file:///...)")
        segments = raw.split("/")
        if ".." in segments:
            raise invalid(field, "must not contain '..' segments")
        if not local:
            raise invalid(
                field, "no local file area is configured for you (FORETELL_IMPORT_ROOTS, FORETELL_EXPORT_ROOTS)"
            )
        if raw.endswith("/"):
            raise invalid(field, "names a directory; name a file")
        place, area = _place(Path(os.path.normpath(raw)) if raw.startswith("/") else None, segments, local, field)
        if self._is_server_file(Path(place.base, *place.parts)):
            raise invalid(field, "is one of the server's own files")
        return place, area

    def _is_server_file(self, target: Path) -> bool:
        for own in self._server_files:
            # foretell.db-wal, -shm and -journal go with the database file.
            if target.is_relative_to(own) or (target.parent == own.parent and target.name.startswith(f"{own.name}-")):
                return True
        return False


def _place(absolute: Path | None, segments: list[str], areas: list[_Area], field: str) -> tuple[Place, _Area]:
    if absolute is None:
        relative = tuple(s for s in segments if s not in ("", "."))
        if not relative:
            raise invalid(field, "names no file")
        return Place(str(areas[0].base), (*areas[0].parts, *relative), field), areas[0]
    # The deepest area that holds the path (roots may nest).
    spellings = sorted(((shown, area) for area in areas for shown in area.shown), key=lambda s: -len(s[0].parts))
    for shown, area in spellings:
        if absolute.is_relative_to(shown) and absolute != shown:
            return Place(str(area.base), (*area.parts, *absolute.relative_to(shown).parts), field), area
    raise invalid(field, f"is outside your file area{_listing([areas[0].shown[0].as_uri()])}")


def _listing(areas: list[str]) -> str:
    return f" {areas[0]}; name a path relative to it" if areas else ""
