"""The GPU check (issue 20): one command that measures the pipeline's learners on a lent GPU
machine against its CPU, in the same run, and writes ``benchmarks/results/gpu.json``.

How to run it on the lent machine (Python 3.12, torch + CUDA preinstalled, no package index, no
metaworld/mujoco, perhaps no opencv): make the wheelhouse here, let it travel with the checkout,
then install it and run there (``benchmarks/gpu_check.sh`` does both, under ``timeout 480``):

    python tools/gpu_wheelhouse.py .wheelhouse                        # here, once (needs PyPI)
    bash tools/gpu_install.sh .wheelhouse && \\
        PYTHONPATH=. python benchmarks/gpu_check.py --out $OUT/gpu.json  # there (≤ 8 minutes)

    PYTHONPATH=. python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu.json   # dry run, anywhere

Sections (``--sections``, comma-separated; ``finetune`` means all four ``finetune_*``). Each one
is wrapped: a failure is recorded with its error and the others still run; a section whose
package is missing is recorded as skipped with the reason. Every record holds the device name,
the torch version, the figure on ``--device`` (key ``gpu``) and the same figure measured on the
CPU in this run (key ``cpu``), with ``ratio`` = gpu/cpu.

1. ``sac``: stacked multi-seed SAC (``retainrl.learners.sac``) with the networks RoboticSequence
   builds (``robot.agent_spec``; the paper profile: 4×256, 20 seeds, batch 128) on random batches
   of the right shapes, already on the device as the replay buffer's are: gradient updates/s.
2. ``ppo_rnd``: the PPO+RND minibatch update (Montezuma's ActorCritic + RND: forward, clipped PPO
   loss + value + entropy + RND loss, backward, grad clipping, Adam step) on random 4×84×84 uint8
   minibatches of the paper profile's size (128 envs × 128 steps / 4), moved host→device per
   minibatch as ``ppo_rnd.train`` does. The network update alone: the learner loop steps the
   Montezuma env, which is not called here.
3. ``appo``: NetHack APPO on sample-factory's learner through ``nethack.sf.run_appo`` with the
   paper profile's settings (workers = min(paper, cores - 1), envs per worker, rollout, batch,
   lr, epochs), from a fresh policy, the ``finetune`` retention method, stopped after a wall-clock
   budget (≈2 minutes on the device, half that on the CPU; see ``_stop_after``): env steps/s,
   learner updates/s, peak GPU memory.
4. ``finetune_<family>``: a short fine-tuning run per family through the stage code the DAG runs
   (smoke profile, temp directories), once on the device and once on the CPU: finite curves and
   losses are asserted, and the metrics are compared (max abs difference against a float
   tolerance; ``expect_close`` says whether the two runs draw the same random numbers, so that
   only float rounding separates them).

``--device cpu`` runs every "GPU" figure on the CPU too (a dry run); ``--tiny`` shrinks every size
and step count to seconds (one torch thread). The JSON is written atomically after every section,
so a run killed by its timeout still leaves the sections it finished. Logs go to stderr; the
only print is the output path.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

log = logging.getLogger("gpu_check")
PARAMS = ROOT / "params.yaml"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu.json"
ATOL, RTOL = 1e-4, 1e-3  # float32 on two devices: not bit-identical, close


class Skip(Exception):
    """A section that cannot run here (a package missing, no time left): recorded, not an error."""


def need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(f"not installed: {', '.join(missing)}")


class Check:
    """What every section gets: the device under test, the CPU, the sizes and the clock."""

    def __init__(self, args):
        self.dev = torch.device(args.device)
        self.cpu = torch.device("cpu")
        self.tiny = args.tiny
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + args.budget_s
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check-"))

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def params(self, family: str, profile: str):
        from retainrl.core.config import load_params

        return load_params(PARAMS, profile=profile, only=family).section(family)

    def workdir(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.tmp))


# --------------------------------------------------------------------------- helpers


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_mib(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None


def nvidia_smi_used_mib() -> float | None:
    """GPU memory in use on the (first) GPU per nvidia-smi: every process's, not only this one's."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return float(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


class SmiSampler:
    """Samples nvidia-smi's memory.used every ``period`` s in a thread; ``peak`` is the maximum."""

    def __init__(self, period: float = 1.0):
        self.period, self.samples = period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            v = nvidia_smi_used_mib()
            if v is None:
                return
            self.samples.append(v)
            self._stop.wait(self.period)

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)

    @property
    def peak(self) -> float | None:
        return max(self.samples) if self.samples else None


def timed_loop(dev: torch.device, step: Callable[[int], object], warmup: int, n: int) -> tuple[float, object]:
    """``warmup`` untimed calls, then the wall time of ``n`` calls (the device synchronised at both ends)."""
    out = None
    for i in range(warmup):
        out = step(i)
    sync(dev)
    t0 = time.perf_counter()
    for i in range(n):
        out = step(warmup + i)
    sync(dev)
    return time.perf_counter() - t0, out


