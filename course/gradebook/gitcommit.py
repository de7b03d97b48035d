"""The time of the last commit of a student's repository, read from its files: git itself is never run.

A student controls every file of their repository, `.git/` included, whenever the instructor copies the folder
rather than cloning it (a zip of the student's work, a folder collected from JupyterHub, a copy of a clone that
the student could push a submodule or a worktree into). Running `git log` on such a folder runs code of the
student's choosing on the instructor's machine: `core.fsmonitor` is a command git starts by itself,
`log.showSignature` with `gpg.program` runs a program for every commit `git log` shows, `core.pager`,
`core.hooksPath`, `include.path` and `includeIf` pull in more of them, and each new git version may add one.
Switching them off one by one (`-c core.fsmonitor= -c core.hooksPath=/dev/null --no-optional-locks`,
GIT_CONFIG_NOSYSTEM, ...) is a list that has to be complete today and stay complete with every git release.

So this module reads the few files that say when HEAD was committed, as data, and parses them itself:

- `.git` must be a folder inside the student's folder (a `.git` file, "gitdir: ...", points elsewhere: refused);
  every file is opened relative to the folder before it with O_NOFOLLOW, so no symbolic link is followed, and
  only regular files are read, each up to a size limit;
- HEAD is a branch (`ref: refs/heads/main`, a loose ref file or a line of `packed-refs`) or a commit id;
- the commit object is a loose object (zlib) or an entry of a pack (found through the pack's `.idx`, version 2,
  and rebuilt from its delta chain when it is stored as a delta), decompressed up to a limit;
- the commit's `committer` line gives the time and the committer's UTC offset (what `git log -1 --format=%cI`
  prints).

Anything else (a reftable repository, objects in an alternate store, a corrupt or unusual file) gives
`GitTimeError` with a reason, never a wrong time and never more than the time: nothing else of the repository
is read out. The committer time is what the student's own git recorded; a student can set it to anything
(GIT_COMMITTER_DATE), which docs/instructors.md says.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
import struct
import zlib

MAX_SMALL_FILE = 64 * 1024  # HEAD, a loose ref
MAX_PACKED_REFS = 32 * 2**20
MAX_INDEX = 64 * 2**20
MAX_OBJECT = 4 * 2**20  # a commit is a few hundred bytes; its compressed form and any delta base are capped too
MAX_DELTA_DEPTH = 64
MAX_SYMBOLIC_REFS = 5

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_REF_NAME = re.compile(r"refs/[A-Za-z0-9._/+@-]+")
_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_COMMITTER = re.compile(rb"committer [^\n]*> (\d{1,12}) ([+-])(\d{2})(\d{2})")

OBJ_COMMIT, OBJ_TREE, OBJ_BLOB, OBJ_TAG, OBJ_OFS_DELTA, OBJ_REF_DELTA = 1, 2, 3, 4, 6, 7
_TYPE_NAMES = {OBJ_COMMIT: b"commit", OBJ_TREE: b"tree", OBJ_BLOB: b"blob", OBJ_TAG: b"tag"}


class GitTimeError(Exception):
    """The repository's last commit time cannot be read; the message says why (no path, no file content)."""


def last_commit_time(folder_fd: int) -> dt.datetime:
    """The committer time of HEAD of the repository whose work tree is the folder open as `folder_fd`."""
    try:
        git_fd = os.open(".git", _FLAGS | os.O_DIRECTORY, dir_fd=folder_fd)
    except FileNotFoundError:
        raise GitTimeError("no git repository (.git)") from None
    except OSError as exc:
        raise GitTimeError(_why_not_a_folder(folder_fd, ".git", exc)) from None
    try:
        return _Repository(git_fd).head_time()
    except (IndexError, struct.error, ValueError) as exc:
        raise GitTimeError(f"damaged repository data ({type(exc).__name__})") from None
    except OSError as exc:
        raise GitTimeError(f"the repository cannot be read ({exc.strerror or type(exc).__name__})") from None
    finally:
        os.close(git_fd)


