"""Scale-out through Lightning's own strategies: two CPU processes (gloo DDP) train like one process
at the same global batch; each rank reads its own samples; the global batch sets accumulation;
gradient checkpointing and bf16-mixed leave the training path intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import open_dict

from vlc.data.sampler import ResumableLoader, ResumableSampler
from vlc.run import accumulation_steps, build_model, build_trainer, train

from conftest import TINY_DATA, compose_config, fake_batch

ROOT = Path(__file__).resolve().parents[1]

# 16 train samples, 2 per rank per micro-batch, 4 per optimizer step: 4 steps an epoch. The count
# task's answers ("1".."4") are all 2 tokens with <|im_end|>, so the mean of two micro-batch (or
# rank) means is the step's mean whatever the grouping.
STEPS = [*TINY_DATA[:4], "data.synthetic.task=count", "data.batch_size=2", "data.num_workers=0",
         "global_batch_size=4", "trainer.max_steps=3",
         "trainer.val_check_interval=3", "trainer.check_val_every_n_epoch=null", "trainer.limit_val_batches=1",
         "optim.warmup_steps=0", "logger=none", "callbacks.progress_bar=null", "callbacks.lr_monitor=null"]


def _recorder(path: Path) -> list[str]:
    return ["+callbacks.recorder._target_=test_resume.LossRecorder", f"+callbacks.recorder.path={path}"]


@pytest.mark.slow  # two fresh interpreters on 2 shared cores: ~40 s alone, more under load
def test_two_process_ddp_matches_one_process_at_equal_global_batch(tmp_path):
    data_dir = tmp_path / "data"
    # One process: micro-batches of 2, accumulation 2 (from global_batch_size=4).
    # vst with one training ratio: each rank draws its own ratios, one process draws per micro-batch.
    vst = ["experiment=vst_ratio16", "compressor.ratios=[16]"]
    one = compose_config("train", [*STEPS, *vst], tmp_path / "one")
    with open_dict(one):
        one.paths.data_dir = str(data_dir)
        one.callbacks.recorder = {"_target_": "test_resume.LossRecorder", "path": str(tmp_path / "one.jsonl")}
    train(one)
    # Two processes over gloo through `python train.py` (Lightning relaunches it per rank): accumulation 1.
    run_dir = tmp_path / "two"
    cmd = [sys.executable, "train.py", "trainer=ddp_cpu", *vst, *STEPS,
           f"hydra.run.dir={run_dir}", f"paths.data_dir={data_dir}", *_recorder(tmp_path / "two.jsonl")]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    single = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    ranks = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert len(single) == 6 and len(ranks) == 6  # 3 steps x (2 micro-batches | 2 ranks)
    for step in (1, 2, 3):
        mine = [r for r in single if r["batch"] // 2 == step - 1]  # the 2 micro-batches of the step
        theirs = [r for r in ranks if r["step"] == step]
        assert {r["rank"] for r in theirs} == {0, 1}
        # Same samples in the step, split differently (rank r takes every 2nd index from r).
        assert sorted(sum((r["ids"] for r in mine), [])) == sorted(sum((r["ids"] for r in theirs), []))
        assert not set(theirs[0]["ids"]) & set(theirs[1]["ids"])
        loss_one = sum(r["loss"] for r in mine) / 2
        loss_two = sum(r["loss"] for r in theirs) / 2
        assert abs(loss_one - loss_two) < 1e-4, (step, loss_one, loss_two)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == 3


def test_ranks_read_disjoint_samples_that_make_up_the_single_process_batches():
    data = list(range(16))
    one = ResumableLoader(data, batch_size=4, sampler=ResumableSampler(data, seed=3, num_replicas=1, rank=0))
    ranks = [ResumableLoader(data, batch_size=2, sampler=ResumableSampler(data, seed=3, num_replicas=2, rank=r))
             for r in (0, 1)]
    for epoch in (0, 1):
        for loader in (one, *ranks):
            loader.sampler.set_epoch(epoch)
        single = [b.tolist() for b in one]
        per_rank = [[b.tolist() for b in loader] for loader in ranks]
        assert not set(sum(per_rank[0], [])) & set(sum(per_rank[1], []))
        for step, batch in enumerate(single):  # step k of one process = step k of both ranks together
            assert sorted(batch) == sorted(per_rank[0][step] + per_rank[1][step])
        if epoch == 0:
            first = single
    assert single != first  # epochs reshuffle


def test_lightning_keeps_the_train_sampler_under_ddp(cfg_factory):
    """With use_distributed_sampler, Lightning replaces only samplers that are not DistributedSamplers."""
    from lightning.pytorch.trainer.states import RunningStage

    cfg = cfg_factory([*TINY_DATA, "trainer=ddp_cpu", "logger=none"])
    trainer = build_trainer(cfg)
    assert trainer.world_size == 2 and trainer.strategy.__class__.__name__ == "DDPStrategy"
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableLoader) and isinstance(loader.sampler, ResumableSampler)
    prepared = trainer._data_connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING)
    assert prepared is loader  # not rebuilt with Lightning's own DistributedSampler
    assert trainer._data_connector._requires_distributed_sampler(dm.val_dataloader())  # val: Lightning's


def test_global_batch_size_sets_gradient_accumulation(cfg_factory):
    trainer = build_trainer(cfg_factory([*TINY_DATA, "trainer=ddp_cpu", "logger=none", "data.batch_size=2",
                                         "global_batch_size=16"]))
    assert (trainer.world_size, trainer.accumulate_grad_batches) == (2, 4)
    assert build_trainer(cfg_factory([*TINY_DATA, "logger=none", "global_batch_size=12", "data.batch_size=4"])
                         ).accumulate_grad_batches == 3
    with pytest.raises(ValueError, match=r"global_batch_size=6 is not a multiple of data.batch_size \(2\) x world"):
        accumulation_steps(6, 2, 2)
    with pytest.raises(ValueError, match="accumulate_grad_batches=3 contradicts global_batch_size=16"):
        accumulation_steps(16, 2, 2, configured=3)


def test_strategy_configs_build_lightning_strategies(cfg_factory):
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    ddp = hydra.utils.instantiate(cfg_factory(["trainer=ddp"]).trainer.strategy)
    assert isinstance(ddp, DDPStrategy) and ddp._process_group_backend == "nccl"
    fsdp_cfg = cfg_factory(["trainer=fsdp"]).trainer
    fsdp = hydra.utils.instantiate(fsdp_cfg.strategy)
    assert isinstance(fsdp, FSDPStrategy) and fsdp_cfg.precision == "bf16-mixed"
    assert fsdp.kwargs["use_orig_params"] is True
    ds = cfg_factory(["trainer=deepspeed"]).trainer
    assert ds.strategy._target_.endswith("DeepSpeedStrategy") and ds.strategy.stage == 2 and ds.plugins is None
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(Exception, match="(?i)deepspeed"):
            hydra.utils.instantiate(ds.strategy)


def _loss_and_grads(cfg_factory, compressor: str, checkpointing: bool):
    torch.manual_seed(0)
    vst = ["compressor.window=32", "compressor.ratio=4", "compressor.ratios=[4]"] if compressor == "vst" else []
    m = build_model(cfg_factory(["~data", f"compressor={compressor}", *vst,
                                 f"model.gradient_checkpointing={checkpointing}"]))
    m.train()
    torch.manual_seed(1)
    loss = m(fake_batch(B=2, T=6))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("compressor", ["none", "vst"])
def test_gradient_checkpointing_keeps_loss_and_gradients(cfg_factory, compressor):
    """Checkpointed HF layers drop their KV cache; the training path must not lose the visual context."""
    loss, grads = _loss_and_grads(cfg_factory, compressor, False)
    loss_ckpt, grads_ckpt = _loss_and_grads(cfg_factory, compressor, True)
    torch.testing.assert_close(loss_ckpt, loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_ckpt.keys() and any(k.startswith("pipeline.backbone.encoder.") for k in grads)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_checkpointing_is_switched_on_in_the_llm_and_the_encoder(cfg_factory):
    m = build_model(cfg_factory(["~data", "model.gradient_checkpointing=true"]))
    layers = m.backbone.llm.model.layers
    assert all(layer.gradient_checkpointing is True for layer in layers)
    assert m.backbone.encoder.model.grad_checkpointing is True


def test_bf16_mixed_cpu_training_steps_run_with_vst_and_checkpointing(tmp_path):
    cfg = compose_config("train", [*TINY_DATA, "experiment=vst_ratio16", "trainer.precision=bf16-mixed",
                                   "model.gradient_checkpointing=true", "trainer.max_steps=2", "train=true",
                                   "trainer.val_check_interval=2", "trainer.check_val_every_n_epoch=null",
                                   "logger=none", "callbacks=none"], tmp_path)
    with open_dict(cfg):
        cfg.paths.data_dir = str(tmp_path.parent / "vlc-test-data")
    metrics = train(cfg)
    assert metrics["train_steps"] == 2 and torch.isfinite(torch.tensor(metrics["train/loss"]))
