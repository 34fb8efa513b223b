"""Offline tests of the set-up helpers in tools/ (no network, no install: pip is never run).

tools/install_torch.py decides whether a failed `pip install torch==X+cpu` means "not on this
index" (then it retries on PyPI's CPU index) or a real error (network, disk: it must surface);
the pip outputs below are excerpts of real pip 26 runs (-vv) on this project's machines.
"""
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


it = _load("install_torch")
wh = _load("gpu_wheelhouse")
LOCK = (ROOT / "requirements.lock").read_text()

# --- real pip outputs (trimmed) -------------------------------------------------------------
NOT_ON_PYPI = """\
1 location(s) to search for versions of torch:
* https://pypi.org/simple/torch/
Getting page https://pypi.org/simple/torch/
https://pypi.org:443 "GET /simple/torch/ HTTP/1.1" 200 422843
Fetched page https://pypi.org/simple/torch/ as application/vnd.pypi.simple.v1+json
  Skipping link: none of the wheel's tags (cp27-cp27m-manylinux1_x86_64) are compatible
ERROR: Could not find a version that satisfies the requirement torch==2.13.0+cpu (from versions: 1.13.0, 2.12.1, 2.13.0, 2.14.0)
ERROR: No matching distribution found for torch==2.13.0+cpu
"""
# The same, with a pip constraint on torch in play (pip then words it as a conflict).
NOT_FOUND_CONSTRAINED = """\
Getting page https://pypi.org/simple/torch/
Fetched page https://pypi.org/simple/torch/ as application/vnd.pypi.simple.v1+json
ERROR: Cannot install torch==2.13.0+cu999 because these package versions have conflicting dependencies.

The conflict is caused by:
    The user requested torch==2.13.0+cu999
    The user requested (constraint) torch<=2.14.1

Additionally, some packages in these conflicts have no matching distributions available for your environment:
    torch

To fix this you could try to:
1. loosen the range of package versions you've specified
ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/#dealing-with-dependency-conflicts
"""
# DNS failure with --retries 0: without -vv pip prints only the last two lines, i.e. "not found".
DNS_DOWN = """\
Looking in indexes: https://download.pytorch.org/whl/cpu
Getting page https://download.pytorch.org/whl/cpu/torch/
Starting new HTTPS connection (1): download.pytorch.org:443
Could not fetch URL https://download.pytorch.org/whl/cpu/torch/: connection error: Failed to resolve IP address for 'download.pytorch.org' ([Errno -2] Name or service not known) - skipping
ERROR: Could not find a version that satisfies the requirement torch==2.13.0+cpu (from versions: none)
ERROR: No matching distribution found for torch==2.13.0+cpu
"""
# One index refused the connection while a local (file://) index answered: still a real error.
REFUSED_PLUS_FILE_INDEX = """\
Getting page http://127.0.0.1:9/simple/torch/
WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection broken by 'NewConnectionError("HTTPConnection(host='127.0.0.1', port=9): Failed to establish a new connection: [Errno 111] Connection refused")': /simple/torch/
Could not fetch URL http://127.0.0.1:9/simple/torch/: connection error: [Errno 111] Connection refused - skipping
Getting page file:///opt/pypi-more/simple/torch/index.html
Fetched page file:///opt/pypi-more/simple/torch/index.html as text/html
ERROR: Cannot install torch==2.13.0+cu999 because these package versions have conflicting dependencies.
Additionally, some packages in these conflicts have no matching distributions available for your environment:
    torch
"""
DISK_FULL = """\
Fetched page https://download.pytorch.org/whl/cpu/torch/ as text/html
Downloading https://download.pytorch.org/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl (191.8 MB)
ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device
"""
HTTP_503 = """\
Getting page https://pypi.org/simple/torch/
Could not fetch URL https://pypi.org/simple/torch/: HTTPSConnectionPool(host='pypi.org', port=443): Max retries exceeded with url: /simple/torch/ (Caused by ResponseError('too many 503 error responses')) - skipping
ERROR: Could not find a version that satisfies the requirement torch==2.13.0+cpu (from versions: none)
ERROR: No matching distribution found for torch==2.13.0+cpu
"""
# An extra index without torch answers 404: that index answered, it is not an outage.
EXTRA_INDEX_404 = """\
Fetched page https://pypi.org/simple/torch/ as application/vnd.pypi.simple.v1+json
Could not fetch URL https://mirror.example/simple/torch/: 404 Client Error: Not Found for url: https://mirror.example/simple/torch/ - skipping
ERROR: Could not find a version that satisfies the requirement torch==2.13.0+cpu (from versions: 2.13.0)
ERROR: No matching distribution found for torch==2.13.0+cpu
"""
# --no-index with find-links only: nothing answered, nothing to fall back to.
NO_INDEX = """\
Looking in links: /opt/wheels
ERROR: Could not find a version that satisfies the requirement torch==2.13.0+cpu (from versions: none)
ERROR: No matching distribution found for torch==2.13.0+cpu
"""


