"""An environment's secrets, kept in the repository encrypted with age: secrets/<env>.env.age.

The file holds NAME=value lines, encrypted to the public keys in secrets/<env>.recipients (not
secret, committed beside it). One identity opens it: the variable KILN_AGE_KEY (a masked CI
variable holding an AGE-SECRET-KEY-1... line) or the key file KILN_AGE_KEY_FILE (default
~/.config/kiln/age.key). Plaintext never lands in the checkout: age reads and writes it through
pipes, the identity reaches age on an inherited pipe (never a command line), and `edit` works on
a 0600 file in a private temporary folder removed afterwards. Errors name files, lines and
variables, never a value.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import KilnError, OperationFailed, require_tools
from kiln.files import write_atomic
from kiln.settings import Settings

KEY_VARIABLE = "KILN_AGE_KEY"
KEY_FILE_VARIABLE = "KILN_AGE_KEY_FILE"
DEFAULT_KEY_FILE = Path("~/.config/kiln/age.key")
IDENTITY = re.compile(r"^AGE-SECRET-KEY-1[0-9A-Z]{58}$")
NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
HEADER = "# Kiln secrets of '{env}': NAME=value lines, saved encrypted to secrets/{env}.env.age\n"


@dataclass(frozen=True)
class Identity:
    """The one age identity that opens an environment's secrets, and where it came from."""

    key: str
    source: str


@dataclass(frozen=True)
class SecretFiles:
    env: str
    folder: Path

    @property
    def encrypted(self) -> Path:
        return self.folder / f"{self.env}.env.age"

    @property
    def recipients(self) -> Path:
        return self.folder / f"{self.env}.recipients"

    @property
    def plaintext(self) -> Path:
        """Where Kiln kept secrets before they were encrypted; refused now, with a hint."""
        return self.folder / f"{self.env}.env"

    def shown(self, path: Path) -> str:
        return f"secrets/{path.name}"


def files(settings: Settings, env: str) -> SecretFiles:
    return SecretFiles(env, settings.project_root / "secrets")


def key_file() -> Path:
    return Path(os.environ.get(KEY_FILE_VARIABLE) or DEFAULT_KEY_FILE).expanduser()


def identity() -> Identity:
    """KILN_AGE_KEY, else the key file; one line naming both when neither holds a valid key."""
    if os.environ.get(KEY_VARIABLE):
        key, source = os.environ[KEY_VARIABLE].strip(), f"variable {KEY_VARIABLE}"
    elif key_file().exists():
        lines = [ln.strip() for ln in key_file().read_text().splitlines() if ln.strip()]
        key, source = next((ln for ln in lines if not ln.startswith("#")), ""), str(key_file())
    else:
        raise KilnError(
            f"no age key: set {KEY_VARIABLE} (the CI variable) or write the key to {key_file()} "
            f"({KEY_FILE_VARIABLE} chooses another file); make one with `age-keygen`"
        )
    if not IDENTITY.match(key):
        raise KilnError(f"{source}: not an age identity (expected one AGE-SECRET-KEY-1... line; not shown)")
    return Identity(key, source)


def ensure_identity(settings: Settings, env: str) -> Path | None:
    """A first key for a first secret: when the environment has no sealed file and no recipients
    yet and no key is set anywhere, make one in the key file (0600); the path if made. Once an
    environment has secrets, a missing key stays an error: a new key could not open them."""
    found = files(settings, env)
    if os.environ.get(KEY_VARIABLE) or key_file().exists() or found.encrypted.exists() or recipients(found):
        return None
    made = run_age(["age-keygen"], b"")
    key_file().parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(key_file(), made, mode=0o600)
    return key_file()


def run_age(argv: list[str], data: bytes, key: Identity | None = None) -> bytes:
    """age or age-keygen with `data` on stdin; the identity, when given, on an inherited pipe."""
    require_tools("sealed secrets (Debian package 'age')", argv[0])
    pass_fds: tuple[int, ...] = ()
    if key is not None:
        read_end, write_end = os.pipe()
        os.write(write_end, key.key.encode() + b"\n")  # one short line: fits the pipe's buffer
        os.close(write_end)
        argv = [*argv, "-i", f"/dev/fd/{read_end}"]
        pass_fds = (read_end,)
    try:
        proc = subprocess.run(
            argv, input=data, capture_output=True, pass_fds=pass_fds, timeout=60, check=False
        )
    finally:
        for fd in pass_fds:
            os.close(fd)
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().splitlines() or [f"exit {proc.returncode}"]
        raise OperationFailed(f"{argv[0]}: {message[0].removeprefix('age: error: ')}")
    return proc.stdout


def public_key(key: Identity) -> str:
    return run_age(["age-keygen", "-y"], key.key.encode()).decode().strip()


