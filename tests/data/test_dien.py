import pickle

import pytest

from ifusion_plugin.data import AmazonBooksDIENDataModule


def _write(root, with_vocab):
    root.mkdir()
    sep = "\x02"
    train = [f"{i % 2}\tU{u}\tI{i}\tC{i % 3}\t{sep.join(f'I{j}' for j in range(i))}\t{sep.join(f'C{j % 3}' for j in range(i))}\n"
             for u in range(10) for i in range(1, 4)]
    (root / "local_train_splitByUser").write_text("".join(train))
    (root / "local_test_splitByUser").write_text(f"1\tU0\tI9\tC0\tI1{sep}I2\tC1{sep}C2\n0\tU99\tI1\tC1\t\t\n")
    if with_vocab:
        (root / "uid_voc.pkl").write_bytes(pickle.dumps({f"U{u}": u for u in range(10)}))


def test_dien_split_vocab_and_valid_by_user(tmp_path):
    _write(tmp_path / "d", with_vocab=True)
    dm = AmazonBooksDIENDataModule(root=str(tmp_path / "d"), cache_dir=str(tmp_path / "c"), long_len=3, num_sessions=1, session_len=1)
    spec = dm.feature_spec
    assert spec.num_users == 12 and spec.num_items == 4 + 2  # I0..I3 seen in train text
    tr, va, te = (dm.split(s)[:] for s in ("train", "valid", "test"))
    assert len(tr["label"]) + len(va["label"]) == 30 and len(va["label"]) == 3
    assert not set(tr["user"].tolist()) & set(va["user"].tolist())
    assert te["target_item"].tolist() == [1, 3] and te["user"].tolist() == [2, 1]  # I9, U99 -> OOV
    assert te["session_items"][0].tolist() == [[4]] and te["long_items"][0].tolist() == [0, 0, 3]


def test_dien_bad_line(tmp_path):
    _write(tmp_path / "d", with_vocab=False)
    with open(tmp_path / "d" / "local_test_splitByUser", "a") as f:
        f.write("1\tU1\tI1\n")
    with pytest.raises(ValueError, match=r"local_test_splitByUser:3: expected 6"):
        AmazonBooksDIENDataModule(root=str(tmp_path / "d"), cache_dir=str(tmp_path / "c")).feature_spec
