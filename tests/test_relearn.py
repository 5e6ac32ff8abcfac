"""relearn.py: soft re-initialisation (Eq. 6) and the DiagnoseRelearn object (Algorithm 1)."""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from mmrelearn.diagnose import cluster_purity
from mmrelearn.relearn import (
    DiagnoseRelearn,
    DiagnosisReport,
    default_features,
    extract_features,
    measure_purities,
    reset_optimizer_state,
    snapshot,
    soft_reinit_,
)

# --- soft_reinit_, Eq. 6 -------------------------------------------------------------------
# Every number below is a small dyadic rational, exact in float32, so equality is exact.


def _linear(weight, bias) -> nn.Linear:
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weight))
        lin.bias.copy_(torch.tensor(bias))
    return lin


INIT = {"weight": torch.tensor([[0.0, 4.0], [4.0, 0.0]]), "bias": torch.tensor([1.0, -1.0])}


def test_soft_reinit_exact_quarter():
    lin = _linear([[1.0, 2.0], [-4.0, 8.0]], [3.0, 5.0])
    soft_reinit_(lin, INIT, 0.25)
    # 0.75 * current + 0.25 * init
    assert torch.equal(lin.weight, torch.tensor([[0.75 * 1 + 0.25 * 0, 0.75 * 2 + 0.25 * 4],
                                                 [0.75 * -4 + 0.25 * 4, 0.75 * 8 + 0.25 * 0]]))
    assert torch.equal(lin.weight, torch.tensor([[0.75, 2.5], [-2.0, 6.0]]))
    assert torch.equal(lin.bias, torch.tensor([0.75 * 3 + 0.25 * 1, 0.75 * 5 - 0.25 * 1]))


def test_soft_reinit_alpha_zero_and_one():
    lin = _linear([[1.0, 2.0], [-4.0, 8.0]], [3.0, 5.0])
    before = snapshot(lin)
    soft_reinit_(lin, INIT, 0.0)
    assert all(torch.equal(v, before[k]) for k, v in lin.state_dict().items())
    soft_reinit_(lin, INIT, 1.0)
    assert torch.equal(lin.weight, INIT["weight"]) and torch.equal(lin.bias, INIT["bias"])


def test_soft_reinit_does_not_touch_the_initial_state_or_grad_tracking():
    lin = _linear([[1.0, 2.0], [-4.0, 8.0]], [3.0, 5.0])
    init = {k: v.clone() for k, v in INIT.items()}
    soft_reinit_(lin, init, 0.5)
    assert all(torch.equal(init[k], INIT[k]) for k in INIT)
    assert lin.weight.requires_grad and lin.weight.grad is None


def _bn() -> tuple[nn.BatchNorm1d, dict[str, torch.Tensor]]:
    bn = nn.BatchNorm1d(2)
    init = snapshot(bn)  # weight 1, bias 0, running mean 0, var 1, num_batches_tracked 0
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([3.0, -1.0]))
        bn.bias.copy_(torch.tensor([2.0, 4.0]))
        bn.running_mean.copy_(torch.tensor([8.0, -4.0]))
        bn.running_var.copy_(torch.tensor([5.0, 9.0]))
        bn.num_batches_tracked.fill_(7)
    return bn, init


def test_soft_reinit_batchnorm_buffers_keep():
    bn, init = _bn()
    soft_reinit_(bn, init, 0.25)  # "keep" is the default, as released
    assert torch.equal(bn.weight, torch.tensor([0.75 * 3 + 0.25, 0.75 * -1 + 0.25]))
    assert torch.equal(bn.bias, torch.tensor([0.75 * 2, 0.75 * 4]))
    assert torch.equal(bn.running_mean, torch.tensor([8.0, -4.0]))
    assert torch.equal(bn.running_var, torch.tensor([5.0, 9.0]))
    assert bn.num_batches_tracked.item() == 7


