"""Shared fixtures. Threads are set deliberately (2 cores: oversubscription costs 10x)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(int(os.environ.get("SAEBENCH_TEST_THREADS", "2")))

#: The slow tier: tests that take more than a few seconds on 2 cores (whole subprocess runs, real
#: servers, reference implementations, training). ``pytest -m "not slow"`` is the fast tier (under
#: 3 minutes on 2 cores: every module's known-answer tests at small sizes); CI runs both. Declared
#: here, in one place, so the tier is read at a glance; tests/test_tiers.py checks every name exists.
SLOW_MODULES = {
    "test_crosscheck.py",  # SAEBench's and SAELens's own code on the embedded model
    "test_crosscheck_meta_mdl.py",  # SAEBench's meta_structure and mdl code (imports sae_lens, trains)
    "test_ray.py",  # a local Ray cluster, a killed worker
    "test_interrupts.py",  # Ctrl-C at each stage of real CLI runs
    "test_autointerp_planted.py",  # in-process scorer on planted latents
}
SLOW_TESTS = {
    "test_ablation.py::test_zero_decoder_latent_has_no_effect_and_batching_is_exact",
    "test_unlearning.py::test_clamp_edit_and_selection_equal_saebench_code",
    "test_unlearning.py::test_planted_forget_latent_raises_forget_loss_and_leaves_retain_exactly",
    "test_unlearning.py::test_silent_sae_has_no_setting_and_changes_nothing",
    "test_unlearning.py::test_zero_decoder_row_touches_documents_but_changes_no_loss",
    "test_unlearning.py::test_planted_result_pairs_documents_with_the_silent_one",
    "test_unlearning.py::test_export_skips_it_as_not_saebench_unlearning_score",
    "test_absorption.py::test_matches_saebench_absorption_code",
    "test_absorption.py::test_second_sae_costs_no_model_pass",
    "test_autointerp.py::test_evaluate_end_to_end_and_rerun_costs_nothing",
    "test_autointerp.py::test_hosted_explainer_with_the_embedded_scorer",
    "test_autointerp.py::test_offline_default_scores_end_to_end_and_a_rerun_computes_nothing",
    "test_autointerp.py::test_real_server_reply_is_cached_and_a_rerun_sends_nothing",
    "test_autointerp_logprob.py::test_endpoint_judge_round_trip_equals_the_in_process_judge",
    "test_autointerp_logprob.py::test_free_text_scoring_asks_the_scorer_endpoint_and_explaining_the_explainer",
    "test_autointerp_logprob.py::test_shared_prefix_and_branch_rows_equal_plain_forwards",
    "test_cli.py::test_leaderboard_command",
    "test_cli.py::test_run_writes_result_then_skips_then_forces",
    "test_core.py::test_metrics_do_not_depend_on_batch_size",
    "test_core.py::test_rerun_is_identical_and_uses_cache",
    "test_core.py::test_zero_sae_scores_zero_against_zero_ablation",
    "test_core.py::test_default_core_computes_only_the_zero_ablation",
    "test_export.py::test_core_export_fills_only_saebench_equal_fields",
    "test_absorption.py::test_saebench_mode_equals_saebench_absorption_end_to_end",
    "test_saebench_mode.py::test_scr_tpp_equal_saebench_run_eval_single_sae",
    "test_saebench_mode.py::test_sparse_probing_equals_saebench_run_eval_single_sae",
    "test_coverage.py::test_every_estimator_covers_at_least_93_percent_where_it_claims_an_interval",
    "test_coverage.py::test_paired_comparison_false_positives_stay_near_5_percent_and_the_gate_near_zero",
    "test_coverage.py::test_the_exact_proportion_interval_holds_near_zero_where_the_general_one_cannot",
    "test_faults.py::test_concurrent_runs_wait_and_reuse_one_result",
    "test_faults.py::test_sigterm_while_waiting",
    "test_faults.py::test_damaged_cache_and_result_files_are_recomputed",
    "test_faults.py::test_kill9_then_sigint_then_resume",
    "test_faults.py::test_out_of_space_keeps_the_result_and_goes_on_without_cache",
    "test_faults.py::test_hostile_configs_refused_before_allocating",
    "test_ksweep.py::test_ksweep_on_the_reference_topk",
    "test_matryoshka.py::test_prefix_sweep_equals_core_and_hand_truncated_saes",
    "test_matryoshka.py::test_probing_absorption_and_autointerp_run_on_a_matryoshka_sae",
    "test_transcoder.py::test_probing_absorption_autointerp_and_ablation_run_on_a_transcoder",
    "test_transcoder.py::test_ksweep_views_of_a_skip_transcoder_write_its_output_hook",
    "test_transcoder.py::test_zero_and_mean_transcoders_equal_the_output_hooks_ablations",
    "test_planning.py::test_a_sae_lens_object_evaluates_end_to_end",
    "test_ray.py::test_an_error_in_a_worker_is_one_line",
    "test_ravel.py::test_identity_sae_known_answers",  # knowledge filter + greedy answers of ~100 pairs (~100 s)
    "test_ravel.py::test_mdbm_moves_the_answer_on_a_planted_sae",
    "test_ravel.py::test_two_saes_share_the_filter_and_pair_exactly",
    "test_ravel.py::test_matches_saebench_ravel_code",  # SAEBench's RAVEL on the transformers model (~3 min)
    "test_runner.py::test_plugin_evaluator_from_a_file_runs_end_to_end",
    "test_runner.py::test_shared_inputs_run_once_and_metrics_equal_separate_runs",
    "test_sae_probes.py::test_cross_validation_is_sae_probes_find_best_reg",
    "test_sae_probes.py::test_sae_probes_runs_on_the_model_and_a_second_sae_costs_no_model_pass",
    "test_scr_tpp.py::test_scr_and_tpp_run_on_the_model_and_a_second_sae_costs_no_model_pass",
    "test_splitting.py::test_bad_references_give_one_line_errors",
    "test_sweep.py::test_cli_max_memory_and_progress",
    "test_sweep.py::test_groups_under_a_budget_give_bit_identical_results",
    "test_train.py::test_each_architecture_learns",
    "test_web.py::test_every_page_loads_with_no_console_error",  # headless Chromium (~25 s for the six)
    "test_web.py::test_sorting_and_filtering_change_the_rows",
    "test_web.py::test_a_plot_renders_its_hover_names_the_sae_and_a_click_opens_its_page",
    "test_web.py::test_a_latent_page_highlights_the_activating_tokens",
    "test_web.py::test_a_latent_page_shows_real_contexts_a_histogram_and_output_tokens",
    "test_web.py::test_a_planted_script_is_shown_as_text_and_never_runs",
    "test_web.py::test_the_compare_page_shows_the_chosen_pair",
    "test_web.py::test_the_pages_policy_blocks_inline_script_should_escaping_ever_fail",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: the slow tier (deselect with -m 'not slow'; see SLOW_TESTS)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.name
        if module in SLOW_MODULES or f"{module}::{item.originalname}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


HOOK = "blocks.6.hook_resid_post"
SMALL = {"tokens": 256, "ctx_len": 32, "batch_size": 4}


@pytest.fixture(scope="session")
def model():
    """The embedded SmolLM2-135M through transformer-lens (cached after the first load)."""
    from saebench.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def token_set(model):
    from saebench.data import build_token_set

    return build_token_set(model.tokenize, model.bos_id, SMALL["tokens"], SMALL["ctx_len"], seed=0)


class Identity(torch.nn.Module):
    """encode = x, decode = z: the oracle for fvu 0, delta_ce 0, kl 0, ce_loss_score 1."""

    def __init__(self, d: int = 576) -> None:
        super().__init__()
        self.d_in = self.d_sae = d

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class Constant(torch.nn.Module):
    """decode always returns a fixed vector (the mean activation gives fvu 1)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.d_in = value.numel()
        self.d_sae = 4
        self.register_buffer("value", value.clone())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape[:-1], self.d_sae, dtype=x.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.value.to(z.dtype).expand(*z.shape[:-1], self.d_in)


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    """An empty activation cache, sharing the converted model folder with the default cache."""
    from saebench.io import cache_dir

    models = cache_dir() / "models"
    root = tmp_path / "cache"
    root.mkdir()
    if models.exists():
        (root / "models").symlink_to(models)
    monkeypatch.setenv("SAEBENCH_CACHE", str(root))
    return root


