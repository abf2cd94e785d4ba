"""MergeSessions: the lifecycle across generations (one write per distinct ratio, exact restore, foreign writes,
errors), with a fake host that bakes a 'LoRA' on top of the weights the way A1111's Lora extension does."""
import os

import pytest
import torch

from lib_ext.merge.keys import classify_key
from lib_ext.merge.recipe import MergeRecipe
from lib_ext.merge.session import MergeSessions, fingerprint
from merge_fixtures import assert_bits_equal, sd1_checkpoint, write_checkpoint

A, B, C = sd1_checkpoint(0), sd1_checkpoint(1), sd1_checkpoint(2)
LORA = 0.125  # what the fake LoRA adds to every weight it is baked into


@pytest.fixture()
def paths(tmp_path):
    return {role: write_checkpoint(tmp_path / f"{role}.safetensors", tensors)
            for role, tensors in (("a", A), ("b", B), ("c", C))}


class FakeHost:
    """Live tensors by checkpoint key; `bake_lora()` plays the Lora extension (backup, then add) and the hooks
    record what the session asked for."""

    def __init__(self, model):
        self.model, self.backups, self.calls, self.is_alive, self.closed = model, {}, [], True, False

    def targets(self):
        return self.model

    def clean_values(self, keys):
        return {k: self.backups.get(k, self.model[k]) for k in keys}

    def before_write(self, groups):
        self.calls.append(("before", frozenset(groups)))
        for key in [k for k in self.backups if classify_key(k) in groups]:
            self.model[key].data.copy_(self.backups.pop(key))  # un-bake

    def after_write(self, ratios):
        self.calls.append(("after", dict(ratios)))
        for key in [k for k in self.backups if classify_key(k) in ratios]:
            del self.backups[key]  # reset Lora's caches: it re-bakes on top of the new values

    def alive(self):
        return self.is_alive

    def close(self):
        self.closed = True

    def bake_lora(self):
        for key, tensor in self.model.items():
            if key not in self.backups and tensor.is_floating_point():
                self.backups[key] = tensor.detach().clone()
                tensor.data.add_(LORA)


def live_model(tensors=A):
    return {k: torch.nn.Parameter(v.clone(), requires_grad=False) for k, v in tensors.items()
            if classify_key(k) != "other"}


def ws(paths, **kw):
    return MergeRecipe("weighted_sum", paths["a"], paths["b"], include_vae=True, **kw)


def kinds(updates):
    return [u.kind for u in updates]


def assert_holds(model, expected, groups=("unet", "te", "vae")):
    for key, tensor in model.items():
        if classify_key(key) in groups and tensor.is_floating_point():
            assert_bits_equal(tensor.detach(), expected[key], key)


def test_a_sweep_writes_once_per_distinct_ratio_and_restores_exactly(paths):
    model, lines = live_model(), []
    host = FakeHost(model)
    sessions = MergeSessions(log=lines.append)
    written = []
    for ratio in (0.0, 0.0, 0.5, 0.5, 1.0, 1.0):  # an X/Y/Z plot: ratio outermost, two CFG cells each
        written += kinds(sessions.sync("k", ws(paths, unet_ratio=ratio), lambda: host))
    assert written == ["prepared", "applied", "applied"]  # ratio 0 is model A: no copies, no write
    assert_holds(model, B)
    assert sum("merge ratio 0.5 applied" in line for line in lines) == 1
    assert kinds(sessions.sync(None, None, lambda: host)) == ["restored"]
    assert_holds(model, A)
    assert sessions.current is None and host.closed


def test_ratio_zero_after_a_ratio_is_a_write_back(paths):
    model, host, sessions = live_model(), None, MergeSessions(log=lambda _: None)
    host = FakeHost(model)
    sessions.sync("k", ws(paths, unet_ratio=0.5), lambda: host)
    assert kinds(sessions.sync("k", ws(paths, unet_ratio=0.0), lambda: host)) == ["applied"]
    assert_holds(model, A)


def test_text_encoder_ratio_alone_rewrites_only_the_text_encoders(paths):
    model, sessions = live_model(), MergeSessions(log=lambda _: None)
    host = FakeHost(model)
    sessions.sync("k", ws(paths, unet_ratio=1.0), lambda: host)
    updates = sessions.sync("k", ws(paths, unet_ratio=1.0, te_ratio=0.0), lambda: host)
    assert [dict(u.ratios) for u in updates] == [{"te": 0.0}]
    assert host.calls[-2:] == [("before", frozenset({"te"})), ("after", {"te": 0.0})]
    assert_holds(model, B, ("unet", "vae"))
    assert_holds(model, A, ("te",))


