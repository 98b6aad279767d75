import os
import pickle

import pytest

from ifusion_plugin.data.safe_pickle import UnsafePickleError, load_vocabulary


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_code_and_accepts_plain_dict(tmp_path):
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"a": _Evil()}))
    with pytest.raises(UnsafePickleError, match="refusing to load global .*system"):
        load_vocabulary(str(bad))
    good = tmp_path / "uid_voc.pkl"
    good.write_bytes(pickle.dumps({"A1": 0, "B2": 1}))
    assert load_vocabulary(str(good)) == {"A1": 0, "B2": 1}
    notdict = tmp_path / "list.pkl"
    notdict.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(UnsafePickleError, match="expected a dict"):
        load_vocabulary(str(notdict))
