"""bench/ioi_offsets.py: how much of each number's offset from the reference more train prompts remove."""

from __future__ import annotations

import json

import pytest

@pytest.fixture(scope="module")
def bench(bench_script):
    return bench_script("ioi_offsets")


def test_expected_ratio_of_a_power_law_bias(bench):
    assert bench.expected_ratio(24000, 24000, 384000, 0.5) == pytest.approx(1.0)
    assert bench.expected_ratio(24000, 96000, 384000, 0.5) == pytest.approx((0.5 - 0.25) / (1 - 0.25))
    assert bench.expected_ratio(24000, 384000, 384000, 0.25) == pytest.approx(0.0)


def test_offsets_are_followed_over_the_settings_and_averaged_over_seeds(bench, tmp_path, capsys):
    """Known answer: one number 0.04 off at the small setting (two seeds, +0.03 and +0.05), 0.01 off at the
    larger; one never off (not followed): the ratio is 0.25."""
    def record(setting, values, ref=None):
        runs = {setting: {"headline": values}}
        if ref is not None:
            runs["400x10"] = {"headline": ref}
        path = tmp_path / f"{setting}-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps({"reference": "400x10", "runs": runs}))
        return str(path)

    ref = {"a": 0.50, "b": 0.20}
    ref_path = record("100x10", {"a": 0.53, "b": 0.20}, ref)
    small2 = record("100x10", {"a": 0.55, "b": 0.21})
    big = record("200x10", {"a": 0.51, "b": 0.20})
    out = tmp_path / "out.json"
    assert bench.main(["--reference", ref_path, "--at", "100x10", ref_path, small2, "--at", "200x10", big,
                       "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["n_followed"] == 1
    first, second = got["settings"]
    assert first["offsets"] == {"a": pytest.approx(0.04)} and first["ratio"] == pytest.approx(1.0)
    assert second["ratio"] == pytest.approx(0.25)
    assert "1 numbers of summary.md" in capsys.readouterr().out


def test_a_record_without_the_setting_is_refused_by_name(bench, tmp_path, capsys):
    rec = tmp_path / "r.json"
    rec.write_text(json.dumps({"reference": "400x10", "runs": {"400x10": {"headline": {"a": 0.5}}}}))
    with pytest.raises(SystemExit):
        bench.main(["--reference", str(rec), "--at", "100x10", str(rec)])
    assert f"{rec} has no 100x10 run (it has 400x10)" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit):
        bench.main(["--reference", str(bad), "--at", "100x10", str(rec)])
    assert f"{bad}: cannot read it as a bench/ioi_settings.py record" in capsys.readouterr().err
