"""A bridge checkpoint is untrusted data (issue 13): NaN/inf weights, tensors of another shape than the
config's, negative counters are refused with a ValueError naming the tensor, on every load path
(the bridge's own ``load_state_dict``, ``luma_pl.stream.bridge_from_state``, a LightningModule
checkpoint resumed by ``Trainer.fit(ckpt_path=...)``), and a good state still loads exactly."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from lightning.pytorch import Trainer

from luma_pl.bridge.learned import LearnedBridge
from luma_pl.bridge.procrustes import StreamingProcrustes
from luma_pl.modules import LearnedBridgeModule, ProcrustesBridgeModule
from luma_pl.stream.bridge import bridge_from_state

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

D_S, D_C = 4, 6
KINDS = ("procrustes", "linear", "orthogonal", "mlp")
# the tensor of each kind that holds the map's weights (the orthogonal parametrisation stores its original)
WEIGHT = {"procrustes": "W", "linear": "net.weight", "orthogonal": "net.parametrizations.weight.original",
          "mlp": "net.proj.weight"}


def _pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.nn.functional.normalize(torch.randn(n, D_S, generator=g, dtype=torch.float64), dim=-1)
    Q = torch.linalg.qr(torch.randn(D_C, D_S, generator=torch.Generator().manual_seed(7), dtype=torch.float64))[0]
    c = torch.nn.functional.normalize(s @ Q.T + 0.05 * torch.randn(n, D_C, generator=g, dtype=torch.float64), dim=-1)
    return s, c


def _bridge(kind: str) -> torch.nn.Module:
    """A bridge of ``kind`` with trained, non-trivial state (refreshed / a few optimizer steps)."""
    torch.manual_seed(0)
    if kind == "procrustes":
        b = StreamingProcrustes(d_s=D_S, d_c=D_C, refresh_every=16, center=True)
        for i in range(4):
            b.fit_step(*_pairs(16, i))
        assert int(b.refreshes) >= 2
        return b
    b = LearnedBridge(kind=kind, d_s=D_S, d_c=D_C, hidden=8, lr=0.05)
    b.set_reference()
    for i in range(3):
        s, c = _pairs(16, i)
        b.fit_step(s.float(), c.float())
        b.mark_interval()
    return b


def _fresh(kind: str) -> torch.nn.Module:
    if kind == "procrustes":
        return StreamingProcrustes(d_s=D_S, d_c=D_C, refresh_every=16, center=True)
    return LearnedBridge(kind=kind, d_s=D_S, d_c=D_C, hidden=8, lr=0.05)


def _state(kind: str) -> dict:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in _bridge(kind).state_dict().items()}


def _corrupt(state: dict, how: str, kind: str, prefix: str = "") -> str:
    """Corrupt ``state`` in place; returns the key of the corrupted tensor."""
    key = prefix + WEIGHT[kind]
    if how == "nan":
        state[key] = state[key].clone()
        state[key][0, 0] = float("nan")
    elif how == "inf":
        state[key] = state[key].clone()
        state[key][-1, 0] = float("inf")
    elif how == "shape":
        state[key] = torch.zeros(D_C + 1, D_S, dtype=state[key].dtype)
    elif how == "negative":
        key = prefix + "refreshes"
        state[key] = torch.tensor(-3, dtype=torch.int64)
    else:
        raise AssertionError(how)
    return key


HOW = ("nan", "inf", "shape", "negative")
MESSAGE = {"nan": "NaN", "inf": "non-finite", "shape": "shape", "negative": "below its minimum"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_good_state_loads_and_maps_identically(kind):
    b = _bridge(kind)
    again = _fresh(kind)
    again.load_state_dict(b.state_dict())
    x = torch.nn.functional.normalize(torch.randn(9, D_S, dtype=torch.float64), dim=-1)
    x = x if kind == "procrustes" else x.float()
    assert torch.equal(again(x), b(x))
    assert again.epsilon() == b.epsilon() and again.drift_from_reference() == b.drift_from_reference()
    rebuilt = bridge_from_state(b.state_dict(), "ckpt")
    assert torch.equal(rebuilt(x), b(x))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", HOW)
def test_a_corrupt_state_is_refused_naming_the_tensor(kind, how):
    state = _state(kind)
    key = _corrupt(state, how, kind)
    target = _fresh(kind)
    before = {k: v.clone() for k, v in target.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match=rf"bridge state tensor '{re.escape(key)}'.*{MESSAGE[how]}.*checkpoint"):
        target.load_state_dict(state)
    # refused before anything was copied in
    for k, v in target.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", HOW)
def test_bridge_from_state_refuses_a_corrupt_state(kind, how):
    state = _state(kind)
    key = _corrupt(state, how, kind)
    with pytest.raises(ValueError, match=rf"bridge_checkpoint='x.ckpt'.*cannot be rebuilt.*'{re.escape(key)}'"):
        bridge_from_state(state, "bridge_checkpoint='x.ckpt'")


def test_procrustes_refuses_counters_out_of_order_and_a_non_orthogonal_w():
    state = _state("procrustes")
    state["pairs_at_refresh"] = state["pairs_total"] + 1
    with pytest.raises(ValueError, match=r"'pairs_at_refresh' is \d+, above 'pairs_total'"):
        _fresh("procrustes").load_state_dict(state)
    state = _state("procrustes")
    state["W"] = 2.0 * state["W"]
    with pytest.raises(ValueError, match=r"'W' is not semi-orthogonal"):
        _fresh("procrustes").load_state_dict(state)
    state = _state("procrustes")
    state["has_ref"] = torch.tensor(2)
    with pytest.raises(ValueError, match=r"'has_ref' holds 2, above its maximum 1"):
        _fresh("procrustes").load_state_dict(state)


@pytest.mark.parametrize("kind", ("linear", "mlp"))
def test_learned_refuses_a_negative_or_nan_epsilon_but_loads_inf(kind):
    state = _state(kind)
    state["eps_interval"] = torch.tensor(-0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'eps_interval' holds -0.5, below its minimum"):
        _fresh(kind).load_state_dict(state)
    state["eps_interval"] = torch.tensor(float("nan"), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'eps_interval' holds NaN"):
        _fresh(kind).load_state_dict(state)
    state["eps_interval"] = torch.tensor(float("inf"), dtype=torch.float64)  # no measurement yet: allowed
    b = _fresh(kind)
    b.load_state_dict(state)
    assert b.epsilon() == float("inf")
    # a NaN in the reference snapshot would make drift_from_reference NaN: refused too
    state = _state(kind)
    ref = next(k for k in state if k.startswith("ref_"))
    state[ref] = torch.full_like(state[ref], float("nan"))
    with pytest.raises(ValueError, match=rf"'{ref}' holds NaN"):
        _fresh(kind).load_state_dict(state)


def test_an_old_learned_checkpoint_without_interval_buffers_still_loads():
    b = _bridge("linear")
    state = {k: v for k, v in b.state_dict().items() if k not in ("refreshes", "eps_interval")
             and not k.startswith("prev_")}
    again = _fresh("linear")
    again.load_state_dict(state)
    assert int(again.refreshes) == 0 and again.epsilon() == float("inf")
    x = torch.randn(3, D_S)
    assert torch.equal(again(x), b(x))


# --- through a LightningModule checkpoint (Trainer.fit(ckpt_path=...)) ----------------------------
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "luma_pl" / "modules"))
from test_bridge_module import D_C as M_DC  # noqa: E402
from test_bridge_module import D_S as M_DS  # noqa: E402
from test_bridge_module import SyntheticStream  # noqa: E402


def _module(kind: str):
    if kind == "procrustes":
        return ProcrustesBridgeModule(bridge=dict(d_s=M_DS, d_c=M_DC, refresh_every=25))
    return LearnedBridgeModule(bridge=dict(kind=kind, d_s=M_DS, d_c=M_DC, hidden=8, lr=0.05))


def _trainer(tmp_path, **kw):
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, default_root_dir=tmp_path, enable_checkpointing=False, **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_a_lightning_checkpoint_with_a_corrupt_bridge_is_refused_on_resume(tmp_path, kind):
    torch.manual_seed(0)
    model = _module(kind)
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, train_dataloaders=SyntheticStream(6))
    good = tmp_path / "good.ckpt"
    trainer.save_checkpoint(good)
    ckpt = torch.load(good, weights_only=True)

    # the good checkpoint resumes and the resumed bridge maps exactly as the saved one
    resumed = _module(kind)
    _trainer(tmp_path, max_epochs=1).fit(resumed, train_dataloaders=SyntheticStream(6), ckpt_path=str(good),
                                         weights_only=True)
    x = torch.randn(5, M_DS)
    x = x.double() if kind == "procrustes" else x
    assert torch.equal(resumed.bridge(x), model.bridge(x))

    for how in HOW:
        bad = {**ckpt, "state_dict": dict(ckpt["state_dict"])}
        key = _corrupt(bad["state_dict"], how, kind, prefix="bridge.")
        path = tmp_path / f"{how}.ckpt"
        torch.save(bad, path)
        with pytest.raises(ValueError, match=rf"bridge state tensor '{re.escape(key)}'"):
            _trainer(tmp_path, max_epochs=2).fit(_module(kind), train_dataloaders=SyntheticStream(6),
                                                 ckpt_path=str(path), weights_only=True)


# --- a checkpoint's _class_path is allow-listed before anything is imported ---------------------
@pytest.mark.parametrize("class_path", ["os.system", "evil_module.X", "luma_pl.modules.common.BridgeModuleBase"])
def test_train_py_refuses_a_checkpoint_class_path_outside_the_allow_list(tmp_path, class_path):
    import train

    ckpt = {"state_dict": {}, "hyper_parameters": {"_class_path": class_path, "bridge": {"d_s": 4}}}
    torch.save(ckpt, tmp_path / "evil.ckpt")
    (tmp_path / "shards").mkdir()
    sys.modules.pop("evil_module", None)
    args = ["fit", "--config", str(ROOT / "configs" / "default.yaml"), "--data.root", str(tmp_path / "shards"),
            "--trainer.logger", "false", "--ckpt_path", str(tmp_path / "evil.ckpt")]
    with pytest.raises(ValueError, match=rf"ckpt_path=.*_class_path={re.escape(repr(class_path))} is not one of "
                                         r"luma-pl's bridge modules.*not imported"):
        train.cli_main(args)
    assert "evil_module" not in sys.modules


def test_train_py_refuses_a_nested_class_path_in_the_hparams(tmp_path):
    import train

    ckpt = {"state_dict": {}, "hyper_parameters": {
        "_class_path": "luma_pl.modules.bridge_module.ProcrustesBridgeModule",
        "memory": {"class_path": "evil_module.X", "init_args": {}}}}
    torch.save(ckpt, tmp_path / "evil.ckpt")
    (tmp_path / "shards").mkdir()
    args = ["fit", "--config", str(ROOT / "configs" / "default.yaml"), "--data.root", str(tmp_path / "shards"),
            "--trainer.logger", "false", "--ckpt_path", str(tmp_path / "evil.ckpt")]
    with pytest.raises(ValueError, match=r"name classes to import at \['memory.class_path'\]"):
        train.cli_main(args)
    assert "evil_module" not in sys.modules


def test_the_allow_list_accepts_our_own_modules():
    from luma_pl.modules.common import check_class_path

    for path in ("luma_pl.modules.ProcrustesBridgeModule", "luma_pl.modules.learned_bridge_module.LearnedBridgeModule"):
        assert check_class_path(path, "ckpt").startswith("luma_pl.modules.")


# --- a resume with changed replay settings is refused (the stream position depends on them) --------
def _dm(root, **kw):
    from data_modules.stream_replay import StreamReplayDataModule

    dm = StreamReplayDataModule(root=str(root), **kw)
    dm.setup("fit")
    return dm


def test_datamodule_refuses_a_resume_with_changed_position_settings(tmp_path):
    from test_train_resume import _shards

    _shards(tmp_path / "shards", n=256)
    dm = _dm(tmp_path / "shards", batch_size=32)
    for batch in list(iter(dm.train_dataloader()))[:3]:
        dm.mark_consumed(batch)
    state = dm.state_dict()
    assert state["position_settings"]["batch_size"] == 32 and state["batches_consumed"] == 3

    same = _dm(tmp_path / "shards", batch_size=32)
    same.load_state_dict(state)
    assert same.batches_consumed == 3 and same.events_seen == 96
    with pytest.raises(ValueError, match=r"batch_size=32, this run has batch_size=64.*"
                                         r"--data.batch_size=32, or start a new run"):
        _dm(tmp_path / "shards", batch_size=64).load_state_dict(state)
    with pytest.raises(ValueError, match=r"drop_last=False, this run has drop_last=True.*--data.drop_last=False"):
        _dm(tmp_path / "shards", batch_size=32, drop_last=True).load_state_dict(state)
    bad = {**state, "position_settings": {**state["position_settings"], "world_size": 2}}
    with pytest.raises(ValueError, match=r"world_size=2, this run has world_size=1"):
        _dm(tmp_path / "shards", batch_size=32).load_state_dict(bad)
    bad = {**state, "position_settings": {**state["position_settings"], "shards": "0123456789abcdef"}}
    with pytest.raises(ValueError, match=r"shard list .* fingerprint='0123456789abcdef'.*--data.root"):
        _dm(tmp_path / "shards", batch_size=32).load_state_dict(bad)
    # a checkpoint written before the settings were recorded still loads
    old = {k: v for k, v in state.items() if k != "position_settings"}
    legacy = _dm(tmp_path / "shards", batch_size=64)
    legacy.load_state_dict(old)
    assert legacy.batches_consumed == 3


def test_train_py_resume_with_another_batch_size_is_refused(tmp_path):
    from test_train_resume import _fit, _shards

    _shards(tmp_path / "shards")
    (tmp_path / "b").mkdir()
    killed = _fit(tmp_path / "shards", tmp_path / "b", ["--trainer.callbacks+=kill_switch.KillAtBatch",
                                                        "--trainer.callbacks.batch", "5"])
    assert killed.returncode != 0
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    changed = _fit(tmp_path / "shards", tmp_path / "b", ["--ckpt_path", str(last), "--data.batch_size", "64"])
    assert changed.returncode != 0
    assert "batch_size=32, this run has batch_size=64" in changed.stderr, changed.stderr[-3000:]
    assert "--data.batch_size=32, or start a new run" in changed.stderr


# --- bridge config overrides on resume: applied where safe, refused where not -------------------
def test_a_resume_applies_a_changed_schedule_and_refuses_changed_dims(tmp_path):
    model = ProcrustesBridgeModule(bridge=dict(d_s=M_DS, d_c=M_DC, refresh_every=25))
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, train_dataloaders=SyntheticStream(6))
    path = tmp_path / "p.ckpt"
    trainer.save_checkpoint(path)
    resumed = ProcrustesBridgeModule(bridge=dict(d_s=M_DS, d_c=M_DC, refresh_every=7, lam=0.9))
    _trainer(tmp_path, max_epochs=2).fit(resumed, train_dataloaders=SyntheticStream(6), ckpt_path=str(path),
                                         weights_only=True)
    assert resumed.bridge.config.refresh_every == 7 and resumed.bridge.config.lam == 0.9
    centred = ProcrustesBridgeModule(bridge=dict(d_s=M_DS, d_c=M_DC, refresh_every=25, center=True))
    with pytest.raises(ValueError, match=r"bridge has center=False but this run asks for center=True.*"
                                         r"--model.init_args.bridge.center=False, or start a new run"):
        _trainer(tmp_path, max_epochs=2).fit(centred, train_dataloaders=SyntheticStream(6), ckpt_path=str(path),
                                             weights_only=True)


def test_a_learned_resume_applies_a_new_lr_to_the_restored_optimizer_and_refuses_a_new_kind(tmp_path):
    torch.manual_seed(0)
    model = _module("linear")
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, train_dataloaders=SyntheticStream(6))
    path = tmp_path / "l.ckpt"
    trainer.save_checkpoint(path)
    resumed = LearnedBridgeModule(bridge=dict(kind="linear", d_s=M_DS, d_c=M_DC, hidden=8, lr=0.01, refresh_every=3))
    t2 = _trainer(tmp_path, max_epochs=2)
    t2.fit(resumed, train_dataloaders=SyntheticStream(6), ckpt_path=str(path), weights_only=True)
    assert resumed.bridge.config.lr == 0.01 and resumed.bridge.config.refresh_every == 3
    assert all(g["lr"] == 0.01 for g in t2.optimizers[0].param_groups)
    other = LearnedBridgeModule(bridge=dict(kind="linear", d_s=M_DS, d_c=M_DC, hidden=8, lr=0.05,
                                            learn_temperature=False))
    with pytest.raises(ValueError, match=r"learn_temperature=True but this run asks for learn_temperature=False"):
        _trainer(tmp_path, max_epochs=2).fit(other, train_dataloaders=SyntheticStream(6), ckpt_path=str(path),
                                             weights_only=True)


def test_train_py_resume_applies_a_new_refresh_every_and_refuses_a_new_center(tmp_path):
    from test_train_resume import _fit, _shards

    _shards(tmp_path / "shards")
    (tmp_path / "b").mkdir()
    _fit(tmp_path / "shards", tmp_path / "b", ["--trainer.callbacks+=kill_switch.KillAtBatch",
                                               "--trainer.callbacks.batch", "5"])
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    saved = tmp_path / "mid.ckpt"
    saved.write_bytes(last.read_bytes())
    refused = _fit(tmp_path / "shards", tmp_path / "b", ["--ckpt_path", str(saved),
                                                         "--model.init_args.bridge.center", "true"])
    assert refused.returncode != 0
    assert "--model.init_args.bridge.center=False, or start a new run" in refused.stderr, refused.stderr[-3000:]
    applied = _fit(tmp_path / "shards", tmp_path / "b", ["--ckpt_path", str(saved),
                                                         "--model.init_args.bridge.refresh_every", "32"])
    assert applied.returncode == 0, applied.stderr[-3000:]
    final = torch.load(last, weights_only=True, map_location="cpu")
    assert final["state_dict"]["bridge._extra_state"]["config"]["refresh_every"] == 32
    assert final["hyper_parameters"]["bridge"]["refresh_every"] == 32
