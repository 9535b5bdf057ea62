"""Every file operation for a user runs with that user's rights, and a user's folder cannot lead elsewhere.

Design: the service runs as root (for several users) or as one user (single-user mode). As root it keeps
its own identity and switches only the *file-system* identity of the calling thread around each file
operation: ``setfsuid``/``setfsgid`` plus the user's supplementary groups, set with the raw ``setgroups``
system call (glibc's wrapper would change every thread of the process; the kernel call changes one).
File servers (Samba, NFS-Ganesha) use the same per-thread credentials. While a thread acts as a user:

- the kernel checks every open, stat, rename and unlink against that user's uid and groups (root's
  CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH drop out of the thread's effective set as soon as its fsuid is
  not 0), so a link to /etc/shadow or to another user's file reads as "permission denied";
- files and folders it creates belong to the user, without any chown.

On top of the kernel's checks, :func:`read_photo` applies the product's own policy, which also holds in
single-user mode (where the kernel would allow the read): the photo's real path must lie inside one of the
user's outbound folders (a symbolic link pointing elsewhere is refused, not followed), it must be a regular
file (looked at before it is opened: a FIFO, socket or device is never opened; a symbolic link that loops or
leads nowhere is refused with that reason), and a hard link to a file owned by someone else is refused. The
last component is opened with O_NOFOLLOW, so a link swapped in after the check fails instead of being followed.

Alternative considered: one privilege-dropped worker process per user. It isolates more, but every such
process would load the face models (hundreds of MB each) or ship pixels over a pipe; per-thread credentials
give the same file-access guarantee in one process.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import platform
import pwd
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cloakd.core.errors import CloakdError, PhotoError

#: raw setgroups system call numbers (per-thread; glibc's setgroups() is process-wide)
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159, "riscv64": 159, "ppc64le": 81, "s390x": 206}
#: larger files are refused without being read (no photo is this large; a video or disk image might be)
MAX_PHOTO_BYTES = 512 * 1024 * 1024

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setfsuid.argtypes = _libc.setfsgid.argtypes = [ctypes.c_uint]


class PrivilegeError(CloakdError):
    """The service cannot take on a user's rights (not root, missing capability, unsupported platform)."""


class RefusedFile(PhotoError):
    """A file in an outbound folder that cloakd will not read for the user (link outside, not a file...)."""


@dataclass(frozen=True)
class Account:
    """A unix account: the identity every file operation for one configured user runs with."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def lookup(cls, name: str) -> "Account":
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise PrivilegeError(f"no unix account {name!r}") from None
        return cls(name, entry.pw_uid, entry.pw_gid, tuple(os.getgrouplist(name, entry.pw_gid)))

    @classmethod
    def current(cls) -> "Account":
        uid = os.geteuid()
        return cls(pwd.getpwuid(uid).pw_name, uid, os.getegid(), tuple(os.getgroups()))


def can_switch() -> bool:
    """Whether this process can act as other users (it runs as root)."""
    return os.geteuid() == 0


def check_single_user(accounts: Sequence[Account]) -> None:
    """Without root, every configured account must be the service's own (single-user mode)."""
    if can_switch():
        return
    me = Account.current()
    for account in accounts:
        if account.uid != me.uid:
            raise PrivilegeError(
                f"cloakd runs as {me.name}, but the configuration has a user with account "
                f"{account.name!r}: run cloakd as root for several users, or as {account.name}"
            )


def _setgroups_thread(groups: Sequence[int]) -> None:
    number = _SYS_SETGROUPS.get(platform.machine())
    if number is None:
        raise PrivilegeError(
            f"per-thread group switching is not supported on {platform.machine()}: run one "
            f"cloakd per user, as that user"
        )
    array = (ctypes.c_uint * max(1, len(groups)))(*groups)
    if _libc.syscall(ctypes.c_long(number), ctypes.c_size_t(len(groups)), array) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"setgroups failed: {os.strerror(err)} (cloakd needs CAP_SETGID)")


