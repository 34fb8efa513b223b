"""Install requirements.lock into the running interpreter's environment, torch handled apart.

Why: the lock pins ``torch==X+cpu``, a local-tagged build that PyPI does not serve (only PyPI's
plain ``torch==X`` exists there, and on Linux x86_64 that is the CUDA build). So:

* ``--variant cpu`` (default): ``pip install --no-deps torch==X+cpu`` with the user's own pip
  configuration (a local wheel or mirror wins); only if pip says that version is *not found* does
  it retry with ``--index-url https://download.pytorch.org/whl/cpu`` for torch alone. Anything else
  (network down, disk full, hash mismatch) is a real error and stops the set-up. Since pip hides a
  failed index fetch below ``-vv`` (an unreachable index reads "from versions: none", the same as
  a missing version), the first try runs at ``-vv`` into a log and is classified from that.
* ``--variant cuda``: the same release from the user's index, without the local tag
  (``torch==X,!=X+cpu``: a bare ``==X`` would accept an on-disk ``X+cpu`` wheel, or keep an
  installed one), *with* dependencies so that pip adds the nvidia-*/cuda-*/triton wheels, while
  ``-c`` on the rest of the lock keeps every package the lock pins at its pinned version.

The rest of the lock is installed with ``--no-deps`` (the lock's header says why), minus torch.
Stdlib only: it runs before anything is installed. The pure functions are tested offline in
tests/test_setup.py.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
_TORCH_LINE = re.compile(r"^\s*torch\s*==\s*([^\s;#]+)", re.I | re.M)
# pip's wording for "no such version" (with and without a constraint on torch in play).
_NOT_FOUND = re.compile(
    r"No matching distribution found for torch\b"
    r"|Could not find a version that satisfies the requirement torch\b"
    r"|no matching distributions available for your environment:\s*\n(?:[ \t]+\S+\n)*?[ \t]+torch[ \t]*$",
    re.I | re.M,
)
_FETCH_FAILED = re.compile(r"^\s*Could not fetch URL (\S+): (.*?)(?: - skipping)?\s*$", re.M)
_FETCHED = re.compile(r"^\s*Fetched page \S+", re.M)


class SetupError(RuntimeError):
    pass


def torch_pin(lock_text: str) -> str:
    """The version the lock pins for torch, e.g. '2.13.0+cpu'."""
    found = _TORCH_LINE.findall(lock_text)
    if len(found) != 1:
        raise SetupError(f"expected exactly one 'torch==...' line in the lock, found {len(found)}")
    return found[0]


def public_version(pin: str) -> str:
    """'2.13.0+cpu' -> '2.13.0' (PEP 440 local label stripped)."""
    return pin.split("+", 1)[0]


def lock_without_torch(lock_text: str) -> str:
    return "".join(line for line in lock_text.splitlines(keepends=True) if not _TORCH_LINE.match(line))


def torch_spec(pin: str, variant: str) -> str:
    if variant == "cpu":
        return f"torch=={pin}"
    if variant == "cuda":
        pub = public_version(pin)
        return f"torch=={pub},!={pub}+cpu"
    raise SetupError(f"unknown torch variant {variant!r} (cpu or cuda)")


def pip_torch_cmd(python: str, pin: str, variant: str, *, index_url: str | None = None, constraints: str | None = None) -> list[str]:
    cmd = [python, "-m", "pip", "install"]
    if variant == "cpu":
        cmd += ["-vv", "--no-deps"]  # -vv: pip logs failed index fetches at debug level only
        if index_url:
            cmd += ["--index-url", index_url]
    elif constraints:
        cmd += ["-c", constraints]
    return cmd + [torch_spec(pin, variant)]


def pip_rest_cmd(python: str, requirements: str) -> list[str]:
    return [python, "-m", "pip", "install", "--quiet", "--no-deps", "-r", requirements]


def classify_failure(output: str) -> tuple[str, str]:
    """('not-found', why) only if an index answered and none had the version; else ('error', why)."""
    failed = [(url, why) for url, why in _FETCH_FAILED.findall(output) if not re.search(r"\b404\b", why)]
    if failed:
        return "error", "a package index could not be read: " + "; ".join(f"{u}: {w}" for u, w in failed)
    if not _NOT_FOUND.search(output):
        return "error", "pip failed for another reason than a missing version"
    if not (_FETCHED.search(output) or _FETCH_FAILED.search(output)):
        return "error", "pip found no version, but no package index answered (offline? --no-index?)"
    return "not-found", "the index answered, without this torch version"


def _excerpt(output: str, limit: int = 20) -> str:
    """pip's own ERROR lines (the -vv rest is in the log)."""
    return "\n".join([l for l in output.splitlines() if l.startswith("ERROR")][-limit:])


def _run_logged(cmd: list[str], log: Path) -> tuple[int, str]:
    env = dict(os.environ, PIP_QUIET="0")  # a 'quiet' in the user's pip config would hide the debug lines
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n")
    return proc.returncode, proc.stdout


def install_cpu_torch(python: str, pin: str, log: Path) -> str:
    """Install torch==pin; returns where it came from. Raises SetupError on anything but success."""
    rc, out = _run_logged(pip_torch_cmd(python, pin, "cpu"), log)
    if rc == 0:
        return "the configured pip sources"
    kind, why = classify_failure(out)
    if kind != "not-found":
        raise SetupError(f"pip install torch=={pin} failed: {why}\n{_excerpt(out)}\n(full log: {log})")
    print(f"torch=={pin} is not on the configured index ({why}); retrying with {CPU_INDEX}", flush=True)
    rc, out2 = _run_logged(pip_torch_cmd(python, pin, "cpu", index_url=CPU_INDEX), log)
    if rc != 0:
        _, why2 = classify_failure(out2)
        raise SetupError(f"pip install torch=={pin} from {CPU_INDEX} failed too: {why2}\n{_excerpt(out2)}\n(full log: {log})")
    return CPU_INDEX


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lock", default="requirements.lock")
    ap.add_argument("--variant", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--log", default=str(Path(sys.prefix) / "install-torch.log"))
    a = ap.parse_args(argv)
    text = Path(a.lock).read_text()
    pin, log, py = torch_pin(text), Path(a.log), sys.executable
    log.write_text("")
    with tempfile.TemporaryDirectory() as tmp:
        rest = Path(tmp) / "requirements-without-torch.txt"
        rest.write_text(lock_without_torch(text))
        try:
            if a.variant == "cpu":
                print(f"torch=={pin} installed from {install_cpu_torch(py, pin, log)}", flush=True)
            subprocess.run(pip_rest_cmd(py, str(rest)), check=True)
            if a.variant == "cuda":  # after the rest, so that -c finds the lock's versions installed
                subprocess.run(pip_torch_cmd(py, pin, "cuda", constraints=str(rest)), check=True)
        except SetupError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            return 1
        except subprocess.CalledProcessError as e:
            print(f"ERROR: {' '.join(e.cmd)} exited with {e.returncode}", file=sys.stderr)
            return e.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
