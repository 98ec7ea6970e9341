"""nanophi/features.py: the text features quality scoring and decontamination compare."""
import numpy as np
import pytest

from nanophi.features import HASHING, Features
from nanophi.records import DataError


def test_hashing_rows_are_unit_length_and_similar_texts_are_closer():
    f = Features(HASHING)
    x = f(["a list holds items in order", "a list holds items in order too", "click here to buy now"])
    sims = (x @ x.T).toarray()
    assert np.allclose(np.diag(sims), 1.0)
    assert sims[0, 1] > 0.5 > sims[0, 2]


def test_only_the_first_max_chars_are_featurised():
    f = Features(HASHING, max_chars=20)
    same_start = "x" * 20
    x = f([same_start + " the rest differs", same_start + " quite another tail", "y" * 20])
    assert (x[0] != x[1]).nnz == 0 and (x[0] != x[2]).nnz > 0


def test_a_model_that_does_not_load_is_named_with_the_offline_choice(tmp_path):
    with pytest.raises(DataError, match=r"features='.*empty': cannot load this sentence-transformers model .*"
                                        r"offline use features='hashing'"):
        Features(str(tmp_path / "empty"))
