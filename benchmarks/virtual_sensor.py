"""Fixed against learned observation noise (the "virtual sensor"), LSTM-KF-AA, on held-out generated data.

A generated corpus whose videos have stretches without a face and stretches of degraded frames (much noisier
features). Both variants train the same seeds on its train split (early stopping on dev), are calibrated on dev as
`affect train` does, and are scored by the scoring path on dev and test: per split CCC (per video, averaged),
coverage of the 50% / 90% intervals and the Gaussian NLL (pooled over frames), as `affect evaluate` reports them;
then, on test, the calibrated variance on clean, degraded and faceless frames.

    python -m benchmarks.virtual_sensor [--seeds 3] [--epochs 40] [--videos 9] [--frames 1500]

Prints a markdown table (docs/results.md, "Learned observation noise").
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from affect_core.artifact import load_bundle
from affect_core.config import ModelConfig, RunConfig, TrainConfig
from affect_core.experiment import plan_seed_tasks, run_seeds
from affect_core.inference import model_input
from affect_core.scoring import evaluate_predictions, predict_tracks, prediction_rows
from affect_core.storage import resolve
from affect_core.synth import SynthConfig, generate

SPLITS = ("dev", "test")


def corpus_config(videos: int, frames: int) -> SynthConfig:
    """Faces missing in 2 s runs on 10% of the frames; 30% of the frames degraded in 3 s runs (feature noise 4 where
    it is 0.7 elsewhere)."""
    return SynthConfig(
        videos_per_split=videos,
        frames=frames,
        appearance_dim=16,
        geometric_dim=16,
        lag_s=1.0,
        feature_noise=0.7,
        no_face_share=0.1,
        no_face_run_s=2.0,
        degraded_share=0.3,
        degraded_run_s=3.0,
        degraded_noise=4.0,
        test_labels=True,
        seed=7,
    )


def run_config(noise: str, epochs: int) -> RunConfig:
    return RunConfig(
        model=ModelConfig(model="lstm-kf", align="adaptive", dimension="arousal", observation_noise=noise),
        train=TrainConfig(max_epochs=epochs, patience=30, window_frames=250, batch_size=8),
    )


def evaluate_seed(bundle_url: str, videos: list, faces: dict, degraded: dict) -> dict:
    bundle = load_bundle(bundle_url)
    tracks = predict_tracks(bundle, [v.features for v in videos])
    tables = {v.video_id: prediction_rows([v], [t], bundle.model_id) for v, t in zip(videos, tracks, strict=True)}
    result = evaluate_predictions(tables, videos)
    out = {split: result[split]["arousal"] for split in SPLITS}
    calibration = bundle.models[0].calibration["arousal"]
    out["calibration"] = {"scale": calibration.scale, "noise": calibration.noise}
    # The calibrated variance on test frames by kind: clean (face, not degraded), degraded (face), no face.
    kinds: dict[str, list[np.ndarray]] = {"clean": [], "degraded": [], "no face": [], "spread": []}
    for video, track in zip(videos, tracks, strict=True):
        if video.split != "test":
            continue
        variance = track["arousal"][1]
        face, bad = faces[video.video_id], degraded[video.video_id]
        kinds["clean"].append(variance[face & ~bad])
        kinds["degraded"].append(variance[face & bad])
        kinds["no face"].append(variance[~face])
        settled = variance[100:][face[100:]]
        kinds["spread"].append(np.array([settled.std() / settled.mean()]))
    out["variance"] = {kind: float(np.concatenate(v).mean()) for kind, v in kinds.items()}
    out["noise_ratio"] = learned_noise_ratio(bundle, [v for v in videos if v.split == "test"], faces, degraded)
    return out


def learned_noise_ratio(bundle, videos: list, faces: dict, degraded: dict) -> float:
    """The learned model's level observation noise on degraded frames over that on clean frames (test, frames with a
    face, geometric mean of softplus(r + u_t)); 1.0 for fixed noise."""
    trained = bundle.models[0]
    model = trained.model
    if not model.frontend.noise_dim:
        return 1.0
    logs: dict[bool, list[np.ndarray]] = {True: [], False: []}
    with torch.no_grad():
        for video in videos:
            face = faces[video.video_id]
            x = torch.from_numpy(np.nan_to_num(model_input(trained.transform, video.features)))
            o, _ = model.frontend(x[None], torch.from_numpy(face)[None])
            u = o[0, 0, :, model.state_dim]  # the level's offset
            r = torch.nn.functional.softplus(model.filters.r[0, 0] + u).log().numpy()
            for bad in (True, False):
                logs[bad].append(r[face & (degraded[video.video_id] == bad)])
    return float(np.exp(np.concatenate(logs[True]).mean() - np.concatenate(logs[False]).mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--videos", type=int, default=9)
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--out", default=None, help="JSON file for the per-seed figures")
    args = parser.parse_args()
    torch.set_num_threads(1)
    synthetic = generate(corpus_config(args.videos, args.frames))
    corpus = synthetic.corpus
    faces = {v.video_id: np.isfinite(v.features).all(1) for v in corpus.videos}
    held_out = [v for v in corpus.videos if v.split in SPLITS]
    figures: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as root:
        for noise in ("fixed", "learned"):
            run = resolve(f"{root}/{noise}")
            start = time.perf_counter()
            tasks = plan_seed_tasks(run_config(noise, args.epochs), "arousal", range(args.seeds))
            outcomes = run_seeds(tasks, corpus, run)
            seconds = time.perf_counter() - start
            figures[noise] = []
            for outcome in outcomes:
                seed = evaluate_seed(outcome.bundle_url, held_out, faces, synthetic.degraded)
                seed["epochs"] = outcome.rows[0]["epochs"]
                seed["train_seconds"] = seconds / len(outcomes)
                figures[noise].append(seed)
                print(noise, json.dumps(seed, default=float), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=1, default=float)
    print(markdown(figures))


def _mean_sd(values: list[float], digits: int = 3, scale: float = 1.0) -> str:
    a = np.asarray(values, dtype=float) * scale
    return f"{a.mean():.{digits}f} ± {a.std():.{digits}f}"


def markdown(figures: dict[str, list[dict]]) -> str:
    lines = [
        "| Noise | Split | CCC | 50% interval | 90% interval | NLL |",
        "|---|---|---|---|---|---|",
    ]
    for noise, seeds in figures.items():
        for split in SPLITS:
            rows = [s[split] for s in seeds]
            lines.append(
                f"| {noise} | {split} | {_mean_sd([r['ccc'] for r in rows])} | "
                f"{_mean_sd([r['coverage50'] for r in rows], 1, 100)}% | "
                f"{_mean_sd([r['coverage90'] for r in rows], 1, 100)}% | {_mean_sd([r['nll'] for r in rows])} |"
            )
    lines += [
        "",
        "| Noise | Calibration scale a | Variance: clean frames | degraded frames | no face | spread (sd/mean) "
        "| R degraded / R clean |",
        "|---|---|---|---|---|---|---|",
    ]
    for noise, seeds in figures.items():
        v = [s["variance"] for s in seeds]
        lines.append(
            f"| {noise} | {_mean_sd([s['calibration']['scale'] for s in seeds])} | "
            f"{_mean_sd([x['clean'] for x in v], 4)} | {_mean_sd([x['degraded'] for x in v], 4)} | "
            f"{_mean_sd([x['no face'] for x in v], 4)} | {_mean_sd([x['spread'] for x in v], 3)} | "
            f"{_mean_sd([s['noise_ratio'] for s in seeds], 2)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
