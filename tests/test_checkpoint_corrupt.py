"""fastopt.load on truncated, corrupted or malformed files: a ValueError that names the file,
and the optimizer exactly as it was (state, param groups and step counts, compared bitwise)."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import fastopt

SHAPES = ((5, 3), (17,), ())
OPTIMIZERS = {
    "adam-amsgrad": (fastopt.Adam, dict(amsgrad=True)),
    "sgd-momentum": (fastopt.SGD, dict(momentum=0.9)),
}


def stepped(name, seed, steps, lr=0.01):
    """An optimizer of two param groups, stepped with seeded gradients."""
    cls, kw = OPTIMIZERS[name]
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.05}], lr=lr, **kw)
    for _ in range(steps):
        opt.step([rng.standard_normal(s).astype(np.float32) for s in SHAPES])
    return opt


def assert_same_state(after, before):
    """Two state_dict() results are identical: groups equal, every array the same bytes."""
    assert after["param_groups"] == before["param_groups"]
    assert after["state"].keys() == before["state"].keys()
    for i, st in before["state"].items():
        assert after["state"][i].keys() == st.keys(), f"state[{i}] keys"
        for key, value in st.items():
            got = after["state"][i][key]
            if isinstance(value, np.ndarray):
                assert (got.dtype, got.shape) == (value.dtype, value.shape), f"state[{i}][{key}]"
                assert got.tobytes() == value.tobytes(), f"state[{i}][{key}] changed"
            else:
                assert type(got) is type(value) and got == value, f"state[{i}][{key}]"


@pytest.fixture(params=list(OPTIMIZERS))
def setup(request, tmp_path):
    """(the optimizer's name, the saved checkpoint's path, the target optimizer, its state
    before any load).

    The target has the same params' shapes but another state (other seed, step count and lr),
    so a partial load would show in its state_dict()."""
    good = tmp_path / "good.npz"
    fastopt.save(stepped(request.param, seed=0, steps=3), good)
    target = stepped(request.param, seed=1, steps=2, lr=0.02)
    return request.param, good, target, target.state_dict()


def assert_refused(target, before, path, match):
    with pytest.raises(ValueError, match=match) as info:
        fastopt.load(target, path)
    assert str(path) in str(info.value)
    assert_same_state(target.state_dict(), before)


def members(path):
    """The checkpoint's members as {name: array} and its metadata."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    return arrays, json.loads(str(arrays["__meta__"]))


def rewrite(path, arrays, meta=None):
    """Write a checkpoint with the given members (and metadata, unless already in arrays)."""
    arrays = dict(arrays)
    if meta is not None:
        arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


# ---- the file as bytes -----------------------------------------------------------------------

def test_an_untouched_rewrite_loads(setup, tmp_path):
    """The tests' own rewriting (np.load then np.savez) makes a loadable file, so the refusals
    below are due to the damage alone."""
    name, good, target, _ = setup
    arrays, meta = members(good)
    copy = tmp_path / "copy.npz"
    rewrite(copy, arrays, meta)
    fastopt.load(target, copy)
    assert_same_state(target.state_dict(), stepped(name, seed=0, steps=3).state_dict())


CUTS = [k / 20 for k in range(20)] + [-1, -2, -3, -4, -21, -22, -23, -100]


@pytest.mark.parametrize("cut", CUTS)
def test_truncated_file(setup, tmp_path, cut):
    _, good, target, before = setup
    data = good.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else len(data) + cut
    bad = tmp_path / "bad.npz"
    bad.write_bytes(data[:n])
    assert_refused(target, before, bad, "is empty" if n == 0 else "it is truncated")


@pytest.mark.parametrize("content,match", [
    (b"", "is empty"),
    (b"not a checkpoint\n" * 50, "not a fastopt checkpoint"),
    (b"PK\x03\x04" + bytes(200), "not a fastopt checkpoint"),
    (b"\x93NUMPY" + bytes(100), "not a fastopt checkpoint"),
], ids=["empty", "text", "zip-magic-only", "npy-magic-only"])
def test_not_a_zip_file(setup, tmp_path, content, match):
    _, _, target, before = setup
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    assert_refused(target, before, bad, match)


