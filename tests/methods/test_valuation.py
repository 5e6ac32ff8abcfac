"""Modality valuation: Shapley values and copy counts by hand (the worked example), the copies the
next epoch trains on, no gradient to a zeroed encoder, warm-up = joint, resume, CLI, refusals."""
from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mmrelearn.config import ConfigError, config_from_dict
from mmrelearn.methods.valuation import (Valuation, modality_copies, sample_copies,
                                         shapley_numerators)
from mmrelearn.models import ConcatFusion, MultimodalModel, build_model
from mmrelearn.train import build_trainer, train
from mmrelearn.train.checkpoint import read_jsonl
from conftest import identity_encoder  # noqa: E402

CPU = torch.device("cpu")

#: fused / audio / visual correct -> (phi_a, phi_v) -> copies keeping a (visual zeroed),
#: copies keeping v (audio zeroed), as in the specification's table.
TABLE = {"yyy": ((1, 1), (0, 0)), "yyn": ((1.5, 0.5), (0, 1)), "yny": ((0.5, 1.5), (1, 0)),
         "ynn": ((1, 1), (0, 0)), "nyy": ((0, 0), (2, 2)), "nyn": ((0.5, -0.5), (1, 3)),
         "nny": ((-0.5, 0.5), (3, 1)), "nnn": ((0, 0), (2, 2))}


def _correct(pattern):
    """Coalition columns [{}, {a}, {v}, {a, v}] of one "fused/audio/visual" pattern."""
    fused, a, v = (c == "y" for c in pattern)
    return [False, a, v, fused]


def _valuation_raw(raw, **method):
    raw["method"] = {"name": "valuation", "warmup": 1, **method}
    raw["train"]["monitor_purity"] = False
    return raw


def test_worked_example_by_hand():
    correct = torch.tensor([_correct(p) for p in TABLE])  # (8, 4)
    phi_num = shapley_numerators(correct, 2)  # 2! phi
    # e.g. nyn: v(a) = 1, v(v) = 0, v(av) = 0: phi_a = (1 + 0 - 0) / 2 = 0.5,
    # phi_v = (0 + 0 - 1) / 2 = -0.5 -> 0.4 > 0.5? no: 1 copy for a; -0.5 < -0.1: 3 for v
    assert (phi_num / 2).tolist() == [list(phi) for phi, _ in TABLE.values()]
    counts = sample_copies(phi_num, 2)
    assert counts.tolist() == [list(c) for _, c in TABLE.values()]
    assert 8 + int(counts.sum()) == 26  # 0+1+1+0+4+4+4+4 = 18 copies


def test_three_modalities_by_hand():
    # only {a} predicts y: phi_a = 0!2!/3! (1 - 0) = 1/3; phi_v = 1!1!/3! (v(av) - v(a))
    # = -1/6, phi_t likewise; sum = 0 = v(avt). Only the full set: each 2!0!/3! * 3 = 1.
    only_a = [s == 0b001 for s in range(8)]
    only_all = [s == 0b111 for s in range(8)]
    phi = shapley_numerators(torch.tensor([only_a, only_all]), 3)  # 3! phi
    assert phi.tolist() == [[2, -1, -1], [6, 6, 6]]
    assert sample_copies(phi, 3).tolist() == [[2, 3, 3], [0, 0, 0]]


def test_thresholds_are_exact_at_their_bounds():
    # K = 5: 5! = 120; phi = 1, 119/120, 0.4, 47/120, -0.1, -13/120
    phi = torch.tensor([[120], [119], [48], [47], [-12], [-13]])
    assert sample_copies(phi, 5).flatten().tolist() == [0, 1, 1, 2, 2, 3]


def test_modality_level_worked_example():
    # gaps 1 - 1.0 = 0 and 1 - 0.25 = 0.75; D = 0.75 / 3 * 2 * 1 = 0.5; gap_v > gap_a: keep v
    d, keep, gaps = modality_copies({"a": 1.0, "v": 0.25}, 1.0, "linear")
    assert (d, keep, gaps) == (0.5, "v", {"a": 0.0, "v": 0.75})
    assert int(d * 1000) == 500
    assert modality_copies({"a": 1.0, "v": 0.25}, 1.0, "tanh")[0] == pytest.approx(
        math.tanh(0.5))
    assert modality_copies({"a": 1.0, "v": 0.25}, 2.0, "power")[0] == pytest.approx(
        2 * 0.5 ** 1.5)
    assert modality_copies({"a": 0.25, "v": 1.0}, 1.0, "linear")[1] == "a"
    # K = 3: gaps 0, 0.75, 0.5; pairs 0.75, 0.5, 0.25 -> mean 0.5 * 2/3 = 1/3; keep v
    d, keep, _ = modality_copies({"a": 1.0, "v": 0.25, "t": 0.5}, 1.0, "linear")
    assert d == pytest.approx(1 / 3) and keep == "v"


