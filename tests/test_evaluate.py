from __future__ import annotations

from pathlib import Path

import torch

from gendr_core.evaluate import degraded_pairs, evaluate, format_table
from gendr_core.models import OneStepRestorer

FIXTURES = Path(__file__).resolve().parent / "fixtures"


class Bicubic(OneStepRestorer):
    """Returns its input: its scores must equal the bicubic row exactly."""

    kind = "identity"

    def predict(self, x, cond):
        return x

    def estimate_bytes(self, h, w, batch=1):
        return h * w


def test_identity_model_scores_equal_bicubic_and_protocol_is_deterministic():
    from gendr_core.config import tiny_gendr_pix_config

    model = Bicubic(tiny_gendr_pix_config()).eval()
    rows = evaluate(model, [FIXTURES], scale=4, guidances=(1.0, 1.8), with_niqe=False)
    by = {(r.dataset, r.method, r.guidance): r for r in rows}
    bic, ident = by[("all", "bicubic", None)], by[("all", "gendr-pix", 1.8)]
    assert bic.images == 4 and abs(bic.psnr_y - ident.psnr_y) < 1e-4 and abs(bic.ssim_y - ident.ssim_y) < 1e-5
    assert 15 < bic.psnr_y < 40
    a = [lr for _, _, lr in degraded_pairs(FIXTURES, 4)]
    b = [lr for _, _, lr in degraded_pairs(FIXTURES, 4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert [tuple(x.shape[-2:]) for x in a] == [(16, 20), (48, 48), (16, 16), (24, 24)]  # HR / 4, sorted by name
    assert "| all | bicubic |" in format_table(rows)


def test_ensemble_rows_are_labelled_and_exact_for_an_equivariant_model():
    from gendr_core.config import tiny_gendr_pix_config

    model = Bicubic(tiny_gendr_pix_config()).eval()
    rows = evaluate(model, [FIXTURES], scale=4, guidances=(1.0,), with_niqe=False, ensemble=8)
    by = {(r.dataset, r.method): r for r in rows}
    bic, ens = by[("all", "bicubic")], by[("all", "gendr-pix")]
    assert (bic.ensemble, ens.ensemble) == (1, 8)
    assert abs(bic.psnr_y - ens.psnr_y) < 1e-4  # flips of an identity model change nothing
    assert "| all | gendr-pix (x8 ens.) | 1 |" in format_table(rows)
