"""Tests of the name -> builder registry and of how the distribution registries use it."""

from __future__ import annotations

import pytest
import torch

from varjepa.distributions import (
    LIKELIHOODS,
    POSTERIORS,
    PRIORS,
    DiagGaussian,
    LowRankGaussian,
    Mixture,
)
from varjepa.registry import ConfigError, Registry, spec_name
from varjepa.schedules import SCHEDULES

EXPECTED_NAMES = {
    "posterior": (
        POSTERIORS,
        "model.posterior",
        ["anchored_mixture", "diag_gaussian", "dirac", "flow", "lowrank_gaussian", "mixture"],
    ),
    "prior": (PRIORS, "model.prior", ["learned_diagonal", "mixture_of_gaussians", "standard_normal"]),
    "likelihood": (LIKELIHOODS, "model.likelihood", ["gaussian", "gaussian_learned", "laplace"]),
    "schedule": (SCHEDULES, "schedule", ["constant", "cosine", "cyclical", "linear", "linear_warmup"]),
}


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("which", sorted(EXPECTED_NAMES))
def test_registered_names(which):
    registry, option, names = EXPECTED_NAMES[which]
    assert registry.names() == names
    assert registry.option == option
    for name in names:
        assert name in registry
    assert "nope" not in registry


@pytest.mark.parametrize("which", sorted(EXPECTED_NAMES))
def test_unknown_name_lists_registered_names(which):
    registry, option, names = EXPECTED_NAMES[which]
    with pytest.raises(ConfigError) as info:
        registry.build("no_such_thing", dim=4)
    msg = str(info.value)
    assert msg.startswith(f"{option}:")
    assert "'no_such_thing'" in msg
    for name in names:
        assert name in msg


def test_unknown_name_in_mapping_and_option_override():
    with pytest.raises(ConfigError) as info:
        POSTERIORS.build({"name": "gaussian_diag"}, option="model.target_posterior", dim=4)
    msg = str(info.value)
    assert msg.startswith("model.target_posterior:")
    assert "model.posterior:" not in msg
    assert "diag_gaussian" in msg and "lowrank_gaussian" in msg