class _Pairs(Dataset):
    def __init__(self, a, v, y):
        self.a, self.v, self.y = a, v, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"a": self.a[i], "v": self.v[i]}, self.y[i]


#: head(z_a, 0) = p, head(0, z_v) = q, head(z_a, z_v) = p + q - b with b = (0, 0, -5) and
#: y = 0: the (p, q) of each pattern make exactly its predictions correct
PQ = {"yyy": ((1, 0, -10), (1, 0, -10)), "yyn": ((1, 0, -10), (0, .5, -10)),
      "yny": ((0, .5, -10), (1, 0, -10)), "ynn": ((1, 1.5, -10), (1, -2, 1.5)),
      "nyy": ((1, 0, .5), (1, 0, .5)), "nyn": ((1, 0, -10), (0, 3, -10)),
      "nny": ((0, 3, -10), (1, 0, -10)), "nnn": ((0, 1, -10), (0, 1, -10))}


def _pattern_setup(patterns, batch_size=4):
    model = MultimodalModel(nn.ModuleDict({"a": identity_encoder(3), "v": identity_encoder(3)}),
                            ConcatFusion({"a": 3, "v": 3}), 3)
    b = torch.tensor([0.0, 0.0, -5.0])
    with torch.no_grad():
        model.head.weight.copy_(torch.cat([torch.eye(3), torch.eye(3)], 1))
        model.head.bias.copy_(b)
    p = torch.tensor([PQ[k][0] for k in patterns])
    q = torch.tensor([PQ[k][1] for k in patterns])
    data = _Pairs(p - b, q - b, torch.zeros(len(patterns), dtype=torch.long))  # z = p - b
    ctx = SimpleNamespace(model=model, device=CPU, epoch=0,
                          diag_train_loader=DataLoader(data, batch_size=batch_size),
                          train_loader=DataLoader(data, batch_size=batch_size, shuffle=True))
    return model, data, ctx


def test_the_next_epoch_holds_exactly_the_copies_of_the_worked_example():
    model, data, ctx = _pattern_setup(list(PQ))
    fed = []
    model.head.register_forward_hook(lambda mod, args, out: fed.append(args[0].detach()))
    method = Valuation(warmup=1)
    method.on_fit_start(ctx)
    assert method.train_loader(ctx) is None  # epoch 0: the usual loader
    report = method.on_train_epoch_end(ctx)["valuation"]
    phis = [phi for phi, _ in TABLE.values()]
    assert report["phi_mean"] == pytest.approx({"a": sum(p[0] for p in phis) / 8,
                                                "v": sum(p[1] for p in phis) / 8})
    assert report["copies"] == {"a": 9, "v": 9} and report["next_epoch_size"] == 26
    ctx.epoch = 1
    batches = list(method.train_loader(ctx))
    codes = torch.cat([c for _, _, c in batches]).tolist()
    assert len(codes) == 26 and len(batches) == 7  # batch size 4 as the training loader
    # code i: the original; i + 8: a copy keeping audio; i + 16: a copy keeping visual
    seen = Counter(codes)
    for i, (_, (ca, cv)) in enumerate(TABLE.values()):
        assert (seen[i], seen[i + 8], seen[i + 16]) == (1, ca, cv)
    assert codes != sorted(codes)  # shuffled
    for inputs, y, code in batches:  # each row is its sample, zeroed after the encoder
        i = code % 8
        assert torch.equal(inputs["a"], data.a[i]) and torch.equal(inputs["v"], data.v[i])
        ctx.batch_index = code
        fed.clear()
        method.forward(ctx, inputs)
        (x,) = fed  # (B, 6): [z_a; z_v] as the head sees it
        kept = code // 8 - 1
        assert torch.equal(x[:, :3], inputs["a"] * (kept != 1)[:, None])
        assert torch.equal(x[:, 3:], inputs["v"] * (kept != 0)[:, None])


