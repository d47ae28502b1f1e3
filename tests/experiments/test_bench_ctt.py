import pytest

pytest.importorskip("goodpoints")


METHODS = {"ctt", "lrctt", "rff"}


@pytest.mark.parametrize(
    "methods,kseq_only",
    [
        # the default suite: one method beside goodpoints (each costs seconds of compiles)
        ("ctt", []),
        pytest.param(sorted(METHODS), [1024], marks=pytest.mark.slow),
    ],
)
def test_bench_ctt_tiny_run(tiny_run, methods, kseq_only):
    methods = [methods] if isinstance(methods, str) else methods
    run_dir, results = tiny_run(
        "bench_ctt",
        "sample_sizes=[256] g_values=[1] bins_per_sample=4 num_features=16 repeats=1",
        "rate_sizes=[256] replicates=3 rate_chunk=2",
        f"methods=[{','.join(methods)}] kseq_only_sizes=[{','.join(map(str, kseq_only))}]",
        ignore_warnings=True,
    )
    records = results["records"]
    # the replicates are stored in resumable chunks of rate_chunk (the last one shorter)
    chunks = sorted(p.stem for p in (run_dir / "units").glob("*-null-*"))
    assert chunks[:2] == [f"{methods[0]}-g1-n256-null-0-2", f"{methods[0]}-g1-n256-null-2-3"]
    expected = {(m, 256) for m in methods} | {("ctt", n) for n in kseq_only}
    assert {(r["method"], r["n"]) for r in records} == expected
    for r in records:
        assert r["kseq_warm_s"] > 0
        if r["n"] == 256:
            assert r["gp_s"] > 0 and r["ratio_warm"] > 0
            assert 0 <= r["kseq_rate_null"] <= 1 and 0 <= r["gp_rate_alt"] <= 1
            assert r["kseq_num_nonfinite_null"] == 0
            assert -1 <= r["rate_difference_alt"] <= 1 and r["rate_difference_se_null"] >= 0
            assert 0 <= r["gp_halfwidth95_null"] <= 1


def test_rate_settings_are_checked():
    from experiments import load_config
    from experiments.config import ConfigError

    cfg = load_config("configs/bench_ctt.yaml", ["params.rate_settings=[alt]"])
    assert cfg.params.rate_settings == ("alt",)
    with pytest.raises(ConfigError, match="rate_settings"):
        load_config("configs/bench_ctt.yaml", ["params.rate_settings=[power]"])
