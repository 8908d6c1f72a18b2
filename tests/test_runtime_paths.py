"""The GPU code paths executed on the CPU, where CI runs: autocast (bf16, and fp16 with a GradScaler), the disabled
scaler, channels_last, torch.compile, and what the runtime picks for a CUDA device."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from kit.checkpoint import load_checkpoint
from kit.config import load_config
from kit.data.dataset import ImageDataset
from kit.errors import ConfigError
from kit.runtime import Runtime, compile_model, default_workers, make_loader, resolve_amp, resolve_channels_last
from kit.train import _backward, _step, train_folds, train_one_epoch
from kit.transforms import build_eval_transform

CPU = torch.device("cpu")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _loader(n: int = 16, size: int = 32, batch: int = 8):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    ds = ImageDataset([str(i) for i in range(n)], build_eval_transform(size, size), images=images,
                      targets=np.arange(n) % 2)
    return make_loader(ds, batch, 0, CPU, train=True, seed=1)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=1)


def _runtime(amp_dtype=None, scaler=None, channels_last=False) -> Runtime:
    return Runtime(CPU, amp_dtype, scaler, channels_last, torch.tensor(MEAN).view(1, -1, 1, 1),
                   torch.tensor(STD).view(1, -1, 1, 1), binary=True, use_meta=False)


def _train(model, rt, grad_clip=0.0):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return train_one_epoch(model, _loader(), optimizer, torch.nn.BCEWithLogitsLoss(), rt, grad_clip=grad_clip)


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().float() for p in model.parameters()])


def test_bf16_autocast_runs_on_the_cpu():
    rt = Runtime.create(CPU, "bf16", "off", MEAN, STD, binary=True, use_meta=False)
    assert rt.amp_dtype == torch.bfloat16 and rt.scaler is None
    model, seen = _model(), []
    model.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = _params(model)
    stats = _train(model, rt)
    assert seen and set(seen) == {torch.bfloat16}  # the convolutions ran in bf16
    assert np.isfinite(stats.loss) and not torch.equal(before, _params(model))
    assert Runtime.create(CPU, "auto", "off", MEAN, STD, True, False).amp_dtype is None  # auto: off on a CPU


def test_fp16_on_a_cpu_config_is_one_line():
    with pytest.raises(ConfigError, match="train.amp=fp16 needs a CUDA device"):
        resolve_amp("fp16", CPU)


def test_fp16_with_a_grad_scaler_clips_the_unscaled_gradients():
    scaler = torch.amp.GradScaler("cpu")
    model = _model()
    stats = _train(model, _runtime(torch.float16, scaler), grad_clip=0.5)
    assert np.isfinite(stats.loss) and scaler.get_scale() == 65536.0  # finite steps: the scale holds
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert norm <= 0.5 + 1e-3  # clipped after unscale_: scaled gradients would be ~65536 times larger


def test_an_overflow_skips_the_step_and_halves_the_scale():
    scaler = torch.amp.GradScaler("cpu")
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _params(model)
    loss = model(torch.randn(2, 3, 32, 32)).sum() * torch.tensor(float("inf"))
    rt = _runtime(torch.float16, scaler)
    _backward(loss, rt)
    _step(model, optimizer, rt, grad_clip=1.0)
    assert torch.equal(before, _params(model)) and scaler.get_scale() == 32768.0


def test_a_disabled_scaler_is_the_plain_path():
    plain, scaled = _model(), _model()
    torch.manual_seed(3)
    _train(plain, _runtime())
    torch.manual_seed(3)
    _train(scaled, _runtime(scaler=torch.amp.GradScaler("cpu", enabled=False)), grad_clip=0.0)
    assert torch.equal(_params(plain), _params(scaled))


def test_channels_last_on_the_cpu_predicts_what_contiguous_does():
    rt = Runtime.create(CPU, "off", "on", MEAN, STD, binary=True, use_meta=False)
    assert rt.channels_last
    model = rt.place(_model()).eval()
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    batch = next(iter(_loader()))
    x, _ = rt.inputs(batch)
    assert x.is_contiguous(memory_format=torch.channels_last)
    plain_rt = _runtime()
    plain = _model().eval()
    with torch.no_grad():
        np.testing.assert_allclose(rt.forward(model, x, None).numpy(),
                                   plain_rt.forward(plain, plain_rt.inputs(batch)[0], None).numpy(), atol=1e-4)


def test_compile_keeps_the_state_dict_keys():
    model, plain = _model(), _model()
    keys = list(model.state_dict())
    compile_model(model, backend="eager")  # inductor needs a C compiler and minutes; dynamo is exercised alike
    assert list(model.state_dict()) == keys
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain.eval()(x))


def test_what_a_cuda_device_gets():
    cuda = torch.device("cuda", 0)
    assert resolve_channels_last("auto", cuda) and not resolve_channels_last("auto", CPU)
    assert default_workers(-1, cuda) >= 1 and default_workers(-1, CPU) == 0
    ds = _loader().dataset
    assert make_loader(ds, 4, 0, cuda, train=False).pin_memory  # built, never iterated: no GPU needed
    assert not make_loader(ds, 4, 0, CPU, train=False).pin_memory


def test_the_cuda_options_through_a_whole_run_on_the_cpu(demo_data, tmp_path, monkeypatch):
    monkeypatch.setattr("kit.train.compile_model", lambda m: compile_model(m, backend="eager"))
    data = demo_data("histopathologic-cancer-detection", n=32)
    cfg = load_config("histopathologic-cancer-detection", overrides=[
        "model.name=test_resnet", "model.img_size=32", "n_folds=2", "train.epochs=1", "train.warmup_epochs=0",
        "train.batch_size=8", "train.device=cpu", "train.amp=bf16", "train.channels_last=on", "train.compile=true",
        "aug.on_device=true"])
    result = train_folds(cfg, data, tmp_path / "run")
    assert np.isfinite(result.cv_score)
    ckpt = load_checkpoint(tmp_path / "run" / "fold0" / "best.pt")
    ckpt.build_model()  # compiled in place: the checkpoint loads into the plain model
    assert ckpt.config["train"]["amp"] == "bf16" and ckpt.config["train"]["compile"]


def test_bench_gpu_smoke_run(tmp_path):
    """scripts/bench_gpu.py runs end to end (on a CPU: tiny, figures meaningless, every row and ratio present)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, str(root / "scripts" / "bench_gpu.py"), "--smoke", "--json",
                          str(tmp_path / "b.json")], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert [r["config"] for r in report["rows"]] == ["baseline", "channels_last", "amp", "amp+channels_last"]
    assert all(r["train_kit_vs_bare"] > 0 and r["predict_kit_vs_bare"] > 0 for r in report["rows"])
    assert report["tta"][0]["stacked_vs_per_view"] > 0
    assert "| test_resnet | 32 | 4 | amp+channels_last |" in out.stdout and "worst kit/bare" in out.stdout


def test_bench_pipeline_smoke_run(tmp_path):
    """scripts/bench_pipeline.py runs end to end (on a CPU: tiny, figures meaningless, every arm and ratio present)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, str(root / "scripts" / "bench_pipeline.py"), "--n", "80", "--device", "cpu",
                          "--model", "test_resnet", "--batch", "8", "--workers", "4", "--work", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    table = out.stdout[out.stdout.index("| arm |"):].splitlines()
    assert len(table) == 2 + 5 and table[2].startswith("| (a) histo preset, 4 CPU workers |")
    assert "| (b) aug.on_device, 1 workers |" in out.stdout
    assert table[2].endswith("| 1.00 |") and all(float(row.split("|")[3]) > 0 for row in table[2:])
