"""Do torch's results depend on which CPU kernels it dispatches to? (Why a rerun on another CPU differs.)

torch picks its vectorised kernels by the CPU it runs on: ATen's by ``ATEN_CPU_CAPABILITY`` (AVX2,
AVX-512, …), oneDNN's convolutions by ``ONEDNN_MAX_CPU_ISA``, MKL's GEMM by ``MKL_CBWR``. This runs
one small forward/backward pass like the project's nets (a convolution, a GRU, a linear layer, ELU,
exp, log-softmax, and a convolution's weight gradient), with the same seed, once per setting, each in
a fresh process with the variables set before torch is imported, and records an md5 per output.
Outputs whose md5 changes with the setting round differently on CPUs that dispatch differently.

    python experiments/cpu_kernels.py    # → experiments/results/cpu_kernels.json
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PASS = r"""
import hashlib, json, torch
torch.manual_seed(0); torch.set_num_threads(1)
x = torch.randn(64, 16, 21, 79); conv = torch.nn.Conv2d(16, 32, 3, padding=1)
gru = torch.nn.GRU(512, 256); s = torch.randn(32, 8, 512); lin = torch.nn.Linear(512, 512)
out = {"conv2d": conv(x), "gru": gru(s)[0], "linear": lin(s),
       "elu_exp_log_softmax": torch.nn.functional.elu(lin(s)).exp().log_softmax(-1)}
out["conv2d"].sum().backward()
out["conv2d_weight_grad"] = conv.weight.grad
md5 = {k: hashlib.md5(v.detach().numpy().tobytes()).hexdigest() for k, v in out.items()}
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "md5": md5}))
"""
SETTINGS = {
    "native": {},
    "aten avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "onednn avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "mkl avx2": {"MKL_CBWR": "AVX2"},
    "all three avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
}


def main() -> None:
    base = {k: v for k, v in os.environ.items() if k not in {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR"}}
    runs = {}
    for name, env in SETTINGS.items():
        res = subprocess.run([sys.executable, "-c", PASS], env={**base, **env}, capture_output=True, text=True, check=True)
        runs[name] = {"env": env, **json.loads(res.stdout.strip().splitlines()[-1])}
    native = runs["native"]["md5"]
    differs = {name: sorted(k for k, v in r["md5"].items() if v != native[k]) for name, r in runs.items() if name != "native"}
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), "")
    out = {"machine": {"platform": platform.platform(), "cpu": cpu}, "runs": runs, "differs_from_native": differs}
    (ROOT / "experiments/results/cpu_kernels.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(differs))


if __name__ == "__main__":
    main()
