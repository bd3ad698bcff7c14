"""Regenerate BENCHMARKS.md from the measured results in bench/results (never edit BENCHMARKS.md by
hand).

Each section names the result file it copies and the exact command that produced it; machine and
date are the ones recorded in the result itself (its first line), or, where a result does not record
them, the date of the commit that last changed it.

    python bench/benchmarks.py            # writes BENCHMARKS.md at the repository root
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

SECTIONS: list[tuple[str, str, str]] = [
    (
        "Robustness under observation loss: HalfCheetah 6x1 (committed bundle)",
        "robustness_halfcheetah_6x1/robustness.md",
        "rmio eval robustness models/halfcheetah_6x1 --seeds 3 --episodes 5 --strategies "
        "world-model,hold-last,zero-fill,no-finetune --out "
        "bench/results/robustness_halfcheetah_6x1",
    ),
    (
        "Robustness under observation loss: Ant 4x2 (committed bundle)",
        "robustness_ant_4x2/robustness.md",
        "rmio eval robustness models/ant_4x2 --seeds 3 --episodes 5 --strategies "
        "world-model,hold-last,zero-fill,no-finetune --out bench/results/robustness_ant_4x2",
    ),
    (
        "Robustness through the real swarm: HalfCheetah 6x1",
        "robustness_halfcheetah_6x1_swarm/robustness.md",
        "rmio eval robustness models/halfcheetah_6x1 --p-loss 0,0.3,0.6 --seeds 1 --episodes 2 "
        "--swarm --strategies world-model,hold-last,zero-fill --out "
        "bench/results/robustness_halfcheetah_6x1_swarm",
    ),
    (
        "The swarm on the committed HalfCheetah 6x1 bundle at p_loss 0.3",
        "swarm_halfcheetah_6x1_p03/report.md",
        "rmio swarm launch models/halfcheetah_6x1 --p-loss 0.3 --episodes 3",
    ),
    (
        "Robustness under observation loss: SMAX 2s3z (committed bundle)",
        "robustness_smax_2s3z/robustness.md",
        "rmio eval robustness models/smax_2s3z --seeds 3 --episodes 10 --strategies "
        "world-model,hold-last,zero-fill,no-finetune --out bench/results/robustness_smax_2s3z",
    ),
    (
        "Robustness through the real swarm: SMAX 2s3z (discrete actions)",
        "robustness_smax_2s3z_swarm/robustness.md",
        "rmio eval robustness models/smax_2s3z --p-loss 0,0.3,0.6 --seeds 1 --episodes 5 --swarm "
        "--strategies world-model,hold-last,zero-fill --out "
        "bench/results/robustness_smax_2s3z_swarm",
    ),
    (
        "RMIOv2 Table 1 (fusion ablation): HalfCheetah 6x1, 2 training seeds",
        "ablation_fusion_halfcheetah_6x1/ablation.md",
        "rmio ablate fusion_halfcheetah_6x1 --out runs/ablation-fusion_halfcheetah_6x1 "
        "(one torch thread; re-run the same command to resume)",
    ),
    (
        "RMIOv2 Table 1 (fusion ablation): SMAX 2s3z, 3 training seeds (issue 21)",
        "ablation_fusion_smax_2s3z/ablation.md",
        "rmio ablate fusion_smax_2s3z --out runs/ablation-fusion_smax_2s3z --jobs 2 --reuse "
        "runs/ablation-p_mask_smax_2s3z (one torch thread per worker; --reuse takes the rmiov2 "
        "column's pre-training from the Table 2 sweep; re-run the same command to resume)",
    ),
    (
        "RMIOv2 Fig. 8 (RMIOv2 against RMIO v1, MAMBA and GAWM): SMAX 2s3z, 3 training seeds "
        "(issue 21)",
        "ablation_fig8_smax_2s3z/ablation.md",
        "rmio ablate fig8_smax_2s3z --out runs/ablation-fig8_smax_2s3z --jobs 2 --reuse "
        "runs/ablation-fusion_smax_2s3z (one torch thread per worker; re-run the same command to "
        "resume)",
    ),
    (
        "RMIOv2 Fig. 8 through the real swarm: every world model of SMAX 2s3z, training seed 0 "
        "(issue 21)",
        "swarm_fig8_smax_2s3z.md",
        "python bench/sweep_swarm.py runs/ablation-fig8_smax_2s3z --seed 0 --p-loss 0.3 "
        "--episodes 5 --out bench/results/swarm_fig8_smax_2s3z",
    ),
    (
        "RMIOv2 Fig. 8 (RMIOv2 against RMIO v1, MAMBA and GAWM): HalfCheetah 6x1, 3 training "
        "seeds (issue 21)",
        "ablation_fig8_halfcheetah_6x1/ablation.md",
        "rmio ablate fig8_halfcheetah_6x1 --out runs/ablation-fig8_halfcheetah_6x1 --jobs 2 (one "
        "torch thread per worker; re-run the same command to resume)",
    ),
    (
        "RMIOv2 Fig. 8 through the real swarm: every world model of HalfCheetah 6x1, training "
        "seed 0 (issue 21)",
        "swarm_fig8_halfcheetah_6x1.md",
        "python bench/sweep_swarm.py runs/ablation-fig8_halfcheetah_6x1 --seed 0 --p-loss 0.3 "
        "--episodes 5 --out bench/results/swarm_fig8_halfcheetah_6x1",
    ),
    (
        "RMIOv2 Table 2 (fine-tuning mask rate): HalfCheetah 6x1, 2 training seeds (issue 21)",
        "ablation_p_mask_halfcheetah_6x1/ablation.md",
        "rmio ablate p_mask_halfcheetah_6x1 --out runs/ablation-p_mask_halfcheetah_6x1 --jobs 2 "
        "(one torch thread per worker; re-run the same command to resume)",
    ),
    (
        "Fine-tuning recipes against the pre-trained model, hold-last and zero-fill: HalfCheetah "
        "6x1, 2 training seeds (issues 21 and 25)",
        "ablation_recipes_halfcheetah_6x1/ablation.md",
        "rmio ablate recipes_halfcheetah_6x1 --out runs/ablation-recipes_halfcheetah_6x1 "
        "(one torch thread; re-run the same command to resume)",
    ),
    (
        "Fine-tuning recipes against the pre-trained model, hold-last and zero-fill: SMAX 2s3z, "
        "2 training seeds (issues 21 and 25)",
        "ablation_recipes_smax_2s3z/ablation.md",
        "rmio ablate recipes_smax_2s3z --out runs/ablation-recipes_smax_2s3z "
        "(one torch thread; re-run the same command to resume)",
    ),
    (
        "Fine-tuning recipes against the pre-trained model, hold-last and zero-fill: Ant 4x2, "
        "2 training seeds (issues 21 and 25)",
        "ablation_recipes_ant_4x2/ablation.md",
        "rmio ablate recipes_ant_4x2 --out runs/ablation-recipes_ant_4x2 --jobs 2 "
        "(one torch thread per trial; re-run the same command to resume)",
    ),
    (
        "RMIOv2 Table 2 (fine-tuning mask rate): SMAX 2s3z, 3 training seeds (issue 21)",
        "ablation_p_mask_smax_2s3z/ablation.md",
        "rmio ablate p_mask_smax_2s3z --out runs/ablation-p_mask_smax_2s3z --jobs 2 (one torch "
        "thread per worker; re-run the same command to resume)",
    ),
    (
        "One sweep on the local backend and on Ray, same machine (issue 21)",
        "sweep_backends.md",
        "python bench/sweep_backends.py p_mask_smax_2s3z --seeds 0 --jobs 2",
    ),
    (
        "Policy training: HalfCheetah 6x1",
        "training_halfcheetah_6x1.md",
        "see the command line inside",
    ),
    (
        "Joint pre-training with the tuned recipe against MAPPO, per real step: HalfCheetah 6x1 "
        "(issue 20)",
        "training_halfcheetah_6x1_tuned.md",
        "see the command line inside (runs resume with their training command)",
    ),
    (
        "Joint pre-training against MAPPO at 100k real steps, 100 greedy episodes per actor: "
        "HalfCheetah 6x1 (issue 20)",
        "policy_eval_halfcheetah_6x1_100k.md",
        "rmio eval policy runs/h20-hc-tuned-s0 runs/h20-hc-tuned-s1 runs/h20-hc-mappo100k-s0 "
        "runs/h20-hc-mappo100k-s1 runs/h20-hc-mappo100k-s2 --episodes 100 --out "
        "bench/results/policy_eval_halfcheetah_6x1_100k (runs: training_halfcheetah_6x1_tuned.md)",
    ),
    ("Policy training: SMAX 2s3z", "training_smax_2s3z.md", "see the command line inside"),
    (
        "Joint pre-training with the tuned recipe against MAPPO, per real step: SMAX 2s3z "
        "(issue 20)",
        "training_smax_2s3z_tuned.md",
        "see the command line inside (runs resume with their training command)",
    ),
    (
        "Joint pre-training against MAPPO at 100k real steps, 100 greedy episodes per actor: "
        "SMAX 2s3z (issue 20)",
        "policy_eval_smax_2s3z_100k.md",
        "rmio eval policy runs/h20-smax-batch-s0 runs/h20-smax-batch-s1 runs/h20-smax-mappo100k-s0 "
        "runs/h20-smax-mappo100k-s1 models/smax_2s3z runs/smax_2s3z-mappo300k --episodes 100 "
        "--out bench/results/policy_eval_smax_2s3z_100k (runs: training_smax_2s3z_tuned.md; "
        "runs/smax_2s3z-mappo300k is the MAPPO bundle shipped before: mkdir -p "
        "runs/smax_2s3z-mappo300k && git archive fec71cc models/smax_2s3z | tar -x "
        "--strip-components=2 -C runs/smax_2s3z-mappo300k)",
    ),
    (
        "World-model reconstruction (L_rec, GPE, GCI)",
        "world_model_reconstruction.md",
        "python bench/world_model.py reconstruction RUN_DIR...",
    ),
    (
        "World-model training and inference speed",
        "world_model_speed.md",
        "python bench/world_model.py speed && python bench/world_model.py latency",
    ),
    (
        "World-model update paths, threads, batch against sequence length (issue 20)",
        "world_model_paths.md",
        "python bench/world_model.py paths --updates 20 && python bench/world_model.py speed "
        "--threads N [--path compiled] (background trainings paused)",
    ),
    ("Swarm communication and latency", "swarm.md", "python bench/swarm_bench.py"),
    (
        "Where a reconstruction round's time goes",
        "swarm_timeline.md",
        "python bench/swarm_timeline.py",
    ),
    (
        "The swarm off the loopback: restarts, partitions, packet loss (network namespaces)",
        "netfaults.md",
        "python bench/netfaults_bench.py (as root)",
    ),
    (
        "The cost of security: MAC tags (every transport) and CURVE (tcp)",
        "auth.md",
        "python bench/auth_bench.py",
    ),
    (
        "Which reconstruction number predicts return, on held-out data",
        "policy_metrics_heldout.md",
        "python bench/policy_metrics_heldout.py RUN_DIR... --policy halfcheetah_6x1",
    ),
    (
        "Which reconstruction number predicts return, on-policy in the robustness sweep",
        "policy_metrics_rank.md",
        "python bench/policy_metrics_rank.py halfcheetah_6x1 ant_4x2 smax_2s3z --seeds 3 "
        "--episodes 3",
    ),
    (
        "MARIE's reconstruction graphs: one round's latency and state (issue 23's spike)",
        "marie_spike.md",
        "python bench/marie_spike.py export --out runs/marie_spike && python "
        "bench/marie_spike.py time --graphs runs/marie_spike (background trainings paused)",
    ),
    (
        "Open-loop error against horizon, RMIOv2 and MARIE: HalfCheetah 6x1 (issue 23)",
        "open_loop_halfcheetah_6x1.md",
        "python bench/open_loop.py LABEL=RUN_DIR... --root RUNS (see the command line inside)",
    ),
    (
        "Open-loop error against horizon, RMIOv2 and MARIE: SMAX 2s3z (issue 23)",
        "open_loop_smax_2s3z.md",
        "python bench/open_loop.py LABEL=RUN_DIR... --root RUNS (see the command line inside)",
    ),
    (
        "MARIE against RMIOv2 on SMAX 2s3z: L_rec, GPE and GCI at every p_mask, robustness, "
        "2 training seeds (issue 23)",
        "marie_smax_2s3z.md",
        "rmio ablate marie_smax_2s3z --out runs/ablation-marie_smax_2s3z --jobs 2 && python "
        "bench/marie_compare.py runs/ablation-marie_smax_2s3z --out bench/results/marie_smax_2s3z",
    ),
    (
        "MARIE and RMIOv2 bundles of SMAX 2s3z through the real swarm (issue 23)",
        "swarm_marie_smax_2s3z.md",
        "python bench/sweep_swarm.py runs/ablation-marie_smax_2s3z --seed 0 --p-loss 0.3 "
        "--episodes 5 --out bench/results/swarm_marie_smax_2s3z",
    ),
    (
        "The same at p_loss 0.6, training seed 1, 10 episodes (issue 23)",
        "swarm_marie_smax_2s3z_p06.md",
        "python bench/sweep_swarm.py runs/ablation-marie_smax_2s3z --seed 1 --p-loss 0.6 "
        "--episodes 10 --out bench/results/swarm_marie_smax_2s3z_p06",
    ),
    (
        "MARIE against RMIOv2 on HalfCheetah 6x1: L_rec, GPE and GCI at every p_mask, "
        "robustness, 2 training seeds (issue 23)",
        "marie_halfcheetah_6x1.md",
        "rmio ablate marie_halfcheetah_6x1 --out runs/ablation-marie_halfcheetah_6x1 --jobs 2 && "
        "python bench/marie_compare.py runs/ablation-marie_halfcheetah_6x1 --out "
        "bench/results/marie_halfcheetah_6x1",
    ),
    (
        "MARIE and RMIOv2 bundles of HalfCheetah 6x1 through the real swarm (issue 23)",
        "swarm_marie_halfcheetah_6x1.md",
        "python bench/sweep_swarm.py runs/ablation-marie_halfcheetah_6x1 --seed 0 --p-loss 0.3 "
        "--episodes 5 --transport ipc --out bench/results/swarm_marie_halfcheetah_6x1",
    ),
    (
        "Reconstruction rounds of a MARIE bundle against RMIOv2's, in the swarm (issue 23)",
        "marie_rounds.md",
        "python bench/marie_rounds.py --marie BUNDLE --marie-before OLD_BUNDLE --steps 200 "
        "--repeats 2 --placement on-agent, then --graph-calls 0 --placement node (background "
        "trainings paused)",
    ),
    (
        "MMSA against QMIX and MAPPO on LBF (MMSA paper Table 4), 3 seeds (issue 22)",
        "lbf_table4.md",
        "python bench/lbf_table4.py --tasks lbf_10x10_3p_5f lbf_10x10_4p_3f --seeds 0 1 2 "
        "--steps STEPS --root runs/lbf-table4 --jobs 2 --out bench/results/lbf_table4 (re-run "
        "the same command to resume; STEPS as the table's title says)",
    ),
    (
        "MMSA against QMIX and MAPPO on LBF 10x10-3p-5f at 300k steps, one seed (issue 22)",
        "lbf_table4_300k_seed0.md",
        "python bench/lbf_table4.py --tasks lbf_10x10_3p_5f --seeds 0 --steps 300000 --root "
        "runs/lbf-table4-300k --jobs 1 --out bench/results/lbf_table4_300k_seed0",
    ),
    (
        "MMSA against QMIX and MAPPO on LBF 10x10-4p-3f at 500k real steps, training seed 0 "
        "(issue 22)",
        "lbf_table4_500k_seed0.md",
        "python bench/lbf_table4.py --tasks lbf_10x10_4p_3f --seeds 0 --steps 500000 --root "
        "runs/lbf-table4-500k --jobs 2 --out bench/results/lbf_table4_500k_seed0",
    ),
    (
        "MMSA's reconstruction against RMIOv2's with MMSA's Q-actor: LBF 10x10-3p-5f (issue 22)",
        "mmsa_robustness_lbf_10x10_3p_5f.md",
        "python bench/mmsa_robustness.py runs/lbf-table4/lbf_10x10_3p_5f/mmsa/seed0 --out "
        "runs/mmsa-robustness-lbf_10x10_3p_5f --results "
        "bench/results/mmsa_robustness_lbf_10x10_3p_5f (re-run the same command to resume)",
    ),
    (
        "MMSA's reconstruction against RMIOv2's with MMSA's Q-actor: LBF 10x10-4p-3f (issue 22)",
        "mmsa_robustness_lbf_10x10_4p_3f.md",
        "python bench/mmsa_robustness.py runs/lbf-table4/lbf_10x10_4p_3f/mmsa/seed0 --out "
        "runs/mmsa-robustness-lbf_10x10_4p_3f --results "
        "bench/results/mmsa_robustness_lbf_10x10_4p_3f (re-run the same command to resume)",
    ),
    (
        "MMSA, RMIOv2 and QMIX bundles through the real swarm: LBF 10x10-3p-5f (issue 22)",
        "swarm_lbf_10x10_3p_5f.md",
        "python bench/sweep_swarm.py --bundle mmsa=MMSA_BUNDLE --bundle rmiov2=RMIOV2_BUNDLE "
        "--bundle qmix=QMIX_BUNDLE --p-loss 0.3 --episodes 5 --out "
        "bench/results/swarm_lbf_10x10_3p_5f (the bundles as the section says)",
    ),
    (
        "MMSA without the roll-out state in its mixer (Fig. 5b No-WM) on LBF 10x10-4p-3f "
        "(issue 22)",
        "lbf_mmsa_ablation.md",
        "python bench/lbf_table4.py --tasks lbf_10x10_4p_3f --algos mmsa-no-wm --seeds 0 1 2 "
        "--steps 100000 --root runs/lbf-ablate --jobs 1 --out bench/results/lbf_mmsa_ablation",
    ),
    (
        "MMSA against QMIX and MAPPO on SMAX 3m, win rate, 3 seeds (issue 22)",
        "smax_3m_value.md",
        "python bench/lbf_table4.py --tasks smax_3m --algos mmsa qmix mappo --seeds 0 1 2 "
        "--steps 500000 --eval-every 20000 --metric win_rate --root runs/smax3m-table --jobs 2 "
        "--out bench/results/smax_3m_value",
    ),
    (
        "QMIX on SMAX 3m: pymarl's settings and pymarl2's recipe against the SMAC paper's "
        "figure (issue 22)",
        "qmix_smax_3m.md",
        "rmio train qmix smax_3m --seed S --run-dir RUN --set qmix.env_steps=500000 --set "
        "world_model.train.threads=1 plus each recipe's overrides (listed in the section), then "
        "python bench/training.py RUN ... --metric win_rate --budget 250000 --budget 500000 "
        "--wall-per 1000000 --out bench/results/qmix_smax_3m",
    ),
    (
        "QMIX on pymarl2's recipe on LBF 10x10-3p-5f and 10x10-4p-3f at 500k steps, 3 seeds, "
        "against the MMSA paper's QMIX (issue 22)",
        "lbf_qmix_pymarl2.md",
        "python bench/lbf_table4.py --tasks lbf_10x10_3p_5f lbf_10x10_4p_3f --algos "
        "qmix-pymarl2 --seeds 0 1 2 --steps 500000 --root runs/lbf-recipe --jobs 2 --out "
        "bench/results/lbf_qmix_pymarl2",
    ),
    (
        "MMSA's reconstruction against RMIOv2's with MMSA's Q-actor: SMAX 3m (issue 22)",
        "mmsa_robustness_smax_3m.md",
        "python bench/mmsa_robustness.py runs/smax3m-table/smax_3m/mmsa/seed0 --out "
        "runs/mmsa-robustness-smax_3m --episodes 50 --results "
        "bench/results/mmsa_robustness_smax_3m (re-run the same command to resume)",
    ),
    (
        "MMSA, RMIOv2 and QMIX bundles of SMAX 3m through the real swarm (issue 22)",
        "swarm_smax_3m.md",
        "python bench/sweep_swarm.py --bundle mmsa=MMSA_BUNDLE --bundle rmiov2=RMIOV2_BUNDLE "
        "--bundle qmix=QMIX_BUNDLE --p-loss 0.3 --episodes 5 --transport ipc --out "
        "bench/results/swarm_smax_3m (the bundles as the section says)",
    ),
    ("What a call costs right after a sleep", "cold_calls.md", "python bench/cold_calls.py"),
    ("Environment throughput", "env_throughput.md", "python bench/env_throughput.py"),
]


def _commit_date(path: Path) -> str:
    out = subprocess.run(
        ["git", "log", "-1", "--format=%cs", "--", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return out.stdout.strip() or "not committed yet"


def render() -> str:
    parts = [
        "# Benchmarks",
        "",
        "Generated by `python bench/benchmarks.py` from the files in `bench/results/`; do not "
        "edit by hand.",
        "Every number was measured, on the machine the section names; nothing is typed in.",
        "",
    ]
    for title, rel, command in SECTIONS:
        path = RESULTS / rel
        parts += [f"## {title}", ""]
        if not path.is_file():
            parts += [f"_Not measured yet: `{rel}` is missing._", ""]
            continue
        lines = path.read_text().splitlines()
        if lines and lines[0].startswith(
            "# "
        ):  # a title: keep what it says (machine, load...) as text
            lines = [lines[0][2:].rstrip() + ".", *lines[1:]]
        lines = [
            "#" + ln if ln.startswith("#") else ln for ln in lines
        ]  # the file's sections nest under ours
        parts += [
            f"Command: `{command}`  ",
            f"Source: `bench/results/{rel}` (last changed {_commit_date(path)})",
            "",
        ]
        parts += [
            ln.replace("](", f"](bench/results/{Path(rel).parent}/") if ln.startswith("![") else ln
            for ln in lines
        ]
        png = path.with_suffix(".png")
        if png.is_file():
            parts += ["", f"![{title}](bench/results/{png.relative_to(RESULTS)})"]
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    target = ROOT / "BENCHMARKS.md"
    target.write_text(render())
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
