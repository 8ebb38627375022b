"""The examples in the docstrings run and print what they say."""
from __future__ import annotations

import doctest

import pytest

import fastopt
import fastopt.adadelta
import fastopt.adafactor
import fastopt.adam
import fastopt.asgd
import fastopt.averaging
import fastopt.kernels
import fastopt.lamb
import fastopt.sgd
import fastopt.sparse_adam


@pytest.mark.parametrize("module", [fastopt, fastopt.kernels, fastopt.adam, fastopt.sgd,
                                    fastopt.averaging, fastopt.adadelta,
                                    fastopt.asgd, fastopt.lamb, fastopt.sparse_adam,
                                    fastopt.adafactor],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module.__name__} has no examples"
    assert result.failed == 0