def _why_not_a_folder(folder_fd: int, name: str, exc: OSError) -> str:
    try:
        mode = os.lstat(name, dir_fd=folder_fd).st_mode
    except OSError:
        return f"{name} cannot be read ({exc.strerror or exc})"
    if stat.S_ISLNK(mode):
        return f"{name} is a symbolic link: not followed"
    if stat.S_ISREG(mode):
        return f"{name} is a file (a worktree or submodule that points elsewhere): not followed"
    return f"{name} is not a folder"


class _Repository:
    def __init__(self, git_fd: int):
        self.git_fd = git_fd
        self.hash_length = 20
        self._indexes: list[tuple[str, bytes]] | None = None

    # -- files -----------------------------------------------------------------------------------------------

    def read(self, relative: str, limit: int, *, missing_ok: bool = False) -> bytes | None:
        """A regular file below .git, no link followed on the way, at most `limit` bytes."""
        fd = self.open(relative, missing_ok=missing_ok)
        if fd is None:
            return None
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise GitTimeError(f".git/{relative} is larger than {limit // 1024} KB")
            chunks, total = [], 0
            while total <= limit:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            return b"".join(chunks)[:limit]
        finally:
            os.close(fd)

    def open(self, relative: str, *, missing_ok: bool = False) -> int | None:
        parts = relative.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise GitTimeError(f"{relative!r} is not a path inside .git")
        folder = self.git_fd
        try:
            for part in parts[:-1]:
                inner = os.open(part, _FLAGS | os.O_DIRECTORY, dir_fd=folder)
                if folder != self.git_fd:
                    os.close(folder)
                folder = inner
            fd = os.open(parts[-1], _FLAGS | os.O_NONBLOCK, dir_fd=folder)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise GitTimeError(f".git/{relative} is missing") from None
        except OSError as exc:
            raise GitTimeError(f".git/{relative} cannot be read (a link, or {exc.strerror or exc})") from None
        finally:
            if folder != self.git_fd:
                os.close(folder)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise GitTimeError(f".git/{relative} is not a regular file")
        return fd

    # -- references ------------------------------------------------------------------------------------------

    def head_time(self) -> dt.datetime:
        commit = self.object_id(self.resolve("HEAD"))
        kind, body = self.object(commit)
        if kind != OBJ_COMMIT:
            raise GitTimeError("HEAD is not a commit")
        return committer_time(body)

    def resolve(self, name: str) -> str:
        """The object id (hex) that HEAD or a ref names, through at most a few symbolic refs."""
        for _ in range(MAX_SYMBOLIC_REFS):
            data = self.read(name, MAX_SMALL_FILE, missing_ok=name != "HEAD")
            if data is None:
                found = self.packed_ref(name)
                if found is None:
                    raise GitTimeError(f"{name} names no commit yet (an empty repository?)")
                return found
            text = data.decode("ascii", "replace").strip()
            if text.startswith("ref:"):
                name = text.removeprefix("ref:").strip()
                if not _valid_ref(name):
                    raise GitTimeError("HEAD names a ref that is not under refs/ (or a reftable repository)")
                continue
            return text
        raise GitTimeError("too many symbolic refs")

    def packed_ref(self, name: str) -> str | None:
        data = self.read("packed-refs", MAX_PACKED_REFS, missing_ok=True)
        for line in (data or b"").decode("ascii", "replace").splitlines():
            if line.startswith(("#", "^")):
                continue
            object_id, _, ref = line.partition(" ")
            if ref == name:
                return object_id
        return None

    def object_id(self, text: str) -> bytes:
        if not _OBJECT_ID.fullmatch(text):
            raise GitTimeError("HEAD does not name a commit id")
        self.hash_length = len(text) // 2
        return bytes.fromhex(text)

    # -- objects ---------------------------------------------------------------------------------------------

    def object(self, object_id: bytes, depth: int = 0) -> tuple[int, bytes]:
        """(type, content) of an object, loose or packed."""
        if depth > MAX_DELTA_DEPTH:
            raise GitTimeError("a delta chain that is too long")
        hexid = object_id.hex()
        loose = self.read(f"objects/{hexid[:2]}/{hexid[2:]}", MAX_OBJECT, missing_ok=True)
        if loose is not None:
            return _loose_object(loose)
        for base, index in self.indexes():
            offset = _find_in_index(index, object_id, self.hash_length)
            if offset is not None:
                return self.packed_object(base, offset, depth)
        raise GitTimeError(f"object {hexid[:12]} is not in the repository (a shallow or alternate store?)")

    def indexes(self) -> list[tuple[str, bytes]]:
        if self._indexes is None:
            self._indexes = []
            fd = self.open_folder("objects/pack")
            if fd is not None:
                try:
                    names = sorted(entry.name for entry in os.scandir(fd)
                                   if entry.name.endswith(".idx") and entry.is_file(follow_symlinks=False))
                finally:
                    os.close(fd)
                for name in names:
                    self._indexes.append((name.removesuffix(".idx"), self.read(f"objects/pack/{name}", MAX_INDEX)))
        return self._indexes

    def open_folder(self, relative: str) -> int | None:
        folder = self.git_fd
        try:
            for part in relative.split("/"):
                inner = os.open(part, _FLAGS | os.O_DIRECTORY, dir_fd=folder)
                if folder != self.git_fd:
                    os.close(folder)
                folder = inner
        except FileNotFoundError:
            if folder != self.git_fd:
                os.close(folder)
            return None
        except OSError as exc:
            if folder != self.git_fd:
                os.close(folder)
            raise GitTimeError(f".git/{relative} cannot be read (a link, or {exc.strerror or exc})") from None
        return folder

    def packed_object(self, base: str, offset: int, depth: int) -> tuple[int, bytes]:
        fd = self.open(f"objects/pack/{base}.pack")
        try:
            return self._entry(fd, base, offset, depth)
        finally:
            os.close(fd)

    def _entry(self, fd: int, base: str, offset: int, depth: int) -> tuple[int, bytes]:
        if depth > MAX_DELTA_DEPTH:
            raise GitTimeError("a delta chain that is too long")
        header = os.pread(fd, 32 + self.hash_length, offset)
        if not header:
            raise GitTimeError("a pack entry past the end of its pack")
        byte = header[0]
        kind, size, shift, position = (byte >> 4) & 7, byte & 15, 4, 1
        while byte & 0x80:
            if position >= len(header):
                raise GitTimeError("a damaged pack entry")
            byte = header[position]
            size |= (byte & 0x7F) << shift
            shift += 7
            position += 1
        if size > MAX_OBJECT:
            raise GitTimeError("an object larger than a commit can be")
        if kind in _TYPE_NAMES:
            return kind, _inflate_at(fd, offset + position, size)
        if kind == OBJ_OFS_DELTA:
            byte = header[position]
            distance = byte & 0x7F
            position += 1
            while byte & 0x80:
                if position >= len(header):
                    raise GitTimeError("a damaged pack entry")
                byte = header[position]
                distance = ((distance + 1) << 7) | (byte & 0x7F)
                position += 1
            if not 0 < distance <= offset:
                raise GitTimeError("a damaged delta in a pack")
            base_kind, base_data = self._entry(fd, base, offset - distance, depth + 1)
        elif kind == OBJ_REF_DELTA:
            base_id = header[position:position + self.hash_length]
            position += self.hash_length
            base_kind, base_data = self.object(base_id, depth + 1)
        else:
            raise GitTimeError(f"an unknown pack entry type {kind}")
        return base_kind, apply_delta(base_data, _inflate_at(fd, offset + position, size))


