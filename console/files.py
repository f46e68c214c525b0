"""The console's static files (`/static/...`): Litestar's router, on a file system that
answers "no such file" for a path no file of ours can have.

Why: Litestar's local file system stats the requested path as it comes. A NUL byte
(`%00`) makes `os.stat` raise ValueError, which nothing catches (a 500, and a traceback
per request in the log), and an OSError other than FileNotFoundError (a name too long,
a file used as a folder as in `/static/console.css/x`, a symlink loop) becomes a 500 as
well. To a visitor each is a file that is not there: 404. Any other OSError (EIO,
EMFILE, EACCES...) is the server's trouble, not the path's, and stays an error (Litestar
answers 500, or 401 for a PermissionError). Keeping a request inside the folder stays
Litestar's (`os.path.commonpath` on the normalized path). This can go when Litestar's
own file system answers these with 404.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Final

from litestar.file_system import BaseLocalFileSystem
from litestar.static_files import create_static_files_router

if TYPE_CHECKING:
    from pathlib import Path

    from litestar import Router
    from litestar.types import PathType
    from litestar.types.file_types import FileInfo

# What a path can do to `stat` by itself: no such name, a file used as a folder, a name
# too long, a symlink loop.
NO_SUCH_PATH: Final = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP})


class StaticFileSystem(BaseLocalFileSystem):
    """The local file system, where a path that no file can have is no file."""

    async def info(self, path: PathType, **kwargs: Any) -> FileInfo:
        """The file's info; FileNotFoundError for a path no file can have."""
        if "\x00" in str(path):  # os.stat's ValueError
            raise FileNotFoundError(f"no file {str(path)!r}")
        try:
            return await super().info(path, **kwargs)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError | NotADirectoryError) or exc.errno in NO_SUCH_PATH:
                raise FileNotFoundError(f"no file {str(path)!r}") from None
            raise


def static_files(directory: Path) -> Router:
    """`/static/...`: the files in `directory`, and nothing else."""
    return create_static_files_router("/static", [directory], file_system=StaticFileSystem())
