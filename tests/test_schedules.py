"""Ratio and interval schedules against DESIGN §4."""

import pytest

from intstream.teach.schedules import (
    interval_at,
    is_selection_step,
    parse_interval,
    ratio_at,
    ratio_max,
    select_count,
    selection_steps,
)

T = 5000


def test_step_ratio_paper_values():
    expected = [0.2 + 0.08 * i for i in range(10)]
    for i, r in enumerate(expected):
        for t in (500 * i, 500 * i + 1, 500 * i + 499):
            assert ratio_at("step", t, T) == pytest.approx(r)
    assert ratio_at("step", 499, T) == pytest.approx(0.20)
    assert ratio_at("step", 500, T) == pytest.approx(0.28)
    assert ratio_at("step", 4999, T) == pytest.approx(0.92)
    assert ratio_at("step", T, T) == pytest.approx(1.0)
    # T not divisible by 10: ⌊t / (T/10)⌋ exactly (T/10 = 100.3).
    assert ratio_at("step", 100, 1003) == pytest.approx(0.2)
    assert ratio_at("step", 101, 1003) == pytest.approx(0.28)


def test_other_ratios():
    assert ratio_at("constant", 1234, T) == 0.2
    assert ratio_at("linear", 0, T) == pytest.approx(0.2)
    assert ratio_at("linear", 2500, T) == pytest.approx(0.6)
    assert ratio_at("cosine", 0, T) == pytest.approx(0.2)
    assert ratio_at("cosine", 2500, T) == pytest.approx(0.6)
    assert ratio_at("cosine", T, T) == pytest.approx(1.0)
    assert ratio_at("cosine", 1000, T) < ratio_at("linear", 1000, T)  # slow start
    assert ratio_at("linear", 1000, T, r0=0.5) == pytest.approx(0.6)
    for bad in ("steps", ""):
        with pytest.raises(ValueError, match="ratio schedule"):
            ratio_at(bad, 0, T)
    with pytest.raises(ValueError):
        ratio_at("step", -1, T)


def test_decay_ratio_is_a_full_batch_warm_start():
    assert ratio_at("decay:0.1", 0, T) == 1.0
    assert ratio_at("decay:0.1", 250, T) == pytest.approx(0.6)
    assert ratio_at("decay:0.1", 500, T) == pytest.approx(0.2)
    assert ratio_at("decay:0.1", T - 1, T, r0=0.3) == pytest.approx(0.3)
    assert ratio_at("decay:1", T // 2, T) == pytest.approx(0.6)
    # The memory plan sizes for the largest selection: the first step's here, the last one's otherwise.
    assert ratio_max("decay:0.05", T, 0.2) == 1.0
    assert ratio_max("step", T, 0.2) == pytest.approx(0.92)
    assert ratio_max("constant", T, 0.2) == 0.2
    for bad in ("decay:0", "decay:1.5", "decay:", "decay:x", "decay:nan"):
        with pytest.raises(ValueError, match="decay:F"):
            ratio_at(bad, 0, T)


def test_select_count():
    assert select_count(0.28, 5000) == 1400
    assert select_count(0.36, 5000) == 1800  # 0.36 * 5000 = 1799.9999999999998 in floats
    assert select_count(0.2, 7) == 1
    assert select_count(0.0001, 7) == 1
    assert select_count(1.0, 7) == 7


def test_incremental_selection_count_is_1422():
    steps = selection_steps("incremental", T)
    assert len(steps) == 1422
    assert steps[:1250] == list(range(1250))
    assert steps[1250:1253] == [1250, 1260, 1270]
    assert steps == sorted(set(steps)) and steps[-1] < T
    # Each phase starts with a selection.
    for start in (1250, 2000, 2750, 3500, 4250):
        assert start in steps
    assert steps[-2:] == [4900, 4950]
    # The per-step predicate agrees with the list.
    s = set(steps)
    assert [t for t in range(T) if is_selection_step("incremental", t, T)] == steps
    assert len(s) == 1250 + 75 + 38 + 25 + 19 + 15


def test_incremental_intervals():
    expected = {0: 1, 1249: 1, 1250: 10, 1999: 10, 2000: 20, 2749: 20, 2750: 30, 3499: 30, 3500: 40, 4249: 40, 4250: 50, 4999: 50}
    for t, iv in expected.items():
        assert interval_at("incremental", t, T) == iv, t


def test_dense_and_fixed():
    assert selection_steps("dense", 10) == list(range(10))
    assert interval_at("dense", 7, 10) == 1
    assert selection_steps("fixed:25", 100) == [0, 25, 50, 75]
    assert interval_at("fixed:25", 99, 100) == 25
    assert selection_steps(parse_interval("fixed:1"), 3) == [0, 1, 2]
    # Tiny runs stay well defined.
    assert selection_steps("incremental", 1) == [0]
    assert selection_steps("incremental", 3)[0] == 0


def test_parse_interval():
    assert str(parse_interval("dense")) == "dense"
    assert str(parse_interval(" Incremental ")) == "incremental"
    p = parse_interval("fixed:25")
    assert (p.kind, p.every, str(p)) == ("fixed", 25, "fixed:25")
    for junk in ("fixed:", "fixed:0", "fixed:-3", "fixed:2.5", "fixed:x", "sparse", "", "10"):
        with pytest.raises(ValueError, match="interval schedule"):
            parse_interval(junk)
    with pytest.raises(ValueError):
        parse_interval(10)
