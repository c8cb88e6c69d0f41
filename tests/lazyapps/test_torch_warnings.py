"""torch's own deprecation warning about ``torch.jit.script`` is kept out of the output; nothing else is."""
from __future__ import annotations

import warnings

import pytest

from lazyapps.torch_warnings import forward_mode_ad, hide_internal_warnings

# the text torch warns with when forward-mode AD scripts its decompositions
INTERNAL = "`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`."


def test_forward_mode_ad_hides_torchs_warning_only_and_only_inside_the_block() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with forward_mode_ad():
            warnings.warn(INTERNAL, FutureWarning)
            warnings.warn("the user's own warning", UserWarning)
        warnings.warn(INTERNAL, FutureWarning)  # after the block the caller's filters hold again
    assert [(w.category, str(w.message)) for w in caught] == [(UserWarning, "the user's own warning"),
                                                               (FutureWarning, INTERNAL)]


def test_hide_internal_warnings_hides_torchs_warning_for_the_process() -> None:
    with warnings.catch_warnings(record=True) as caught:  # (restores the process's filters afterwards)
        warnings.simplefilter("always")
        hide_internal_warnings()
        warnings.warn(INTERNAL, FutureWarning)
        with pytest.warns(FutureWarning, match="another deprecation"):
            warnings.warn("another deprecation", FutureWarning)
    assert caught == []
