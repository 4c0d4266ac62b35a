"""The leak gallery's groups hold what their headings say (issue 20, item 10): only k_m > k_a under "residual
knowledge", only k_m < k_a under "over-forgotten", "no sample leaks" when none does, ties in neither; and plot
legends name the reference the audit compared with."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import rurk.report.plots as plots
from rurk.audit.kernel import residual_knowledge
from rurk.cli import main
from rurk.audit.gallery import gallery_groups, gallery_heads, gallery_size, write_gallery
from rurk.perturb import make_probe


def _res(k_m_last, k_a_last):
    """A stand-in AuditResult with two taus; the gallery ranks by the last one."""
    k_m, k_a = np.asarray(k_m_last), np.asarray(k_a_last)
    return SimpleNamespace(k_m=np.stack([k_a, k_m]), k_a=np.stack([k_m, k_a]), taus=[0.0, 0.1])


def test_groups_hold_only_leaks_and_only_over_forgotten_samples_never_ties():
    #             0  1  2  3  4  5  6  7
    res = _res([5, 2, 7, 3, 0, 4, 9, 1], [2, 2, 7, 6, 3, 4, 1, 0])  # scores 3, 0, 0, -3, -3, 0, 8, 1
    top, bottom = gallery_groups(res, 16)
    assert top == [6, 0, 7] and bottom == [4, 3]  # most negative first; ties at -3 broken by the ranking
    assert not {1, 2, 5} & set(top + bottom)  # ties appear nowhere
    assert gallery_groups(res, 2) == ([6, 0], [4, 3])
    heads = gallery_heads(res, 2, 2)
    assert heads[0].startswith("residual knowledge (k_m > k_a) at tau = 0.1: 2 of 3 samples")
    assert heads[1].startswith("over-forgotten (k_m < k_a): 2 of 2 samples")


def test_no_leak_is_said_so_even_when_every_sample_is_over_forgotten_or_tied():
    # fmnist5 RURK: every shown sample k_m 0 / k_a 2-56, the rest tied
    res = _res([0, 0, 0, 3], [2, 56, 9, 3])
    top, bottom = gallery_groups(res, 16)
    assert top == [] and bottom == [1, 2, 0]
    heads = gallery_heads(res, len(top), len(bottom))
    assert heads[0] == "no sample leaks: k_m <= k_a for every sample at tau = 0.1"
    assert "residual knowledge" not in heads[0]
    all_tied = _res([4, 4], [4, 4])
    assert gallery_groups(all_tied, 16) == ([], [])
    assert gallery_heads(all_tied, 0, 0)[1] == "no sample is over-forgotten: k_m >= k_a for every sample"
    # a gallery of 0 tiles per group does not claim that nothing leaks
    assert gallery_heads(_res([3, 0], [1, 0]), 0, 0)[0].startswith("residual knowledge (k_m > k_a) at tau = 0.1: 0 of 1")


class _Oracle(nn.Module):
    """Reads the label off the image (pixel y is bright): right on every perturbed copy at small tau."""

    def forward(self, x):
        return 10 * x.flatten(1)[:, :5]


class _AlwaysFour(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], 5, device=x.device) + self.w
        out[:, 4] = 1.0
        return out


def _images():
    y = torch.tensor([0, 1, 2, 3, 4, 4, 0, 1])
    x = torch.zeros(len(y), 1, 4, 4)
    x.view(len(y), -1)[torch.arange(len(y)), y] = 1.0
    return x, y


@pytest.mark.parametrize("leaking", [True, False])
def test_real_audit_gallery_titles_and_tiles(tmp_path, leaking):
    x, y = _images()
    m, a = (_Oracle(), _AlwaysFour()) if leaking else (_AlwaysFour(), _Oracle())
    res = residual_knowledge(m, a, x, y, taus=[0, 0.05], draws=4, bootstrap=0, seed=0)
    g = write_gallery(res, make_probe("gaussian"), x, y, m, tmp_path / "g.png", a, k=16, cols=8, num_classes=5)
    differ = [i for i in range(len(y)) if int(y[i]) != 4]  # label 4: both models right, a tie
    if leaking:
        assert sorted(g.top) == differ and g.bottom == []
        assert g.heads[0].startswith("residual knowledge (k_m > k_a)") and g.heads[1].startswith("no sample is over")
    else:
        assert g.top == [] and sorted(g.bottom) == differ
        assert g.heads[0].startswith("no sample leaks") and g.heads[1].startswith("over-forgotten (k_m < k_a)")
    assert g.cols == len(differ)  # as wide as the larger group, also when the first group is empty
    assert g.size == gallery_size(len(g.top), len(g.bottom), g.cols)[1] == (len(differ) * 200, 50 + 2 * 25 + 150)


def test_plot_legend_names_the_reference():
    curve = {"taus": [0, 0.1], "r_paper": [1.0, 1.2], "r_pooled": [1.0, 1.1]}
    default = plots.residual_figure({"m": curve})
    assert "Re-train (r = 1)" in [t.get_text() for t in default.axes[1].get_legend().get_texts()]
    mine = plots.residual_figure({"m": curve}, reference="my_reference")
    texts = [t.get_text() for t in mine.axes[1].get_legend().get_texts()]
    assert "my_reference (r = 1)" in texts and not any("Re-train" in t for t in texts)


def test_audit_arch_legend_names_the_users_reference(tmp_path, monkeypatch):
    import user_nets

    figures = []
    real = plots.residual_figure
    monkeypatch.setattr(plots, "residual_figure", lambda *a, **k: figures.append(real(*a, **k)) or figures[-1])
    for name, seed in (("unlearned", 0), ("my_ref", 1)):
        torch.manual_seed(seed)
        save_file(user_nets.make_net().state_dict(), str(tmp_path / f"{name}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "forget.npz", x=rng.random((6, 1, 8, 8), dtype=np.float32), y=rng.integers(0, 5, 6))
    assert main(["audit", "--arch", "user_nets:make_net", "--unlearned", str(tmp_path / "unlearned.safetensors"),
                 "--reference", str(tmp_path / "my_ref.safetensors"), "--forget", str(tmp_path / "forget.npz"),
                 "--out", str(tmp_path / "out"), "--draws", "2", "--taus", "0,0.1", "--bootstrap", "0", "--quiet",
                 "--device", "cpu"]) == 0
    (fig,) = figures
    texts = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "my_ref (r = 1)" in texts and not any("Re-train" in t for t in texts)