def parse(text: str, where: str) -> dict[str, str]:
    """NAME=value lines (comments and blank lines allowed); errors name the line, not the value."""
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not NAME.match(name.strip()):
            raise KilnError(f"{where}: line {number}: expected NAME=value with NAME like KILN_DB_PASSWORD")
        values[name.strip()] = value.strip()
    return values


def render(env: str, values: dict[str, str]) -> str:
    return HEADER.format(env=env) + "".join(f"{name}={value}\n" for name, value in values.items())


def refuse_plaintext(found: SecretFiles) -> None:
    if found.plaintext.exists():
        raise KilnError(
            f"{found.shown(found.plaintext)} is plain text: `invoke secrets edit {found.env}` encrypts "
            f"it into {found.shown(found.encrypted)} and removes it"
        )


def read(settings: Settings, env: str) -> dict[str, str]:
    """The environment's secrets ({} when it has none yet); KilnError when the key cannot open them."""
    found = files(settings, env)
    refuse_plaintext(found)
    if not found.encrypted.exists():
        return {}
    key = identity()
    try:
        text = run_age(["age", "--decrypt"], found.encrypted.read_bytes(), key)
    except OperationFailed as exc:
        raise KilnError(
            f"{found.shown(found.encrypted)}: the age key from {key.source} does not open it ({exc}); "
            f"its recipients are in {found.shown(found.recipients)}"
        ) from None
    return parse(text.decode(), found.shown(found.encrypted))


def recipients(found: SecretFiles) -> list[str]:
    if not found.recipients.exists():
        return []
    return [ln.strip() for ln in found.recipients.read_text().splitlines() if ln.strip() and ln[0] != "#"]


def write_recipients(found: SecretFiles, public: str) -> None:
    write_atomic(found.recipients, f"# age public keys that open {found.shown(found.encrypted)}\n{public}\n")


def write(settings: Settings, env: str, values: dict[str, str]) -> Path:
    """Encrypt `values` to the environment's recipients (the current key's when it has none)."""
    found = files(settings, env)
    if not recipients(found):
        write_recipients(found, public_key(identity()))
    plaintext = render(env, values).encode()
    sealed = run_age(["age", "--encrypt", "--armor", "-R", str(found.recipients)], plaintext)
    write_atomic(found.encrypted, sealed)
    return found.encrypted


def edit(settings: Settings, env: str, editor: str) -> Path:
    """Open the secrets in `editor` on a 0600 file outside the checkout, then encrypt them back.

    A plaintext secrets/<env>.env (Kiln's old place) is the starting point, removed once encrypted.
    """
    found = files(settings, env)
    if found.plaintext.exists():
        values = parse(found.plaintext.read_text(), found.shown(found.plaintext))
        identity()  # a missing key is one line before anything changes
    else:
        values = read(settings, env)
    scratch = Path(tempfile.mkdtemp(prefix="kiln-secrets-"))
    try:
        path = scratch / f"{env}.env"
        write_atomic(path, render(env, values), mode=0o600)
        proc = subprocess.run([*shlex.split(editor), str(path)], check=False)
        if proc.returncode != 0:
            raise OperationFailed(f"editor {editor!r} exited {proc.returncode}: secrets left unchanged")
        edited = parse(path.read_text(), f"{found.shown(found.encrypted)} (as edited)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    written = write(settings, env, edited)
    found.plaintext.unlink(missing_ok=True)
    return written


def show_keys(settings: Settings, env: str) -> list[tuple[str, bool]]:
    """(public key, whether the current identity is it) for every recipient; never a secret."""
    found = files(settings, env)
    mine = public_key(identity())
    return [(recipient, recipient == mine) for recipient in recipients(found)]


def rotate(settings: Settings, env: str, key_out: Path) -> str:
    """A new age key for the environment: written to `key_out` (0600, outside the checkout), the
    secrets re-encrypted to it alone; the old key no longer opens them. Returns its public key."""
    key_out = key_out.expanduser().resolve()
    if key_out.is_relative_to(settings.project_root.resolve()):
        raise KilnError(f"--key-out {key_out}: inside the checkout; choose a file outside it")
    if key_out.exists():
        raise KilnError(f"--key-out {key_out}: exists; choose a new file (an old key is never overwritten)")
    values = read(settings, env)  # with the current key: a wrong one stops here
    generated = run_age(["age-keygen"], b"").decode()
    new = Identity(next(ln for ln in generated.splitlines() if IDENTITY.match(ln)), str(key_out))
    write_atomic(key_out, generated, mode=0o600)
    new_public = public_key(new)
    write_recipients(files(settings, env), new_public)
    write(settings, env, values)
    return new_public
