"""Download, here, the wheels a bare GPU machine needs to run the pipeline's RL code, offline.

Why: the GPU machine has Python 3.12 and torch 2.11 (CUDA 13) preinstalled but no package index,
and everything else must travel with the checkout in at most 60 MiB. So: cp312 manylinux x86_64
wheels only, --no-deps (the pins are requirements.lock's, which pip could not resolve anyway, see
its header), no torch (already there), no metaworld/mujoco (metaworld 3.1 alone is ~37 MB: the
RoboticSequence family does not run there). tools/gpu_install.sh installs the result on the target.

    python tools/gpu_wheelhouse.py [DIR]      # default .wheelhouse (git-ignored)

Writes DIR/*.whl and DIR/requirements-gpu.txt (the exact list), prints each wheel's size, and
fails if a wheel is missing for cp312 at its version or the total exceeds 60 MiB. Stdlib only.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

# What nle / ale_py / gymnasium / sample_factory and retainrl's NetHack and Montezuma code import.
PACKAGES = [
    "nle", "ale-py", "gymnasium", "sample-factory", "pydantic", "pydantic-core", "annotated-types",
    "typing-inspection", "typing-extensions", "safetensors", "pyyaml", "numpy", "tqdm",
    "farama-notifications", "cloudpickle", "faster-fifo", "signal-slot-mp", "pyelftools",
]
# Added after reading the installed metadata and sample_factory's imports (see EXTRA_WHY).
EXTRA_WHY = {
    "tensorboardx": "sample_factory.algo.runners.runner imports tensorboardX.SummaryWriter (sample_factory.train)",
    "protobuf": "tensorboardX requires it and imports it at import time",
    "packaging": "tensorboardX requires it (its version check)",
    "psutil": "sample_factory.utils.utils and the learner/rollout/inference workers import it",
    "colorlog": "sample_factory.utils.utils imports colorlog.ColoredFormatter",
    "threadpoolctl": "sample_factory's rollout worker imports it when a worker owns one core",
}
# Where the lock's pin has no cp312 wheel: name -> nearest version that has one (none needed so far).
OVERRIDES: dict[str, str] = {}
PYTHON, ABI = "3.12", "cp312"
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"]
MAX_BYTES = 60 * 2**20


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(lock_text: str) -> dict[str, tuple[str, str]]:
    """normalized name -> (name as the lock spells it, version) for every 'name==version' line."""
    pins = {}
    for line in lock_text.splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if m:
            pins[normalize(m.group(1))] = (m.group(1), m.group(2))
    return pins


def requirements(pins: dict[str, tuple[str, str]], names=None, overrides=None) -> list[str]:
    names = list(PACKAGES) + list(EXTRA_WHY) if names is None else names
    overrides = OVERRIDES if overrides is None else overrides
    missing = [n for n in names if normalize(n) not in pins]
    if missing:
        raise SystemExit(f"not pinned in requirements.lock: {', '.join(missing)}")
    out = []
    for n in names:
        name, version = pins[normalize(n)]
        out.append(f"{name}=={overrides.get(normalize(n), version)}")
    return out


def download_cmd(python: str, req: str, dest: str) -> list[str]:
    cmd = [python, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--python-version", PYTHON]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    return cmd + ["--implementation", "cp", "-d", dest, req]


def wheel_fits(filename: str, req: str) -> bool:
    """Is this wheel file the pinned version of req, installable on CPython 3.12?"""
    name, version = req.split("==")
    parts = filename[: -len(".whl")].split("-") if filename.endswith(".whl") else []
    if len(parts) not in (5, 6):
        return False
    dist, ver, py, abi = parts[0], parts[1], parts[-3], parts[-2]
    if normalize(dist) != normalize(name) or ver != version:
        return False
    py_ok = any(t in ("cp312", "py3", "py312") or re.fullmatch(r"cp3\d+", t) and abi == "abi3" and int(t[3:]) <= 12
                for t in py.split("."))
    return py_ok and any(a in (ABI, "abi3", "none") for a in abi.split("."))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    dest = Path(argv[0] if argv else ".wheelhouse")
    dest.mkdir(parents=True, exist_ok=True)
    reqs = requirements(read_pins(Path("requirements.lock").read_text()))
    failed = []
    for req in reqs:
        if subprocess.run(download_cmd(sys.executable, req, str(dest)), stdout=subprocess.DEVNULL).returncode:
            failed.append(req)
    (dest / "requirements-gpu.txt").write_text("".join(r + "\n" for r in reqs))
    wheels = sorted(dest.glob("*.whl"))
    total = 0
    for req in reqs:
        hits = [w for w in wheels if wheel_fits(w.name, req)]
        if not hits:
            failed.append(req)
            print(f"{'MISSING':>10}  {req}")
        for w in hits:
            total += w.stat().st_size
            print(f"{w.stat().st_size / 2**20:>8.2f} MiB  {w.name}")
    stray = [w.name for w in wheels if not any(wheel_fits(w.name, r) for r in reqs)]
    print(f"{total / 2**20:>8.2f} MiB  total, {len(reqs)} wheels in {dest}" + (f" (not in the list, ignored: {stray})" if stray else ""))
    if failed:
        print(f"ERROR: no cp312 wheel at the pinned version for: {sorted(set(failed))}", file=sys.stderr)
        return 1
    if total > MAX_BYTES:
        print(f"ERROR: {total / 2**20:.2f} MiB exceeds the 60 MiB budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