def ratio(gpu: dict, cpu: dict, key: str) -> float | None:
    a, b = gpu.get(key), cpu.get(key)
    return a / b if a is not None and b else None


def assert_finite(name: str, values) -> None:
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise FloatingPointError(f"{name}: non-finite values {arr.ravel()[~np.isfinite(arr.ravel())][:5].tolist()}")


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def compare(gpu: dict, cpu: dict, expect_close: bool, why: str) -> dict:
    """Max abs difference of each metric (same keys in both runs) and whether it is within
    ``ATOL + RTOL·|cpu|``; ``expect_close`` says whether that is expected (see the module docstring)."""
    out, ok = {}, True
    for k in cpu:
        a, b = to_numpy(gpu[k]), to_numpy(cpu[k])
        if a.shape != b.shape:
            out[k] = {"shape_gpu": list(a.shape), "shape_cpu": list(b.shape), "within_tolerance": False}
            ok = False
            continue
        d = float(np.abs(a - b).max()) if a.size else 0.0
        within = bool(np.all(np.abs(a - b) <= ATOL + RTOL * np.abs(b)))
        out[k] = {"max_abs_diff": d, "within_tolerance": within}
        ok &= within
    return {"metrics": out, "all_within_tolerance": ok, "expect_close": expect_close, "why": why, "atol": ATOL, "rtol": RTOL}


def state_diff(a: dict, b: dict) -> float:
    """Max abs difference over the float tensors of two state dicts (same keys)."""
    return max((float((a[k].detach().cpu().double() - b[k].detach().cpu().double()).abs().max())
                for k in a if a[k].is_floating_point() and a[k].numel()), default=0.0)


# --------------------------------------------------------------------------- 1. stacked SAC


def _sac_batch(spec, m: int, b: int, gen: torch.Generator, dev) -> dict:
    """A random SAC batch (M, B, ...): [base obs, stage time, one-hot stage id] as RoboticSequence's."""
    def obs():
        base = torch.randn(m, b, spec.obs_dim - spec.n_stages, generator=gen)
        stage = torch.nn.functional.one_hot(torch.randint(spec.n_stages, (m, b), generator=gen), spec.n_stages).float()
        return torch.cat([base, stage], -1)

    batch = {"obs": obs(), "act": torch.rand(m, b, spec.act_dim, generator=gen) * 2 - 1, "rew": torch.randn(m, b, generator=gen),
             "next_obs": obs(), "terminal": (torch.rand(m, b, generator=gen) < 0.05).float()}
    return {k: v.to(dev) for k, v in batch.items()}


def sac_rate(dev, p, n_models: int, batch_size: int, warmup: int, updates: int) -> dict:
    from retainrl.families.robot import stages as robot
    from retainrl.learners import sac
    from retainrl.retention.methods import RetentionContext, RetentionParams, build_retention

    ft = p.finetune
    spec = robot.agent_spec(p)
    gen = torch.Generator().manual_seed(0)
    reset_peak(dev)
    agent = sac.SACAgent(spec, n_models, generator=gen).to(dev)
    method = build_retention("finetune", RetentionContext(), RetentionParams(), learner="sac", off_policy=True)
    cfg = sac.SACConfig(batch_size=batch_size, lr=ft.lr, gamma=ft.gamma, tau=ft.tau, init_alpha=ft.init_alpha)
    learner = sac.SACLearner(agent, cfg, method, gen)
    batches = [_sac_batch(spec, n_models, batch_size, gen, dev) for _ in range(4)]
    seconds, stats = timed_loop(dev, lambda i: learner.update(batches[i % len(batches)]), warmup, updates)
    assert_finite("SAC losses", list(stats.values()))
    return {"device": str(dev), "updates": updates, "warmup": warmup, "seconds": seconds, "updates_per_s": updates / seconds,
            "seed_updates_per_s": n_models * updates / seconds, "last_losses": stats, "peak_gpu_mem_mib": peak_mib(dev)}


def section_sac(c: Check) -> dict:
    p = c.params("robot", "smoke" if c.tiny else "paper")
    m = p.finetune.seeds
    b = p.finetune.batch_size
    warm, n_gpu, n_cpu = (2, 3, 3) if c.tiny else (20, 500, 50)
    gpu = sac_rate(c.dev, p, m, b, warm, n_gpu)
    cpu = sac_rate(c.cpu, p, m, b, min(warm, 5), n_cpu)
    return {"what": "SACLearner.update on random batches already on the device (replay lives there); "
                    "each update also draws the policy noise on the CPU generator and copies it over, as in training",
            "profile": "smoke" if c.tiny else "paper", "net": {"hidden": p.net.hidden, "layers": p.net.layers},
            "seeds_stacked": m, "batch_size": b, "gpu": gpu, "cpu": cpu, "ratio": ratio(gpu, cpu, "updates_per_s")}