def test_soft_reinit_batchnorm_buffers_interpolate():
    bn, init = _bn()
    soft_reinit_(bn, init, 0.25, buffers="interpolate")
    assert torch.equal(bn.weight, torch.tensor([2.5, -0.5]))
    assert torch.equal(bn.running_mean, torch.tensor([0.75 * 8, 0.75 * -4]))  # init mean 0
    assert torch.equal(bn.running_var, torch.tensor([0.75 * 5 + 0.25, 0.75 * 9 + 0.25]))  # init 1
    assert bn.num_batches_tracked.item() == 7  # an integer counter, never interpolated


def test_soft_reinit_errors():
    lin = _linear([[1.0, 2.0], [-4.0, 8.0]], [3.0, 5.0])
    for alpha in (-0.1, 1.1):
        with pytest.raises(ValueError, match="alpha"):
            soft_reinit_(lin, INIT, alpha)
    with pytest.raises(ValueError, match="buffers"):
        soft_reinit_(lin, INIT, 0.5, buffers="reset")
    with pytest.raises(KeyError):
        soft_reinit_(lin, {"weight": INIT["weight"]}, 0.5)


def _sgd_with_momentum(params_a, params_b):
    opt = torch.optim.SGD(list(params_a) + list(params_b), lr=0.1, momentum=0.9)
    loss = sum(p.sum() for g in opt.param_groups for p in g["params"])
    loss.backward()
    opt.step()
    return opt


def test_reset_optimizer_state_removes_exactly_the_given_params():
    a, b = nn.Linear(3, 2), nn.Linear(2, 1)
    opt = _sgd_with_momentum(a.parameters(), b.parameters())
    assert all("momentum_buffer" in opt.state[p] for p in [*a.parameters(), *b.parameters()])
    kept = {p: opt.state[p]["momentum_buffer"].clone() for p in b.parameters()}
    assert reset_optimizer_state(opt, a.parameters()) == 2
    assert all(p not in opt.state for p in a.parameters())
    assert all(torch.equal(opt.state[p]["momentum_buffer"], kept[p]) for p in b.parameters())
    assert reset_optimizer_state(opt, a.parameters()) == 0  # already gone


# --- DiagnoseRelearn -----------------------------------------------------------------------

C = 3  # classes


class Loader:
    """A list of ``({"a": x_a, "b": x_b}, y)`` batches that counts how often it is iterated."""

    def __init__(self, n: int, seed: int, sep: float, shuffle_labels: bool = False):
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % C
        xa = torch.randn(C, 6, generator=g)[y] * sep + torch.randn(n, 6, generator=g)
        xb = torch.randn(C, 5, generator=g)[y] * sep + torch.randn(n, 5, generator=g)
        if shuffle_labels:  # features no longer predict labels: low purity
            y = y[torch.randperm(n, generator=g)]
        self.batches = [({"a": xa[i:i + 16], "b": xb[i:i + 16]}, y[i:i + 16])
                        for i in range(0, n, 16)]
        self.n, self.iterated = n, 0

    def __iter__(self):
        self.iterated += 1
        return iter(self.batches)


class Sentinel:
    """A test loader that must never be read by the diagnosis."""

    iterated = 0

    def __iter__(self):
        self.iterated += 1
        raise AssertionError("the test split was read")


def _setup(**kw):
    torch.manual_seed(0)
    encoders = {"a": nn.Linear(6, 4), "b": nn.Linear(5, 4)}
    # train: separable classes; val: same inputs' distribution, labels shuffled -> gap > 0
    train, val = Loader(60, seed=1, sep=4.0), Loader(45, seed=2, sep=4.0, shuffle_labels=True)
    kw = {"lam": 3.0, "every": 2, **kw}
    return encoders, train, val, DiagnoseRelearn(encoders, C, train, val, **kw)


def _train_some(encoders):
    """Move the encoders away from theta_init, as training would."""
    with torch.no_grad():
        for e in encoders.values():
            for p in e.parameters():
                p.add_(torch.randn_like(p))


def _all_features(enc, loader, m):
    xs = torch.cat([b[0][m] for b in loader.batches])
    ys = torch.cat([b[1] for b in loader.batches])
    with torch.no_grad():
        return enc(xs), ys


