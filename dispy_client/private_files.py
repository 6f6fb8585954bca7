"""Files the client writes for its user: readable by that user alone, never written through a link.

A job's `dispy_send_file` names the file it sends, and whoever can write in
`dest_path` (a shared directory, say) could plant a symbolic link there under
that name, so that saving it overwrites a file of the user's elsewhere. So a
sent file is written to a fresh file of its own in `dest_path` (O_EXCL,
O_NOFOLLOW, mode 0600), opened relative to that directory, and renamed over
its name: a rename replaces a directory entry, it follows no link and writes
into no other file's inode (a planted hard link keeps its contents). A name
that is a symbolic link already is refused outright, with the reason.

The recover file holds the cluster's id and every job's id: 0600 too.
"""

from __future__ import annotations

import os
import secrets
import stat
from typing import IO

PRIVATE = 0o600


class UnsafeName(OSError):
    """A sent file's name would leave `dest_path`, or is a symbolic link there."""


def save_sent_file(dest_path: str, name: str, data: bytes) -> str:
    """Saves `data` as `dest_path/name` (mode 0600), following no symbolic link at `name`.

    `dest_path` itself is the user's choice and is made if missing; `name`
    must be one plain component (the base name a job sent).

    Returns:
        The saved file's path.

    Raises:
        UnsafeName: `name` is not one component, or is a symbolic link in `dest_path`.
        OSError: the file cannot be written.
    """
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise UnsafeName(f"{name!r} is not a plain file name")
    os.makedirs(dest_path, exist_ok=True)
    dir_fd = os.open(dest_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _refuse_link(dir_fd, dest_path, name)
        temp = f".{name}.{secrets.token_hex(6)}.part"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), PRIVATE)  # whatever the umask
                out.write(data)
            _refuse_link(dir_fd, dest_path, name)  # planted since the first look: refused all the same
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
    finally:
        os.close(dir_fd)
    return os.path.join(dest_path, name)


def _refuse_link(dir_fd: int, dest_path: str, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeName(f"{os.path.join(dest_path, name)} is a symbolic link: not followed, file not saved")


def open_private(path: str, append: bool) -> IO[str]:
    """Opens a text file for the user alone (0600), created if missing; not through a symbolic link.

    Without `append`, it is emptied first.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE)
    try:
        os.fchmod(fd, PRIVATE)  # an existing file, or a umask, keeps no wider mode
    except OSError:
        pass  # not ours (another user's file we may write): its mode is its owner's
    return os.fdopen(fd, "a" if append else "w", encoding="utf-8")