# --- install_torch: pure functions ----------------------------------------------------------
def test_torch_pin_is_read_from_the_lock():
    assert it.torch_pin(LOCK) == "2.13.0+cpu"
    assert it.torch_pin("numpy==2.3.5\ntorchvision==0.28.0\ntorch_geometric==2.6\ntorch == 2.1.0 ; python_version<'4'\n") == "2.1.0"
    with pytest.raises(it.SetupError):
        it.torch_pin("numpy==2.3.5\n")
    with pytest.raises(it.SetupError):
        it.torch_pin("torch==2.1.0\ntorch==2.2.0\n")


def test_lock_without_torch_drops_only_the_torch_line():
    rest = it.lock_without_torch(LOCK)
    assert "torch==" not in rest.replace("torchvision==", "")
    assert len(rest.splitlines()) == len(LOCK.splitlines()) - 1
    assert "numpy==2.3.5" in rest and rest.startswith("#")


def test_specs():
    assert it.public_version("2.13.0+cpu") == "2.13.0"
    assert it.torch_spec("2.13.0+cpu", "cpu") == "torch==2.13.0+cpu"
    assert it.torch_spec("2.13.0+cpu", "cuda") == "torch==2.13.0,!=2.13.0+cpu"
    with pytest.raises(it.SetupError):
        it.torch_spec("2.13.0+cpu", "rocm")


def test_cuda_spec_takes_pypi_build_and_refuses_the_cpu_one():
    from pip._vendor.packaging.specifiers import SpecifierSet

    spec = SpecifierSet(it.torch_spec("2.13.0+cpu", "cuda").removeprefix("torch"))
    assert spec.contains("2.13.0") and spec.contains("2.13.0+cu130")
    assert not spec.contains("2.13.0+cpu") and not spec.contains("2.13.1")
    assert SpecifierSet("==2.13.0").contains("2.13.0+cpu")  # why a bare ==X is not enough


def test_pip_command_lines():
    first = it.pip_torch_cmd("py", "2.13.0+cpu", "cpu")
    assert first == ["py", "-m", "pip", "install", "-vv", "--no-deps", "torch==2.13.0+cpu"]
    retry = it.pip_torch_cmd("py", "2.13.0+cpu", "cpu", index_url=it.CPU_INDEX)
    assert retry[-3:] == ["--index-url", "https://download.pytorch.org/whl/cpu", "torch==2.13.0+cpu"]
    cuda = it.pip_torch_cmd("py", "2.13.0+cpu", "cuda", constraints="rest.txt")
    assert cuda == ["py", "-m", "pip", "install", "-c", "rest.txt", "torch==2.13.0,!=2.13.0+cpu"]
    assert "--no-deps" not in cuda and "--index-url" not in cuda  # PyPI, with the nvidia-* deps
    assert it.pip_rest_cmd("py", "rest.txt") == ["py", "-m", "pip", "install", "--quiet", "--no-deps", "-r", "rest.txt"]


@pytest.mark.parametrize("output", [NOT_ON_PYPI, NOT_FOUND_CONSTRAINED, EXTRA_INDEX_404])
def test_missing_version_is_not_found(output):
    assert it.classify_failure(output)[0] == "not-found"


@pytest.mark.parametrize(
    "output, says",
    [
        (DNS_DOWN, "download.pytorch.org"),
        (REFUSED_PLUS_FILE_INDEX, "Connection refused"),
        (DISK_FULL, "another reason"),
        (HTTP_503, "503"),
        (NO_INDEX, "no package index answered"),
        ("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n", "another reason"),
        ("", "another reason"),
    ],
)
def test_real_errors_are_not_misread_as_not_found(output, says):
    kind, why = it.classify_failure(output)
    assert kind == "error" and says in why


