"""
map(..., progress=True): tqdm's bar (tqdm.auto) where tqdm is installed, reaching its total and
closed at the end, on an error and on a cancel; srpy's own line where tqdm cannot be imported.
"""

import sys
import time

import pytest

tqdm_module = pytest.importorskip("tqdm")

import srpy  # noqa: E402

pytestmark = pytest.mark.timeout(90)


def square(x):
    return x * x


def fail_at(x, bad):
    import time
    if x == bad:
        raise ValueError("item %d fails" % x)
    time.sleep(0.02)  # the rest takes seconds: the map is given up long before its end
    return x


def wait_for_flag(x, path):
    import os
    import time
    deadline = time.monotonic() + 60
    while x >= 2 and not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError("the flag never came")
        time.sleep(0.02)
    return x


@pytest.fixture(scope="module")
def box(pair):
    with srpy.EngBox(pair) as engines:
        yield engines


def open_bars():
    """The tqdm bars not closed yet (tqdm keeps every live bar in a class-level set)."""
    return list(tqdm_module.tqdm._instances)


def test_map_progress_is_a_tqdm_bar_that_reaches_its_total_and_closes(box, capsys):
    assert list(box.map(square, range(300), progress=True)) == [x * x for x in range(300)]
    err = capsys.readouterr().err
    assert "srpy map: 100%" in err and "300/300" in err and "item/s" in err, err
    assert err.endswith("\n"), "a closed bar ends its line: %r" % err[-80:]
    assert not open_bars()


def test_the_bar_advances_as_results_arrive(box, tmp_path, capsys):
    flag = str(tmp_path / "flag")
    results = box.map(wait_for_flag, range(4), [flag] * 4, chunksize=1, progress=True)
    try:
        deadline = time.monotonic() + 60
        while not any(bar.n == 2 for bar in open_bars()):  # items 0 and 1 are in; 2 and 3 wait for the flag
            assert time.monotonic() < deadline, "the bar never counted the first two results"
            time.sleep(0.02)
        assert [bar.total for bar in open_bars()] == [4]
    finally:
        open(flag, "w").close()
    assert list(results) == [0, 1, 2, 3]
    assert not open_bars()
    assert "4/4" in capsys.readouterr().err


def test_a_failed_or_cancelled_map_closes_its_bar_where_it_got(box, capsys):
    with pytest.raises(ValueError):
        list(box.map(fail_at, range(200), [5] * 200, chunksize=10, progress=True))
    assert not open_bars()
    err = capsys.readouterr().err
    assert "200/200" not in err and "srpy map" in err, err
    results = box.map(fail_at, range(200), [-1] * 200, chunksize=10, progress=True)  # some 2 s of work
    assert next(results) == 0
    results.close()  # given up after its first chunk
    assert not open_bars()
    assert "200/200" not in capsys.readouterr().err


def test_without_tqdm_the_map_draws_srpys_own_line(box, capsys, monkeypatch):
    for name in [name for name in sys.modules if name == "tqdm" or name.startswith("tqdm.")]:
        monkeypatch.setitem(sys.modules, name, None)  # "import tqdm.auto" fails, as where it is not installed
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(ImportError):
        import tqdm.auto  # noqa: F401
    assert list(box.map(square, range(300), progress=True)) == [x * x for x in range(300)]
    err = capsys.readouterr().err
    assert "srpy map [" in err and "300/300" in err and "100%" in err and "ETA" in err, err
    assert "item/s" not in err


def test_progress_is_off_by_default(box, capsys):
    assert sum(box.map(square, range(50))) == sum(x * x for x in range(50))
    assert capsys.readouterr().err == ""