def test_modality_level_copies_random_samples_keeping_the_larger_gap(monkeypatch):
    model, data, ctx = _pattern_setup(["yyy"] * 1000, batch_size=64)
    method = Valuation(level="modality", warmup=1, seed=3)
    method.on_fit_start(ctx)
    valued = []

    def by_hand(ctx, loader):  # phibar_a = 1.0, phibar_v = 0.25 on the Z = 200 valued
        n = sum(len(y) for _, y in loader)
        valued.append(n)
        return torch.tensor([[2, 1], [2, 0]]).repeat(n // 2, 1)  # 2! phi

    monkeypatch.setattr(method, "_value", by_hand)
    report = method.on_train_epoch_end(ctx)["valuation"]
    assert valued == [200] and report["valued_samples"] == 200
    assert report["d"] == 0.5 and report["kept"] == "v"
    assert report["copies"] == {"a": 0, "v": 500} and report["next_epoch_size"] == 1500
    ctx.epoch = 1
    codes = torch.cat([c for _, _, c in method.train_loader(ctx)])
    assert sorted(codes[codes < 1000].tolist()) == list(range(1000))
    copies = codes[codes >= 1000]
    assert len(copies) == 500 and (copies // 1000 == 2).all()  # all keep v: audio zeroed
    assert len(set((copies % 1000).tolist())) < 500  # drawn with replacement


def test_a_copy_gives_no_gradient_to_the_zeroed_encoders():
    # no BatchNorm: in train mode its batch statistics would couple the rows (a copy still
    # passes through every encoder, as released; only its features are zeroed)
    enc = {"type": "mlp", "hidden": [8], "batchnorm": False}
    model = build_model({m: enc for m in ("a", "v", "t")}, {m: (5,) for m in "avt"}, 3)
    method = Valuation()
    n = 100
    method._n = n
    gen = torch.Generator().manual_seed(0)
    inputs = {m: torch.randn(6, 5, generator=gen) for m in "avt"}
    y = torch.randint(0, 3, (6,), generator=gen)

    def grads(codes, rows=slice(None)):
        model.zero_grad()
        ctx = SimpleNamespace(model=model, batch_index=torch.tensor(codes))
        out = method.forward(ctx, {m: x[rows] for m, x in inputs.items()})
        F.cross_entropy(out.logits, y[rows], reduction="sum").backward()
        return {m: [p.grad.clone() for p in model.encoders[m].parameters()] for m in "avt"}

    # three copies keeping a (codes i + N), three keeping v (i + 2N): t gets nothing
    g = grads([100, 101, 102, 203, 204, 205])
    assert all((p == 0).all() for p in g["t"])
    assert all(p.abs().sum() > 0 for m in "av" for p in g[m])
    # originals mixed with copies keeping a: v's gradient is that of the originals alone
    mixed = grads([0, 1, 2, 103, 104, 105])
    alone = grads([0, 1, 2], rows=slice(0, 3))
    for m in "vt":
        assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(mixed[m], alone[m]))
    assert not all(torch.allclose(p, q) for p, q in zip(mixed["a"], alone["a"]))


def _by_hand_copies(model, loader):
    """Copies of every sample by the K = 2 formula, from explicitly zeroed features."""
    out = Counter()
    model.eval()
    with torch.no_grad():
        for inputs, y in loader:
            za, zv = (model.encoders[m](inputs[m]) for m in ("m0", "m1"))
            right = [model.head(torch.cat(z, 1)).argmax(1) == y
                     for z in ((za, zv), (za, 0 * zv), (0 * za, zv))]
            v_all, v_a, v_v = 2.0 * right[0], 1.0 * right[1], 1.0 * right[2]
            for j, phi in enumerate(((v_a + v_all - v_v) / 2, (v_v + v_all - v_a) / 2)):
                c = (phi < 1).long() + (phi < 0.4).long() + (phi < -0.1).long()
                out[j] += int(c.sum())
    model.train()
    return out


def test_a_run_trains_on_exactly_the_copies_it_reports(tiny_raw, tmp_path):
    raw = _valuation_raw(tiny_raw)
    raw["train"]["epochs"] = 3
    trainer = build_trainer(config_from_dict(raw), tmp_path)
    method, seen, expected = trainer.method, {}, {}
    step, end = method.training_step, method.on_train_epoch_end

    def spy_step(ctx, inputs, labels):
        seen.setdefault(ctx.epoch, []).append(ctx.batch_index.clone())
        return step(ctx, inputs, labels)

    def spy_end(ctx):
        expected[ctx.epoch] = _by_hand_copies(ctx.model, ctx.diag_train_loader)
        return end(ctx)

    method.training_step, method.on_train_epoch_end = spy_step, spy_end
    trainer.fit()
    n = len(trainer.loaders["diag_train"].dataset)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert sorted(torch.cat(seen[0]).tolist()) == list(range(n))  # warm-up: each once
    for epoch in (1, 2):
        codes = torch.cat(seen[epoch])
        assert sorted(codes[codes < n].tolist()) == list(range(n))  # every original once
        report = records[epoch - 1]["report"]["valuation"]
        by_mod = Counter((codes[codes >= n] // n - 1).tolist())
        assert report["copies"] == {"m0": by_mod[0], "m1": by_mod[1]}
        assert (by_mod[0], by_mod[1]) == (expected[epoch - 1][0], expected[epoch - 1][1])
        assert report["next_epoch_size"] == len(codes)
        assert records[epoch]["passes"] == len(codes) / n  # copies count as passes
    assert sum(by_mod.values()) > 0


def test_warm_up_epochs_are_joint_training(tiny_raw, tmp_path):
    tiny_raw["train"].update(epochs=2, monitor_purity=False)
    tiny_raw["method"] = {"name": "joint"}
    train(config_from_dict(tiny_raw), run_dir=tmp_path / "joint")
    raw = _valuation_raw(tiny_raw, warmup=2)  # valued after epoch 1, never trained on
    train(config_from_dict(raw), run_dir=tmp_path / "val")
    joint, val = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("joint", "val"))
    for a, b in zip(joint, val):
        assert a["train"] == b["train"] and a["val"] == b["val"]
    assert [r["report"]["valuation"]["valued"] for r in val] == [False, True]


@pytest.mark.parametrize("level", ["sample", "modality"])
def test_resume_equals_uninterrupted(level, tiny_raw, tmp_path, resume_check):
    raw = _valuation_raw(tiny_raw, level=level, seed=2)
    raw["train"]["epochs"] = 4
    rf, wf, _, wc = resume_check(raw, tmp_path, crash_epoch=2)
    assert all(r["passes"] > 1 for r in rf[1:])
    assert torch.equal(wf["method"]["generator"], wc["method"]["generator"])
    assert torch.equal(wf["method"]["copies"], wc["method"]["copies"])


@pytest.mark.parametrize("level", ["sample", "modality"])
def test_cli_end_to_end(level, tiny_raw, tmp_path, cli_train):
    raw = _valuation_raw(tiny_raw, level=level, d_form="tanh")
    raw["train"]["epochs"] = 2
    cli_train(raw, tmp_path / "run")
    reports = read_jsonl(tmp_path / "run/reports.jsonl")
    assert [r["epoch"] for r in reports] == [0, 1]
    report = reports[0]["valuation"]
    assert set(report["phi_mean"]) == set(report["copies"]) == {"m0", "m1"}
    passes = [r["passes"] for r in read_jsonl(tmp_path / "run/metrics.jsonl")]
    assert passes[0] == 1.0 and passes[1] == report["next_epoch_size"] / 120


def test_three_modalities_train(tiny_raw, tmp_path):
    raw = _valuation_raw(tiny_raw)
    raw["data"].update(dims=[6, 6, 6], separations=[3.0, 1.0, 0.5])
    raw["model"]["encoders"]["m2"] = {"type": "mlp", "hidden": [8]}
    raw["train"]["epochs"] = 2
    build_trainer(config_from_dict(raw), tmp_path).fit()
    report = read_jsonl(tmp_path / "reports.jsonl")[0]["valuation"]
    assert set(report["copies"]) == {"m0", "m1", "m2"}
    # Shapley efficiency: sum_m phi_m = v(all) = 3 1[fused correct], so the mean sum is 3 acc
    assert 0 <= sum(report["phi_mean"].values()) <= 3


def test_refusals(tiny_raw, tmp_path, refuses_one_modality):
    for key, bad in (("level", "batch"), ("warmup", 0), ("part_ratio", 0.0),
                     ("part_ratio", 1.5), ("alpha", -1.0), ("d_form", "square"),
                     ("seed", -1), ("warmup", 2.5)):
        with pytest.raises(ConfigError, match=f"method.{key}"):
            Valuation(**{key: bad})
    raw = _valuation_raw(tiny_raw)
    raw["model"]["fusion"] = "sum"
    trainer = build_trainer(config_from_dict(raw), tmp_path / "sum")
    with pytest.raises(ValueError, match="valuation .*zeroing features.*concat"):
        trainer.fit()
    assert not (tmp_path / "sum/metrics.jsonl").exists()
    refuses_one_modality(_valuation_raw(tiny_raw), tmp_path / "one")


def test_a_last_batch_of_one_joins_the_one_before():
    from mmrelearn.methods.valuation import _ShuffledBatches

    for n, sizes in ((9, [4, 5]), (10, [4, 4, 2]), (1, [1]), (5, [5])):
        sampler = _ShuffledBatches(n, 4, torch.Generator().manual_seed(0))
        batches = list(sampler)
        assert [len(b) for b in batches] == sizes and len(sampler) == len(sizes)
        assert sorted(sum(batches, [])) == list(range(n))