def test_an_npy_file_is_not_a_checkpoint(setup, tmp_path):
    _, _, target, before = setup
    bad = tmp_path / "bad.npy"
    np.save(bad, np.arange(10.0))
    assert_refused(target, before, bad, "not a fastopt checkpoint")


def member_spans(path):
    """{member name: (start, end)} of each member's bytes in the file, and of its npy data."""
    data = path.read_bytes()
    spans = {}
    with zipfile.ZipFile(path) as zf, np.load(path, allow_pickle=False) as npz:
        for info in zf.infolist():
            raw = zf.read(info)
            start = data.index(raw, info.header_offset)
            name = info.filename[:-len(".npy")]
            spans[name] = (start, start + len(raw), start + len(raw) - npz[name].nbytes)
    return spans


@pytest.mark.parametrize("where", ["first", "middle", "last", "header"])
def test_a_flipped_byte_in_a_member_fails_its_crc(setup, tmp_path, where):
    _, good, target, before = setup
    data = good.read_bytes()
    for name, (start, end, data_start) in member_spans(good).items():
        if where == "header":
            i = start + 20               # inside the npy header's text (the dtype or shape)
        else:
            i = {"first": data_start, "middle": (data_start + end) // 2, "last": end - 1}[where]
        assert start <= i < end
        damaged = bytearray(data)
        damaged[i] ^= 0x10
        bad = tmp_path / "bad.npz"
        bad.write_bytes(bytes(damaged))
        assert_refused(target, before, bad, f"member '{name}' cannot be read .*Bad CRC-32")


def test_random_byte_damage_anywhere_is_refused_or_harmless(setup, tmp_path):
    """Any single damaged byte: either refused with nothing changed, or (a byte zipfile never
    uses, like a timestamp) the load is exactly that of the undamaged file."""
    name, good, target, before = setup
    data = good.read_bytes()
    clean = stepped(name, seed=0, steps=3).state_dict()
    rng = np.random.default_rng(7)
    bad = tmp_path / "bad.npz"
    refused = 0
    for i in rng.choice(len(data), size=150, replace=False):
        damaged = bytearray(data)
        damaged[i] ^= int(rng.integers(1, 256))
        bad.write_bytes(bytes(damaged))
        try:
            fastopt.load(target, bad)
        except ValueError as e:
            assert str(bad) in str(e)
            assert_same_state(target.state_dict(), before)
            refused += 1
        else:
            assert_same_state(target.state_dict(), clean)
            target.load_state_dict(before)      # back to the target's own state
    assert refused > 100        # most bytes matter; the CRCs catch damage to any data


def test_a_missing_file_is_not_corruption(setup, tmp_path):
    _, _, target, before = setup
    with pytest.raises(FileNotFoundError):
        fastopt.load(target, tmp_path / "no-such-file.npz")
    with pytest.raises(IsADirectoryError):
        fastopt.load(target, tmp_path)
    assert_same_state(target.state_dict(), before)


# ---- well-formed zip files with malformed contents -------------------------------------------

def first_key(meta):
    return meta["state"]["0"]["keys"][0]


def set_path(meta, keys, value):
    for k in keys[:-1]:
        meta = meta[k]
    meta[keys[-1]] = value


def delete_path(meta, keys):
    for k in keys[:-1]:
        meta = meta[k]
    del meta[keys[-1]]


META_CASES = {
    # name: (change to the parsed metadata, expected message)
    "format-missing": (lambda m: delete_path(m, ["format"]), "not a version-1"),
    "optimizer-missing": (lambda m: delete_path(m, ["optimizer"]), "lacks 'optimizer'"),
    "params-missing": (lambda m: delete_path(m, ["params"]), "lacks 'params'"),
    "groups-missing": (lambda m: delete_path(m, ["param_groups"]), "lacks 'param_groups'"),
    "state-missing": (lambda m: delete_path(m, ["state"]), "lacks 'state'"),
    "optimizer-number": (lambda m: set_path(m, ["optimizer"], 3), "'optimizer' = 3"),
    "params-number": (lambda m: set_path(m, ["params"], 5), "'params' = 5, expected a JSON array"),
    "groups-object": (lambda m: set_path(m, ["param_groups"], {}), "expected a JSON array"),
    "state-list": (lambda m: set_path(m, ["state"], []), "expected a JSON object"),
    "param-string": (lambda m: set_path(m, ["params", 0], "x"), r"params\[0\] = \"x\""),
    "param-shape-string": (lambda m: set_path(m, ["params", 1, "shape"], "17"), r"params\[1\]"),
    "param-other-shape": (lambda m: set_path(m, ["params", 1, "shape"], [16]),
                          "different model: its param 1"),
    "param-count": (lambda m: m["params"].pop(), "different model: it has 2 params"),
    "group-number": (lambda m: set_path(m, ["param_groups", 0], 7), r"param_groups\[0\] = 7"),
    "group-ids-missing": (lambda m: delete_path(m, ["param_groups", 1, "params"]),
                          r"param_groups\[1\]"),
    "group-ids-string": (lambda m: set_path(m, ["param_groups", 0, "params"], "01"),
                         r"param_groups\[0\]"),
    "group-ids-float": (lambda m: set_path(m, ["param_groups", 0, "params"], [0.0, 1.0]),
                        r"param_groups\[0\]"),
    "group-count": (lambda m: m["param_groups"].pop(), "refuses: .*parameter groups"),
    "group-lr-string": (lambda m: set_path(m, ["param_groups", 0, "lr"], "fast"),
                        r"refuses: .*param_groups\[0\].*learning rate"),
    "group-lr-negative": (lambda m: set_path(m, ["param_groups", 1, "lr"], -1.0),
                          r"refuses: .*param_groups\[1\].*learning rate"),
    "group-bad-tuple": (lambda m: set_path(m, ["param_groups", 0, "maximize"], {"__tuple__": 5}),
                        r"refuses: .*param_groups\[0\]"),
    "state-index-word": (lambda m: m["state"].update(x=m["state"].pop("0")),
                         "state for 'x', not a param index"),
    "state-index-padded": (lambda m: m["state"].update({"01": m["state"].pop("1")}),
                           "state for '01'"),
    "state-index-unknown": (lambda m: m["state"].update({"7": m["state"]["0"]}),
                            "lacks the array 'state/7/"),
    "state-entry-list": (lambda m: set_path(m, ["state", "0"], []), r"state\['0'\] = \[\]"),
    "state-keys-missing": (lambda m: delete_path(m, ["state", "1", "keys"]), r"state\['1'\]"),
    "state-keys-number": (lambda m: set_path(m, ["state", "1", "keys"], 3), r"state\['1'\]"),
    "state-step-missing": (lambda m: delete_path(m, ["state", "2", "step"]), r"state\['2'\]"),
    "state-key-unknown": (lambda m: m["state"]["0"]["keys"].append("bogus"),
                          "lacks the array 'state/0/bogus'"),
}


@pytest.mark.parametrize("case", list(META_CASES))
def test_malformed_metadata(setup, tmp_path, case):
    change, match = META_CASES[case]
    _, good, target, before = setup
    arrays, meta = members(good)
    change(meta)
    bad = tmp_path / "bad.npz"
    rewrite(bad, arrays, meta)
    assert_refused(target, before, bad, match)


@pytest.mark.parametrize("step", ["three", -1, 2.5, 2**70, True])
def test_malformed_step_counts(setup, tmp_path, step):
    _, good, target, before = setup
    arrays, meta = members(good)
    meta["state"]["1"]["step"] = step
    bad = tmp_path / "bad.npz"
    rewrite(bad, arrays, meta)
    assert_refused(target, before, bad, r"refuses: .*\['step'\]: expected a non-negative integer")


def test_an_adam_state_without_its_step_count(tmp_path):
    good = tmp_path / "good.npz"
    fastopt.save(stepped("adam-amsgrad", seed=0, steps=3), good)
    target = stepped("adam-amsgrad", seed=1, steps=2)
    before = target.state_dict()
    arrays, meta = members(good)
    meta["state"]["1"]["step"] = None
    bad = tmp_path / "bad.npz"
    rewrite(bad, arrays, meta)
    assert_refused(target, before, bad, r"refuses: .*state\[1\] lacks 'step'")


@pytest.mark.parametrize("meta_text,match", [
    ("", "not valid JSON"),
    ('{"format": "fastopt-checkpoint", "version": 1,', "not valid JSON"),
    ("{'format': 'fastopt-checkpoint'}", "not valid JSON"),
    ("[1, 2]", "is a JSON list, not an object"),
    ('"fastopt-checkpoint"', "is a JSON str, not an object"),
    ('{"format": "fastopt-checkpoint", "version": 2}', "not a version-1"),
], ids=["empty", "cut", "single-quotes", "list", "string", "version-2"])
def test_metadata_not_a_checkpoint_object(setup, tmp_path, meta_text, match):
    _, good, target, before = setup
    arrays, _ = members(good)
    arrays["__meta__"] = np.array(meta_text)
    bad = tmp_path / "bad.npz"
    rewrite(bad, arrays)
    assert_refused(target, before, bad, match)


def wrong_member(name, array):
    """Replace the first state buffer of param ``name`` (a state index) by ``array``."""
    def change(arrays, meta):
        arrays[f"state/{name}/{meta['state'][name]['keys'][0]}"] = array
    return change


def drop(what):
    def change(arrays, meta):
        if what == "meta":
            del arrays["__meta__"]
        else:
            del arrays[f"state/{what}/{first_key(meta)}"]
    return change


MEMBER_CASES = {
    "meta-missing": (drop("meta"), r"not a fastopt checkpoint \(no __meta__\)"),
    "meta-numbers": (lambda a, m: a.update(__meta__=np.arange(3.0)), "is not a string"),
    "meta-bytes": (lambda a, m: a.update(__meta__=np.array(b"{}")), "is not a string"),
    "array-missing": (drop("0"), "lacks the array 'state/0/"),
    "array-short": (wrong_member("1", np.zeros(16, np.float32)),
                    r"refuses: .*expected shape \(17,\).*got \(16,\)"),
    "array-flat": (wrong_member("0", np.zeros(15, np.float32)),
                   r"refuses: .*expected shape \(5, 3\).*got \(15,\)"),
    "array-float64": (wrong_member("1", np.zeros(17)), "refuses: .*expected .*dtype.*float32"),
    "array-big-endian": (wrong_member("1", np.zeros(17, ">f4")), "refuses: .*got >f4"),
    "array-int": (wrong_member("2", np.zeros((), np.int32)),
                  "refuses: .*expected .*dtype.*float32"),
}


@pytest.mark.parametrize("case", list(MEMBER_CASES))
def test_malformed_members(setup, tmp_path, case):
    change, match = MEMBER_CASES[case]
    _, good, target, before = setup
    arrays, meta = members(good)
    change(arrays, meta)
    bad = tmp_path / "bad.npz"
    rewrite(bad, arrays)
    assert_refused(target, before, bad, match)


def test_a_pickled_member_is_refused_unread(setup, tmp_path):
    _, good, target, before = setup
    arrays, meta = members(good)
    arrays[f"state/0/{first_key(meta)}"] = np.array([{"a": 1}], dtype=object)
    bad = tmp_path / "bad.npz"
    np.savez(bad, allow_pickle=True, **arrays)
    assert_refused(target, before, bad, "member 'state/0/.*' cannot be read")


def test_a_compressed_checkpoint_is_refused(setup, tmp_path):
    _, good, target, before = setup
    arrays, _ = members(good)
    bad = tmp_path / "bad.npz"
    np.savez_compressed(bad, **arrays)
    assert_refused(target, before, bad, "member '__meta__' is compressed")