# --- install_torch: the control flow, with pip replaced ------------------------------------
class FakePip:
    """Stands in for subprocess.run: replays (returncode, output) per call and records the calls."""

    def __init__(self, *replies):
        self.replies, self.calls = list(replies), []

    def __call__(self, cmd, **kw):
        self.calls.append(list(cmd))
        if "-r" in cmd:
            self.rest_file = Path(cmd[cmd.index("-r") + 1]).read_text()
        rc, out = self.replies.pop(0) if self.replies else (0, "")
        if kw.get("check") and rc:
            raise subprocess.CalledProcessError(rc, cmd)
        return subprocess.CompletedProcess(cmd, rc, stdout=out)


def test_cpu_torch_from_the_configured_sources(monkeypatch, tmp_path):
    pip = FakePip((0, "Successfully installed torch-2.13.0+cpu"))
    monkeypatch.setattr(it.subprocess, "run", pip)
    assert it.install_cpu_torch("py", "2.13.0+cpu", tmp_path / "log") == "the configured pip sources"
    assert len(pip.calls) == 1 and "--index-url" not in pip.calls[0]


def test_cpu_torch_falls_back_to_the_cpu_index_only_when_not_found(monkeypatch, tmp_path):
    pip = FakePip((1, NOT_ON_PYPI), (0, "Successfully installed torch-2.13.0+cpu"))
    monkeypatch.setattr(it.subprocess, "run", pip)
    assert it.install_cpu_torch("py", "2.13.0+cpu", tmp_path / "log") == it.CPU_INDEX
    assert pip.calls[1] == it.pip_torch_cmd("py", "2.13.0+cpu", "cpu", index_url=it.CPU_INDEX)
    assert "No matching distribution" in (tmp_path / "log").read_text()


@pytest.mark.parametrize("output", [DNS_DOWN, DISK_FULL, HTTP_503, NO_INDEX])
def test_cpu_torch_surfaces_real_errors_without_retrying(monkeypatch, tmp_path, output):
    pip = FakePip((1, output))
    monkeypatch.setattr(it.subprocess, "run", pip)
    with pytest.raises(it.SetupError, match="failed"):
        it.install_cpu_torch("py", "2.13.0+cpu", tmp_path / "log")
    assert len(pip.calls) == 1


def test_cpu_torch_surfaces_a_failed_retry(monkeypatch, tmp_path):
    pip = FakePip((1, NOT_ON_PYPI), (1, DNS_DOWN))
    monkeypatch.setattr(it.subprocess, "run", pip)
    with pytest.raises(it.SetupError, match="failed too: a package index could not be read"):
        it.install_cpu_torch("py", "2.13.0+cpu", tmp_path / "log")


def _main(monkeypatch, tmp_path, variant, *replies):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# header\nnumpy==2.3.5\ntorch==2.13.0+cpu\nsympy==1.14.0\n")
    pip = FakePip(*replies)
    monkeypatch.setattr(it.subprocess, "run", pip)
    rc = it.main(["--lock", str(lock), "--variant", variant, "--log", str(tmp_path / "log")])
    return rc, pip


def test_main_cpu_installs_torch_then_the_rest_without_deps(monkeypatch, tmp_path):
    rc, pip = _main(monkeypatch, tmp_path, "cpu")
    assert rc == 0 and len(pip.calls) == 2
    assert pip.calls[0][-1] == "torch==2.13.0+cpu" and "--no-deps" in pip.calls[0]
    assert pip.calls[1][3:6] == ["install", "--quiet", "--no-deps"]
    assert pip.rest_file == "# header\nnumpy==2.3.5\nsympy==1.14.0\n"


def test_main_cuda_installs_the_rest_then_torch_with_deps_pinned_by_the_lock(monkeypatch, tmp_path):
    rc, pip = _main(monkeypatch, tmp_path, "cuda")
    assert rc == 0 and len(pip.calls) == 2
    assert "--no-deps" in pip.calls[0] and "-r" in pip.calls[0]
    assert pip.calls[1][-1] == "torch==2.13.0,!=2.13.0+cpu" and "--no-deps" not in pip.calls[1]
    assert pip.calls[1][pip.calls[1].index("-c") + 1] == pip.calls[0][pip.calls[0].index("-r") + 1]


