"""The pipeline report: every section present, figures embedded, prompts and responses escaped, nothing
fetched from anywhere (the browser test in test_report_browser.py opens it for real)."""

from __future__ import annotations

import re

from reportdata import HOSTILE, finished_pipeline

from tuneloop.report.html import CSP, write_pipeline_report

SECTIONS = ("summary", "stages", "curves", "reward-model", "agreement", "policies", "frontier", "samples", "next")


def test_report_has_every_section_and_only_embedded_images(tmp_path):
    records = finished_pipeline(tmp_path)
    html = write_pipeline_report(tmp_path / "report.html", records, "demo").read_text()
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in html, anchor
    sources = re.findall(r'src="([^"]*)"', html)
    # curves of sft, reward, dpo and the RL stage; calibration; the frontier
    assert len(sources) >= 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)
    assert f'content="{CSP}"' in html
    assert HOSTILE not in html and "&lt;script&gt;" in html
    for text in ("64.0%", "74.0%", "61.2s", "dpo over sft", "tuneloop label serve --db", "Over-optimisation fits",
                 "d(α − β log d)", "best-of-n from sft"):
        assert text in html, text
    assert not list(tmp_path.glob(".curves-*.png"))  # temporary figures are removed


def test_report_of_a_pipeline_without_eval_or_reward(tmp_path):
    records = finished_pipeline(tmp_path)
    partial = {k: records[k] for k in ("sft",)}
    html = write_pipeline_report(tmp_path / "r.html", partial, "sft only").read_text()
    assert '<section id="curves">' in html and '<section id="policies">' not in html


def test_a_fitted_peak_far_beyond_the_measured_kl_is_not_printed_as_a_number():
    """A nearly straight RL fit (α 0.19, β 0.002) puts its peak at e^(α/β − 1) ≈ 1e41: the report says it lies
    beyond the data (more than twice the largest measured d) instead of printing that number."""
    import math

    from tuneloop.report.html import _peak

    assert _peak(math.exp(0.19 / 0.002 - 1), reach=1.2) == "beyond the data (&gt; 2.40)"
    assert _peak(0.80, reach=0.80) == "0.80" and _peak(2.39, reach=1.2) == "2.39"
    assert _peak(None, reach=1.2) == "—"


def test_only_the_reference_policys_best_of_n_goes_on_the_kl_to_reference_axis():
    """Best-of-n from a tuned policy has KL log n − (n − 1)/n to that policy, not to the reference: the frontier
    and the fits table leave it off (the eval output keeps it); the reference's own curve stays."""
    from tuneloop.report.figures import reference_best_of_n

    curve = {"proxy": "reward_model", "gold": "gold:vader", "points": []}
    policies = {"sft": {"model": "runs/sft/model", "metrics": {"kl/k3_sequence": {"mean": 0.0}}},
                "ppo": {"model": "runs/ppo/model", "metrics": {"kl/k3_sequence": {"mean": 3.3}}},
                "copy": {"model": "elsewhere/sft", "metrics": {"kl/k3_sequence": {"mean": 0.0}}}}
    result = {"reference": "runs/sft/model", "policies": policies,
              "best_of_n": {"sft": curve, "ppo": curve, "copy": curve}}
    assert list(reference_best_of_n(result)) == ["sft", "copy"]