# --------------------------------------------------------------------------- 2. PPO+RND update


def ppo_rnd_rate(dev, cfg, hidden: int, frame_stack: int, mb: int, warmup: int, updates: int) -> dict:
    from torch import nn

    from retainrl.families.montezuma.nets import ActorCritic
    from retainrl.learners.rnd import RND

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    reset_peak(dev)
    model = ActorCritic(n_actions=18, frame_stack=frame_stack, hidden=hidden).to(dev).train()
    rnd = RND().to(dev)
    params = list(model.parameters()) + list(rnd.predictor.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    pool = 2 * mb  # the rollout lives on the host; each minibatch is gathered and copied over, as in ppo_rnd.train
    f_obs = torch.randint(0, 256, (pool, frame_stack, 84, 84), dtype=torch.uint8, generator=gen)
    f_next = torch.randint(0, 256, (pool, frame_stack, 84, 84), dtype=torch.uint8, generator=gen)
    f_act = torch.randint(0, 18, (pool,), generator=gen)
    f_logp = -torch.rand(pool, generator=gen) * 3
    f_adv = torch.randn(pool, generator=gen)
    f_ret = torch.randn(pool, 2, generator=gen)
    rnd.update_stats(f_next[:256].to(dev))

    def update(i: int) -> dict:
        idx = torch.randperm(pool, generator=gen)[:mb]
        o = f_obs[idx].to(dev)
        logits, values = model.logits_and_values(o)
        logp_all = logits.log_softmax(-1)
        logp = logp_all.gather(1, f_act[idx, None].to(dev)).squeeze(1)
        ratio_ = (logp - f_logp[idx].to(dev)).exp()
        a = f_adv[idx].to(dev)
        a = (a - a.mean()) / (a.std() + 1e-8)
        pg = -torch.min(ratio_ * a, ratio_.clamp(1 - cfg.clip, 1 + cfg.clip) * a).mean()
        v_loss = 0.5 * (values - f_ret[idx].to(dev)).pow(2).sum(-1).mean()
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
        keep = torch.rand(len(idx), generator=gen) < cfg.rnd_update_proportion
        rnd_loss = rnd.error(f_next[idx][keep].to(dev)).mean() if keep.any() else torch.zeros((), device=dev)
        loss = pg + v_loss - cfg.entropy * entropy + rnd_loss
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        return {"loss": loss, "rnd_loss": rnd_loss}

    seconds, last = timed_loop(dev, update, warmup, updates)
    last = {k: float(v.detach()) for k, v in last.items()}
    assert_finite("PPO+RND losses", list(last.values()))
    return {"device": str(dev), "updates": updates, "warmup": warmup, "seconds": seconds, "updates_per_s": updates / seconds,
            "samples_per_s": mb * updates / seconds, "last_losses": last, "peak_gpu_mem_mib": peak_mib(dev)}


def section_ppo_rnd(c: Check) -> dict:
    p = c.params("montezuma", "smoke" if c.tiny else "paper")
    ft = p.finetune
    mb = max(1, ft.envs * ft.steps // ft.minibatches)
    warm, n_gpu, n_cpu = (1, 2, 2) if c.tiny else (5, 50, 4)
    gpu = ppo_rnd_rate(c.dev, ft, p.pretrain.hidden, p.env.frame_stack, mb, warm, n_gpu)
    cpu = ppo_rnd_rate(c.cpu, ft, p.pretrain.hidden, p.env.frame_stack, mb, 1, n_cpu)
    return {"what": "the network update alone (ppo_rnd.train's minibatch step on random uint8 frames, host→device copy "
                    "included); the Montezuma env, which ppo_rnd.train steps in between, is not called",
            "profile": "smoke" if c.tiny else "paper", "minibatch": mb, "hidden": p.pretrain.hidden,
            "rnd_update_proportion": ft.rnd_update_proportion, "gpu": gpu, "cpu": cpu, "ratio": ratio(gpu, cpu, "updates_per_s")}


# --------------------------------------------------------------------------- 3. NetHack APPO


class _Clock:
    """A sample-factory AlgoObserver + event-loop timer: counts the learner's training iterations
    (in whichever process it runs: the runner hears of each one), tracks the learner's GPU memory
    it reports, and stops the run after ``budget_s`` (sample-factory 2.1.1's own --train_for_seconds
    is never checked against a running clock)."""

    def __init__(self, budget_s: float):
        self.budget_s = budget_s
        self.t0 = time.perf_counter()
        self.iterations: list[tuple[float, int, int]] = []  # (t, iteration, env steps)
        self.learner_gpu_mb = self.learner_gpu_cache_mb = None
        self.stopped_by_clock = False

    # AlgoObserver hooks (duck-typed: the runner calls them by name)
    def on_init(self, runner):
        pass

    def on_connect_components(self, runner):
        pass

    def on_start(self, runner):
        pass

    def on_training_step(self, runner, iteration: int):
        self.iterations.append((time.perf_counter(), int(iteration), int(sum(runner.env_steps.values()))))
        for attr, key in (("learner_gpu_mb", "gpu_mem_learner"), ("learner_gpu_cache_mb", "gpu_cache_learner")):
            v = runner.stats.get(key)
            if v is not None:
                setattr(self, attr, max(float(v), getattr(self, attr) or 0.0))

    def extra_summaries(self, runner, policy_id, env_steps, writer):
        pass

    def on_stop(self, runner):
        pass

    def tick(self, runner):
        if not runner.stopped and time.perf_counter() - self.t0 > self.budget_s:
            log.info("APPO: %.0f s budget spent, stopping sample-factory", self.budget_s)
            self.stopped_by_clock = True
            runner._stop_training()

    def steady(self) -> dict:
        """Rates between the first and the last training iteration (start-up and shutdown excluded)."""
        if len(self.iterations) < 2:
            return {}
        (t0, i0, s0), (t1, i1, s1) = self.iterations[0], self.iterations[-1]
        dt = max(t1 - t0, 1e-9)
        return {"seconds": t1 - t0, "iterations_per_s": (i1 - i0) / dt, "env_steps_per_s": (s1 - s0) / dt}


@contextlib.contextmanager
def keep_cuda_visible_devices():
    """sample-factory writes CUDA_VISIBLE_DEVICES into this process's environment ('' for a CPU run
    when unset, the learner's GPU in serial mode) and later runs' processes inherit it: put it back."""
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


@contextlib.contextmanager
def _stop_after(budget_s: float):
    """Patch sample_factory.train.make_runner (which run_appo imports at call time) so that the
    runner it makes carries a _Clock; yields the clock."""
    import sample_factory.train as sft
    from signal_slot.signal_slot import EventLoopObject, Timer

    class Ticker(EventLoopObject):  # a timer's slot must be a method of an object on the runner's event loop
        def __init__(self, runner):
            super().__init__(runner.event_loop, "gpu_check_clock")
            self.runner = runner

        def tick(self):
            clock.tick(self.runner)

    clock = _Clock(budget_s)
    original = sft.make_runner

    def make_runner(cfg):
        cfg, runner = original(cfg)
        runner.register_observer(clock)
        ticker = Ticker(runner)
        timer = Timer(runner.event_loop, 1.0)
        timer.timeout.connect(ticker.tick)
        runner.timers.append(timer)  # the runner stops its timers when it stops
        return cfg, runner

    sft.make_runner = make_runner
    try:
        yield clock
    finally:
        sft.make_runner = original


def appo_run(c: Check, dev, settings: dict, env_steps: int, budget_s: float) -> dict:
    from retainrl.families.nethack import sf
    from retainrl.retention.methods import RetentionContext, RetentionParams, build_retention

    method = build_retention("finetune", RetentionContext(), RetentionParams(), learner="appo", off_policy=False)
    exp = c.workdir(f"appo-{dev.type}") / "run"
    reset_peak(dev)
    smi0 = nvidia_smi_used_mib() if dev.type == "cuda" else None
    with keep_cuda_visible_devices(), _stop_after(budget_s) as clock, \
            (SmiSampler() if dev.type == "cuda" else contextlib.nullcontext()) as smi:
        res = sf.run_appo(None, exp, method, env_steps=env_steps, device="gpu" if dev.type == "cuda" else "cpu", **settings)
    shutil.rmtree(exp.parent, ignore_errors=True)
    if res["status"] != 0:
        raise RuntimeError(f"sample-factory exited with status {res['status']}")
    iters = clock.iterations[-1][1] if clock.iterations else 0
    updates = iters * settings["epochs"]  # each training iteration = num_epochs × 1 minibatch SGD steps
    wall = res["wall_s"]
    out = {
        "device": str(dev), "sf_device": "gpu" if dev.type == "cuda" else "cpu", "budget_s": budget_s,
        "stopped_by_clock": clock.stopped_by_clock, "env_steps": res["env_steps"], "wall_s": wall,
        "env_steps_per_s": res["env_steps_per_s"],
        "learner_iterations": iters, "learner_updates": updates, "learner_updates_per_s": updates / max(wall, 1e-9),
        # run_appo's own count comes from the learner's snapshots: exact when the run reached
        # env_steps, 0 (the step-0 snapshot) when the clock stopped it first
        "actor_updates_run_appo": res["actor_updates"], "actor_updates_run_appo_per_s": res["actor_updates"] / max(wall, 1e-9),
        "steady": clock.steady(), "train_episodes": res["train_episodes"],
        "peak_gpu_mem_mib_this_process": peak_mib(dev),
        # the learner's own torch.cuda.memory_allocated/reserved (MB = 1e6 bytes, as sample-factory reports them),
        # the largest of its reports: the one figure that sees the learner's process in parallel mode
        "learner_gpu_mem_mb_reported": clock.learner_gpu_mb, "learner_gpu_cache_mb_reported": clock.learner_gpu_cache_mb,
        "nvidia_smi_used_mib_before": smi0, "nvidia_smi_used_mib_peak": smi.peak if smi is not None else None,
    }
    assert_finite("APPO rates", [out["env_steps_per_s"], out["learner_updates_per_s"]])
    if out["env_steps"] <= 0:
        raise RuntimeError("sample-factory stepped no envs")
    return out


def section_appo(c: Check) -> dict:
    need("nle", "sample_factory")
    p = c.params("nethack", "paper")
    ft = p.finetune
    if c.tiny:
        settings = dict(num_envs=2, rollout=16, batch_size=32, workers=1)
        env_steps, budget_gpu, budget_cpu = 256, 60.0, 60.0
    else:
        workers = max(1, min(ft.workers, (os.cpu_count() or 2) - 1))
        settings = dict(num_envs=ft.num_envs, rollout=ft.rollout, batch_size=ft.batch_size, workers=workers)
        # each run: its budget + ~30 s of start-up and shutdown; the CPU run gets half the device's
        budget_cpu = min(60.0, (c.remaining() - 80.0) / 3)
        budget_gpu = 2 * budget_cpu
        if budget_cpu < 10:
            raise Skip(f"time budget: {c.remaining():.0f} s left, too little for two sample-factory runs")
        env_steps = 10**9  # the clock ends the run
    settings.update(lr=ft.lr, epochs=ft.epochs, entropy=ft.entropy, max_episode_steps=ft.max_episode_steps,
                    batched_sampling=ft.batched_sampling, seed=ft.seed)
    gpu = appo_run(c, c.dev, settings, env_steps, budget_gpu)
    cpu = appo_run(c, c.cpu, settings, env_steps, budget_cpu)
    mode = "serial (one process)" if settings["workers"] == 1 else f"parallel ({settings['workers']} rollout workers + learner, async)"
    return {"what": "nethack.sf.run_appo from a fresh policy (retention 'finetune': plain APPO), stopped by a wall-clock "
                    "budget; rates over the whole run (start-up included) and 'steady' between the first and last learner "
                    "iteration; in parallel mode the learner runs in another process, so its GPU memory is the learner's "
                    "own report and nvidia-smi's, not this process's max_memory_allocated",
            "profile": "paper" if not c.tiny else "paper (tiny sizes)", "mode": mode,
            "settings": {**settings, "env_steps_cap": env_steps}, "gpu": gpu, "cpu": cpu,
            "ratio": ratio(gpu, cpu, "env_steps_per_s"), "ratio_learner_updates": ratio(gpu, cpu, "learner_updates_per_s")}


# --------------------------------------------------------------------------- 4. fine-tuning per family


def _ft_record(c: Check, run: Callable, expect_close: bool, why: str, **extra) -> dict:
    gpu_t = time.perf_counter()
    gpu_metrics, gpu_info = run(c.dev)
    gpu_s = time.perf_counter() - gpu_t
    cpu_t = time.perf_counter()
    cpu_metrics, cpu_info = run(c.cpu)
    cpu_s = time.perf_counter() - cpu_t
    for name, m in (("gpu", gpu_metrics), ("cpu", cpu_metrics)):
        for k, v in m.items():
            assert_finite(f"{name} {k}", to_numpy(v))
    summary = lambda m: {k: float(to_numpy(v).mean()) for k, v in m.items()}  # noqa: E731
    gpu = {"device": str(c.dev), "wall_s": gpu_s, "metric_means": summary(gpu_metrics), **gpu_info}
    cpu = {"device": "cpu", "wall_s": cpu_s, "metric_means": summary(cpu_metrics), **cpu_info}
    return {**extra, "gpu": gpu, "cpu": cpu, "ratio": cpu_s / gpu_s if gpu_s else None,  # speed: > 1 = the device is faster
            "comparison": compare(gpu_metrics, cpu_metrics, expect_close, why)}


def section_finetune_apple(c: Check) -> dict:
    from retainrl.core.paths import Paths
    from retainrl.families.apple import stages as apple
    from retainrl.pipeline import far_buffer, fisher as fisher_stage

    p = c.params("apple", "smoke")
    if c.tiny:
        p = p.model_copy(update={"finetune": p.finetune.model_copy(update={"iterations": 10, "eval_every": 5, "eval_episodes": 50})})
    paths = Paths("apple", c.workdir("apple"))
    for stage in (apple.collect_demos, apple.pretrain):  # the DAG's upstream stages
        stage(p, paths, c.dev)
    for generic in (far_buffer.far_buffer, fisher_stage.fisher):  # AppleRetrieval's π* lives on the CPU
        generic(apple, p, paths, torch.device("cpu"))
    pretrained = apple.load_pretrained(p, paths)
    far = {k: torch.as_tensor(v) for k, v in far_buffer.load(paths).items()}
    fisher = fisher_stage.load(paths)

    def run(dev):
        curves, policy = apple.finetune_seeds("ewc", p, pretrained, far, fisher, progress=False)
        return {**{k: curves[k] for k in ("close", "far", "full")}, "weight": policy.weight}, {}

    return _ft_record(c, run, True, "AppleRetrieval's stages take no device (REINFORCE on a 2-weight logistic policy, CPU "
                                    "only): both runs are the same CPU run, so this checks determinism",
                      what="apple collect_demos/pretrain/far_buffer/fisher stages, then finetune_seeds('ewc') (the finetune "
                           "stage minus its dvclive logging)", method="ewc", seeds=p.finetune.seeds, iterations=p.finetune.iterations)


def _nethack_random_pi_star(paths) -> None:
    """π* with random weights where the pretrain stage would put the BC one (for --tiny)."""
    import gymnasium as gym
    from sample_factory.model.actor_critic import create_actor_critic

    from retainrl.families.nethack import sf

    cfg = sf.sf_config(Path(paths.pretrained).parent, Path(paths.pretrained).name)
    torch.manual_seed(0)
    ac = create_actor_critic(cfg, sf.obs_space(), gym.spaces.Discrete(sf.N_ACTIONS))
    sf.save_sf_checkpoint(ac, cfg, paths.pretrained, cfg.learning_rate)


def _nethack_obs(T: int, B: int, seed: int = 0) -> dict:
    g = np.random.default_rng(seed)
    return {"chars": torch.from_numpy(g.integers(32, 128, (T, B, 21, 79), dtype=np.uint8)),
            "blstats": torch.from_numpy(g.uniform(0, 20, (T, B, 27)).astype(np.float32)),
            "misc": torch.from_numpy(g.integers(0, 2, (T, B, 3)).astype(np.float32)),
            "message": torch.from_numpy(g.integers(0, 128, (T, B, 256), dtype=np.uint8))}


def section_finetune_nethack(c: Check) -> dict:
    need("nle", "sample_factory")
    from retainrl.core.paths import Paths
    from retainrl.families.nethack import sf
    from retainrl.families.nethack import stages as nethack

    p = c.params("nethack", "smoke")
    if c.tiny:  # the smoke profile's 16 SGD epochs per batch cost seconds on 2 cores
        p = p.model_copy(update={"finetune": p.finetune.model_copy(update={"epochs": 1})})
    paths = Paths("nethack", c.workdir("nethack"))
    if c.tiny:
        _nethack_random_pi_star(paths)
        upstream = "a random-weight π* saved as the pretrain stage saves one (--tiny)"
    else:
        nethack.collect_demos(p, paths, c.dev)
        with keep_cuda_visible_devices():
            nethack.pretrain(p, paths, c.dev)  # BC, then the critic warm-up: an APPO run on the device
        upstream = "the smoke collect_demos and pretrain stages (critic warm-up on the device)"
    runs = {}

    def run(dev):
        d = c.workdir(f"nethack-ft-{dev.type}") / "seed_0"
        with keep_cuda_visible_devices():
            res = nethack.finetune_seed(p, paths, dev, "finetune", 0, d)
        snaps = sorted((d / "snapshots").glob("step_*.pth"))
        first, last = (torch.load(s, map_location="cpu")["model"] for s in (snaps[0], snaps[-1]))
        runs[dev.type] = (d, last)
        episodes = json.loads((d / "train_episodes.json").read_text())
        metrics = {"env_steps": res["env_steps"], "actor_updates": res["actor_updates"],
                   "retention_loss_last": res["retention_loss_last"],
                   "step0_weights": torch.cat([v.flatten().double() for v in first.values() if v.is_floating_point()])}
        info = {"env_steps_per_s": res["env_steps_per_s"], "train_episodes": res["train_episodes"],
                "episode_score_mean": float(np.mean([e["score"] for e in episodes])) if episodes else None,
                "snapshots": len(snaps)}
        return metrics, info

    rec = _ft_record(c, run, False, "sample-factory samples actions with the device's RNG (CUDA's stream differs from the "
                                    "CPU's), so the runs part after the first action; step-0 weights (π*) and the "
                                    "step counts must agree, the trained weights need not (see forward_check)",
                     what="nethack.stages.finetune_seed('finetune', smoke profile) after " + upstream, method="finetune",
                     env_steps=p.finetune.env_steps)
    # a deterministic device check: the device-trained weights, the same inputs, both devices
    d, state = runs[c.dev.type]
    ac, cfg = sf.load_snapshot(d, sorted((d / "snapshots").glob("step_*.pth"))[-1])
    ac.eval()
    T, B = 8, 16
    obs = _nethack_obs(T, B)
    with torch.no_grad():
        ref, _ = sf.unroll(ac, obs, torch.zeros(T, B), torch.zeros(B, cfg.rnn_size))
        acd = copy.deepcopy(ac).to(c.dev)
        out, _ = sf.unroll(acd, {k: v.to(c.dev) for k, v in obs.items()}, torch.zeros(T, B, device=c.dev),
                           torch.zeros(B, cfg.rnn_size, device=c.dev))
    diff = float((out.cpu().double() - ref.double()).abs().max())
    rec["forward_check"] = {"what": "the device-trained final snapshot unrolled over the same random observations "
                                    f"({T}×{B}) on {c.dev} and on the CPU: action logits", "max_abs_diff": diff,
                            "within_tolerance": bool(diff <= ATOL + RTOL * float(ref.abs().max())),
                            "final_weights_max_abs_diff_gpu_vs_cpu_run": state_diff(runs[c.dev.type][1], runs["cpu"][1])}
    return rec


def section_finetune_robot(c: Check) -> dict:
    need("metaworld", "mujoco")
    from retainrl.families.robot import stages as robot
    from retainrl.learners.sac import SACAgent

    p = c.params("robot", "smoke")
    steps = 60 if c.tiny else p.finetune.steps
    seeds = 1 if c.tiny else p.finetune.seeds
    if c.tiny:
        p = p.model_copy(update={"finetune": p.finetune.model_copy(update={"eval_every": 30, "update_every": 10})})

    def run(dev):
        # robot keeps idle Meta-World envs in a module-level pool; a pooled env is not bit-for-bit a fresh one
        # (measured: a second run in one process differs by ~3e-2 in the actor's weights), so each run starts cold
        robot._POOL.clear()
        pi = SACAgent(robot.agent_spec(p), 1, generator=torch.Generator().manual_seed(0)).to(dev)  # a random-weight π*
        curves, agent = robot.finetune_seeds("finetune", p, pi, None, None, None, dev, seeds=seeds, steps=steps, progress=False)
        actor = torch.cat([v.flatten() for k, v in agent.state_dict().items() if k.startswith("actor")])
        return {"success": curves["success"], "completed": curves["completed"], "actor_weights": actor}, {}

    return _ft_record(c, run, True, "SAC's noise and replay indices come from one CPU generator on both devices: only float "
                                    "rounding separates the runs (it can still flip a discrete success late in a run)",
                      what="robot.stages.finetune_seeds('finetune', smoke profile) from a random-weight π*", method="finetune",
                      steps=steps, seeds=seeds)


def section_finetune_montezuma(c: Check) -> dict:
    need("ale_py", "cv2")
    from retainrl.families.montezuma import stages as mz
    from retainrl.families.montezuma.nets import ActorCritic
    from retainrl.learners import ppo_rnd
    from retainrl.learners.rnd import RND
    from retainrl.retention.methods import RetentionContext, build_retention

    p = c.params("montezuma", "smoke")
    cfg = p.finetune
    if c.tiny:
        cfg = cfg.model_copy(update={"updates": 1, "steps": 8})

    def run(dev):
        torch.manual_seed(cfg.seed)
        pi = ActorCritic(n_actions=18, frame_stack=p.env.frame_stack, hidden=p.pretrain.hidden)  # a random-weight π*
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + sum(map(ord, "finetune")))
        retention = build_retention("finetune", RetentionContext(pretrained=pi, generator=gen), p.retention,
                                    learner=ppo_rnd.LEARNER, off_policy=ppo_rnd.OFF_POLICY)
        torch.manual_seed(cfg.seed)
        rnd, model = RND(), copy.deepcopy(pi)
        envs = [mz.MontezumaEnv(p.env, seed=cfg.seed * 100 + i) for i in range(cfg.envs)]
        t0 = time.perf_counter()
        curves = ppo_rnd.train(model, rnd, envs, cfg, retention, gen, device=dev, progress=False)
        seconds = time.perf_counter() - t0
        weights = torch.cat([v.flatten().cpu() for v in model.state_dict().values() if v.is_floating_point()])
        return ({"episode_return": curves["episode_return"], "rooms_visited": curves["rooms_visited"],
                 "intrinsic": curves["intrinsic"], "weights": weights},
                {"frames_per_s": curves["frames"][-1] / seconds, "actor_updates": curves["actor_updates"]})

    return _ft_record(c, run, True, "ppo_rnd samples actions and minibatches with one CPU generator on both devices: only "
                                    "float rounding separates the runs",
                      what="ppo_rnd.train (the montezuma finetune stage's learner, smoke profile) from a random-weight π*, "
                           "no room evaluation (it needs the search's demos)", method="finetune", updates=cfg.updates,
                      envs=cfg.envs, steps=cfg.steps)


SECTIONS: dict[str, Callable[[Check], dict]] = {
    "sac": section_sac,
    "ppo_rnd": section_ppo_rnd,
    "finetune_apple": section_finetune_apple,
    "finetune_robot": section_finetune_robot,
    "finetune_montezuma": section_finetune_montezuma,
    "finetune_nethack": section_finetune_nethack,
    "appo": section_appo,  # last: its budget is what is left
}
GROUPS = {"finetune": [k for k in SECTIONS if k.startswith("finetune_")]}  # --sections shorthands
MIN_SECONDS = {"finetune_nethack": 60, "finetune_robot": 30, "finetune_montezuma": 20}  # not started with less left


# --------------------------------------------------------------------------- main


def environment(dev: torch.device) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    pkgs = {}
    for name in ("numpy", "nle", "sample-factory", "gymnasium", "ale-py", "metaworld", "mujoco", "opencv-python-headless",
                 "opencv-python", "pydantic", "safetensors"):
        try:
            pkgs[name] = version(name)
        except PackageNotFoundError:
            pkgs[name] = None
    info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "device": str(dev), "device_name": device_name(dev),
            "cpu_name": device_name(torch.device("cpu")), "cpu_count": os.cpu_count(), "packages": pkgs}
    if dev.type == "cuda" and shutil.which("nvidia-smi"):
        with contextlib.suppress(Exception):
            info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                                capture_output=True, text=True, timeout=10).stdout.strip()
    return info