def _set_fs_ids(uid: int, gid: int) -> None:
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    # both calls return the previous id, even on failure: asking again tells what is in force now
    if _libc.setfsgid(gid) != gid or _libc.setfsuid(uid) != uid:
        raise PrivilegeError(
            f"cannot switch file-system identity to uid {uid} (cloakd needs CAP_SETUID and CAP_SETGID)"
        )


_ROOT_GROUPS = tuple(os.getgroups())
_state = threading.local()


@contextmanager
def acting_as(account: Account) -> Iterator[None]:
    """Run the body with ``account``'s file-system identity (this thread only). No-op without root."""
    if not can_switch() or getattr(_state, "uid", None) == account.uid:
        yield
        return
    _state.uid = account.uid
    try:
        _setgroups_thread(account.groups)
        _set_fs_ids(account.uid, account.gid)
        yield
    finally:
        _set_fs_ids(0, 0)
        _setgroups_thread(_ROOT_GROUPS)
        _state.uid = None


@dataclass(frozen=True)
class Original:
    """A photo as read for its user: the bytes, their sha256, and the stat of the file they came from."""

    path: Path
    data: bytes
    sha256: str
    size: int
    mtime_ns: int
    inode: int
    via_link: bool  # ``path`` is a symbolic link to the file read (its own size and mtime are the link's)


def inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def read_photo(account: Account, path: Path, roots: Sequence[Path], folders: str = "outbound folders") -> Original:
    """Read ``path`` as ``account``; RefusedFile if it is not a plain file of this user's outbound folders
    (or of the other ``roots`` named ``folders`` in messages: reference photos, Sybil candidates).

    OSError (FileNotFoundError, PermissionError...) passes through for the caller to classify.
    """
    with acting_as(account):
        link = os.path.islink(path)
        real = Path(os.path.realpath(path))
        allowed = [Path(os.path.realpath(r)) for r in roots]
        if not inside(real, allowed):
            raise RefusedFile(
                f"{path} leads to {real} (a symbolic link), outside {account.name}'s {folders}: "
                f"cloakd does not follow it"
            )
        _check_kind(path, real, link)
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # swapped in since _check_kind looked
                raise RefusedFile(f"{path} is {kind_of(st.st_mode)}, not a photo: cloakd does not read it")
            if st.st_nlink > 1 and st.st_uid != account.uid:
                owner = _owner(st.st_uid)
                raise RefusedFile(
                    f"{path} is a hard link to a file owned by {owner}, not by {account.name}: cloakd does not read it"
                )
            if st.st_size > MAX_PHOTO_BYTES:
                raise RefusedFile(
                    f"{path} is {st.st_size / 2**20:.0f} MB, more than any photo cloakd processes "
                    f"({MAX_PHOTO_BYTES // 2**20} MB)"
                )
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read(MAX_PHOTO_BYTES + 1)
        finally:
            os.close(fd)
    return Original(path, data, hashlib.sha256(data).hexdigest(), st.st_size, st.st_mtime_ns, st.st_ino, via_link=link)


#: what a file that is not a regular file is, in words
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def kind_of(mode: int) -> str:
    """``mode``'s file type in words ("a named pipe (FIFO)", "a socket"...)."""
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def _check_kind(path: Path, real: Path, link: bool) -> None:
    """RefusedFile unless ``real`` is a regular file; looked at without opening it (opening a FIFO or a
    device can block or act: a tape rewinds, a modem dials), through ``path``'s links."""
    try:
        st = os.stat(real)
    except OSError as e:
        if link and e.errno == errno.ELOOP:
            raise RefusedFile(f"{path} is a loop of symbolic links that leads to no file") from None
        if link and e.errno == errno.ENOENT:
            raise RefusedFile(f"{path} is a symbolic link to {real}, which does not exist") from None
        raise
    if not stat.S_ISREG(st.st_mode):
        what = kind_of(st.st_mode) + (f" ({real}, through a symbolic link)" if link else "")
        raise RefusedFile(f"{path} is {what}, not a photo: cloakd does not read it")


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