def test_main_reports_failures_with_a_nonzero_status(monkeypatch, tmp_path, capsys):
    rc, pip = _main(monkeypatch, tmp_path, "cpu", (1, DISK_FULL))
    assert rc == 1 and len(pip.calls) == 1  # the rest of the lock is not attempted
    assert "No space left on device" in capsys.readouterr().err
    rc, pip = _main(monkeypatch, tmp_path, "cuda", (0, ""), (2, ""))
    assert rc == 2


# --- Makefile: TORCH is chosen, recorded and validated (make -n: nothing runs) --------------
@pytest.fixture
def make_dir(tmp_path):
    if not shutil.which("make"):
        pytest.skip("make not installed")
    for f in ("Makefile", "Makefile.flows", "requirements.lock", "pyproject.toml"):
        shutil.copy(ROOT / f, tmp_path / f)
    return tmp_path


def _make_n(d, *args):
    return subprocess.run(["make", "-n", "setup", *args], cwd=d, capture_output=True, text=True)


def _installed(d, content):
    (d / ".venv").mkdir(exist_ok=True)
    (d / ".venv" / ".installed").write_text(content)


def test_make_setup_defaults_to_cpu_and_records_the_variant(make_dir):
    out = _make_n(make_dir).stdout
    assert "tools/install_torch.py --lock requirements.lock --variant cpu" in out
    assert "echo cpu > .venv/.installed" in out
    assert "--variant cuda" in _make_n(make_dir, "TORCH=cuda").stdout


def test_make_keeps_the_installed_variant_and_switches_on_request(make_dir):
    _installed(make_dir, "cuda\n")
    assert "install_torch.py" not in _make_n(make_dir).stdout  # up to date: `make test` keeps cuda
    assert "--variant cpu" in _make_n(make_dir, "TORCH=cpu").stdout
    _installed(make_dir, "")  # a venv made before TORCH existed counts as cpu: not rebuilt
    assert "install_torch.py" not in _make_n(make_dir).stdout


def test_make_rejects_an_unknown_variant(make_dir):
    r = _make_n(make_dir, "TORCH=rocm")
    assert r.returncode != 0 and "TORCH must be cpu or cuda" in r.stderr


# --- gpu_wheelhouse: what travels to the GPU machine ----------------------------------------
def test_wheelhouse_list_comes_from_the_lock():
    reqs = wh.requirements(wh.read_pins(LOCK))
    names = {wh.normalize(r.split("==")[0]) for r in reqs}
    assert {"nle", "ale-py", "gymnasium", "sample-factory", "pydantic-core", "pyyaml", "tensorboardx"} <= names
    assert not names & {"torch", "metaworld", "mujoco"}
    assert "nle==1.3.0" in reqs and "numpy==2.3.5" in reqs and "PyYAML==6.0.3" in reqs
    assert wh.requirements({"nle": ("nle", "1.3.0")}, ["nle"], {"nle": "1.2.0"}) == ["nle==1.2.0"]
    with pytest.raises(SystemExit, match="not pinned"):
        wh.requirements({}, ["nle"], {})


def test_wheelhouse_download_command():
    cmd = wh.download_cmd("py", "nle==1.3.0", "/tmp/w")
    assert cmd[:4] == ["py", "-m", "pip", "download"]
    for flag in ("--only-binary=:all:", "--no-deps", "manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"):
        assert flag in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and cmd[cmd.index("--implementation") + 1] == "cp"
    assert cmd[-3:] == ["-d", "/tmp/w", "nle==1.3.0"]


@pytest.mark.parametrize(
    "filename, req, fits",
    [
        ("nle-1.3.0-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", "nle==1.3.0", True),
        ("pyyaml-6.0.3-cp312-cp312-manylinux2014_x86_64.whl", "PyYAML==6.0.3", True),
        ("psutil-7.2.2-cp36-abi3-manylinux_2_28_x86_64.whl", "psutil==7.2.2", True),
        ("farama_notifications-0.0.6-py3-none-any.whl", "Farama-Notifications==0.0.6", True),
        ("nle-1.3.0-cp311-cp311-manylinux2014_x86_64.whl", "nle==1.3.0", False),
        ("nle-1.2.0-cp312-cp312-manylinux2014_x86_64.whl", "nle==1.3.0", False),
        ("nle-1.3.0.tar.gz", "nle==1.3.0", False),
    ],
)
def test_wheel_fits(filename, req, fits):
    assert wh.wheel_fits(filename, req) is fits
