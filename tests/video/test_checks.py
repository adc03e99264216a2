"""positive_int: integers >= 1 pass (as int), anything else is refused with the argument's name."""

import numpy as np
import pytest

from video.checks import positive_int


def test_integers_pass_as_int():
    assert positive_int(3, "n") == 3
    value = positive_int(np.int64(7), "n")
    assert value == 7 and type(value) is int


@pytest.mark.parametrize("value, error, message", [
    (0, ValueError, "num_frames must be an int >= 1, got 0"),
    (-2, ValueError, "num_frames must be an int >= 1, got -2"),
    (True, TypeError, "num_frames must be an int >= 1, got True"),
    (2.0, TypeError, r"num_frames must be an int >= 1, got 2.0 \(float\)"),
    ("3", TypeError, r"num_frames must be an int >= 1, got '3' \(str\)"),
])
def test_the_rest_is_refused_by_name(value, error, message):
    with pytest.raises(error, match=message):
        positive_int(value, "num_frames")