def write_native(folder: Path, arch: str = "relu", d_in: int = 576, d_sae: int = 64, seed: int = 0, **cfg_extra):
    """A random native SAE of ``arch`` saved at ``folder``; returns the module."""
    from saebench.sae import NativeSAE, SAEConfig, save_native

    g = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(
        architecture=arch,
        d_in=d_in,
        d_sae=d_sae,
        **{
            "hook_name": HOOK,
            "model_name": "smollm2-135m",
            "k": 8 if arch in ("topk", "batchtopk") else None,
            **cfg_extra,  # overrides the defaults above
        },
    )
    sae = NativeSAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return save_native(sae, folder), sae


def planted_synthetic_sae(source: Any, enc: torch.Tensor, dec: torch.Tensor) -> Any:
    """A ReLU SAE on a synthetic ``source`` with encoder directions ``enc [m, d]``, decoder rows
    ``dec [m, d]`` and an encoder bias of -1e-4 (float rounding leaves ~1e-7 on silent features'
    pre-activations), recording the source (the validity and groundtruth tests' planted SAEs)."""
    from saebench.sae import NativeSAE, SAEConfig
    from saebench.synthetic import RECORD_KEY, SYNTHETIC_HOOK, SYNTHETIC_MODEL

    cfg = SAEConfig(
        architecture="relu", d_in=source.d, d_sae=dec.shape[0], hook_name=SYNTHETIC_HOOK, model_name=SYNTHETIC_MODEL
    )
    sae = NativeSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(enc.T)
        sae.W_dec.copy_(dec)
        sae.b_enc.fill_(-1e-4)
    setattr(sae.cfg, RECORD_KEY, source.record())
    return sae.eval()
