"""Serve an export directory with the ids a server's logs spell.

``cli export`` writes the model (``model.pt2`` and/or ``model.onnx``), the training
vocabularies (``vocab/``) and ``serving.json``. :class:`ServingBundle` loads them and scores
request rows with raw ids (ints or strings, as the training data spelled them)::

    from ifusion_plugin.serving_bundle import ServingBundle

    bundle = ServingBundle.load("export/twin")
    probs = bundle.predict([
        {"user_id": "u17", "item_id": "i3", "item_history": ["i9", "i4", "i1"]},
        {"user_id": "u17", "item_id": "i8", "item_history": ["i9", "i4", "i1"]},
    ])                                   # numpy float32 array, one probability per row
    # The request form: one user, many candidates, the user's side computed once.
    probs = bundle.score({"user_id": "u17", "item_history": ["i9", "i4", "i1"]}, candidates=["i3", "i8", "i5"])

A row has the sample table's columns without ``label`` (see
:mod:`ifusion_plugin.data.requests`: categories may be left out where the vocabularies know each
item's; timestamps, behaviour types and context columns where the model was trained with them).
Unseen ids are out-of-vocabulary, as in training.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .batch import FeatureSpec
from .data.requests import RequestFeatures, Rows, encode_candidates, encode_requests
from .data.vocabulary import Vocabularies
from .serving import input_names, load_onnx, load_program, request_input_names

__all__ = ["ServingBundle"]

MANIFEST = "serving.json"


class ServingBundle:
    """A model over id tensors plus the vocabularies and history options that make its inputs.

    Args:
        model: ``(ids...) -> probabilities`` in :func:`~ifusion_plugin.serving.input_names` order
            (a loaded program, an ONNX runner, or an eager
            :class:`~ifusion_plugin.serving.ServingModel`).
        spec: the model's feature spec.
        vocabularies: the training vocabularies.
        features: how training turned a history into inputs.
    """

    def __init__(self, model: Callable[..., Tensor], spec: FeatureSpec, vocabularies: Vocabularies, features: RequestFeatures,
                 request_model: Optional[Callable[..., Tensor]] = None) -> None:
        self.model = model
        self.spec = spec
        self.vocabularies = vocabularies
        self.features = features
        self.request_model = request_model

    @classmethod
    def load(cls, directory: str, program: Literal["pt2", "onnx"] = "pt2") -> "ServingBundle":
        """Load an export directory.

        Args:
            directory: what ``cli export --out_dir`` wrote.
            program: which model file to run: ``"pt2"`` (torch.export) or ``"onnx"`` (onnxruntime).

        Raises:
            FileNotFoundError: no ``serving.json`` or no file of ``program`` in ``directory``.
            ValueError: the export carries no vocabularies (exported without the run's config).
        """
        manifest_path = os.path.join(directory, MANIFEST)
        if not os.path.isfile(manifest_path):
            raise FileNotFoundError(f"{directory}: no {MANIFEST} (not a passing `cli export` output)")
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        files = manifest.get("files", {})
        if program not in files:
            raise FileNotFoundError(f"{directory}: no {program} model (exported: {sorted(files)}); choose one of them")
        if not manifest.get("vocabularies"):
            raise ValueError(f"{manifest_path}: the export has no vocabularies; export again with --config <the fit's "
                             "config> (or from a run directory holding config.yaml)")
        def load(name: str) -> Callable[..., Tensor]:
            path = os.path.join(directory, name)
            return load_program(path) if program == "pt2" else load_onnx(path)

        model = load(files[program])
        request_name = manifest.get("request_files", {}).get(program)
        spec_values = dict(manifest["feature_spec"])
        spec_values["context_cardinalities"] = tuple(spec_values.get("context_cardinalities", ()))
        return cls(
            model,
            FeatureSpec(**spec_values),
            Vocabularies.load(os.path.join(directory, manifest["vocabularies"])),
            RequestFeatures.from_dict(manifest["features"]),
            request_model=load(request_name) if request_name else None,
        )

    def inputs(self, rows: Rows) -> tuple[Tensor, ...]:
        """The model inputs of ``rows`` (``R`` requests), in input order: long tensors ``(R,)``,
        ``(R, L)``, ``(R, K, N)``, and ``(R, C)`` context / ``(R, K, N)`` behaviour types where
        the model takes them."""
        columns = encode_requests(rows, self.vocabularies, self.features, num_behaviors=self.spec.num_behaviors)
        return tuple(torch.from_numpy(np.ascontiguousarray(columns[name])) for name in input_names(self.spec))

    def predict(self, rows: Rows, batch_size: Optional[int] = None) -> np.ndarray:
        """Click probabilities of ``rows``: float32 array ``(R,)``.

        Args:
            rows: an Arrow table, a list of row dicts or a pandas DataFrame (see the module doc).
            batch_size: score at most this many rows per model call (default: all at once).
        """
        inputs = self.inputs(rows)
        total = inputs[0].shape[0]
        step = total if batch_size is None else max(1, int(batch_size))
        with torch.no_grad():
            parts = [self.model(*(t[start:start + step] for t in inputs)) for start in range(0, total, step)]
        return torch.cat(parts).float().numpy() if parts else np.zeros(0, np.float32)

    def score(self, user: Mapping[str, Any], candidates: Sequence[Any], categories: Optional[Sequence[Any]] = None) -> np.ndarray:
        """Click probabilities of one user against C candidates: float32 array ``(C,)``.

        The user's side is encoded once and, with the request program of the export, scored
        once (:class:`~ifusion_plugin.serving.RequestServingModel`); without one the row program
        scores the user repeated for every candidate. Either equals :meth:`predict` on the rows
        ``{**user, "item_id": candidate}``.

        Args:
            user: one request row without ``item_id`` / ``cate_id`` (``user_id``, ``item_history``
                and the other history and context columns the model was trained with).
            candidates: raw item ids.
            categories: their raw categories (default: from the item catalogue of the vocabularies).
        """
        if not len(candidates):
            return np.zeros(0, np.float32)
        first = {**user, "item_id": candidates[0]}
        row = dict(zip(input_names(self.spec), self.inputs([first])))
        items, cates = encode_candidates(candidates, self.vocabularies, categories)
        row["target_item"], row["target_cate"] = torch.from_numpy(items), torch.from_numpy(cates)
        with torch.no_grad():
            if self.request_model is not None:
                probs = self.request_model(*(row[name] for name in request_input_names(self.spec)))
            else:
                count = len(items)
                probs = self.model(*(row[name] if name in ("target_item", "target_cate") else row[name].expand(count, *row[name].shape[1:])
                                     for name in input_names(self.spec)))
        return probs.float().numpy()