def test_should_act_schedule():
    _, _, _, dr = _setup(every=2, max_times=2)
    assert not dr.should_act(0)  # t = 0 is skipped, as released
    acted = [t for t in range(10) if dr.step(t) is not None]
    assert acted == [2, 4] and dr.times_applied == 2
    _, _, _, uncapped = _setup(every=3, max_times=None)
    assert [t for t in range(10) if uncapped.should_act(t)] == [3, 6, 9]


def test_default_cap_is_three_as_released():
    _, _, _, dr = _setup(every=1)
    assert dr.max_times == 3
    assert [t for t in range(8) if dr.step(t) is not None] == [1, 2, 3]
    assert dr.times_applied == 3
    _, _, _, uncapped = _setup(every=1, max_times=None)
    assert [t for t in range(8) if uncapped.step(t) is not None] == list(range(1, 8))


def test_diagnose_values():
    encoders, train, val, dr = _setup(lam=3.0)
    _train_some(encoders)
    before = {m: snapshot(e) for m, e in encoders.items()}
    report = dr.diagnose(epoch=5)
    assert isinstance(report, DiagnosisReport) and not report.applied and report.epoch == 5
    assert (report.n_train, report.n_val) == (60, 45)
    for m, enc in encoders.items():
        d = report.modalities[m]
        assert 0.0 <= d.p_val <= 1.0 and 0.0 <= d.p_train <= 1.0
        assert d.gap == abs(d.p_train - d.p_val)
        assert d.alpha == math.tanh(3.0 * d.gap)
        assert d.gap > 0  # the setup makes train purer than val
        # P_D and P_V are exactly cluster_purity of the encoder's features on each split
        assert d.p_train == cluster_purity(*_all_features(enc, train, m), C)
        assert d.p_val == cluster_purity(*_all_features(enc, val, m), C)
        # diagnosing alone changes nothing
        assert all(torch.equal(v, before[m][k]) for k, v in enc.state_dict().items())


def test_step_moves_encoders_toward_init_by_exactly_alpha():
    encoders, _, _, dr = _setup()
    head = nn.Linear(8, C)
    head_before = snapshot(head)
    init = {m: snapshot(e) for m, e in encoders.items()}
    _train_some(encoders)
    before = {m: snapshot(e) for m, e in encoders.items()}
    report = dr.step(2)
    assert report.applied and dr.times_applied == 1
    for m, enc in encoders.items():
        alpha = report.modalities[m].alpha
        assert 0.0 < alpha < 1.0
        for k, p in enc.named_parameters():
            # the same float32 operations as Eq. 6 in place: exact
            expected = before[m][k].mul(1.0 - alpha).add(init[m][k], alpha=alpha)
            assert torch.equal(p, expected), (m, k)
            # and Eq. 6 in float64
            ref = (1 - alpha) * before[m][k].double() + alpha * init[m][k].double()
            assert torch.allclose(p.double(), ref, rtol=0, atol=1e-6), (m, k)
    assert all(torch.equal(v, head_before[k]) for k, v in head.state_dict().items())


def test_diagnosis_runs_in_eval_mode_and_restores_modes():
    encoders, _, _, dr = _setup()
    seen = []
    for e in encoders.values():
        e.register_forward_hook(lambda mod, inp, out: seen.append(mod.training))
    encoders["a"].train()
    encoders["b"].eval()
    dr.diagnose()
    assert seen and not any(seen)
    assert encoders["a"].training and not encoders["b"].training
    dr.step(2)
    assert encoders["a"].training and not encoders["b"].training


def test_max_samples_cap_is_seeded():
    _, _, _, dr = _setup(max_samples=30, sample_seed=7)
    r1, r2 = dr.diagnose(), dr.diagnose()
    assert (r1.n_train, r1.n_val) == (30, 30)
    assert r1.to_dict() == r2.to_dict()
    _, _, _, dr_all = _setup(max_samples=1000)
    assert (dr_all.diagnose().n_train, dr_all.diagnose().n_val) == (60, 45)


# --- max_samples: the subset is chosen before encoding -------------------------------------

