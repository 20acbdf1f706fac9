"""The GPU ledger's files (bench/run/gpu_ledger.py), and the locks a step holds on them: where they are, and what
is refused of them before anything is read or written.

- **Where**: one file per GPU, `<uuid>.ledger`, named by the GPU's UUID from nvidia-smi (an index means another GPU
  under another CUDA_VISIBLE_DEVICES), in `$PEFT_BENCH_GPU_LEDGER`, else /dev/shm/peft-bench-gpu-ledger (/tmp/… where
  there is no /dev/shm): a folder every user of the machine sees whatever their TMPDIR (a per-job TMPDIR would split
  the ledger and over-pack silently), on a tmpfs that a reboot empties, as it ends every process whose lines it
  holds. Created mode 1777 (anyone may add a file, only its owner may replace it) and its files 0666 (both users
  write the one file).
- **Locks**: a step holds an exclusive flock on each GPU's file, taken in UUID order (no two runners deadlock); the
  kernel drops a flock with its process, so a runner killed with -9 blocks nothing.
- **Refused**: a folder that is a symlink, not a folder, or writable by others without the sticky bit, a ledger file
  that is a symlink, a hard link or not a regular file, and one locked for over the wait asked (LedgerError; files
  are opened relative to the checked folder, never through a link). A file unlinked or replaced while a runner
  waited for its lock is opened anew.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from pathlib import Path
from typing import Iterator

LEDGER_ENV = "PEFT_BENCH_GPU_LEDGER"


class LedgerError(Exception):
    """The ledger cannot be used safely (its folder or a file is not what this module makes)."""


def ledger_folder() -> Path:
    given = os.environ.get(LEDGER_ENV)
    if given:
        return Path(given)
    # never tempfile.gettempdir(): it follows TMPDIR, and a per-user TMPDIR would split the ledger per user
    return Path("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp") / "peft-bench-gpu-ledger"


class LedgerFiles:
    """The ledger files of `uuids` (device -> GPU UUID) in `folder`: opened safely and locked together."""

    def __init__(self, uuids: dict[str, str], folder: Path | None = None):
        self.uuids, self.folder = dict(uuids), Path(folder or ledger_folder())

    def path(self, device: str) -> Path:
        return self.folder / f"{self.uuids[device]}.ledger"

    @contextlib.contextmanager
    def locked(self, wait: float) -> Iterator[tuple[int, dict[str, int]]]:
        """(the checked folder, each device's file) open, every file locked (each lock waited for at most `wait` s)
        until the block ends."""
        with contextlib.ExitStack() as stack:
            folder = self._folder()
            stack.callback(os.close, folder)
            files = {}
            for device in sorted(self.uuids, key=self.uuids.get):
                files[device] = self._locked(folder, device, wait)
                stack.callback(os.close, files[device])  # closing it unlocks it
            yield folder, files

    def _folder(self) -> int:
        """The checked folder, open (made 1777 when missing): every file is opened relative to it."""
        made = False
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.folder, 0o1777)
            made = True
        try:
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            link = e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(self.folder)
            raise LedgerError(f"{self.folder}: {'a symlink, never followed' if link else e.strerror}") from e
        if made:
            os.fchmod(fd, 0o1777)  # what the umask took off: every user's runner adds its files here
        mode = os.fstat(fd).st_mode
        if mode & 0o022 and not mode & stat.S_ISVTX:
            os.close(fd)
            raise LedgerError(f"{self.folder}: writable by others without the sticky bit (mode {mode & 0o7777:o}), "
                              "so anyone could replace a runner's entries")
        return fd

    def _file(self, folder: int, device: str) -> int:
        name, flags = f"{self.uuids[device]}.ledger", os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            try:  # without O_CREAT first: another user's file in a sticky folder opens (protected_regular)
                fd = os.open(name, flags, dir_fd=folder)
            except FileNotFoundError:
                try:
                    fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=folder)
                    os.fchmod(fd, 0o666)  # the other users' runners write it too
                except FileExistsError:  # another runner made it in between
                    fd = os.open(name, flags, dir_fd=folder)
        except OSError as e:
            raise LedgerError(f"{self.folder / name}: " + ("a symlink, never followed" if e.errno == errno.ELOOP
                                                           else e.strerror)) from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise LedgerError(f"{self.folder / name}: not a regular file of one link, never written")
        return fd

    def _locked(self, folder: int, device: str, wait: float) -> int:
        """The device's file, open and locked, and still the one its name gives: a file unlinked or replaced while
        this runner waited for its lock is no ledger any more (the runners after it use the new one)."""
        for _ in range(100):
            fd = self._file(folder, device)
            try:
                self._lock(fd, device, wait)
                if self.named(fd, folder, device):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise LedgerError(f"{self.path(device)}: replaced again and again while this runner waited for its lock")

    def named(self, fd: int, folder: int, device: str) -> bool:
        """Whether the open file is the one the device's name gives in the folder now."""
        try:
            named = os.stat(f"{self.uuids[device]}.ledger", dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:  # unlinked, not yet made again
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)

    def _lock(self, fd: int, device: str, wait: float) -> None:
        """An exclusive flock on the open file, waited for at most `wait` s: a step takes milliseconds, so a
        lock held longer is a stopped process's (Ctrl-Z mid-step) or another user's doing, never to hang on."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LedgerError(f"{self.path(device)}: locked by another process for over {wait:g} s") from None
                time.sleep(0.005)