def test_another_partner_closes_the_old_session_first(paths):
    model, sessions = live_model(), MergeSessions(log=lambda _: None)
    hosts = [FakeHost(model), FakeHost(model)]
    sessions.sync("b", ws(paths, unet_ratio=1.0), lambda: hosts[0])
    other = MergeRecipe("weighted_sum", paths["a"], paths["c"], unet_ratio=1.0, include_vae=True)
    assert kinds(sessions.sync("c", other, lambda: hosts[1])) == ["restored", "prepared", "applied"]
    assert hosts[0].closed and not hosts[1].closed
    assert_holds(model, C)  # C merged onto the restored A, not onto B


def test_a_baked_lora_is_neither_taken_for_model_a_nor_for_a_foreign_write(paths):
    model, sessions = live_model(), MergeSessions(log=lambda _: None)
    host = FakeHost(model)
    host.bake_lora()  # a LoRA from an earlier generation is still baked in
    sessions.sync("k", ws(paths, unet_ratio=1.0), lambda: host)
    assert_holds(model, B)  # merged from the clean weights
    host.bake_lora()  # this generation's LoRA, on top of the merge
    assert sessions.sync("k", ws(paths, unet_ratio=1.0), lambda: host) == []  # same ratio: nothing rewritten
    sessions.close()
    assert_holds(model, A)  # the originals, not originals + LoRA


def test_weights_reloaded_by_the_host_are_not_restored_over(paths):
    model, sessions = live_model(), MergeSessions(log=lambda _: None)
    host = FakeHost(model)
    sessions.sync("k", ws(paths, unet_ratio=0.5), lambda: host)
    user_vae = {k: torch.full_like(t, 7.0) for k, t in model.items() if classify_key(k) == "vae"}
    for key, value in user_vae.items():  # A1111 loading the user's VAE into the same model object
        model[key].data.copy_(value)
    updates = sessions.sync("k", ws(paths, unet_ratio=0.5), lambda: FakeHost(model))
    assert kinds(updates) == ["restored", "prepared", "applied"]
    assert set(updates[0].ratios) == {"unet", "te"}  # the reloaded VAE is left alone ...
    sessions.close()
    assert_holds(model, A, ("unet", "te"))
    for key, value in user_vae.items():  # ... and became the new model A's VAE
        assert_bits_equal(model[key].detach(), value, key)


def test_an_unloaded_model_is_dropped_without_writing(paths):
    model, sessions = live_model(), MergeSessions(log=lambda _: None)
    host = FakeHost(model)
    sessions.sync("k", ws(paths, unet_ratio=0.5), lambda: host)
    host.is_alive = False
    host.targets = lambda: pytest.fail("an unloaded model must not be written")
    assert sessions.close() == [] and sessions.current is None