class Counting(nn.Module):
    """Wraps an encoder and counts the samples (rows) it has encoded."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.inner(x)


class DictSet(torch.utils.data.Dataset):
    """Map-style dataset of ``({"a": x_a, "b": x_b}, y)`` samples from a test ``Loader``."""

    def __init__(self, loader: Loader):
        self.xa = torch.cat([b[0]["a"] for b in loader.batches])
        self.xb = torch.cat([b[0]["b"] for b in loader.batches])
        self.y = torch.cat([b[1] for b in loader.batches])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"a": self.xa[i], "b": self.xb[i]}, self.y[i]


def _counting_setup(inner_a: nn.Module, inner_b: nn.Module, batch_size: int = 16):
    encoders = {"a": Counting(inner_a), "b": Counting(inner_b)}
    train, val = Loader(60, seed=1, sep=4.0), Loader(45, seed=2, sep=4.0, shuffle_labels=True)
    loaders = [torch.utils.data.DataLoader(DictSet(x), batch_size=batch_size,
                                           generator=torch.Generator().manual_seed(3))
               for x in (train, val)]
    return encoders, loaders, (train, val)


def test_max_samples_encodes_only_the_chosen_samples_the_same_ones_as_before():
    # elementwise encoders: a sample's features do not depend on its batch, so the subset
    # path (a DataLoader in index order) and the encode-all-then-subsample path (a plain
    # iterable of the same batches) must agree exactly
    encoders, (loader, _), (batches, _) = _counting_setup(nn.Tanh(), nn.Softsign())
    feats = default_features(encoders, torch.device("cpu"))
    cpu = torch.device("cpu")
    f_sub, y_sub = extract_features(encoders, feats, loader, cpu, max_samples=25, sample_seed=7)
    assert encoders["a"].rows == encoders["b"].rows == 25  # not 60
    f_all, y_all = extract_features(encoders, feats, batches, cpu, max_samples=25, sample_seed=7)
    assert encoders["a"].rows == 25 + 60
    assert torch.equal(y_sub, y_all)
    assert all(torch.equal(f_sub[m], f_all[m]) for m in "ab")
    # which samples, in which order: randperm(60) seeded with sample_seed, first 25
    keep = torch.randperm(60, generator=torch.Generator().manual_seed(7))[:25]
    assert torch.equal(f_sub["a"], torch.tanh(loader.dataset.xa[keep]))
    # no cap, or a cap above N: everything, in order
    for cap in (None, 60, 1000):
        f, y = extract_features(encoders, feats, loader, cpu, max_samples=cap)
        assert torch.equal(y, loader.dataset.y)
        assert torch.equal(f["a"], torch.tanh(loader.dataset.xa))


def test_max_samples_subset_advances_the_loader_generator_as_one_pass():
    encoders, (loader, _), _ = _counting_setup(nn.Tanh(), nn.Tanh())
    feats, cpu = default_features(encoders, torch.device("cpu")), torch.device("cpu")
    before = loader.generator.get_state()
    for _ in loader:  # what the encode-all path does: one pass
        pass
    one_pass = loader.generator.get_state()
    assert not torch.equal(one_pass, before)  # a pass draws the workers' base seed from it
    loader.generator.set_state(before)
    global_before = torch.random.get_rng_state()
    extract_features(encoders, feats, loader, cpu, max_samples=10)
    assert torch.equal(loader.generator.get_state(), one_pass)
    assert torch.equal(torch.random.get_rng_state(), global_before)  # global RNG untouched


def test_measure_purities_with_max_samples_equals_encode_all_then_subsample():
    torch.manual_seed(0)
    encoders, (tr, va), (tr_b, va_b) = _counting_setup(nn.Linear(6, 4), nn.Linear(5, 4))
    feats, cpu = default_features(encoders, torch.device("cpu")), torch.device("cpu")
    kw = dict(n_init=3, seed=1, max_samples=40, sample_seed=5)
    sub = measure_purities(encoders, feats, tr, va, C, cpu, **kw)
    assert encoders["a"].rows == encoders["b"].rows == 40 + 40  # 40 of 60 train, 40 of 45 val
    old = measure_purities(encoders, feats, tr_b, va_b, C, cpu, **kw)
    assert sub == old and sub[1:] == (40, 40)
    # DiagnoseRelearn takes the same path
    dr = DiagnoseRelearn(encoders, C, tr, va, max_samples=40, sample_seed=5, n_init=3,
                         kmeans_seed=1)
    report = dr.diagnose()
    assert {m: (d.p_train, d.p_val) for m, d in report.modalities.items()} == sub[0]


def test_momentum_reset_drops_state_of_reinitialised_params():
    encoders, train, val, _ = _setup()
    head = nn.Linear(4, C)
    enc_params = [p for e in encoders.values() for p in e.parameters()]
    opt = _sgd_with_momentum(enc_params, head.parameters())
    head_mom = {p: opt.state[p]["momentum_buffer"].clone() for p in head.parameters()}
    dr = DiagnoseRelearn(encoders, C, train, val, every=2, optimizer=opt, momentum="reset")
    dr.step(2)
    assert all(p not in opt.state for p in enc_params)
    assert all(torch.equal(opt.state[p]["momentum_buffer"], head_mom[p]) for p in head.parameters())


def test_momentum_keep_is_the_default():
    encoders, train, val, _ = _setup()
    enc_params = [p for e in encoders.values() for p in e.parameters()]
    opt = _sgd_with_momentum(enc_params, [])
    DiagnoseRelearn(encoders, C, train, val, every=2, optimizer=opt).step(2)
    assert all("momentum_buffer" in opt.state[p] for p in enc_params)
    with pytest.raises(ValueError, match="optimizer"):
        DiagnoseRelearn(encoders, C, train, val, momentum="reset")


def test_state_dict_round_trip():
    encoders, train, val, dr = _setup(max_times=2)
    init = {m: snapshot(e) for m, e in encoders.items()}
    dr.step(2)
    buf = io.BytesIO()
    torch.save(dr.state_dict(), buf)
    buf.seek(0)
    # a fresh object over freshly built (differently initialised) encoders, as on resume
    torch.manual_seed(123)
    other = {"a": nn.Linear(6, 4), "b": nn.Linear(5, 4)}
    resumed = DiagnoseRelearn(other, C, train, val, lam=3.0, every=2, max_times=2)
    assert not torch.equal(resumed.init_states["a"]["weight"], init["a"]["weight"])
    resumed.load_state_dict(torch.load(buf))
    assert resumed.times_applied == 1
    for m in init:
        assert resumed.init_states[m].keys() == init[m].keys()
        assert all(torch.equal(resumed.init_states[m][k], init[m][k]) for k in init[m])
    assert [t for t in range(3, 10) if resumed.step(t) is not None] == [4]  # one left of two
    assert not resumed.should_act(6)


def test_diagnosis_reads_only_the_two_loaders():
    _, train, val, dr = _setup()
    test_loader = Sentinel()  # in scope, as in a training script, but never given to D&R
    report = dr.step(2)
    assert report is not None and (report.n_train, report.n_val) == (train.n, val.n)
    assert train.iterated == 1 and val.iterated == 1
    assert test_loader.iterated == 0
    assert dr.step(3) is None and train.iterated == 1  # nothing read when not due


def test_constructor_errors():
    encoders, train, val, _ = _setup()
    with pytest.raises(ValueError):
        DiagnoseRelearn(encoders, C, train, val, every=0)
    with pytest.raises(ValueError):
        DiagnoseRelearn({}, C, train, val)
    with pytest.raises(ValueError):
        DiagnoseRelearn(encoders, C, train, val, buffers="zero")
    with pytest.raises(ValueError):
        DiagnoseRelearn(encoders, C, train, val, momentum="clear")
    with pytest.raises(ValueError, match="strength must be one of .* got 'cosine'"):
        DiagnoseRelearn(encoders, C, train, val, strength="cosine")
    with pytest.raises(ValueError, match=r"scale must be one of \[.minmax., .none.\], got .zscore"):
        DiagnoseRelearn(encoders, C, train, val, scale="zscore")
    with pytest.raises(ValueError, match="lam must be a number >= 0, got -1"):
        DiagnoseRelearn(encoders, C, train, val, lam=-1)
    with pytest.raises(ValueError, match="n_init must be an int >= 1, got 0"):
        DiagnoseRelearn(encoders, C, train, val, n_init=0)