def _valid_ref(name: str) -> bool:
    parts = name.split("/")
    return (bool(_REF_NAME.fullmatch(name)) and ".." not in name
            and not any(part == "" or part.startswith(".") or part.endswith(".lock") for part in parts))


def _loose_object(compressed: bytes) -> tuple[int, bytes]:
    data = _inflate(compressed, MAX_OBJECT + 64)
    header, nul, body = data.partition(b"\0")
    kind_name, _, size = header.partition(b" ")
    kinds = {name: kind for kind, name in _TYPE_NAMES.items()}
    if not nul or kind_name not in kinds or not size.isdigit() or int(size) != len(body):
        raise GitTimeError("a damaged loose object")
    return kinds[kind_name], body


def _inflate(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise GitTimeError("an object that is not valid zlib data") from None
    if len(out) > limit:
        raise GitTimeError("an object larger than a commit can be")
    return out


def _inflate_at(fd: int, offset: int, size: int) -> bytes:
    """`size` bytes inflated from the zlib stream that starts at `offset` of the pack."""
    inflater = zlib.decompressobj()
    out = bytearray()
    read = 0
    while len(out) < size and not inflater.eof:
        chunk = os.pread(fd, 64 * 1024, offset + read)
        if not chunk:
            break
        read += len(chunk)
        try:
            out += inflater.decompress(chunk, size + 1 - len(out))
        except zlib.error:
            raise GitTimeError("a pack entry that is not valid zlib data") from None
        if read > MAX_OBJECT + 1024:
            break
    if len(out) != size:
        raise GitTimeError("a damaged pack entry")
    return bytes(out)


def _find_in_index(index: bytes, object_id: bytes, hash_length: int) -> int | None:
    """The pack offset of `object_id` in a version 2 pack index, or None."""
    if index[:4] != b"\377tOc" or struct.unpack(">I", index[4:8])[0] != 2:
        raise GitTimeError("a pack index that is not version 2")
    fanout = struct.unpack(">256I", index[8:8 + 1024])
    count = fanout[255]
    names = 8 + 1024
    offsets = names + count * hash_length + count * 4
    large = offsets + count * 4
    if len(index) < large:
        raise GitTimeError("a damaged pack index")
    low = fanout[object_id[0] - 1] if object_id[0] else 0
    high = fanout[object_id[0]]
    while low < high:
        middle = (low + high) // 2
        name = index[names + middle * hash_length:names + (middle + 1) * hash_length]
        if name == object_id:
            offset = struct.unpack(">I", index[offsets + middle * 4:offsets + middle * 4 + 4])[0]
            if offset & 0x80000000:
                slot = large + (offset & 0x7FFFFFFF) * 8
                if len(index) < slot + 8:
                    raise GitTimeError("a damaged pack index")
                offset = struct.unpack(">Q", index[slot:slot + 8])[0]
            return offset
        if name < object_id:
            low = middle + 1
        else:
            high = middle
    return None


def apply_delta(base: bytes, delta: bytes) -> bytes:
    """git's delta format: the base's and the result's sizes, then copy (from the base) and insert instructions."""
    position = 0

    def size() -> int:
        nonlocal position
        value, shift = 0, 0
        while True:
            if position >= len(delta):
                raise GitTimeError("a damaged delta")
            byte = delta[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    if size() != len(base):
        raise GitTimeError("a delta whose base has the wrong size")
    target = size()
    if target > MAX_OBJECT:
        raise GitTimeError("an object larger than a commit can be")
    out = bytearray()
    while position < len(delta):
        opcode = delta[position]
        position += 1
        if opcode & 0x80:
            fields = []
            for bit in range(7):
                if opcode & (1 << bit):
                    if position >= len(delta):
                        raise GitTimeError("a damaged delta")
                    fields.append(delta[position])
                    position += 1
                else:
                    fields.append(0)
            start = fields[0] | fields[1] << 8 | fields[2] << 16 | fields[3] << 24
            length = (fields[4] | fields[5] << 8 | fields[6] << 16) or 0x10000
            if start + length > len(base):
                raise GitTimeError("a delta that copies past its base")
            out += base[start:start + length]
        elif opcode:
            if position + opcode > len(delta):
                raise GitTimeError("a damaged delta")
            out += delta[position:position + opcode]
            position += opcode
        else:
            raise GitTimeError("a delta with a reserved instruction")
        if len(out) > target:
            raise GitTimeError("a delta larger than it says")
    if len(out) != target:
        raise GitTimeError("a delta smaller than it says")
    return bytes(out)


def committer_time(body: bytes) -> dt.datetime:
    """The committer time of a commit object's content, in the committer's own UTC offset."""
    headers = body.split(b"\n\n", 1)[0]
    for line in headers.split(b"\n"):
        match = _COMMITTER.fullmatch(line)
        if match:
            seconds, sign, hours, minutes = match.groups()
            offset = dt.timedelta(hours=int(hours), minutes=int(minutes)) * (-1 if sign == b"-" else 1)
            try:
                return dt.datetime.fromtimestamp(int(seconds), dt.timezone(offset))
            except (OverflowError, ValueError, OSError):
                break
    raise GitTimeError("the commit has no readable committer time")