def test_build_from_name_mapping_and_class_path_agree():
    by_name = POSTERIORS.build("diag_gaussian", dim=3)
    by_map = POSTERIORS.build({"name": "diag_gaussian", "init_std": 0.5, "min_std": 0.01}, dim=3)
    by_path = POSTERIORS.build(
        {"class_path": "varjepa.distributions.DiagGaussian", "init_args": {"init_std": 0.5, "min_std": 0.01}},
        dim=3,
    )
    for fam in (by_name, by_map, by_path):
        assert type(fam) is DiagGaussian
        assert fam.dim == 3
    assert by_name.min_std == pytest.approx(1e-3)
    assert by_map.min_std == by_path.min_std == pytest.approx(0.01)
    # the options really reached the constructor: a zero head gives init_std
    zeros = torch.zeros(2, 6)
    torch.testing.assert_close(by_name(zeros).base_dist.scale, torch.ones(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(by_map(zeros).base_dist.scale, torch.full((2, 3), 0.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(by_path(zeros).base_dist.scale, torch.full((2, 3), 0.5), atol=1e-5, rtol=0)


def test_class_path_without_init_args_and_with_null_init_args():
    a = POSTERIORS.build({"class_path": "varjepa.distributions.Mixture"}, dim=2)
    b = POSTERIORS.build({"class_path": "varjepa.distributions.Mixture", "init_args": None}, dim=2)
    assert type(a) is type(b) is Mixture
    assert a.components == b.components == 4


def test_mapping_options_reach_builder():
    fam = POSTERIORS.build({"name": "lowrank_gaussian", "rank": 3, "factor_scale": 0.5}, dim=5)
    assert isinstance(fam, LowRankGaussian)
    assert (fam.rank, fam.factor_scale, fam.num_params) == (3, 0.5, 5 * 5)


def test_built_object_returned_unchanged():
    fam = DiagGaussian(dim=2)
    assert POSTERIORS.build(fam, dim=2) is fam


def test_bad_option_is_config_error():
    with pytest.raises(ConfigError) as info:
        POSTERIORS.build({"name": "diag_gaussian", "bogus": 1}, dim=4)
    msg = str(info.value)
    assert msg.startswith("model.posterior:")
    assert "bogus" in msg
    # **kwargs forwarding families also turn unknown options into ConfigError
    with pytest.raises(ConfigError, match="bogus"):
        POSTERIORS.build({"name": "lowrank_gaussian", "rank": 1, "bogus": 1}, dim=4)
    with pytest.raises(ConfigError, match="bogus"):
        PRIORS.build({"name": "standard_normal", "bogus": 2}, dim=4)


@pytest.mark.parametrize("rank", [0, 4, 5])
def test_lowrank_rank_out_of_range(rank):
    with pytest.raises(ConfigError, match="rank"):
        POSTERIORS.build({"name": "lowrank_gaussian", "rank": rank}, dim=4)
    # rank = dim - 1 is allowed
    assert POSTERIORS.build({"name": "lowrank_gaussian", "rank": 3}, dim=4).rank == 3


@pytest.mark.parametrize("components", [0, -1])
def test_mixture_components_below_one(components):
    with pytest.raises(ConfigError, match="components"):
        POSTERIORS.build({"name": "mixture", "components": components}, dim=4)
    with pytest.raises(ConfigError, match="components"):
        PRIORS.build({"name": "mixture_of_gaussians", "components": components}, dim=4)


def test_flow_bad_options():
    with pytest.raises(ConfigError, match="transform") as info:
        POSTERIORS.build({"name": "flow", "transform": "planar"}, dim=4)
    assert "affine_autoregressive" in str(info.value)
    with pytest.raises(ConfigError, match="depth"):
        POSTERIORS.build({"name": "flow", "depth": 0}, dim=4)
    with pytest.raises(ConfigError, match="dim"):
        POSTERIORS.build({"name": "flow", "transform": "affine_autoregressive"}, dim=1)


@pytest.mark.parametrize(
    "opts",
    [
        {"min_std": 0.0},
        {"min_std": 1.0, "init_std": 1.0},
        {"init_std": 30.0},
        {"init_std": 2.0, "max_std": 1.5},
    ],
)
def test_std_bounds_must_be_ordered(opts):
    with pytest.raises(ConfigError, match="min_std < init_std < max_std"):
        POSTERIORS.build({"name": "diag_gaussian", **opts}, dim=4)


def test_dim_must_be_positive():
    with pytest.raises(ConfigError, match="dim"):
        POSTERIORS.build("diag_gaussian", dim=0)
    with pytest.raises(ConfigError, match="dim"):
        PRIORS.build("standard_normal", dim=0)


def test_injected_option_clash():
    with pytest.raises(ConfigError) as info:
        POSTERIORS.build({"name": "diag_gaussian", "dim": 3}, dim=4)
    msg = str(info.value)
    assert msg.startswith("model.posterior:") and "'dim'" in msg
    with pytest.raises(ConfigError, match="'dim'"):
        POSTERIORS.build({"class_path": "varjepa.distributions.DiagGaussian", "init_args": {"dim": 3}}, dim=4)


def test_mapping_without_name_or_class_path():
    with pytest.raises(ConfigError) as info:
        POSTERIORS.build({"rank": 2}, dim=4)
    msg = str(info.value)
    assert msg.startswith("model.posterior:") and "'name'" in msg and "lowrank_gaussian" in msg


def test_class_path_errors():
    with pytest.raises(ConfigError) as info:
        POSTERIORS.build({"class_path": "varjepa.distributions.NoSuchFamily"}, dim=4)
    assert str(info.value).startswith("model.posterior:") and "NoSuchFamily" in str(info.value)
    with pytest.raises(ConfigError, match="cannot import"):
        POSTERIORS.build({"class_path": "no_such_module_xyz.Thing"}, dim=4)
    with pytest.raises(ConfigError, match="init_args"):
        POSTERIORS.build({"class_path": "varjepa.distributions.DiagGaussian", "rank": 2}, dim=4)


def test_fresh_registry_register_get_and_duplicates():
    reg: Registry[object] = Registry("widget", "model.widget")

    @reg.register("b")
    def make_b(size: int = 1):
        return ("b", size)

    @reg.register("a")
    class A:
        def __init__(self, size: int):
            self.size = size

    assert reg.names() == ["a", "b"]
    assert reg.get("b") is make_b
    assert make_b.registry_name == "b" and A.registry_name == "a"
    assert reg.build({"name": "b", "size": 3}) == ("b", 3)
    assert reg.build("a", size=7).size == 7
    with pytest.raises(ValueError, match="twice"):
        reg.register("a")(lambda: None)
    with pytest.raises(ConfigError, match=r"^model\.widget: unknown widget 'c'\. Registered: a, b"):
        reg.get("c")
    # a missing required argument is a ConfigError too
    with pytest.raises(ConfigError, match="model.widget"):
        reg.build("a")


def test_spec_name():
    assert spec_name("diag_gaussian") == "diag_gaussian"
    assert spec_name({"name": "lowrank_gaussian", "rank": 2}) == "lowrank_gaussian"
    assert spec_name({"class_path": "varjepa.distributions.DiagGaussian"}) == "DiagGaussian"
    assert spec_name(DiagGaussian(dim=2)) == "diag_gaussian"
    assert spec_name(object()) == "object"
