"""The burst's timeline figure: one column per phase, drawn through medray.demo.figures."""

from PIL import Image

from workloads.burst.harness import BurstPlan, PhaseResult
from workloads.burst.report import plot_timeline


def phase(name, broker):
    by_type = {"infer-t4": 2, "train-a100": 2 * broker}
    samples = [{"t": float(t), "emergency": {"pending": int(t == 16), "by_type": by_type}} for t in range(30)]
    requests = [{"lane": lane, "sent": t / 2, "latency_s": 0.1, "status": 200 if t % 7 else 503,
                 "node_type": "infer-t4"} for t in range(60) for lane in ("routine", "emergency")]
    progress = [{"t": t / 2, "step": t, "epoch": t // 10} for t in range(60)]
    events = [{"t": 17.0, "action": "lend"}, {"t": 25.0, "action": "return"}] if broker else []
    return PhaseResult(name, broker, 0.0, requests, samples, progress, events, 10)


def test_the_timeline_has_a_column_per_phase_and_names_its_series(tmp_path):
    png = plot_timeline([phase("baseline", False), phase("broker", True)], tmp_path / "t.png", BurstPlan())
    image = Image.open(png)
    assert image.size == (1040, 720)
    texts = image.text["Description"]
    for text in ("baseline: static partition", "broker: priority broker", "train-a100", "pending",
                 "emergency failed (9)", "lend", "return", "research step"):
        assert text in texts


def test_the_demo_burst_trains_on_a_slice_of_the_cohort_that_the_research_run_reads(tmp_path):
    from tests.workloads.research.conftest import write_training_data
    from workloads.burst.demo import research_slice
    from workloads.research.data import load_cohort

    data = write_training_data(tmp_path / "full", patients=12, seed=4, shards=3)
    sliced = research_slice(data.data, tmp_path / "slice", patients=8)
    full, part = load_cohort(data.data, data.labels), load_cohort(sliced, data.labels)
    assert part.series == 8 and full.series == 12 and part.spec == full.spec
    assert (part.train_patients | part.val_patients) < (full.train_patients | full.val_patients)