def parse_sections(text: str | None) -> list[str]:
    if not text:
        return list(SECTIONS)
    chosen = set()
    for s in (x.strip() for x in text.split(",") if x.strip()):
        for g in GROUPS.get(s, [s]):
            if g not in SECTIONS:
                raise SystemExit(f"--sections: unknown section {g!r}; known: {', '.join(SECTIONS)}, finetune")
            chosen.add(g)
    return [k for k in SECTIONS if k in chosen]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="the device under test (cpu: a dry run)")
    ap.add_argument("--tiny", action="store_true", help="minimal sizes and steps everywhere (seconds; one torch thread)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--sections", help=f"comma-separated subset of: {', '.join(SECTIONS)} (finetune = all finetune_*)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget; the APPO section gets what is left")
    args = ap.parse_args(argv)

    from retainrl.core.artifacts import save_json
    from retainrl.core.device import resolve_device
    from retainrl.core.log import setup_logging

    setup_logging()
    if args.tiny:
        torch.set_num_threads(1)
    out = args.out.resolve()
    sections = parse_sections(args.sections)
    record = {"issue": 20, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv if argv is None else argv,
              "tiny": args.tiny, "dry_run": args.device == "cpu", "sections": {}}
    try:
        dev = resolve_device(args.device)  # fails early on a machine whose torch sees no GPU
    except Exception as exc:  # noqa: BLE001 - recorded, then the exit status says it failed
        record["error"] = f"{type(exc).__name__}: {exc}"
        save_json(out, record)
        log.error("%s", record["error"])
        print(out)
        return 1
    args.device = dev.type
    c = Check(args)
    record["environment"] = env = environment(dev)
    log.info("gpu_check on %s (torch %s), sections %s", env["device_name"], env["torch"], sections)
    try:
        for name in sections:
            base = {"device_name": env["device_name"], "torch": env["torch"]}
            t0 = time.perf_counter()
            try:
                if not c.tiny and c.remaining() < MIN_SECONDS.get(name, 10):
                    raise Skip(f"time budget: {c.remaining():.0f} s left of {args.budget_s:.0f}")
                log.info("== %s", name)
                res = {"status": "ok", **SECTIONS[name](c)}
            except Skip as exc:
                res = {"status": "skipped", "reason": str(exc)}
                log.info("%s skipped: %s", name, exc)
            except Exception as exc:  # noqa: BLE001 - one failing section must not stop the others
                res = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
                log.exception("%s failed", name)
            res.update(base, section_wall_s=time.perf_counter() - t0)
            record["sections"][name] = res
            record["wall_s"] = time.perf_counter() - c.t0
            save_json(out, record)  # after every section: a run killed by its timeout keeps what it finished
    finally:
        shutil.rmtree(c.tmp, ignore_errors=True)
    record["wall_s"] = time.perf_counter() - c.t0
    save_json(out, record)
    bad = [k for k, v in record["sections"].items() if v["status"] == "error"]
    log.info("done in %.0f s; %s", record["wall_s"], f"errors in {bad}" if bad else "no errors")
    print(out)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