def test_a_failing_write_restores_and_reraises(paths, monkeypatch):
    import lib_ext.merge.inplace as inplace
    model, lines = live_model(), []
    sessions = MergeSessions(log=lines.append)
    host = FakeHost(model)
    sessions.sync("k", ws(paths, unet_ratio=0.5), lambda: host)
    real, calls = inplace.weighted_sum_into, {"n": 0}

    def interrupting(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of a pass
        real(*args)

    monkeypatch.setattr(inplace, "weighted_sum_into", interrupting)
    with pytest.raises(KeyboardInterrupt):
        sessions.sync("k", ws(paths, unet_ratio=0.75), lambda: host)
    assert sessions.current is None and host.closed
    assert_holds(model, A)  # the close() after the error rewrote every group, the dirty one included
    assert any(line.startswith("Uncond Lab: merge restored") for line in lines)
    # the hooks saw the half-written group, so Lora/cond caches of it are dropped too
    assert [kind for kind, _ in host.calls].count("after") == 3  # apply(0.5), the failed apply, the restore


def test_pending_groups_follow_the_engine_rule(paths):
    model = live_model()
    from lib_ext.merge.inplace import InPlaceMerge
    with InPlaceMerge(ws(paths), model) as merge:
        assert merge.pending_groups(ws(paths, unet_ratio=0.0)) == frozenset()
        assert merge.pending_groups(ws(paths, unet_ratio=0.0, te_ratio=0.5)) == {"te"}
        merge.apply(0.5)
        assert merge.pending_groups(ws(paths, unet_ratio=0.5)) == frozenset()
        assert merge.pending_groups(ws(paths, unet_ratio=0.5, te_ratio=0.0)) == {"te"}


def test_fingerprint_sees_a_changed_value_dtype_or_shape():
    t = torch.arange(100, dtype=torch.float32)
    base = fingerprint({"k": t}, ["k"])
    assert fingerprint({"k": t.clone()}, ["k"]) == base
    changed = t.clone()
    changed[0] = -0.0 if t[0] == 0 else 0.0
    assert fingerprint({"k": changed}, ["k"]) != base
    assert fingerprint({"k": t.half()}, ["k"]) != base
    assert fingerprint({"k": t.view(10, 10)}, ["k"]) != base


def test_update_messages():
    from lib_ext.merge.session import MergeUpdate
    assert MergeUpdate("applied", {"unet": 0.5, "te": 0.5}, 0.031, unet_ratio=0.5).message() == \
        "Uncond Lab: merge ratio 0.5 applied in 0.03 s (UNet 0.5, text encoders 0.5)"
    assert MergeUpdate("restored", {"unet": None}, 0.2).message() == \
        "Uncond Lab: merge restored in 0.20 s (UNet original)"


def test_placement_for_the_hosts_setting():
    from lib_ext.merge.session import SOURCES_AUTO, SOURCES_MAPPED, SOURCES_RESIDENT, placement_for
    assert placement_for(SOURCES_AUTO, low_vram=False) == "auto"
    assert placement_for(SOURCES_AUTO, low_vram=True) == "mapped"  # --medvram/--lowvram: no copies on the GPU
    assert placement_for(SOURCES_RESIDENT, low_vram=False) == "device"
    assert placement_for(SOURCES_RESIDENT, low_vram=True) == "cpu"
    assert placement_for(SOURCES_MAPPED, low_vram=False) == "mapped"


def test_another_placement_prepares_again_and_the_log_says_where_from(paths):
    model, lines = live_model(), []
    host = FakeHost(model)
    sessions = MergeSessions(log=lines.append)
    sessions.sync("k", ws(paths, unet_ratio=0.5), lambda: host, placement="mapped")
    assert "read from the memory-mapped files at each switch; 0.00 GB kept in RAM" in lines[0]
    updates = sessions.sync("k", ws(paths, unet_ratio=0.5), lambda: host, placement="device")
    assert kinds(updates) == ["restored", "prepared", "applied"]
    assert "of copies resident (device)" in lines[-2]
    sessions.close()
    assert_holds(model, A)


class ReloadingHost(FakeHost):
    """A host whose `reload` loads a checkpoint file into the model, the way A1111's forced reload does; it fails
    while `fail` is set."""

    def __init__(self, model, path):
        super().__init__(model)
        self.path, self.fail, self.reloads = path, False, 0

    def reload(self):
        self.reloads += 1
        if self.fail:
            raise OSError("the file is being written")
        from safetensors.torch import load_file
        for key, value in load_file(str(self.path)).items():
            if key in self.model:
                self.model[key].data.copy_(value)
        return True


def rewrite_in_place(path, tensors):
    """A trainer's save over the file: truncated and written again, the same inode (not a rename)."""
    from safetensors.torch import save
    inode = os.stat(path).st_ino
    with open(path, "r+b") as file:
        file.truncate(0)
        file.write(save({k: v.contiguous() for k, v in tensors.items()}))
    assert os.stat(path).st_ino == inode


def test_model_a_rewritten_during_a_held_merge_is_reloaded_never_left_merged(paths):
    lines = []
    model = live_model()
    host = ReloadingHost(model, paths["a"])
    sessions = MergeSessions(log=lines.append)
    sessions.sync("k", ws(paths, unet_ratio=0.5), lambda: host, placement="mapped")
    rewrite_in_place(paths["a"], C)  # the trainer saves over A while the merge is held

    with pytest.raises(Exception, match="rewritten on disk.*reloaded the checkpoint from disk"):
        sessions.sync(None, None, lambda: host)  # a plain generation: refused, with why
    assert host.reloads == 1 and sessions.unrestored is None
    assert_holds(model, C)  # the file's weights now, not the merge
    assert sessions.sync(None, None, lambda: host) == [] and host.reloads == 1  # the next one runs, unmerged


def test_a_failed_reload_refuses_every_generation_until_one_works(paths):
    model = live_model()
    host = ReloadingHost(model, paths["a"])
    sessions = MergeSessions(log=lambda _: None)
    sessions.sync("k", ws(paths, unet_ratio=1.0), lambda: host, placement="mapped")
    rewrite_in_place(paths["a"], C)
    host.fail = True
    with pytest.raises(Exception, match="rewritten on disk.*reloading the checkpoint failed"):
        sessions.sync(None, None, lambda: host)
    for request in ((None, None), ("k", ws(paths, unet_ratio=0.5))):  # plain or merged: refused alike
        with pytest.raises(Exception, match="may still hold a merge.*Load a checkpoint"):
            sessions.sync(*request, lambda: host, placement="mapped")
    assert sessions.current is None
    host.fail = False
    assert sessions.sync(None, None, lambda: host) == []
    assert_holds(model, C) and sessions.unrestored is None and host.reloads == 4


def test_model_b_rewritten_during_a_held_merge_refuses_and_restores_a(paths):
    model = live_model()
    host = ReloadingHost(model, paths["a"])
    sessions = MergeSessions(log=lambda _: None)
    sessions.sync("k", ws(paths, unet_ratio=0.5), lambda: host, placement="mapped")
    rewrite_in_place(paths["b"], C)
    with pytest.raises(Exception, match="rewritten on disk"):
        sessions.sync("k", ws(paths, unet_ratio=1.0), lambda: host, placement="mapped")  # reads B again
    assert_holds(model, A) and host.reloads == 0  # A's file is intact: restored from it, bit for bit
    assert sessions.sync(None, None, lambda: host) == []
