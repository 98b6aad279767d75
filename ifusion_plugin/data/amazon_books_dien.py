"""Amazon Books as DIEN's data script leaves it (``local_train_splitByUser`` / ``local_test_splitByUser``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from ..batch import FIRST_ID, OOV_ID, SAMPLE_COLUMNS, FeatureSpec
from .datamodule import CTRDataModule
from .logs import _bad, _report_skips
from .sequences import split_history
from .vocabulary import Vocabularies, Vocabulary

__all__ = ["AmazonBooksDIENDataModule"]


class AmazonBooksDIENDataModule(CTRDataModule):
    """Amazon Books as split by the DIEN authors: ``root/local_train_splitByUser`` and
    ``root/local_test_splitByUser``, tab-separated ``label, user, item, category, item history,
    category history`` with histories joined by byte 0x02. Vocabularies come from
    ``uid_voc.pkl``/``mid_voc.pkl``/``cat_voc.pkl`` (restricted unpickler; DIEN index ``v`` ->
    our id ``v + 2``) or, when a file is absent, are rebuilt from the train text (sorted strings
    from 2). Unknown strings -> OOV. Valid = the samples of a seeded ``valid_user_fraction`` of
    the train users (by user, so a user is never in both). Sessions are chunks (no times)."""

    DOWNLOAD = "DIEN's data script (https://github.com/mouna99/dien, prepare_data.sh) writes these files"

    def __init__(
        self,
        root: str = "amazon-books-dien",
        valid_user_fraction: float = 0.1,
        **options: Any,
    ) -> None:
        super().__init__(session_split="chunk", **options)
        if not 0.0 < valid_user_fraction < 1.0:
            raise ValueError(f"valid_user_fraction must be in (0, 1), got {valid_user_fraction}")
        self.root, self.valid_user_fraction = root, valid_user_fraction

    def _source_name(self) -> str:
        return "amazon-books-dien"

    def _raw_files(self) -> list[str]:
        return [os.path.join(self.root, "local_train_splitByUser"), os.path.join(self.root, "local_test_splitByUser")]

    def _vocab_files(self) -> list[str]:
        return [os.path.join(self.root, n) for n in ("uid_voc.pkl", "mid_voc.pkl", "cat_voc.pkl")]

    def _content_options(self) -> dict[str, object]:
        # The optional pickles change content: their presence/size/mtime is part of the key.
        from .cache import file_fingerprint

        return {"valid_user_fraction": self.valid_user_fraction, "vocab_files": file_fingerprint(self._vocab_files())}

    def _read(self, path: str) -> list[tuple[int, str, str, str, list[str], list[str]]]:
        rows, skipped = [], [0]
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                parts = line.rstrip("\r\n").split("\t")
                if len(parts) != 6:
                    _bad(path, lineno, f"expected 6 tab-separated fields, got {len(parts)}", self.on_bad_line, skipped)
                    continue
                items = parts[4].split("\x02") if parts[4] else []
                cates = parts[5].split("\x02") if parts[5] else []
                if parts[0] not in ("0", "1") or len(items) != len(cates):
                    _bad(path, lineno, "label must be 0/1 and both histories of equal length", self.on_bad_line, skipped)
                    continue
                rows.append((int(parts[0]), parts[1], parts[2], parts[3], items, cates))
        _report_skips(path, skipped[0])
        return rows

    def _build(self):
        from .safe_pickle import load_vocabulary

        train_path, test_path = self._raw_files()
        train, test = self._read(train_path), self._read(test_path)
        texts = {
            0: {r[1] for r in train},
            1: {r[2] for r in train} | {i for r in train for i in r[4]},
            2: {r[3] for r in train} | {c for r in train for c in r[5]},
        }
        vocabs = []
        for k, path in enumerate(self._vocab_files()):
            if os.path.exists(path):
                vocabs.append({s: v + FIRST_ID for s, v in load_vocabulary(path).items()})
            else:
                vocabs.append({s: i + FIRST_ID for i, s in enumerate(sorted(texts[k]))})
        uv, iv, cv = vocabs
        users = sorted({r[1] for r in train})
        rng = np.random.default_rng(self.seed)
        n_valid = max(1, int(round(len(users) * self.valid_user_fraction)))
        valid_users = set(np.array(users, dtype=object)[rng.permutation(len(users))[:n_valid]].tolist())
        shapes = {"()": (), "(L,)": (self.sequence_options.long_len,),
                  "(K, N)": (self.sequence_options.num_sessions, self.sequence_options.session_len)}
        out = {}
        for split, rows in (("train", [r for r in train if r[1] not in valid_users]),
                            ("valid", [r for r in train if r[1] in valid_users]), ("test", test)):
            c = {k: [] for k in SAMPLE_COLUMNS}
            raw_ids = {"user_id": [r[1] for r in rows], "item_id": [r[2] for r in rows]}
            for label, u, item, cate, hi, hc in rows:
                h = split_history(np.array([iv.get(x, OOV_ID) for x in hi], np.int64),
                                  np.array([cv.get(x, OOV_ID) for x in hc], np.int64), self.sequence_options)
                c["user"].append(uv.get(u, OOV_ID))
                c["target_item"].append(iv.get(item, OOV_ID))
                c["target_cate"].append(cv.get(cate, OOV_ID))
                c["long_items"].append(h.long_items)
                c["long_cates"].append(h.long_cates)
                c["session_items"].append(h.session_items)
                c["session_cates"].append(h.session_cates)
                c["label"].append(label)
            out[split] = {k: np.asarray(v, np.int64).reshape((-1,) + shapes[SAMPLE_COLUMNS[k]]) for k, v in c.items()}
            out[split].update({k: pa.array(v, pa.string()) for k, v in raw_ids.items()})
        spec = FeatureSpec(num_users=max(uv.values(), default=1) + 1, num_items=max(iv.values(), default=1) + 1,
                           num_cates=max(cv.values(), default=1) + 1, **{k: self.sequence_options.as_key()[k] for k in ("long_len", "num_sessions", "session_len")})
        pairs = [(r[2], r[3]) for r in train] + [(i, c) for r in train for i, c in zip(r[4], r[5])]
        vocabularies = Vocabularies(
            users=_keys_by_index(uv, spec.num_users),
            items=_keys_by_index(iv, spec.num_items),
            cates=_keys_by_index(cv, spec.num_cates),
            item_categories=Vocabularies.catalogue(pa.array([i for i, _ in pairs], pa.string()),
                                                   pa.array([c for _, c in pairs], pa.string())),
        )
        return out, spec, vocabularies


def _keys_by_index(index_of: dict[str, int], size: int) -> Vocabulary:
    """The vocabulary of a ``raw -> index`` map whose indices start at ``FIRST_ID`` (a DIEN
    pickle's, shifted); an index no raw id holds gets a placeholder key no data spells."""
    keys = [f"\x00unused-{index}" for index in range(FIRST_ID, size)]
    for raw, index in index_of.items():
        keys[index - FIRST_ID] = raw
    return Vocabulary.from_keys(pa.array(keys, pa.string()))
