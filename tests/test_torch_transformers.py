"""Hugging Face transformers.Trainer with fastopt.torch.AdamW (issue 10, item 11): a tiny GPT-2
built from a config (nothing downloaded) trains, saves a checkpoint and resumes from it to the
same params as the uninterrupted run."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")
pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")

import fastopt.torch as ft  # noqa: E402

STEPS, SAVE_AT = 6, 3


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n=48, length=12, vocab=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}


def _model():
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2,
                                  n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg)


def _trainer(model, out):
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4,
        save_strategy="steps", save_steps=SAVE_AT, logging_strategy="no", report_to=[],
        use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True)
    opt = ft.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    return transformers.Trainer(model=model, args=args, train_dataset=_Tokens(),
                                optimizers=(opt, None)), opt


def test_trainer_trains_saves_and_resumes(tmp_path):
    init = [p.detach().clone() for p in _model().parameters()]
    model = _model()
    trainer, opt = _trainer(model, tmp_path / "run")
    trainer.train()
    assert trainer.state.global_step == STEPS
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert inner is opt and isinstance(inner, ft.AdamW)
    assert all(v["step"].item() == STEPS for v in opt.state.values())
    assert opt._fo_driver.refused is None          # the steady state ran natively
    full = [p.detach().clone() for p in model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(full, init)), "nothing trained"
    ckpt = tmp_path / "run" / f"checkpoint-{SAVE_AT}"
    assert (ckpt / "optimizer.pt").exists()

    resumed = _model()
    trainer2, opt2 = _trainer(resumed, tmp_path / "resumed")
    trainer2.train(resume_from_checkpoint=str(ckpt))
    assert trainer2.state.global_step == STEPS
    assert all(v["step"].item() == STEPS for v in opt2.state.values())
    for i, (a, b) in enumerate(zip(resumed.parameters(), full)):
        assert torch.equal(a.detach(), b), f"param {i} differs after resuming"
